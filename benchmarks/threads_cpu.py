"""The compiled loop on 1 thread against its row blocks on N threads, in CPU time.

The process's CPU time of one step (forward, or forward + BPTT) barely depends on other
work on the machine, where wall time does: on a shared machine it tells what cutting the
batch into row blocks costs, and 2·CPU₁/CPU₂ estimates the speed-up on idle cores for a
CPU-bound loop. Wall times (best of the repetitions) are printed beside it.

    python benchmarks/threads_cpu.py --threads 2 --json benchmarks/results/threads_cpu.json

Prints a table and writes JSON; never fails for a slow machine.
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from unrolled import settings, unroll  # noqa: E402
from unrolled.backend import reuse_freed_memory  # noqa: E402
from unrolled.layers import GRU, LSTM, Elman  # noqa: E402

CASES = [("lstm", 64, 32, True), ("lstm", 256, 32, True), ("lstm", 256, 64, True),
         ("lstm", 256, 32, False), ("lstm", 128, 32, False), ("gru", 256, 32, True),
         ("elman", 256, 32, True)]


def measure(cell, H, B, train, threads, reps, T=100):
    cls = {"lstm": LSTM, "gru": GRU, "elman": Elman}[cell]
    m = cls(H, H, dtype="float32", seed=0)
    X = np.random.default_rng(0).standard_normal((B, T, H)).astype(np.float32)
    out = {}
    for th in (1, threads):
        settings.threads = th

        def step():
            o, _, c = m.forward(X, training=train)
            if train:
                m.backward(c, np.ones_like(o))

        step()  # compile, first allocations
        cpu, wall = [], []
        for _ in range(reps):
            c0, w0 = time.process_time(), time.perf_counter()
            step()
            cpu.append(time.process_time() - c0)
            wall.append(time.perf_counter() - w0)
        out[th] = {"cpu_ms": float(np.median(cpu)) * 1e3, "best_wall_ms": min(wall) * 1e3,
                   "blocks": unroll.row_blocks(B, th)}
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    reuse_freed_memory()
    load0 = os.getloadavg()
    rows = []
    print(f"load average {load0[0]:.2f}; loop threads 1 against {a.threads}")
    print("| cell | work | B | H | CPU ms, 1 | CPU ms, N | extra | est. idle speed-up "
          "| best wall 1 | best wall N |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for cell, H, B, train in CASES:
        r = measure(cell, H, B, train, a.threads, a.reps)
        c1, cn = r[1]["cpu_ms"], r[a.threads]["cpu_ms"]
        rows.append({"cell": cell, "H": H, "B": B, "train": train, "one": r[1],
                     "many": r[a.threads], "estimated_speedup": a.threads * c1 / cn})
        print(f"| {cell} | {'train' if train else 'infer'} | {B} | {H} | {c1:.1f} | {cn:.1f} "
              f"| {100 * (cn / c1 - 1):.0f} % | {a.threads * c1 / cn:.2f} "
              f"| {r[1]['best_wall_ms']:.1f} | {r[a.threads]['best_wall_ms']:.1f} |", flush=True)
    load1 = os.getloadavg()
    print(f"load average at the end {load1[0]:.2f}")
    if a.json:
        Path(a.json).write_text(json.dumps({"threads": a.threads, "load_before": load0,
                                            "load_after": load1, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
