"""A character LSTM on tinyshakespeare: unrolled (NumPy) against PyTorch, same wall time.

Both sides train the same model (Embedding(V, E) -> LSTM(E, H) -> Linear(H, V)) from the
same initial weights, on the same data in the same order, with the same hyperparameters:
truncated BPTT over ``--batch`` parallel streams, chunks of ``--chunk`` steps with the
state carried across chunks (a new random cut of the streams each pass), Adam, gradient
norm clipping, the learning rate following the same function of the share of the
budget spent (cosine to 1/20 by default). Each trains until ``--minutes`` of wall-clock training time are spent
(evaluation time is not counted); the held-out loss (nats and bits per character) of the
last 10 % of the text is measured at a few points on the way and at the end. PyTorch and
NumPy's BLAS both get ``--threads`` threads; the two run one after the other.

    python benchmarks/charlm_vs_torch.py --minutes 15 \\
        --json benchmarks/results/charlm_vs_torch.json

Prints a table and writes JSON; never fails for a slow machine. OPENBLAS_CORETYPE and
OPENBLAS_L2_SIZE are dropped from this process's environment (they slow a current NumPy).
"""
import argparse
import inspect
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

# thread counts and BLAS settings must be fixed before NumPy loads, the tree before import
_threads, _tree = "2", str(Path(__file__).resolve().parents[1])
for i, a in enumerate(sys.argv):
    if a == "--threads" and i + 1 < len(sys.argv):
        _threads = sys.argv[i + 1]
    elif a.startswith("--threads="):
        _threads = a.split("=", 1)[1]
    elif a == "--tree" and i + 1 < len(sys.argv):
        _tree = sys.argv[i + 1]
    elif a.startswith("--tree="):
        _tree = a.split("=", 1)[1]
for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = _threads
for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
    os.environ.pop(var, None)

import numpy as np

sys.path.insert(0, str(Path(_tree).resolve()))
from unrolled.backend import reuse_freed_memory
from unrolled.data import Vocab, read_text, stream_batches
from unrolled.losses import CrossEntropy
from unrolled.optim import Adam, clip_grad_norm
from unrolled.tasks.text import build_char_model, chunk_xy, sample, stream_loss

reuse_freed_memory()  # as the trainer does; PyTorch runs under the same C-library settings

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare" \
    / "input.txt"


def blas_info():
    """The BLAS library NumPy uses and its thread count (from numpy.show_runtime)."""
    import io
    import re
    from contextlib import redirect_stdout

    buf = io.StringIO()
    try:
        with redirect_stdout(buf):
            np.show_runtime()
    except (ImportError, AttributeError) as e:  # pragma: no cover - informative only
        return {"error": str(e)}
    found = {}
    for k in ("internal_api", "architecture", "num_threads", "version"):
        m = re.search(rf"'{k}': '?([^',}}\]]+)", buf.getvalue())
        if m:
            found[k] = m.group(1)
    return found


