#!/usr/bin/env python3
"""What metering costs: hello throughput on `verge server` with metering on
(the default: usage per minute, Prometheus metrics) and off (the hidden
`--no-metering`), with `wasmtime serve` as the common peer, in one run.

Each round measures every peer once, alternating, with
`wrk -t2 -c64 -d<duration>s --latency` after a short warm-up; medians over
the rounds are reported with ratios. The goal: metering costs under 3% of
requests per second. With `--traced`, a third server exports every request
as a trace to a local sink (a tiny HTTP listener), to show what tracing
costs when it is on.

Usage: bench/metering.py [--rounds N] [--duration S] [--skip-build] [--traced]
"""

import argparse
import http.server
import os
import shutil
import statistics
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import TARGET, WASMTIME  # noqa: E402
from throughput import HELLO, build, measure  # noqa: E402


class Sink(http.server.BaseHTTPRequestHandler):
    """Accepts OTLP posts and drops them."""

    protocol_version = "HTTP/1.1"

    def do_POST(self):  # noqa: N802 (the handler API's name)
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *_):
        pass


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--skip-build", action="store_true")
    ap.add_argument("--traced", action="store_true")
    args = ap.parse_args()
    if not args.skip_build:
        build()

    cache_dir = tempfile.mkdtemp(prefix="verge-bench-metering-")
    os.chmod(cache_dir, 0o700)
    verge = TARGET / "release/verge"

    def server(extra):
        return lambda p: [verge, "server", "--data", Path(cache_dir) / f"server-{p}",
                          "--listen", f"127.0.0.1:{p}", "--admin-listen", "127.0.0.1:0",
                          "--cache-dir", cache_dir, "--admin-token-file",
                          Path(cache_dir) / f"server-{p}.token", *extra]

    commands = {
        "wasmtime": lambda p: [WASMTIME, "serve", "-S", "cli", "--addr", f"127.0.0.1:{p}", HELLO],
        "server-metered": server([]),
        "server-unmetered": server(["--no-metering"]),
    }
    sink = None
    if args.traced:
        sink = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Sink)
        threading.Thread(target=sink.serve_forever, daemon=True).start()
        endpoint = f"http://127.0.0.1:{sink.server_address[1]}/v1/traces"
        commands["server-traced"] = server(["--otlp-endpoint", endpoint])

    try:
        results = measure(commands, args, cache_dir, lambda name: name.startswith("server"))
    finally:
        if sink:
            sink.shutdown()
        shutil.rmtree(cache_dir, ignore_errors=True)

    def med(name, i):
        return statistics.median(x[i] for x in results[name])

    base, off = med("wasmtime", 0), med("server-unmetered", 0)
    print(f"\nhello, wrk -t2 -c64 -d{args.duration}s, median of {args.rounds} rounds")
    print(f"{'peer':17} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'vs wasmtime':>12} {'vs unmetered':>13}")
    for name in commands:
        rps = med(name, 0)
        print(f"{name:17} {rps:10.0f} {med(name, 1):8.2f} {med(name, 2):8.2f} {rps / base:11.2f}x "
              f"{rps / off - 1:+12.1%}")


if __name__ == "__main__":
    main()
