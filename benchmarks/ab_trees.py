"""Two checkouts of unrolled side by side: the same training steps, interleaved rounds.

    python benchmarks/ab_trees.py OLD_TREE NEW_TREE [--json out.json]

Each tree runs in its own worker process (``PYTHONPATH=TREE``); rounds alternate
(old, new, new, old, ...) and the median per case is reported with the ratio
old / new (above 1: the new tree is faster). A training step is a layer's forward over
T steps and its full BPTT (float32, D = H, one layer, gradient of ones on every output),
through the public layer API. Used to check that an engine change costs no speed.
"""
import argparse
import json
import os
import subprocess
import sys
import time

CASES = [("lstm", 32, 100, 64), ("lstm", 32, 100, 256), ("gru", 32, 100, 64),
         ("gru", 32, 100, 256), ("elman", 32, 100, 64), ("elman", 32, 100, 256),
         ("lstm", 1, 1000, 64)]


def worker(reps):
    import numpy as np

    from unrolled.backend import limit_blas_threads, reuse_freed_memory
    from unrolled.layers import GRU, LSTM, Elman

    limit_blas_threads()
    reuse_freed_memory()
    kinds = {"lstm": LSTM, "gru": GRU, "elman": Elman}
    out = {}
    for cell, B, T, H in CASES:
        m = kinds[cell](H, H, seed=0)
        X = np.random.default_rng(0).standard_normal((B, T, H)).astype("float32")
        ones = np.ones((B, T, H), "float32")

        def one():
            y, _, cache = m.forward(X)
            m.backward(cache, ones)
        one()
        one()  # compiled and warm
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            one()
            times.append(time.perf_counter() - t)
        out[f"{cell} B={B} T={T} H={H}"] = float(np.median(times))
    print(json.dumps(out))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--json", default=None)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        return worker(a.reps)
    res = {"old": [], "new": []}
    order = []
    for r in range(a.rounds):
        order += ["old", "new"] if r % 2 == 0 else ["new", "old"]
    for side in order:
        env = {**os.environ, "PYTHONPATH": os.path.abspath(getattr(a, side)),
               "UNROLLED_THREADS": os.environ.get("UNROLLED_THREADS", "1")}
        p = subprocess.run([sys.executable, os.path.abspath(__file__), a.old, a.new,
                            "--worker", "--reps", str(a.reps)], env=env, capture_output=True,
                           text=True, cwd="/")
        if p.returncode:
            sys.exit(f"{side} worker failed:\n{p.stderr[-2000:]}")
        res[side].append(json.loads(p.stdout.strip().splitlines()[-1]))
    import statistics

    rows = []
    print(f"{'case':28s} {'old ms':>8s} {'new ms':>8s} {'old/new':>8s}")
    for case in res["old"][0]:
        o = statistics.median(r[case] for r in res["old"]) * 1e3
        n = statistics.median(r[case] for r in res["new"]) * 1e3
        rows.append({"case": case, "old_ms": o, "new_ms": n, "ratio": o / n})
        print(f"{case:28s} {o:8.2f} {n:8.2f} {o / n:8.2f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"old": a.old, "new": a.new, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