def schedule(n_train, batch, chunk, seed):
    """An endless plan of (pass, offset, chunk index), the same for both sides."""
    rng = np.random.default_rng(seed)
    p = 0
    while True:
        offset = int(rng.integers(chunk))
        steps = (n_train - offset - 1) // batch  # input steps per stream
        for i in range(-(-steps // chunk)):
            yield p, offset, i
        p += 1


def lr_at(args, fraction):
    """The learning rate after ``fraction`` of the wall-clock budget: constant, or cosine
    from ``--lr`` down to ``--lr / 20`` over the budget (the same rule on both sides)."""
    if args.schedule == "constant":
        return args.lr
    f = min(max(fraction, 0.0), 1.0)
    lo = args.lr / 20
    return lo + (args.lr - lo) * 0.5 * (1 + math.cos(math.pi * f))


class Budget:
    """Wall-clock training time, paused while evaluating."""

    def __init__(self, seconds):
        self.seconds, self.used, self.t0 = seconds, 0.0, None

    def start(self):
        self.t0 = time.perf_counter()

    def stop(self):
        self.used += time.perf_counter() - self.t0
        self.t0 = None

    def left(self):
        run = 0.0 if self.t0 is None else time.perf_counter() - self.t0
        return self.seconds - self.used - run


def train_unrolled(args, vocab, train, held, init_model):
    model = init_model
    opt = Adam(lr=args.lr)
    ce = CrossEntropy()
    # clip in place where this version of unrolled can (as PyTorch does), else a copy
    if "inplace" in inspect.signature(clip_grad_norm).parameters:
        def clip(g):
            return clip_grad_norm(g, args.clip, inplace=True)
    else:
        def clip(g):
            return clip_grad_norm(g, args.clip)
    budget = Budget(args.minutes * 60)
    marks = [args.minutes * 60 * f for f in (0.25, 0.5, 0.75)]
    curve, steps, chars, last = [], 0, 0, None
    streams_cache = {}
    budget.start()
    for p, offset, i in schedule(len(train), args.batch, args.chunk, args.seed):
        if budget.left() <= 0:
            break
        if offset not in streams_cache:
            streams_cache = {offset: stream_batches(train, args.batch, args.chunk, offset)}
            state = None  # a new pass starts from zeros
        s = streams_cache[offset]
        X, Y = chunk_xy(s, i)
        out, state, cache = model.forward(X, initial_state=state, training=True)
        last, d_out = ce.value_and_grad(out, Y)
        grads, _, _ = model.backward(cache, d_out)
        grads, _ = clip(grads)
        opt.lr = lr_at(args, 1 - budget.left() / budget.seconds)
        opt.step(model.params, grads)  # in place: the model holds these very arrays
        steps += 1
        chars += X.size
        if marks and budget.seconds - budget.left() >= marks[0]:
            marks.pop(0)
            budget.stop()
            curve.append(_point(budget, steps, chars, stream_loss(model, held)["loss"]))
            print(f"  unrolled {curve[-1]}", flush=True)
            budget.start()
    budget.stop()
    final = stream_loss(model, held)
    curve.append(_point(budget, steps, chars, final["loss"]))
    text = sample(model, vocab, 300, 0.8, "ROMEO:", rng=0)
    return {"steps": steps, "chars": chars, "train_seconds": budget.used,
            "last_train_loss": last, "held_out_loss": final["loss"],
            "held_out_bits_per_char": final["bits_per_char"], "curve": curve, "sample": text}


def _point(budget, steps, chars, loss):
    return {"seconds": round(budget.used, 1), "steps": steps, "chars": chars,
            "held_out_loss": round(loss, 4), "bits_per_char": round(loss / math.log(2), 4)}


def train_torch(args, V, train, held, init_model):
    import torch
    from torch import nn

    torch.set_num_threads(int(args.threads))
    torch.manual_seed(args.seed)

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from torch_tasks import mirror

    # the same layers, starting from exactly the unrolled model's initial weights
    model = mirror(init_model)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    lossf = nn.CrossEntropyLoss()

    def held_loss():
        model.eval()
        total, count, state = 0.0, 0, None
        with torch.no_grad():
            for X, Y in stream_batches(held, 16, 256):
                logits, state = model(torch.from_numpy(np.ascontiguousarray(X)), None, state)
                total += float(lossf(logits.reshape(-1, V),
                                     torch.from_numpy(np.ascontiguousarray(Y)).reshape(-1))
                               ) * Y.size
                count += Y.size
        model.train()
        return total / count

    budget = Budget(args.minutes * 60)
    marks = [args.minutes * 60 * f for f in (0.25, 0.5, 0.75)]
    curve, steps, chars, last = [], 0, 0, None
    streams_cache = {}
    budget.start()
    for _, offset, i in schedule(len(train), args.batch, args.chunk, args.seed):
        if budget.left() <= 0:
            break
        if offset not in streams_cache:
            streams_cache = {offset: stream_batches(train, args.batch, args.chunk, offset)}
            state = None
        s = streams_cache[offset]
        X, Y = (torch.from_numpy(a) for a in chunk_xy(s, i))
        if state is not None:
            state = tuple(h.detach() for h in state)  # truncate the graph, keep the values
        logits, state = model(X, None, state)
        loss = lossf(logits.reshape(-1, V), Y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        for g in opt.param_groups:
            g["lr"] = lr_at(args, 1 - budget.left() / budget.seconds)
        opt.step()
        last = loss.item()
        steps += 1
        chars += X.numel()
        if marks and budget.seconds - budget.left() >= marks[0]:
            marks.pop(0)
            budget.stop()
            curve.append(_point(budget, steps, chars, held_loss()))
            print(f"  torch {curve[-1]}", flush=True)
            budget.start()
    budget.stop()
    final = held_loss()
    curve.append(_point(budget, steps, chars, final))
    return {"steps": steps, "chars": chars, "train_seconds": budget.used,
            "last_train_loss": last, "held_out_loss": final,
            "held_out_bits_per_char": final / math.log(2), "curve": curve,
            "torch_version": torch.__version__, "torch_threads": torch.get_num_threads()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="UTF-8 text file")
    ap.add_argument("--minutes", type=float, default=15.0, help="training wall time per side")
    ap.add_argument("--which", choices=("both", "unrolled", "torch"), default="both")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--embedding", type=int, default=32)
    ap.add_argument("--batch", type=int, default=64, help="parallel streams")
    ap.add_argument("--chunk", type=int, default=64, help="truncated BPTT steps")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--schedule", choices=("cosine", "constant"), default="cosine",
                    help="learning rate over the wall-clock budget")
    ap.add_argument("--clip", type=float, default=5.0)
    ap.add_argument("--threads", default="2", help="BLAS and torch threads")
    ap.add_argument("--tree", default=_tree,
                    help="the checkout of unrolled to train with (default: this one)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--held-out", type=float, default=0.1, help="share of the text at its end")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)

    text = read_text(args.data)
    vocab = Vocab.from_text(text)
    ids = vocab.encode(text)
    cut = len(ids) - round(len(ids) * args.held_out)
    train, held = ids[:cut], ids[cut:]
    V = len(vocab)
    print(f"data: {args.data}: {len(ids)} characters, vocabulary {V}; train {len(train)}, "
          f"held out (last {args.held_out:.0%}) {len(held)}")
    print(f"model: Embedding({V}, {args.embedding}) -> LSTM({args.embedding}, {args.hidden}) "
          f"-> Linear({args.hidden}, {V}); batch {args.batch} streams x chunk {args.chunk}, "
          f"Adam lr {args.lr} ({args.schedule}), clip {args.clip}; {args.minutes} min each, {args.threads} threads")
    blas = blas_info()
    print(f"numpy {np.__version__}, BLAS: {blas}")

    import unrolled

    results = {"config": vars(args), "unrolled_module": unrolled.__file__,
               "numpy": np.__version__, "blas": blas,
               "python": platform.python_version(), "machine": platform.machine(),
               "cpu_count": os.cpu_count(), "load_before": os.getloadavg()}
    init = build_char_model(V, args.embedding, args.hidden, seed=args.seed)
    init_params = init.params
    if args.which in ("both", "unrolled"):
        print("training unrolled ...", flush=True)
        results["unrolled"] = train_unrolled(args, vocab, train, held, init)
        results["load_after_unrolled"] = os.getloadavg()
    if args.which in ("both", "torch"):
        try:
            import torch  # noqa: F401
        except ImportError:
            print("torch is not installed: skipping the PyTorch side")
        else:
            print("training torch ...", flush=True)
            ref = build_char_model(V, args.embedding, args.hidden, seed=args.seed)
            ref.params = init_params
            results["torch"] = train_torch(args, V, train, held, ref)
            results["load_after_torch"] = os.getloadavg()

    print()
    print(f"{'':10} {'steps':>7} {'chars/s':>9} {'held-out nats':>14} {'bits/char':>10}")
    for side in ("unrolled", "torch"):
        if side in results:
            r = results[side]
            print(f"{side:10} {r['steps']:>7} {r['chars'] / r['train_seconds']:>9.0f} "
                  f"{r['held_out_loss']:>14.4f} {r['held_out_bits_per_char']:>10.4f}")
    if "unrolled" in results and "torch" in results:
        d = results["unrolled"]["held_out_bits_per_char"] - results["torch"]["held_out_bits_per_char"]
        results["bits_difference_unrolled_minus_torch"] = d
        print(f"unrolled - torch: {d:+.4f} bits/char")
    if "unrolled" in results:
        print("\nunrolled sample (temperature 0.8, prime 'ROMEO:'):\n" + results["unrolled"]["sample"])
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
