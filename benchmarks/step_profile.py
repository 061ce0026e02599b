"""Where the time of one char-LM training step goes, part by part.

The step of ``benchmarks/charlm_vs_torch.py`` (Embedding(65, 32) -> LSTM(32, 256) ->
Dense(256, 65) on tinyshakespeare, B = 64 streams x T = 64 steps, the state carried
across chunks, softmax cross-entropy, gradient-norm clipping, Adam), run layer by layer
through the public layer API with a clock around each part:

    python benchmarks/step_profile.py [--json out.json]
    python benchmarks/step_profile.py --base /tmp/old-checkout   # two trees side by side

Each tree runs in its own worker process (``PYTHONPATH=TREE``); with ``--base`` the
rounds alternate (base, this, this, base, ...) so both see the same machine load. The
table shows the median milliseconds of each part over all measured steps of all rounds;
"rest" is everything but the LSTM's forward and backward (the median over steps, and
the sum of the other parts' medians). The load average before and
after is printed and saved, since these machines are shared.
"""
import argparse
import inspect
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
PARTS = ["embedding forward", "lstm forward", "dense forward", "loss", "dense backward",
         "lstm backward", "embedding backward", "clip_grad_norm", "adam step"]


def worker(args):
    import numpy as np

    from unrolled.backend import reuse_freed_memory
    from unrolled.data import Vocab, read_text, stream_batches
    from unrolled.losses import CrossEntropy
    from unrolled.optim import Adam, clip_grad_norm
    from unrolled.tasks.text import build_char_model, chunk_xy

    reuse_freed_memory()  # as the trainer and the command line do
    text = read_text(args.data)
    vocab = Vocab.from_text(text)
    ids = vocab.encode(text)
    model = build_char_model(len(vocab), args.embedding, args.hidden, seed=0)
    emb, lstm, dense = model.layers
    streams = stream_batches(ids, args.batch, args.chunk)
    ce, opt = CrossEntropy(), Adam(lr=2e-3)
    # clip in place where the tree can (as PyTorch does), else as a copy
    inplace = "inplace" in inspect.signature(clip_grad_norm).parameters
    clip = ((lambda g: clip_grad_norm(g, args.clip, inplace=True)) if inplace
            else (lambda g: clip_grad_norm(g, args.clip)))
    clock = time.perf_counter
    times = {p: [] for p in PARTS + ["step"]}
    state = None
    for i in range(args.warmup + args.steps):
        X, Y = chunk_xy(streams, i % (len(streams) - 1))
        t = [clock()]
        e, _, c_emb = emb.forward(X, training=True)
        t.append(clock())
        h, state, c_lstm = lstm.forward(e, initial_state=state, training=True)
        t.append(clock())
        logits, _, c_dense = dense.forward(h, training=True)
        t.append(clock())
        _, d_logits = ce.value_and_grad(logits, Y)
        t.append(clock())
        g_dense, d_h, _ = dense.backward(c_dense, d_logits)
        t.append(clock())
        g_lstm, d_e, _ = lstm.backward(c_lstm, d_h)
        t.append(clock())
        g_emb, _, _ = emb.backward(c_emb, d_e)
        t.append(clock())
        grads = {"0": g_emb, "1": g_lstm, "2": g_dense}
        grads, _ = clip(grads)
        t.append(clock())
        opt.step(model.params, grads)
        t.append(clock())
        if i >= args.warmup:
            for k, p in enumerate(PARTS):
                times[p].append(t[k + 1] - t[k])
            times["step"].append(t[-1] - t[0])
    print(json.dumps({p: [round(1e3 * s, 4) for s in v] for p, v in times.items()}))


def run_tree(tree, args):
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    env.update(PYTHONPATH=str(Path(tree).resolve()), OPENBLAS_NUM_THREADS=args.threads,
               OMP_NUM_THREADS=args.threads, MKL_NUM_THREADS=args.threads)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--data", args.data,
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--batch",
           str(args.batch), "--chunk", str(args.chunk), "--hidden", str(args.hidden),
           "--embedding", str(args.embedding), "--clip", str(args.clip)]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd="/")
    if p.returncode:
        sys.exit(f"the worker for {tree} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def summary(samples):
    """Median milliseconds per part, plus "rest" (all but the LSTM's loops)."""
    med = {p: statistics.median(v) for p, v in samples.items()}
    rest = [s - f - b for s, f, b in zip(samples["step"], samples["lstm forward"],
                                          samples["lstm backward"])]
    med["rest"] = statistics.median(rest)
    # the median of a sum is not the sum of the medians: under load a few slow steps of
    # the LSTM's parts land in "rest"; this sum is free of them
    med["rest, sum of medians"] = sum(med[p] for p in PARTS if not p.startswith("lstm"))
    return med


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", help="another checkout of unrolled, run side by side")
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--rounds", type=int, default=4, help="worker processes per tree")
    ap.add_argument("--steps", type=int, default=40, help="measured steps per round")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--chunk", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--embedding", type=int, default=32)
    ap.add_argument("--clip", type=float, default=5.0)
    ap.add_argument("--threads", default="2", help="BLAS threads")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)

    trees = {"this": str(ROOT)}
    if args.base:
        trees = {"base": args.base, **trees}
    order = []
    for r in range(args.rounds):
        order += list(trees) if r % 2 == 0 else list(trees)[::-1]
    load_before = os.getloadavg()
    samples = {name: {} for name in trees}
    for name in order:
        for p, v in run_tree(trees[name], args).items():
            samples[name].setdefault(p, []).extend(v)
    load_after = os.getloadavg()
    med = {name: summary(s) for name, s in samples.items()}

    head = "".join(f"{n + ' ms':>12}" for n in trees)
    ratio = f"{'base/this':>10}" if args.base else ""
    print(f"char-LM step, B={args.batch} T={args.chunk} H={args.hidden}, "
          f"{args.threads} BLAS threads; medians of {args.rounds} x {args.steps} steps")
    print(f"{'part':22}{head}{ratio}")
    for p in PARTS + ["rest", "rest, sum of medians", "step"]:
        cells = "".join(f"{med[n][p]:12.3f}" for n in trees)
        r = f"{med['base'][p] / med['this'][p]:10.2f}" if args.base else ""
        print(f"{p:22}{cells}{r}")
    print(f"load average before {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}, "
          f"after {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")
    if args.json:
        out = {"config": {k: v for k, v in vars(args).items() if k != "worker"},
               "trees": trees, "python": platform.python_version(),
               "cpu_count": os.cpu_count(), "load_before": load_before,
               "load_after": load_after, "median_ms": med}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
