#!/usr/bin/env python3
"""Hello-world throughput and start-up time: Verge against its peers, in one run.

Peers, all on loopback, all answering the same bytes:
  native            a native hyper server (bench/native-hello): the ceiling here
  wasmtime          `wasmtime serve -S cli` 48.0.8, default flags
  wasmtime-pooling  the same with its best pooling flags
  verge             `verge up` (fresh isolated instance per request)
  verge-server      `verge server` with hello deployed at `/` through its
                    control API (the multi-app path: gateway, app, version)

Each round measures every peer once, alternating, with
`wrk -t2 -c64 -d<duration>s --latency` after a short warm-up. Medians over
the rounds are reported with ratios. Only ratios travel between machines.

Usage: bench/throughput.py [--rounds N] [--duration S] [--skip-build]
"""

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CACHE, ROOT, TARGET, WASMTIME, WASMTIME_VERSION, answers, free_port  # noqa: E402

HELLO = ROOT / "examples/hello/target/wasm32-wasip2/release/hello.wasm"


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def run(cmd, **kw):
    log("$ " + " ".join(str(c) for c in cmd))
    subprocess.run(cmd, check=True, **kw)


def build():
    run(["cargo", "build", "--release", "-p", "verge", "-p", "native-hello"], cwd=ROOT)
    run(["cargo", "xtask", "guests"], cwd=ROOT)
    if not WASMTIME.exists():
        log(f"wasmtime-cli {WASMTIME_VERSION} is not installed; installing it into {CACHE} "
            "(about 15 minutes on two cores, once)")
        run(["cargo", "install", "wasmtime-cli", "--version", WASMTIME_VERSION, "--locked",
             "--root", str(WASMTIME.parent.parent)],
            env={**os.environ, "CARGO_TARGET_DIR": str(CACHE / "wasmtime-build")})
    if shutil.which("wrk") is None:
        sys.exit("wrk is missing: apt-get install wrk")


def peers(cache_dir):
    verge = TARGET / "release/verge"
    native = TARGET / "release/native-hello"
    return {
        "native": lambda p: [native, f"127.0.0.1:{p}"],
        "wasmtime": lambda p: [WASMTIME, "serve", "-S", "cli", "--addr", f"127.0.0.1:{p}", HELLO],
        "wasmtime-pooling": lambda p: [WASMTIME, "serve", "-S", "cli", "-O",
                                       "pooling-decommit-batch-size=64,pooling-pagemap-scan=y",
                                       "--addr", f"127.0.0.1:{p}", HELLO],
        "verge": lambda p: [verge, "up", HELLO, "--listen", f"127.0.0.1:{p}", "--cache-dir", cache_dir],
        "verge-server": lambda p: [verge, "server", "--data", Path(cache_dir) / f"server-{p}",
                                   "--listen", f"127.0.0.1:{p}", "--admin-listen", "127.0.0.1:0",
                                   "--cache-dir", cache_dir,
                                   "--admin-token-file", Path(cache_dir) / f"server-{p}.token"],
    }


def deploy_hello(port, cache_dir):
    """Deploys hello at `/` on the `verge server` peer, once it answers health."""
    deadline = time.monotonic() + 60
    while not answers(port, "/v1/health", b"ok"):
        if time.monotonic() > deadline:
            raise RuntimeError("verge server did not start")
        time.sleep(0.01)
    token = (Path(cache_dir) / f"server-{port}.token").read_text().strip()
    env = {**os.environ, "VERGE_URL": f"http://127.0.0.1:{port}", "VERGE_TOKEN": token}
    subprocess.run([TARGET / "release/verge", "deploy", HELLO, "--app", "hello"], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def start(cmd):
    proc = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc


def wait_ready(port, proc, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if answers(port):
            return
        if proc.poll() is not None:
            raise RuntimeError(f"peer exited with {proc.returncode}")
        time.sleep(0.01)
    raise RuntimeError("peer did not answer")


def to_ms(value):
    m = re.match(r"([\d.]+)(us|ms|s)", value)
    n, unit = float(m.group(1)), m.group(2)
    return n / 1000 if unit == "us" else n * 1000 if unit == "s" else n


def wrk(port, duration, threads=2, connections=64):
    out = subprocess.run(["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency",
                          f"http://127.0.0.1:{port}/"],
                         check=True, capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = to_ms(re.search(r"\s50%\s+(\S+)", out).group(1))
    p99 = to_ms(re.search(r"\s99%\s+(\S+)", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    if errors or socket_errors:
        log(f"  warning: {errors.group(0) if errors else ''} {socket_errors.group(0) if socket_errors else ''}")
    return rps, p50, p99


def startup(cmd_for, runs=10):
    """Median milliseconds from process start to the first 200, warm cache."""
    times = []
    for _ in range(runs + 1):
        port = free_port()
        t0 = time.monotonic()
        proc = start(cmd_for(port))
        try:
            while not answers(port):
                if proc.poll() is not None:
                    raise RuntimeError("peer exited")
                time.sleep(0.0005)
            times.append((time.monotonic() - t0) * 1000)
        finally:
            proc.terminate()
            proc.wait()
    return statistics.median(times[1:])  # the first run warms the cache


def measure(commands, args, cache_dir, is_server):
    """Starts every peer (deploying hello to those `is_server(name)` says are
    `verge server`s), then measures each once per round, alternating, after
    a warm-up. Returns {name: [(req/s, p50 ms, p99 ms), ...]}."""
    results = {name: [] for name in commands}
    running = {}
    try:
        for name, cmd_for in commands.items():
            port = free_port()
            proc = start(cmd_for(port))
            if is_server(name):
                deploy_hello(port, cache_dir)
            wait_ready(port, proc)
            running[name] = (port, proc)
        for r in range(args.rounds):
            for name, (port, _) in running.items():
                subprocess.run(["wrk", "-t2", "-c64", f"-d{args.warmup}s", f"http://127.0.0.1:{port}/"],
                               capture_output=True)
                rps, p50, p99 = wrk(port, args.duration)
                results[name].append((rps, p50, p99))
                log(f"round {r + 1} {name:17} {rps:10.0f} req/s  p50 {p50:6.2f} ms  p99 {p99:6.2f} ms")
    finally:
        for _, proc in running.values():
            proc.terminate()
            proc.wait()
    return results


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--skip-build", action="store_true")
    args = ap.parse_args()
    if not args.skip_build:
        build()

    cache_dir = tempfile.mkdtemp(prefix="verge-bench-cache-")
    os.chmod(cache_dir, 0o700)
    commands = peers(cache_dir)
    results = measure(commands, args, cache_dir, lambda name: name == "verge-server")

    def med(name, i):
        return statistics.median(x[i] for x in results[name])

    native, base = med("native", 0), med("wasmtime", 0)
    print(f"\nhello, wrk -t2 -c64 -d{args.duration}s, median of {args.rounds} rounds")
    print(f"{'peer':17} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'vs wasmtime':>12} {'vs native':>10}")
    for name in commands:
        rps = med(name, 0)
        print(f"{name:17} {rps:10.0f} {med(name, 1):8.2f} {med(name, 2):8.2f} {rps / base:11.2f}x {rps / native:9.0%}")

    print("\nstart-up to first response, warm compile cache, median of 10")
    for name in ["wasmtime", "verge"]:
        print(f"{name:17} {startup(commands[name]):7.1f} ms")
    shutil.rmtree(cache_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
