#!/usr/bin/env python3
"""Differential check: the same components answer the same on `wasmtime serve`
48.0.8 and on `verge up` (status, content-type, body), for the Rust test
programs and the Python guest. Uses the wasmtime-cli that bench/throughput.py
installs; run `cargo xtask guests` and build verge first (bench/throughput.py does).

Usage: bench/compat.py
"""

import http.client
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, TARGET, WASMTIME, free_port, answers  # noqa: E402

TP = ROOT / "crates/test-programs/target/wasm32-wasip2/release/test_programs.wasm"
PY = ROOT / "crates/test-programs/python/target/app.wasm"

# (method, path, body) for the Rust test programs; every one must match.
CASES = [
    ("GET", "/", None),
    ("GET", "/status?code=418", None),
    ("GET", "/status?code=204", None),
    ("POST", "/echo", os.urandom(3 * 1024 * 1024)),
    ("POST", "/consume", b"x" * 100_000),
    ("GET", "/big?size=16777216", None),
    ("GET", "/big?size=0", None),
    ("GET", "/env", None),
    ("GET", "/fs", None),
    ("GET", "/stdio", None),
]


def start(cmd, port):
    proc = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not answers(port, path="/", expect=None):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{cmd[0]} did not start")
        time.sleep(0.05)
    return proc


def fetch(port, method, path, body):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request(method, path, body=body, headers={"content-type": "application/octet-stream"} if body else {})
    r = conn.getresponse()
    data = r.read()
    conn.close()
    # `wasmtime serve` gives each instance an INSTANCE_ID variable of its own;
    # it is not part of the guest contract, so it is left out of the comparison.
    data = re.sub(rb"INSTANCE_ID=\d+(\n|,)?", b"", data)
    return r.status, r.getheader("content-type"), data


def compare(wasm, cases):
    cache = tempfile.mkdtemp(prefix="verge-compat-")
    os.chmod(cache, 0o700)
    wp, vp = free_port(), free_port()
    w = start([WASMTIME, "serve", "-S", "cli", "--addr", f"127.0.0.1:{wp}", wasm], wp)
    v = start([TARGET / "release/verge", "up", wasm, "--listen", f"127.0.0.1:{vp}", "--cache-dir", cache], vp)
    failures = 0
    try:
        for method, path, body in cases:
            a, b = fetch(wp, method, path, body), fetch(vp, method, path, body)
            same = a == b
            failures += not same
            size = len(a[2])
            print(f"{'same' if same else 'DIFF'}  {method:4} {path:24} status {a[0]}/{b[0]} "
                  f"type {a[1]}/{b[1]} body {size}/{len(b[2])} bytes")
    finally:
        w.terminate()
        v.terminate()
        w.wait()
        v.wait()
    return failures


def main():
    failures = compare(TP, CASES)
    failures += compare(PY, [("GET", "/py?x=1", None)])
    if failures:
        sys.exit(f"{failures} response(s) differ")
    print("all responses identical")


if __name__ == "__main__":
    main()
