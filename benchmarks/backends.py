"""The loop's backends against each other: one training step (forward + BPTT, B=32, T=100,
float32, one BLAS thread, `reuse_freed_memory()` on), median ms, all in one process.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/backends.py

Prints a markdown table (the one in docs/performance.md).
"""
import os
import sys
import time
from pathlib import Path

os.environ["OPENBLAS_NUM_THREADS"] = "1"  # before NumPy loads
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from unrolled import kernels
from unrolled.backend import reuse_freed_memory
from unrolled.layers import GRU, LSTM, Elman


def median_ms(fn, reps=7):
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[reps // 2] * 1e3


def main():
    reuse_freed_memory()
    print("| cell, H | reference | numpy | numba, step by step | numba, compiled loop |")
    print("|---|---:|---:|---:|---:|")
    for name, cls in (("LSTM", LSTM), ("GRU", GRU), ("Elman", Elman)):
        for H in (64, 256):
            m = cls(H, H, return_sequences=False, seed=0)
            X = np.random.default_rng(0).standard_normal((32, 100, H)).astype(np.float32)

            def step(m=m, X=X):
                out, _, c = m.forward(X, training=True)
                m.backward(c, out, need_input_grad=False)
            row = []
            for be, compiled in (("reference", "1"), ("numpy", "1"), ("numba", "0"),
                                 ("numba", "1")):
                os.environ["UNROLLED_COMPILED_LOOP"] = compiled
                with kernels.backend(be):
                    row.append(median_ms(step))
            print(f"| {name} {H} | " + " | ".join(f"{x:.1f}" for x in row) + " |", flush=True)


if __name__ == "__main__":
    main()
