#!/usr/bin/env python3
"""Key-value operations through a guest against raw SQLite on the same machine, in one run.

A `state-programs` component on `verge up` does one wasi:keyvalue operation per
HTTP request (get, set of 100 bytes, increment of one counter); `wrk` drives it
with 1 connection (latency of one operation, nothing to batch) and with 64
(throughput: the writer commits whatever has queued in one transaction).
Next to each, `kv-raw` runs the same operation straight on SQLite with the same
settings (WAL, synchronous=FULL, same table): the ceiling. Writes are durable in
both: each acknowledged write has been fsynced; nothing is skipped.

The `route` line is the same guest answering without touching the store: the
cost of HTTP and a fresh instance per request, which every operation also pays.
The `engine` lines are verge-kv called from async tasks, without HTTP or
WebAssembly: where the time goes between the guest and SQLite.

Usage: bench/kv.py [--duration S] [--skip-build]
"""

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, TARGET, answers, free_port  # noqa: E402

STATE = ROOT / "crates/test-programs/state/target/wasm32-wasip2/release/state_programs.wasm"
VERGE = TARGET / "release/verge"
RAW = TARGET / "release/kv-raw"

SCRIPTS = {
    "get": """
request = function()
  return wrk.format("GET", "/kv-get?store=default&key=p0-" .. math.random(0, 999))
end
""",
    "set": """
local body = string.rep("v", 100)
request = function()
  return wrk.format("PUT", "/kv-set?store=default&key=w" .. math.random(1, 1000000000), nil, body)
end
""",
    "incr": """
request = function()
  return wrk.format("GET", "/kv-incr?store=default&key=hits")
end
""",
    "route": """
request = function()
  return wrk.format("GET", "/")
end
""",
}


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def run(cmd, **kw):
    log("$ " + " ".join(str(c) for c in cmd))
    subprocess.run(cmd, check=True, **kw)


def to_ms(text):
    value, unit = re.match(r"([\d.]+)(\w+)", text).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk(port, script, connections, duration):
    out = subprocess.run(
        ["wrk", f"-t{min(2, connections)}", f"-c{connections}", f"-d{duration}s", "--latency",
         "-s", script, f"http://127.0.0.1:{port}/"],
        check=True, capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p99 = to_ms(re.search(r"\s99%\s+(\S+)", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if bad:
        log(f"  warning: {bad.group(0)}")
    return rps, p99


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--skip-build", action="store_true")
    args = parser.parse_args()
    if not args.skip_build:
        run(["cargo", "build", "--release", "-p", "verge", "-p", "kv-raw"], cwd=ROOT)
        run(["cargo", "xtask", "guests"], cwd=ROOT)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "verge.toml").write_text(
            f'name = "kvbench"\n\n[component.state]\nsource = "{STATE}"\nroutes = ["/"]\n'
            'key_value_stores = ["default"]\n')
        scripts = {}
        for name, text in SCRIPTS.items():
            scripts[name] = tmp / f"{name}.lua"
            scripts[name].write_text(text)
        port = free_port()
        proc = subprocess.Popen([VERGE, "up", "-f", tmp / "verge.toml", "--listen", f"127.0.0.1:{port}",
                                 "--state-dir", tmp / "state", "--cache-dir", tmp / "cache"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.time() + 60
            while not answers(port, "/", None):
                if time.time() > deadline:
                    sys.exit("verge did not start")
                time.sleep(0.05)
            for p in range(10):
                assert answers(port, f"/kv-set-many?store=default&prefix=p{p}-&n=1000&size=100", None)
            results = {}
            for name in ["route", "get", "set", "incr"]:
                for conns in [1, 64]:
                    rps, p99 = wrk(port, scripts[name], conns, args.duration)
                    results[(name, conns)] = (rps, p99)
                    log(f"{name:5} c{conns:<3} {rps:10.0f} ops/s  p99 {p99:7.2f} ms")
        finally:
            proc.terminate()
            proc.wait()

        log("raw SQLite ceiling (kv-raw)")
        raw = {}
        out = subprocess.run([RAW, str(min(args.duration, 3)), str(tmp)], check=True,
                             capture_output=True, text=True).stdout
        for line in out.splitlines():
            name, ops, p99_us = line.split()
            raw[name] = (float(ops), int(p99_us) / 1000)

    ceiling = {("get", 1): "get", ("get", 64): "get", ("set", 1): "set", ("set", 64): "set-batch-64",
               ("incr", 1): "incr", ("incr", 64): "incr-batch-64"}
    print(f"\nkey-value through a guest (verge up, fresh instance per request) vs raw SQLite, "
          f"wrk {args.duration}s, 100-byte values, durable writes")
    print(f"{'op':6} {'conns':>5} {'ops/s':>10} {'p99 ms':>8} | {'raw op':>13} {'ops/s':>10} {'p99 ms':>8} | {'of raw':>7}")
    for (name, conns), (rps, p99) in results.items():
        if name == "route":
            print(f"{name:6} {conns:5} {rps:10.0f} {p99:8.2f} | {'(no store)':>13}")
            continue
        raw_name = ceiling[(name, conns)]
        raw_ops, raw_p99 = raw[raw_name]
        print(f"{name:6} {conns:5} {rps:10.0f} {p99:8.2f} | {raw_name:>13} {raw_ops:10.0f} {raw_p99:8.2f} | {rps / raw_ops:6.0%}")

    print("\nthe engine alone (verge-kv from async tasks: no HTTP, no WebAssembly)")
    for name, (ops, p99) in raw.items():
        if name.startswith("engine-"):
            print(f"{name:17} {ops:10.0f} ops/s  p99 {p99:6.2f} ms")


if __name__ == "__main__":
    main()
