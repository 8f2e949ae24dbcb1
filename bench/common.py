"""Helpers shared by the benchmark scripts: paths, ports, readiness checks."""

import os
import socket
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WASMTIME_VERSION = "48.0.8"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "verge-bench"
WASMTIME = Path(os.environ.get("VERGE_BENCH_WASMTIME", CACHE / f"wasmtime-{WASMTIME_VERSION}/bin/wasmtime"))
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answers(port, path="/", expect=b"Hello, world!"):
    """Whether a GET answers (200 and containing `expect`, or anything if None)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
            if expect is None:
                return data.startswith(b"HTTP/1.1 ")
            return data.startswith(b"HTTP/1.1 200") and expect in data
    except OSError:
        return False
