#!/usr/bin/env python3
"""A newcomer's first build, per cargo profile, and what each costs in throughput.

For each cargo profile given (default: `release`, what the README's first
command builds; to try a setting, add a profile to Cargo.toml and name both):
  1. `cargo build --profile P -p verge` in a fresh, empty target directory,
     timed (wall clock; crates already downloaded, as after `cargo fetch`);
  2. hello throughput of the binary it made: `verge up hello.wasm` under
     `wrk -t2 -c64 -d<duration>s`, the profiles alternating each round.
Reports build minutes and the median requests/s of each, with ratios to
the first profile. Build times are saved in WORK/builds.json, and a profile
whose binary is already in WORK is not built again (`--rebuild` forces it).

Usage: bench/newcomer.py [--profiles release,OTHER] [--work DIR] [--rounds N]
                         [--duration S] [--rebuild]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, answers, free_port  # noqa: E402

HELLO = ROOT / "examples/hello/target/wasm32-wasip2/release/hello.wasm"


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def build(profile, work, rebuild):
    """Builds `verge` with `profile` in WORK/target-PROFILE; returns (binary, seconds)."""
    target = work / f"target-{profile}"
    binary = target / profile / "verge"
    times_file = work / "builds.json"
    times = json.loads(times_file.read_text()) if times_file.exists() else {}
    if binary.exists() and profile in times and not rebuild:
        log(f"{profile}: reusing {binary} (built in {times[profile] / 60:.1f} min)")
        return binary, times[profile]
    subprocess.run(["rm", "-rf", str(target)], check=True)
    log(f"$ cargo build --profile {profile} -p verge  (CARGO_TARGET_DIR={target})")
    start = time.monotonic()
    subprocess.run(["cargo", "build", "--profile", profile, "-p", "verge"], cwd=ROOT, check=True,
                   env={**os.environ, "CARGO_TARGET_DIR": str(target),
                        "CARGO_INCREMENTAL": "0"})
    seconds = time.monotonic() - start
    times[profile] = seconds
    times_file.write_text(json.dumps(times, indent=2))
    return binary, seconds


def wrk(port, duration):
    out = subprocess.run(["wrk", "-t2", "-c64", f"-d{duration}s", f"http://127.0.0.1:{port}/"],
                         check=True, capture_output=True, text=True).stdout
    for line in out.splitlines():
        if line.startswith("Requests/sec:"):
            return float(line.split()[1])
    raise RuntimeError(f"no Requests/sec in wrk output:\n{out}")


def throughput(binary, duration, cache_dir):
    port = free_port()
    proc = subprocess.Popen([str(binary), "up", str(HELLO), "--listen", f"127.0.0.1:{port}",
                             "--cache-dir", cache_dir],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not answers(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{binary} did not serve hello")
            time.sleep(0.05)
        wrk(port, 2)  # warm-up
        return wrk(port, duration)
    finally:
        proc.terminate()
        proc.wait()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", default="release")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "verge-newcomer")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--rebuild", action="store_true")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if not HELLO.exists():
        subprocess.run(["cargo", "build", "--release", "--target", "wasm32-wasip2",
                        "--manifest-path", str(ROOT / "examples/hello/Cargo.toml")],
                       cwd=ROOT, check=True, env={k: v for k, v in os.environ.items()
                                                  if k != "CARGO_TARGET_DIR"})
    profiles = args.profiles.split(",")
    built = {p: build(p, args.work, args.rebuild) for p in profiles}
    rps = {p: [] for p in profiles}
    with tempfile.TemporaryDirectory() as cache_dir:
        for i in range(args.rounds):
            for p in profiles:
                rps[p].append(throughput(built[p][0], args.duration, cache_dir))
                log(f"round {i + 1}: {p} {rps[p][-1]:,.0f} req/s")
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((line.split(":", 1)[1].strip() for line in cpu.splitlines()
                  if line.startswith("Model name")), "unknown CPU")
    print(f"\n{model}, {subprocess.run(['nproc'], capture_output=True, text=True).stdout.strip()} cores;"
          f" hello via `verge up`, wrk -t2 -c64 -d{args.duration}s, median of {args.rounds} rounds")
    first = profiles[0]
    base_rps = statistics.median(rps[first])
    print(f"{'profile':<10} {'build':>9} {'req/s':>10} {'vs ' + first:>12}")
    for p in profiles:
        median = statistics.median(rps[p])
        print(f"{p:<10} {built[p][1] / 60:>7.1f} m {median:>10,.0f} {median / base_rps:>11.3f}x")


if __name__ == "__main__":
    main()
