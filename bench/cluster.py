#!/usr/bin/env python3
"""The edge cluster: three `verge server` nodes on 127.0.0.1-3 sharing state
through a real `nats-server -js`, node c linked to NATS through a relay this
script can cut.

Measures, in one run:
- deploy-to-ready: `verge deploy` of hello (alternating with another
  component, so each is a new version) until all three nodes serve it;
- deploy-to-ready after heal: c's link is cut, a version is deployed, the
  link healed; the time from heal to c serving it (goal: p99 under 2 s);
- forwarding: an app placed on region eu (a and c) measured with wrk on a
  (served locally) and on b (forwarded to the nearest of a and c), with a
  native hyper server answering the same bytes as the floor;
- uplink: bytes of usage summaries the nodes sent per 1,000 requests,
  against the bytes of one JSON event per request (what shipping raw
  events would cost).

Usage: bench/cluster.py [--rounds N] [--duration S] [--skip-build]
"""

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, TARGET, free_port  # noqa: E402
from throughput import HELLO, log, run  # noqa: E402

OTHER = ROOT / "crates/test-programs/target/wasm32-wasip2/release/test_programs.wasm"


class Relay:
    """A TCP relay to `target` whose link can be cut and healed."""

    def __init__(self, target):
        self.target = target
        self.cut_now = False
        self.conns = []
        self.lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            client, _ = self.sock.accept()
            if self.cut_now:
                client.close()
                continue
            try:
                server = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                client.close()
                continue
            with self.lock:
                self.conns += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self.pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def pipe(a, b):
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self):
        self.cut_now = True
        with self.lock:
            for s in self.conns:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self.conns = []

    def heal(self):
        self.cut_now = False


def version_of(port, ip, path="/"):
    """The x-verge-version a node answers with, or None."""
    try:
        with socket.create_connection((ip, port), timeout=1) as s:
            s.sendall(f"GET {path} HTTP/1.0\r\nHost: bench\r\n\r\n".encode())
            data = b""
            while chunk := s.recv(65536):
                data += chunk
    except OSError:
        return None
    for line in data.split(b"\r\n\r\n")[0].split(b"\r\n"):
        if line.lower().startswith(b"x-verge-version:"):
            return line.split(b":", 1)[1].strip().decode()
    return None


