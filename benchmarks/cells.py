"""Training-step time of every registered cell against the LSTM, side by side in one run.

    python benchmarks/cells.py                       # B=32, T=100 and 1000, H=128 and 256
    python benchmarks/cells.py --T 1000 --H 256 --json out.json
    python benchmarks/cells.py --options --T 100 --H 128   # the LSTM's options instead

A training step is the layer's forward over T steps and its full BPTT (float32, D = H,
one layer, gradient of ones on every output) through the public API, on the default
backend (the compiled loop where the cell has one). Cells are timed in interleaved
rounds (every cell once per round) and the median is reported, with the ratio
LSTM time / cell time (above 1: faster than the LSTM). BLAS runs on one thread.
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
    ap.add_argument("--json", default=None)
    a = ap.parse_args()

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
            times = {n: [] for n in names}

            def step(m):
                out, _, c = m.forward(X, training=True)
                if out.shape not in ones:
                    ones[out.shape] = np.ones(out.shape, "float32")
                m.backward(c, ones[out.shape])
            for m in layers.values():
                step(m)  # compiled, warm
            for _ in range(a.rounds):
                for n, m in layers.items():
                    t = time.perf_counter()
                    step(m)
                    times[n].append(time.perf_counter() - t)
            base = statistics.median(times["lstm"])
            print(f"\nB={a.B} T={T} H={H}   (ratio = LSTM time / cell time)")
            print(f"{'cell':24s} {'ms':>9s} {'ratio':>7s}  loop")
            for n in names:
                ms = statistics.median(times[n]) * 1e3
                path = explain(layers[n], a.B, T).splitlines()[-1].split(": ", 1)[1]
                loop = path.split(";")[0].split(": ")[-1]
                print(f"{n:24s} {ms:9.2f} {base * 1e3 / ms:7.2f}  {loop}")
                rows.append({"cell": n, "B": a.B, "T": T, "H": H, "ms": ms,
                             "lstm_over_cell": base * 1e3 / ms, "loop": loop})
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
