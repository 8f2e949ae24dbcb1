#!/usr/bin/env python3
"""Deploy to first response: `verge deploy` against `wasmtime serve` start-up, in one run.

Measured, each the median of --runs:
  verge deploy, uncached   `verge deploy hello.wasm` to a server whose compile
                           cache is empty, until GET / answers the new version
                           (upload, validation, compilation, swap, first request)
  verge deploy, cached     the same component deployed as another app: the
                           compiled artifact is reused
  verge deploy, new version  a second, different component to the same app
  verge restart            a restarted `verge server` (kill -9) until GET /
                           answers again, from its precompiled cache
  wasmtime serve          `wasmtime serve -S cli hello.wasm` 48.0.8 until GET /
                           answers, with its compile cache off (start-up with
                           compilation: the nearest thing it has to a deploy)
                           and on

Usage: bench/deploy.py [--runs N] [--skip-build]
"""

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, TARGET, WASMTIME, answers, free_port  # noqa: E402
from throughput import build  # noqa: E402

HELLO = ROOT / "examples/hello/target/wasm32-wasip2/release/hello.wasm"
OTHER = ROOT / "crates/test-programs/target/wasm32-wasip2/release/test_programs.wasm"
VERGE = TARGET / "release/verge"


def wait_answer(port, path, expect, timeout=30):
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if answers(port, path, expect):
            return
        time.sleep(0.001)
    raise RuntimeError(f"no answer on {path}")


class Server:
    def __init__(self, data):
        self.data = Path(data)
        self.port = free_port()
        self.token_file = self.data.with_suffix(".token")
        self.proc = None

    def start(self):
        started = time.perf_counter()
        self.proc = subprocess.Popen(
            [VERGE, "server", "--data", self.data, "--listen", f"127.0.0.1:{self.port}",
             "--admin-listen", "127.0.0.1:0", "--admin-token-file", self.token_file],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.perf_counter() + 60
        while not answers(self.port, "/v1/health", b"ok"):
            if self.proc.poll() is not None or time.perf_counter() > deadline:
                raise RuntimeError("verge server did not start")
            time.sleep(0.001)
        return started

    def kill(self):
        self.proc.kill()
        self.proc.wait()

    def deploy(self, wasm, app, route):
        env = {"VERGE_URL": f"http://127.0.0.1:{self.port}",
               "VERGE_TOKEN": self.token_file.read_text().strip(), "PATH": "/usr/bin:/bin"}
        subprocess.run([VERGE, "deploy", wasm, "--app", app, "--route", route], env=env,
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def verge_rounds(runs):
    uncached, cached, new_version, restart = [], [], [], []
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as tmp:
            server = Server(Path(tmp) / "data")
            server.start()
            t = time.perf_counter()
            server.deploy(HELLO, "hello", "/hello")
            wait_answer(server.port, "/hello", b"Hello, world!")
            uncached.append(time.perf_counter() - t)

            t = time.perf_counter()
            server.deploy(HELLO, "again", "/again")
            wait_answer(server.port, "/again", b"Hello, world!")
            cached.append(time.perf_counter() - t)

            t = time.perf_counter()
            server.deploy(OTHER, "hello", "/hello")
            wait_answer(server.port, "/hello", b"hello from test-programs")
            new_version.append(time.perf_counter() - t)

            server.kill()
            t = server.start()
            wait_answer(server.port, "/hello", b"hello from test-programs")
            restart.append(time.perf_counter() - t)
            server.kill()
    return uncached, cached, new_version, restart


def wasmtime_rounds(runs, cache):
    times = []
    for _ in range(runs):
        port = free_port()
        t = time.perf_counter()
        flags = [] if cache else ["-C", "cache=n"]
        proc = subprocess.Popen([WASMTIME, "serve", "-S", "cli", *flags, "--addr", f"127.0.0.1:{port}", HELLO],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_answer(port, "/", b"Hello, world!")
            times.append(time.perf_counter() - t)
        finally:
            proc.kill()
            proc.wait()
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--skip-build", action="store_true")
    args = parser.parse_args()
    if not args.skip_build:
        build()
    uncached, cached, new_version, restart = verge_rounds(args.runs)
    wasmtime = wasmtime_rounds(args.runs, cache=False)
    wasmtime_cached = wasmtime_rounds(args.runs, cache=True)
    ms = lambda xs: statistics.median(xs) * 1000  # noqa: E731
    base = ms(wasmtime)
    print(f"| measure (median of {args.runs}) | ms | vs `wasmtime serve` start-up |")
    print("|---|---:|---:|")
    for name, xs in [
        ("`verge deploy` hello, empty compile cache, to first response", uncached),
        ("`verge deploy` hello as another app (cached artifact)", cached),
        ("`verge deploy` a new version (test-programs, uncached)", new_version),
        ("`verge server` restart (kill -9) to first response", restart),
        ("`wasmtime serve -S cli -C cache=n` hello, start-up to first response", wasmtime),
        ("`wasmtime serve -S cli` hello, its compile cache warm", wasmtime_cached),
    ]:
        print(f"| {name} | {ms(xs):.1f} | {ms(xs) / base:.2f}x |")


if __name__ == "__main__":
    main()