class Cluster:
    def __init__(self, workdir):
        self.dir = Path(workdir)
        self.nats_port = free_port()
        self.nats = subprocess.Popen(
            ["nats-server", "-js", "-a", "127.0.0.1", "-p", str(self.nats_port), "-sd", str(self.dir / "nats")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.nats_port), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline:
                    sys.exit("nats-server did not start (apt-get install nats-server)")
                time.sleep(0.05)
        self.relay = Relay(self.nats_port)
        self.nodes = {}
        key = os.urandom(32).hex()
        for name, ip, labels, url in [
            ("a", "127.0.0.1", "region=eu", f"nats://127.0.0.1:{self.nats_port}"),
            ("b", "127.0.0.2", "region=us", f"nats://127.0.0.1:{self.nats_port}"),
            ("c", "127.0.0.3", "region=eu", f"nats://127.0.0.1:{self.relay.port}"),
        ]:
            port = free_port()
            proc = subprocess.Popen(
                [TARGET / "release/verge", "server", "--data", self.dir / name, "--listen", f"{ip}:{port}",
                 "--admin-listen", f"{ip}:0", "--admin-token-file", self.dir / f"{name}.token",
                 "--cluster", url, "--node-name", name, "--labels", labels, "--heartbeat", "300ms"],
                env={**os.environ, "VERGE_MASTER_KEY": key, "VERGE_LOG": "warn"},
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            for line in proc.stdout:
                if line.startswith("Serving "):
                    break
            self.nodes[name] = (ip, port, proc)
        self.token = (self.dir / "a.token").read_text().strip()

    def cli(self, node, *args, check=True):
        ip, port, _ = self.nodes[node]
        env = {**os.environ, "VERGE_URL": f"http://{ip}:{port}", "VERGE_TOKEN": self.token,
               "VERGE_CONFIG_DIR": str(self.dir / "cli"), "VERGE_LOG": "warn"}
        out = subprocess.run([TARGET / "release/verge", *args], env=env, capture_output=True, text=True)
        if check and out.returncode != 0:
            sys.exit(f"verge {' '.join(map(str, args))} failed:\n{out.stdout}\n{out.stderr}")
        return out

    def statuses(self, node):
        nodes = json.loads(self.cli(node, "nodes", "--json").stdout)["nodes"]
        return {n["name"]: n for n in nodes}

    def stop(self):
        for _, _, proc in self.nodes.values():
            proc.send_signal(signal.SIGTERM)
        for _, _, proc in self.nodes.values():
            proc.wait()
        self.nats.terminate()
        self.nats.wait()


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--skip-build", action="store_true")
    args = ap.parse_args()
    if not args.skip_build:
        run(["cargo", "build", "--release", "-p", "verge", "-p", "native-hello"], cwd=ROOT)
        run(["cargo", "xtask", "guests"], cwd=ROOT)
    if shutil.which("wrk") is None or shutil.which("nats-server") is None:
        sys.exit("needs wrk and nats-server: apt-get install wrk nats-server")

    work = tempfile.mkdtemp(prefix="verge-bench-cluster-")
    cluster = Cluster(work)
    try:
        # Deploy-to-ready on three nodes (the CLI returns when all serve it).
        ready = []
        for r in range(args.rounds):
            wasm = OTHER if r % 2 == 0 else HELLO
            start = time.perf_counter()
            cluster.cli("a", "deploy", wasm, "--app", "site", "--route", "/")
            ready.append(time.perf_counter() - start)
        log(f"deploy-to-ready x{len(ready)}: p50 {pct(ready, 50) * 1000:.0f} ms")

        # After heal: c misses a deploy, then catches up.
        c_ip, c_port, _ = cluster.nodes["c"]
        healed = []
        for r in range(args.rounds):
            cluster.relay.cut()
            while cluster.statuses("a")["c"]["status"] != "down":
                time.sleep(0.05)
            wasm = OTHER if (args.rounds + r) % 2 == 0 else HELLO
            out = cluster.cli("a", "deploy", wasm, "--app", "site", "--route", "/")
            version = next(w for w in out.stdout.split() if w.startswith("v") and w[1:].isdigit())
            start = time.perf_counter()
            cluster.relay.heal()
            while version_of(c_port, c_ip) != version:
                if time.perf_counter() - start > 60:
                    sys.exit("c never caught up")
                time.sleep(0.005)
            healed.append(time.perf_counter() - start)
            while cluster.statuses("a")["c"]["status"] != "up":
                time.sleep(0.05)
        log(f"heal-to-ready x{len(healed)}: p50 {pct(healed, 50) * 1000:.0f} ms")

        # Forwarding: placed on eu (a, c); b forwards.
        app = Path(work) / "geo"
        app.mkdir()
        (app / "verge.toml").write_text(
            f'name = "geo"\n[component.web]\nsource = "{HELLO}"\nroutes = ["/geo"]\n\n'
            '[placement]\nregion = ["eu"]\n')
        subprocess.run([TARGET / "release/verge", "deploy"], cwd=app, check=True, capture_output=True,
                       env={**os.environ, "VERGE_URL": f"http://127.0.0.1:{cluster.nodes['a'][1]}",
                            "VERGE_TOKEN": cluster.token, "VERGE_CONFIG_DIR": str(Path(work) / "cli")})
        native_port = free_port()
        native = subprocess.Popen([TARGET / "release/native-hello", f"127.0.0.1:{native_port}"])
        time.sleep(2)  # round trips measured
        rows = {}
        targets = {
            "native hyper (floor)": ("127.0.0.1", native_port, "/"),
            "local (on a)": (*cluster.nodes["a"][:2], "/geo"),
            "forwarded (b to a or c)": (*cluster.nodes["b"][:2], "/geo"),
        }
        for name in targets:
            rows[name] = []
        for _ in range(3):
            for name, (ip, port, path) in targets.items():
                subprocess.run(["wrk", "-t2", "-c64", "-d2s", f"http://{ip}:{port}{path}"], capture_output=True)
                rows[name].append(wrk_at(ip, port, path, args.duration))
        native.terminate()
        native.wait()
        requests_served = sum(sum(int(r[3]) for r in rows[name]) for name in list(targets)[1:])
        time.sleep(1)

        # Uplink: what a and c sent (b forwarded; its usage is only its own).
        deadline = time.time() + 120
        while True:
            statuses = cluster.statuses("a")
            usage = json.loads(cluster.cli("b", "usage", "--app", "geo", "--by", "minute", "--format", "json",
                                           "--since", "1h").stdout)
            counted = sum(r["requests"] for r in usage)
            if counted >= requests_served * 0.99 or time.time() > deadline:
                break
            time.sleep(2)
        sent = sum(n.get("uplink_bytes", 0) for n in statuses.values())
    finally:
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)

    event = json.dumps({
        "time": "2026-11-26T23:59:59.123456Z", "node": "a", "tenant": "default", "app": "geo",
        "version": "v1", "status": 200, "wall_us": 812, "cpu_us": 95, "peak_memory": 1114112,
        "request_bytes": 78, "response_bytes": 121, "kv_ops": 0, "outbound_calls": 0,
        "ai_tokens": 0, "cold_start": False, "rejected": None}, separators=(",", ":"))

    print("\n3 nodes on 127.0.0.1-3, NATS JetStream (nats-server 2.9, one server)")
    print(f"deploy-to-ready on 3 nodes:   p50 {pct(ready, 50) * 1000:6.0f} ms  p99 {pct(ready, 99) * 1000:6.0f} ms"
          f"  (n={len(ready)}, verge deploy start to every node serving)")
    print(f"heal-to-ready on the cut node: p50 {pct(healed, 50) * 1000:6.0f} ms  p99 "
          f"{pct(healed, 99) * 1000:6.0f} ms  (n={len(healed)}; goal p99 < 2000 ms)")
    print(f"\nforwarding, wrk -t2 -c64 -d{args.duration}s, median of 3")
    print(f"{'peer':26} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8}")
    med = {name: [statistics.median(x[i] for x in r) for i in range(3)] for name, r in rows.items()}
    for name, (rps, p50, p99) in med.items():
        print(f"{name:26} {rps:9.0f} {p50:8.2f} {p99:8.2f}")
    local, fwd = med["local (on a)"], med["forwarded (b to a or c)"]
    print(f"forwarding: {fwd[0] / local[0]:.2f}x the local req/s, +{fwd[1] - local[1]:.2f} ms at p50")
    print(f"\nuplink: {sent} bytes of summaries for {counted} requests = {sent / max(counted, 1) * 1000:.1f} "
          f"bytes per 1,000 requests; raw events would be {len(event) * 1000} bytes per 1,000 "
          f"({len(event) * 1000 / max(sent / max(counted, 1) * 1000, 1e-9):.0f}x more)")


def wrk_at(ip, port, path, duration):
    out = subprocess.run(["wrk", "-t2", "-c64", f"-d{duration}s", "--latency", f"http://{ip}:{port}{path}"],
                         capture_output=True, text=True).stdout
    rps = float(next(line.split()[1] for line in out.splitlines() if line.startswith("Requests/sec")))
    lat = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] in ("50%", "99%"):
            v = parts[1]
            lat[parts[0]] = float(v[:-2]) / 1000 if v.endswith("us") else float(v[:-2]) if v.endswith("ms") \
                else float(v[:-1]) * 1000
    total = next(int(line.split()[0]) for line in out.splitlines() if "requests in" in line)
    return rps, lat["50%"], lat["99%"], total


if __name__ == "__main__":
    main()
