#!/usr/bin/env python3
"""Density: many apps on one `verge server`.

Deploys --apps copies of the hello component as separate apps (each on its
own path prefix) through the control API, then reports: deploy time (first
and last 50, to show how it grows with the number of apps), the server's
resident memory before and after, and the latency of a request to a random
app afterwards. Not a pass/fail test.

Usage: bench/density.py [--apps N] [--skip-build]
"""

import argparse
import http.client
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, TARGET, answers, free_port  # noqa: E402

HELLO = ROOT / "examples/hello/target/wasm32-wasip2/release/hello.wasm"


def rss_mib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def call(port, method, path, token, body=None, content_type="application/json"):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Authorization": f"Bearer {token}"}
    if body is not None:
        headers["Content-Type"] = content_type
    conn.request(method, path, body=body, headers=headers)
    response = conn.getresponse()
    data = response.read()
    conn.close()
    if response.status >= 300:
        raise RuntimeError(f"{method} {path}: {response.status} {data[:200]!r}")
    return data


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--apps", type=int, default=1000)
    parser.add_argument("--skip-build", action="store_true")
    args = parser.parse_args()
    if not args.skip_build:
        subprocess.run(["cargo", "build", "--release", "-p", "verge"], cwd=ROOT, check=True)
        subprocess.run(["cargo", "xtask", "guests"], cwd=ROOT, check=True)
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        token_file = Path(tmp) / "token"
        proc = subprocess.Popen([TARGET / "release/verge", "server", "--data", Path(tmp) / "data",
                                 "--listen", f"127.0.0.1:{port}", "--admin-listen", "127.0.0.1:0",
                                 "--admin-token-file", token_file,
                                 "--max-instances", "10000"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            while not answers(port, "/v1/health", b"ok"):
                time.sleep(0.01)
            token = token_file.read_text().strip()
            idle = rss_mib(proc.pid)
            wasm = HELLO.read_bytes()
            import hashlib
            digest = hashlib.sha256(wasm).hexdigest()
            call(port, "PUT", f"/v1/blobs/{digest}", token, wasm, "application/octet-stream")
            times = []
            for i in range(args.apps):
                manifest = f'[component.hello]\nsource = "hello.wasm"\nroutes = ["/app{i}"]\n'
                body = json.dumps({"manifest": manifest, "components": {"hello": digest}})
                t = time.perf_counter()
                call(port, "POST", f"/v1/apps/app{i}/versions", token, body)
                times.append(time.perf_counter() - t)
            loaded = rss_mib(proc.pid)
            latencies = []
            for _ in range(200):
                path = f"/app{random.randrange(args.apps)}"
                t = time.perf_counter()
                assert answers(port, path, b"Hello, world!"), path
                latencies.append(time.perf_counter() - t)
            latencies.sort()
        finally:
            proc.terminate()
            proc.wait()
    ms = lambda xs: statistics.median(xs) * 1000  # noqa: E731
    print(f"| measure ({args.apps} apps of hello on one `verge server`) | value |")
    print("|---|---:|")
    print(f"| deploy through the API, median of the first 50 | {ms(times[:50]):.1f} ms |")
    print(f"| deploy through the API, median of the last 50 | {ms(times[-50:]):.1f} ms |")
    print(f"| all {args.apps} deploys | {sum(times):.1f} s |")
    print(f"| server RSS, idle with no app | {idle:.0f} MiB |")
    print(f"| server RSS with {args.apps} apps | {loaded:.0f} MiB ({(loaded - idle) * 1024 / args.apps:.0f} KiB per app) |")
    print(f"| GET a random app (new connection), median / p99 of 200 | "
          f"{ms(latencies):.2f} / {latencies[int(len(latencies) * 0.99) - 1] * 1000:.2f} ms |")


if __name__ == "__main__":
    main()
