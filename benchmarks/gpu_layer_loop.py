"""A layer's training loop on CuPy: how often the loop's CUDA graphs replay, and the step time.

Run twice over 12 steps (LSTM, H=256, B=32, T=100): holding the previous step's cache
while the next forward runs (as a training loop does), and freeing it first.

    python benchmarks/gpu_layer_loop.py
"""
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cupy as cp
import numpy as np

from unrolled.kernels import loop_cupy
from unrolled.layers import LSTM


def run(hold, steps=12, B=32, T=100, H=256):
    m = LSTM(H, H, return_sequences=False, seed=0)
    m._params = {n: {k: cp.asarray(v) for k, v in p.items()} for n, p in m._params.items()}
    X = cp.asarray(np.random.default_rng(0).standard_normal((B, T, H)), cp.float32)
    Y = cp.zeros((B, H), cp.float32)
    before = dict(loop_cupy.stats)
    cache, times = None, []
    for _ in range(steps):
        t0 = time.perf_counter()
        if not hold:
            cache = None
        out, _, cache = m.forward(X, training=True)
        g, _, _ = m.backward(cache, out - Y, need_input_grad=False)
        for k, v in m._params["l0"].items():
            v -= 1e-3 * g["l0"][k]
        cp.cuda.Device().synchronize()
        times.append(time.perf_counter() - t0)
        del out, g
    calls = {k: loop_cupy.stats[k] - before.get(k, 0) for k in ("eager", "captured", "replayed")}
    print(f"layer loop hold_cache={hold} median ms {1e3 * sorted(times)[steps // 2]:.2f}", calls)


if __name__ == "__main__":
    for hold in (True, False):
        run(hold)
