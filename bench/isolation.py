#!/usr/bin/env python3
"""Isolation under attack, and latency at moderate load.

One `verge up` app serves two components: hello at `/` and the test
programs at `/tp` (1 s timeout, 32 MiB memory). hello is measured with
`wrk -t1 -c4 -d<duration>s --latency` (moderate load) while nothing else
runs, then while two clients keep hitting `/tp/loop` (infinite loops cut off
by the timeout), `/tp/bomb` (memory bombs) or `/tp/trap` (traps). A native
hyper server at the same load gives the latency floor of this machine.

Usage: bench/isolation.py [--duration S] [--skip-build]
"""

import argparse
import http.client
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, TARGET, answers, free_port  # noqa: E402
from throughput import wrk  # noqa: E402

HELLO = ROOT / "examples/hello/target/wasm32-wasip2/release/hello.wasm"
TP = ROOT / "crates/test-programs/target/wasm32-wasip2/release/test_programs.wasm"


def attacker(port, path, stop):
    while not stop.is_set():
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", path)
            conn.getresponse().read()
            conn.close()
        except OSError:
            time.sleep(0.01)


def measure(port, duration):
    subprocess.run(["wrk", "-t1", "-c4", "-d2s", f"http://127.0.0.1:{port}/"], capture_output=True)
    return wrk(port, duration, threads=1, connections=4)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--skip-build", action="store_true")
    args = ap.parse_args()
    if not args.skip_build:
        subprocess.run(["cargo", "build", "--release", "-p", "verge", "-p", "native-hello"], cwd=ROOT, check=True)
        subprocess.run(["cargo", "xtask", "guests"], cwd=ROOT, check=True)

    app = tempfile.mkdtemp(prefix="verge-isolation-")
    cache = os.path.join(app, "cache")
    with open(os.path.join(app, "verge.toml"), "w") as f:
        f.write(f'[component.tp]\nsource = "{TP}"\nroutes = ["/tp"]\n'
                f'limits = {{ timeout = "1s", memory = "32MiB" }}\n\n'
                f'[component.hello]\nsource = "{HELLO}"\nroutes = ["/"]\n')
    port, native_port = free_port(), free_port()
    verge = subprocess.Popen([TARGET / "release/verge", "up", app, "--listen", f"127.0.0.1:{port}", "--cache-dir", cache],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    native = subprocess.Popen([TARGET / "release/native-hello", f"127.0.0.1:{native_port}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not (answers(port) and answers(native_port)):
            time.sleep(0.05)
        rows = [("native hyper, no attack", measure(native_port, args.duration)),
                ("verge, no attack", measure(port, args.duration))]
        for attack in ["/tp/loop", "/tp/bomb", "/tp/trap"]:
            stop = threading.Event()
            threads = [threading.Thread(target=attacker, args=(port, attack, stop)) for _ in range(2)]
            for t in threads:
                t.start()
            time.sleep(1)
            rows.append((f"verge, 2 clients on {attack}", measure(port, args.duration)))
            stop.set()
            for t in threads:
                t.join()
    finally:
        verge.terminate()
        native.terminate()
        verge.wait()
        native.wait()

    print(f"\nhello at moderate load (wrk -t1 -c4 -d{args.duration}s)")
    print(f"{'scenario':34} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8}")
    for name, (rps, p50, p99) in rows:
        print(f"{name:34} {rps:9.0f} {p50:8.3f} {p99:8.3f}")
    base = rows[1][1]
    print(f"\nplatform overhead at p99 (verge - native): {base[2] - rows[0][1][2]:.3f} ms")


if __name__ == "__main__":
    main()
