"""Peak memory and time of one pass over T steps: full, truncated, checkpointed, online.

An LSTM (H=256, input 32, batch 32, float32) reads T random steps and is trained on a
loss of its final state (``sum(h_T * R)``). For each T in {100, 1 000, 10 000, 100 000}:

``full``        full BPTT (``memory="full"``): one update; refused, with the planner's
                estimate, when it would not fit in memory.
``checkpoint``  checkpointed BPTT (``memory="checkpoint"``): one update, same gradient.
``truncated``   truncated BPTT, chunks of k=100 steps with the state carried (T/k updates).
``online``      UORO, one update per step (T updates); timed over the first steps and
                extrapolated to T (its cost per step does not depend on T); memory is
                independent of T by construction (measured over the first steps).

Peak memory is the peak of traced allocations (tracemalloc: NumPy reports its buffers)
during the pass, over what was allocated before it (the input batch is the caller's);
time is the wall-clock of the same pass (tracing adds little: few, large allocations).
Truncated BPTT is measured over at most 10 000 steps and online learning over its first
50, then extrapolated to T (their cost per step and their memory do not depend on T). The planner's prediction
(:func:`unrolled.memory.plan_memory`) is printed beside each measured peak, and for full
BPTT the bytes kept between forward and backward are compared with the theoretical
bytes its backward needs (input, states, cell caches).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE OPENBLAS_NUM_THREADS=1 \
        python benchmarks/memory.py

One BLAS thread: on a shared 2-core machine a multi-threaded BLAS spins against the other
processes and a (32, 256) x (256, 1024) product becomes ~50x slower.
    python benchmarks/memory.py --quick          # T in {100, 1000}, a minute
"""
import argparse
import json
import os
import platform
import sys
import time
import tracemalloc

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import unrolled as u
from unrolled import kernels
from unrolled import memory as mem
from unrolled.online import UORO

H, D, B, K = 256, 32, 32, 100


def _traced(fn):
    """(seconds, peak bytes above the start) of fn() under tracemalloc."""
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        t0 = time.perf_counter()
        fn()
        seconds = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    return seconds, peak


def run_bptt(layer, X, R):
    _, _, cache = layer.forward(X, training=True)
    grads, _, _ = layer.backward(cache, R)
    return grads


def run_truncated(layer, X, R):
    state = None
    for a in range(0, X.shape[1], K):
        _, state, cache = layer.forward(X[:, a:a + K], initial_state=state, training=True)
        layer.backward(cache, R)  # one update's gradient per chunk
        del cache  # a training loop lets go of the chunk's tape before the next one


def run_online(layer, X, R, steps):
    uoro = UORO(layer, batch_size=B, seed=0)
    for t in range(steps):
        uoro.step(X[:, t])
        uoro.grad(R)  # one update's gradient per step


def activation_ratio(layer, X):
    """Bytes kept between forward and backward over the theoretical bytes the backward
    needs: the time-major input (T, B, D), states (T+1, B, 2H), cell caches (T, B, 5H)."""
    T = X.shape[1]
    it = X.dtype.itemsize
    need = T * B * D * it + (T + 1) * B * 2 * H * it + T * B * 5 * H * it
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        out = layer.forward(X, training=True)
        kept = tracemalloc.get_traced_memory()[0] - base - out[0].nbytes
    finally:
        tracemalloc.stop()
    del out
    return kept / need, kept, need


