"""The compiled loop's steps on one BLAS thread (today's rule) against BLAS's default
thread count, alternating in one process (an LSTM training step, float32).

    python benchmarks/loop_blas_threads.py [--json benchmarks/results/loop_blas_threads.json]

Prints (min, median) ms per configuration and the load average; never fails for a slow
machine.
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

import unrolled.unroll as U  # noqa: E402
from unrolled.backend import reuse_freed_memory  # noqa: E402
from unrolled.layers import LSTM  # noqa: E402


class _BlasAsIs:  # the loop without the one-thread rule
    def __init__(self, path):
        pass

    def __enter__(self):
        pass

    def __exit__(self, *a):
        pass


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=8)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    reuse_freed_memory()
    rule = U._one_blas_thread
    rows = []
    for B, T, H in [(1, 300, 128), (8, 100, 256)]:
        m = LSTM(H, H, dtype="float32", seed=0)
        X = np.random.default_rng(0).standard_normal((B, T, H)).astype(np.float32)

        def step():
            o, _, c = m.forward(X, training=True)
            m.backward(c, np.ones_like(o))
        res = {"one BLAS thread": [], "BLAS default": []}
        for _ in range(a.reps):
            for k, cls in (("one BLAS thread", rule), ("BLAS default", _BlasAsIs)):
                U._one_blas_thread = cls
                step()
                t0 = time.perf_counter()
                step()
                res[k].append(time.perf_counter() - t0)
        U._one_blas_thread = rule
        row = {"B": B, "T": T, "H": H, "load": os.getloadavg()[0],
               **{k: {"min_ms": min(v) * 1e3, "median_ms": float(np.median(v)) * 1e3}
                  for k, v in res.items()}}
        rows.append(row)
        print(json.dumps(row), flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
