"""Training-step time of every registered cell against the LSTM, side by side in one run.

    python benchmarks/cells.py                       # B=32, T=100 and 1000, H=128 and 256
    python benchmarks/cells.py --T 1000 --H 256 --json out.json
    python benchmarks/cells.py --options --T 100 --H 128   # the LSTM's options instead
    python benchmarks/cells.py --T 100 1000 10000 --H 256 --rounds 2 --torch \
        --cells lstm,mingru,minlstm,qrnn,sru,lru --plot docs/img/cells_speed.png
    python benchmarks/cells.py --quick                # a smoke run (small, one round)

A training step is the layer's forward over T steps and its full BPTT (float32, D = H,
one layer, gradient of ones on every output) through the public API, on the default
backend (the compiled loop where the cell has one). Cells are timed in interleaved
rounds (every cell once per round) and the median is reported, with the ratio
LSTM time / cell time (above 1: faster than the LSTM). BLAS runs on one thread.
``--torch`` adds PyTorch's ``nn.LSTM`` (one thread, float32, the same step: forward and
backward of the sum of outputs weighted by ones). The loops are compiled before timing
on a short sequence. ``--plot`` draws ms per step against T (log-log), one line per
cell, for the first H.
"""
import argparse
import json
import statistics
import time

import numpy as np


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--B", type=int, default=32)
    ap.add_argument("--T", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--H", type=int, nargs="+", default=[128, 256])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--cells", default=None, help="comma-separated registry names")
    ap.add_argument("--options", action="store_true",
                    help="time the LSTM's options (dropouts, zoneout, peepholes, ...)")
    ap.add_argument("--torch", action="store_true", help="add PyTorch's nn.LSTM")
    ap.add_argument("--plot", default=None, help="PNG: ms per step against T (log-log)")
    ap.add_argument("--quick", action="store_true", help="T=50, 200; H=64; one round")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    if a.quick:
        a.T, a.H, a.rounds = [50, 200], [64], 1
    import os

    from unrolled import cells, explain
    from unrolled.backend import limit_blas_threads, reuse_freed_memory
    from unrolled.layers.recurrent import layer_class

    limit_blas_threads()
    reuse_freed_memory()
    names = a.cells.split(",") if a.cells else [n for n in sorted(cells.REGISTRY)
                                                 if n != "jordan"]
    if "lstm" not in names:
        names.insert(0, "lstm")
    rows = []
    for T in a.T:
        for H in a.H:
            X = np.random.default_rng(0).standard_normal((a.B, T, H)).astype("float32")
            ones = {}
            if a.options:
                from unrolled.layers import LSTM

                opts = {"lstm": {}, "recurrent_dropout=0.25": {"recurrent_dropout": 0.25},
                        "input_dropout=0.25": {"input_dropout": 0.25},
                        "weight_drop=0.5": {"weight_drop": 0.5},
                        "zoneout=0.1": {"zoneout": 0.1}, "peepholes": {"peepholes": True},
                        "layer_norm": {"layer_norm": True},
                        f"proj_size={H // 2}": {"proj_size": H // 2}}
                names = list(opts)
                layers = {n: LSTM(H, H, seed=0, **kw) for n, kw in opts.items()}
            else:
                layers = {n: layer_class(n)(H, H, seed=0) for n in names}
            if a.torch and not a.options:
                layers["torch nn.LSTM"] = TorchLSTM(H)
            times = {n: [] for n in layers}

            def step(m):
                out, _, c = m.forward(X, training=True)
                if out.shape not in ones:
                    ones[out.shape] = np.ones(out.shape, "float32")
                m.backward(c, ones[out.shape])
            Xfull, X = X, X[:, :min(T, 50)]
            for m in layers.values():
                step(m)  # compiled, warm (on a short sequence)
            X = Xfull
            load = os.getloadavg()
            for _ in range(a.rounds):
                for n, m in layers.items():
                    t = time.perf_counter()
                    step(m)
                    times[n].append(time.perf_counter() - t)
            base = statistics.median(times["lstm"])
            print(f"\nB={a.B} T={T} H={H}   (ratio = LSTM time / cell time)")
            print(f"{'cell':24s} {'ms':>9s} {'ratio':>7s}  loop")
            for n in layers:
                ms = statistics.median(times[n]) * 1e3
                if isinstance(layers[n], TorchLSTM):
                    loop = f"PyTorch {layers[n].version}, 1 thread"
                else:
                    path = explain(layers[n], a.B, T).splitlines()[-1].split(": ", 1)[1]
                    loop = path.split(";")[0].split(": ")[-1]
                print(f"{n:24s} {ms:9.2f} {base * 1e3 / ms:7.2f}  {loop}")
                rows.append({"cell": n, "B": a.B, "T": T, "H": H, "ms": ms,
                             "lstm_over_cell": base * 1e3 / ms, "loop": loop,
                             "rounds": a.rounds, "load_before": load,
                             "load_after": os.getloadavg()})
            print(f"load average before {load[0]:.2f}, after {os.getloadavg()[0]:.2f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    if a.plot:
        plot(rows, a.H[0], a.B, a.plot)


class TorchLSTM:
    """PyTorch's nn.LSTM(H, H), batch first, float32, one thread: the same training step."""

    def __init__(self, H):
        import torch

        torch.set_num_threads(1)
        torch.manual_seed(0)
        self.torch, self.version = torch, torch.__version__
        self.m = torch.nn.LSTM(H, H, batch_first=True)

    def forward(self, X, training=True):
        x = self.torch.from_numpy(X)
        for p in self.m.parameters():
            p.grad = None
        out, _ = self.m(x)
        return out, None, out

    def backward(self, out, ones):
        out.backward(self.torch.from_numpy(ones))


def plot(rows, H, B, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    cells = list(dict.fromkeys(r["cell"] for r in rows if r["H"] == H))
    for c in cells:
        pts = sorted((r["T"], r["ms"]) for r in rows if r["H"] == H and r["cell"] == c)
        style = "k--" if c.startswith("torch") else ("k-" if c == "lstm" else "-")
        ax.plot([p[0] for p in pts], [p[1] for p in pts], style, marker="o", ms=3, label=c)
    loads = [r[k][0] for r in rows for k in ("load_before", "load_after")]
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("sequence length T")
    ax.set_ylabel("training step (forward + BPTT), ms")
    ax.set_title(f"B={B}, H={H}, float32, one thread (load average {min(loads):.1f}-"
                 f"{max(loads):.1f})",
                 fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