def measure(method, T, rng, online_steps, max_truncated):
    X = rng.standard_normal((B, T, D), dtype=np.float32)
    R = rng.standard_normal((B, H)).astype(np.float32)
    row = {"method": method, "T": T, "updates": {"full": 1, "checkpoint": 1,
                                                 "truncated": -(-T // K), "online": T}[method]}
    if method in ("full", "checkpoint"):
        layer = u.LSTM(D, H, return_sequences=False, memory=method, seed=0)
        plan = mem.plan_memory(layer, B, T)
        row["planned_bytes"] = plan.bytes
        row["segment"] = plan.segment
        try:
            run_bptt(layer, X[:, :5], R)  # warm up (compilation)
            row["seconds"], row["peak_bytes"] = _traced(lambda: run_bptt(layer, X, R))
            if method == "full" and T <= 10_000:
                row["activation_ratio"], row["activation_bytes"], row["theory_bytes"] = \
                    activation_ratio(layer, X)
        except mem.MemoryPlanError as e:
            row["refused"] = str(e)
    elif method == "truncated":
        layer = u.LSTM(D, H, return_sequences=False, seed=0)
        run_truncated(layer, X[:, :K], R)
        n = min(T, max_truncated)  # its cost per chunk and its memory do not depend on T
        row["seconds"], row["peak_bytes"] = _traced(lambda: run_truncated(layer, X[:, :n], R))
        row["seconds"] *= T / n
        if n < T:
            row["extrapolated_from_steps"] = n
        row["planned_bytes"] = mem.plan_memory(layer, B, min(K, T)).bytes
    else:
        layer = u.LSTM(D, H, seed=0)
        n = min(T, online_steps)
        run_online(layer, X, R, 2)
        seconds, row["peak_bytes"] = _traced(lambda: run_online(layer, X, R, n))
        row["seconds"] = seconds / n * T
        row["extrapolated_from_steps"] = n
        P = sum(v.size for v in layer.params["l0"].values())
        row["planned_bytes"] = None
        row["rtrl_bytes"] = B * 2 * H * P * 4  # what exact RTRL's influence matrix needs
    return row


def uoro_quality(Ts=(10, 50, 200), runs=200, H_small=16, k_trunc=5):
    """UORO's gradient against BPTT's exact one, for fixed weights (the quantity UORO's
    unbiasedness is about): relative bias of the mean estimate, relative variance, mean
    cosine; truncated BPTT (k steps) shown beside it as a biased, noise-free reference.

    The loss is sum_t <h_t, R_t> over one record (B = 1), float64, LSTM with H=16.
    """
    out = []
    for T in Ts:
        rng = np.random.default_rng(T)
        layer = u.LSTM(4, H_small, dtype="float64", seed=0)
        X = rng.standard_normal((1, T, 4))
        R = rng.standard_normal((1, T, H_small))
        _, _, cache = layer.forward(X, training=True)
        ref, _, _ = layer.backward(cache, R)
        names = sorted(ref["l0"])
        g = np.concatenate([ref["l0"][k].ravel() for k in names])
        ests = []
        for seed in range(runs):
            uoro = UORO(layer, batch_size=1, seed=seed)
            tot = np.zeros_like(g)
            for t in range(T):
                uoro.step(X[:, t])
                d = uoro.grad(R[:, t])["l0"]
                tot += np.concatenate([d[k].ravel() for k in names])
            ests.append(tot)
        E = np.stack(ests)
        gn = np.linalg.norm(g)
        cos = E @ g / (np.linalg.norm(E, axis=1) * gn)
        trunc = u.LSTM(4, H_small, dtype="float64", seed=0, truncate=k_trunc)
        _, _, c2 = trunc.forward(X, training=True)
        gt, _, _ = trunc.backward(c2, R)
        gt = np.concatenate([gt["l0"][k].ravel() for k in names])
        out.append({"T": T, "runs": runs,
                    "uoro_relative_bias": float(np.linalg.norm(E.mean(0) - g) / gn),
                    "bias_noise_floor": float(np.sqrt(((E - E.mean(0)) ** 2).sum(1).mean()
                                                      / runs) / gn),
                    "uoro_relative_variance": float(((E - g) ** 2).sum(1).mean() / gn ** 2),
                    "uoro_mean_cosine": float(cos.mean()),
                    f"truncated_k{k_trunc}_relative_error": float(np.linalg.norm(gt - g) / gn),
                    f"truncated_k{k_trunc}_cosine": float(gt @ g / (np.linalg.norm(gt) * gn))})
        r = out[-1]
        print(f"UORO vs BPTT, T={T:4d}: bias {r['uoro_relative_bias']:.3f} (noise floor "
              f"{r['bias_noise_floor']:.3f} over {runs} runs), relative variance "
              f"{r['uoro_relative_variance']:.1f}, mean cosine {r['uoro_mean_cosine']:.3f}; "
              f"truncated k={k_trunc}: error {r[f'truncated_k{k_trunc}_relative_error']:.3f}, "
              f"cosine {r[f'truncated_k{k_trunc}_cosine']:.3f}", flush=True)
    return out


def plot(result, out_dir):
    """Peak memory and time against T, one line per method (log-log), as two PNGs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if "peak_bytes" in r]
    for key, label, name in (("peak_bytes", "peak memory (MiB)", "memory_peak.png"),
                             ("seconds", "seconds per pass over T steps", "memory_time.png")):
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
        for method, style in (("full", "o-"), ("checkpoint", "s-"), ("truncated", "^-"),
                              ("online", "d--")):
            pts = [(r["T"], r[key] / (2**20 if key == "peak_bytes" else 1))
                   for r in rows if r["method"] == method]
            if pts:
                ax.plot(*zip(*pts), style, label=method)
        refused = [r["T"] for r in result["rows"] if "refused" in r]
        for T in refused:
            ax.axvline(T, color="grey", lw=0.8, ls=":")
            ax.text(T, ax.get_ylim()[1], " full refused", fontsize=7, va="top", ha="right",
                    rotation=90)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("T (time steps)")
        ax.set_ylabel(label)
        ax.set_title("LSTM H=256, B=32", fontsize=9)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, name), dpi=110)
        plt.close(fig)


def _mib(n):
    return "-" if n is None else f"{n / 2**20:,.1f}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="T in {100, 1000} only")
    ap.add_argument("--T", type=int, nargs="*", default=None)
    ap.add_argument("--online-steps", type=int, default=50,
                    help="UORO steps timed (then extrapolated to T)")
    ap.add_argument("--max-truncated", type=int, default=10_000,
                    help="truncated BPTT steps timed (then extrapolated to T)")
    ap.add_argument("--backend", default=None, choices=kernels.BACKENDS,
                    help="time-loop backend (default: unrolled's default)")
    ap.add_argument("--json", default=None,
                    help="output (default results/memory.json, memory_quick.json with --quick)")
    ap.add_argument("--plot", default=None, metavar="DIR",
                    help="only draw the figures from the JSON into DIR")
    ap.add_argument("--quality", action="store_true",
                    help="only UORO's bias and variance vs BPTT, added to the JSON")
    args = ap.parse_args(argv)
    if args.json is None:
        name = "memory_quick.json" if args.quick else "memory.json"
        args.json = os.path.join(os.path.dirname(__file__), "results", name)
    if args.plot:
        with open(args.json) as f:
            plot(json.load(f), args.plot)
        return None
    if args.quality:
        quality = uoro_quality()
        result = {}
        if args.json and os.path.exists(args.json):
            with open(args.json) as f:
                result = json.load(f)
        result["uoro_quality"] = quality
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=1)
        return result
    if args.backend:
        kernels.set_backend(args.backend)
    Ts = args.T or ([100, 1000] if args.quick else [100, 1000, 10_000, 100_000])
    rng = np.random.default_rng(0)
    rows = []
    print(f"LSTM H={H}, input {D}, batch {B}, float32; backend {kernels.get_backend()}; "
          f"truncated chunks k={K}")
    print(f"{'method':<11}{'T':>8}{'updates':>9}{'peak MiB':>11}{'planned':>10}"
          f"{'seconds':>10}{'vs full':>9}")
    for T in Ts:
        full = None
        for method in ("full", "checkpoint", "truncated", "online"):
            row = measure(method, T, rng, args.online_steps, args.max_truncated)
            rows.append(row)
            if method == "full":
                full = row
            if "refused" in row:
                print(f"{method:<11}{T:>8}{'':>9}{'refused':>11}{_mib(row['planned_bytes']):>10}"
                      f"   ({row['refused'][:60]}...)")
                continue
            ratio = ""
            if full is not None and "peak_bytes" in full and method != "full":
                row["peak_vs_full"] = row["peak_bytes"] / full["peak_bytes"]
                row["time_vs_full"] = row["seconds"] / full["seconds"]
                ratio = f"{row['peak_vs_full']:.3f}/{row['time_vs_full']:.2f}x"
            print(f"{method:<11}{T:>8}{row['updates']:>9}{_mib(row['peak_bytes']):>11}"
                  f"{_mib(row.get('planned_bytes')):>10}{row['seconds']:>10.3f}{ratio:>14}",
                  flush=True)
    for row in rows:
        if "activation_ratio" in row:
            print(f"full BPTT, T={row['T']}: kept {_mib(row['activation_bytes'])} MiB for a "
                  f"backward that needs {_mib(row['theory_bytes'])} MiB "
                  f"(ratio {row['activation_ratio']:.3f})")
    try:
        from threadpoolctl import threadpool_info
        blas = [{k: i.get(k) for k in ("internal_api", "version", "architecture",
                                         "num_threads")} for i in threadpool_info()]
    except ImportError:
        blas = "threadpoolctl not installed"
    result = {"command": "python benchmarks/memory.py " + " ".join(argv or sys.argv[1:]),
              "config": {"cell": "lstm", "hidden_size": H, "input_size": D, "batch": B,
                         "dtype": "float32", "truncate_chunk": K,
                         "backend": kernels.get_backend(),
                         "blas_threads_env": os.environ.get("OPENBLAS_NUM_THREADS"),
                         "available_bytes": mem.available_bytes()},
              "machine": {"python": platform.python_version(), "numpy": np.__version__,
                          "cpus": os.cpu_count(), "blas": blas},
              "rows": rows}
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
        print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main()
