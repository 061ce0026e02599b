"""A layer training loop on CuPy: how often the CUDA graphs of the loop replay, and the step time
(holding the previous step's cache while the next runs, as a training loop does, or not)."""
import time, cupy as cp, numpy as np
from unrolled.layers import LSTM
from unrolled.kernels import loop_cupy
for hold in (True, False):
    m = LSTM(256, 256, return_sequences=False, seed=0)
    m._params = {n: {k: cp.asarray(v) for k, v in p.items()} for n, p in m._params.items()}
    X = cp.asarray(np.random.randn(32, 100, 256).astype(np.float32)); Y = cp.zeros((32, 256), cp.float32)
    s0 = dict(loop_cupy.stats); cache = None; ts = []
    for it in range(12):
        t = time.perf_counter()
        if not hold:
            cache = None
        out, _, c = m.forward(X, training=True)
        cache = c
        g, _, _ = m.backward(cache, out - Y, need_input_grad=False)
        for k, v in m._params["l0"].items(): v -= 1e-3 * g["l0"][k]
        cp.cuda.Device().synchronize(); ts.append(time.perf_counter() - t)
        del out, c, g
    print("layer loop hold_cache=%s median ms %.2f" % (hold, 1e3 * sorted(ts)[6]), {k: loop_cupy.stats[k] - s0.get(k, 0) for k in ("eager", "captured", "replayed")})
