"""unrolled on CuPy against PyTorch's cuDNN RNNs on one GPU, side by side.

    python benchmarks/gpu.py [--json benchmarks/results/gpu.json]

Training step (forward over T + squared error on the last output + BPTT + SGD) and
inference, float32, one layer, D = H; median of repeated runs after a warm-up, with the
device synchronised around each. Runs the unrolled side on each backend given
(``--backends cupy,cupy_eager,numpy``: fused kernels with the loop replayed as CUDA
graphs, the same kernels launched step by step from Python, or plain CuPy ufuncs).
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def timeit(fn, sync, reps):
    for _ in range(3):  # warm-up: compilation; CUDA graphs are recorded on the second call
        fn()
    sync()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync()
        ts.append(time.perf_counter() - t0)
    ts.sort()
    return ts[len(ts) // 2]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", default=None)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--backends", default="cupy,cupy_eager,numpy")
    ap.add_argument("--cells", default="lstm,gru")
    args = ap.parse_args()
    import cupy as cp
    import numpy as np
    import torch

    from unrolled import kernels, unroll
    from unrolled.layers import GRU, LSTM, Elman

    dev = torch.device("cuda")
    rows = []
    for cell in args.cells.split(","):
        for B, T, H in ((32, 100, 256), (32, 100, 512), (256, 100, 256), (256, 100, 512),
                        (32, 100, 128)):
            for kind in ("train", "infer"):
                row = {"cell": cell, "kind": kind, "B": B, "T": T, "H": H}
                # the time loop itself (what a layer runs per layer and direction)
                cls = {"lstm": LSTM, "gru": GRU, "elman": Elman}[cell]
                m = cls(H, H, seed=0)
                cellobj = m._cell
                params = {k: cp.asarray(v) for k, v in m._params["l0"].items()}
                Xt = cp.asarray(np.random.default_rng(0).standard_normal((T, B, H)), cp.float32)
                Y = cp.zeros((B, H), cp.float32)
                s0 = tuple(cp.zeros((B, H), cp.float32) for _ in m.state_sizes)

                def step(kind=kind, cellobj=cellobj, params=params, Xt=Xt, s0=s0, Y=Y):
                    p = cellobj.prepare(params, cp)
                    tp = unroll.forward(cellobj, p, Xt, s0, cp, keep_tape=kind == "train")
                    if kind == "infer":
                        return
                    d_final = (tp.states[0][-1] - Y,) + (None,) * (len(s0) - 1)
                    g, _, _ = unroll.backward(cellobj, p, tp, cp, None, d_final)
                    for k, v in params.items():
                        v -= 1e-3 * g[k]
                for be in args.backends.split(","):
                    # "cupy": fused kernels, the loop replayed as CUDA graphs; "cupy_eager":
                    # the same launches from Python each step; "numpy": CuPy ufuncs
                    os.environ["UNROLLED_CUDA_GRAPHS"] = "0" if be == "cupy_eager" else "1"
                    with kernels.backend(be.split("_")[0]):
                        row[f"unrolled_{be}_ms"] = timeit(
                            step, cp.cuda.Device().synchronize, args.reps) * 1e3
                os.environ["UNROLLED_CUDA_GRAPHS"] = "1"
                tcls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "elman": torch.nn.RNN}[cell]
                tm = tcls(H, H, batch_first=True).to(dev)
                tX, tY = torch.randn(B, T, H, device=dev), torch.zeros(B, H, device=dev)

                def tstep(kind=kind, tm=tm, tX=tX, tY=tY):
                    if kind == "infer":
                        with torch.inference_mode():
                            tm(tX)
                        return
                    out, _ = tm(tX)
                    loss = 0.5 * ((out[:, -1] - tY) ** 2).sum()
                    loss.backward()
                    with torch.no_grad():
                        for p in tm.parameters():
                            p -= 1e-3 * p.grad
                            p.grad = None
                row["cudnn_ms"] = timeit(tstep, torch.cuda.synchronize, args.reps) * 1e3
                rows.append(row)
                print(json.dumps(row), flush=True)
    meta = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
            "cudnn": torch.backends.cudnn.version(), "cupy": cp.__version__,
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
            "tf32_cudnn": torch.backends.cudnn.allow_tf32}
    try:
        from unrolled.kernels import loop_cupy

        meta["graph_calls"] = dict(loop_cupy.stats)
    except ImportError:
        pass
    print(json.dumps(meta))
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
