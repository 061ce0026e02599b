"""The compiled loop's per-step product on packed weights against BLAS, one thread.

Each step multiplies a block of batch rows (M = 1..32) by the recurrent weight: forward
(M, H) x (H, 4H), backward (M, 4H) x (4H, H) for an LSTM. Prints GFLOP/s of NumPy's
OpenBLAS (``np.matmul``, one thread), of the packed product
(``unrolled.kernels.microkernel``, W packed once, as the loop does) and, where PyTorch is
installed, of its MKL (``torch.mm``, one thread) for reference; writes JSON.

    python benchmarks/microkernel.py [--json benchmarks/results/microkernel.json]
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import unrolled  # noqa: E402,F401  (before NumPy: it sets OpenBLAS's thread timeout)
import numpy as np  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from unrolled.kernels import microkernel as mk  # noqa: E402


def bench(f, min_time):
    f()
    t = time.perf_counter()
    k = 0
    while time.perf_counter() - t < min_time:
        f()
        k += 1
    return (time.perf_counter() - t) / k


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=None)
    ap.add_argument("--H", type=int, nargs="+", default=[64, 128, 256, 512])
    ap.add_argument("--M", type=int, nargs="+", default=[1, 8, 16, 32])
    ap.add_argument("--min-time", type=float, default=0.2)
    args = ap.parse_args()
    if not mk.available():
        print("the packed product is off on this machine (no AVX2/AVX-512 with FMA, or "
              "UNROLLED_MICROKERNEL=0): the loop calls BLAS")
        return
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        torch = None
    rows = []
    print(f"load average {os.getloadavg()[0]:.2f}; vector bytes {mk.VECTOR_BYTES}, "
          f"tile {mk.MR} x {mk.panel(np.float32)} (float32)")
    print(f"{'H':>4} {'step':>8} {'M':>3} {'OpenBLAS':>9} {'packed':>8} {'MKL':>7}"
          f" {'packed/OpenBLAS':>16}   GFLOP/s, one thread")
    rng = np.random.default_rng(0)
    for H in args.H:
        for name, (K, N) in (("forward", (H, 4 * H)), ("backward", (4 * H, H))):
            W = rng.standard_normal((K, N)).astype(np.float32)
            Wp = mk.pack(W)
            for M in args.M:
                A = rng.standard_normal((M, K)).astype(np.float32)
                C = np.empty((M, N), np.float32)
                with threadpool_limits(1):
                    tb = bench(lambda: np.matmul(A, W, out=C), args.min_time)
                tk = bench(lambda: mk.matmul32(A, Wp, C, np.float32(0)), args.min_time)
                assert np.allclose(C, A @ W, rtol=1e-3, atol=1e-3 * np.sqrt(K))
                tt = None
                if torch is not None:
                    At, Wt, Ct = (torch.from_numpy(a) for a in (A, W, C))
                    tt = bench(lambda: torch.mm(At, Wt, out=Ct), args.min_time)
                fl = 2.0 * M * K * N
                r = {"H": H, "step": name, "M": M, "openblas_gflops": fl / tb / 1e9,
                     "packed_gflops": fl / tk / 1e9,
                     "mkl_gflops": None if tt is None else fl / tt / 1e9}
                rows.append(r)
                mkl = "-" if tt is None else f"{r['mkl_gflops']:.0f}"
                print(f"{H:>4} {name:>8} {M:>3} {r['openblas_gflops']:>9.0f} "
                      f"{r['packed_gflops']:>8.0f} {mkl:>7} {tb / tk:>16.2f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "load_end": os.getloadavg(),
                       "vector_bytes": mk.VECTOR_BYTES, "MR": mk.MR}, f, indent=1)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
