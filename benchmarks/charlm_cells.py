"""Character LM on tinyshakespeare at equal wall time: plain LSTM, AWD-style LSTM, MinGRU,
QRNN — held-out nats per character against training wall time.

Every model is Embedding(V, E) -> recurrent -> Dense(H, V), built by the text task's
``build_char_model`` (what ``unrolled train text --cell ... --weight-drop ...`` trains),
trained one after the other (never concurrently) on the same data in the same order:
truncated BPTT over ``--batch`` parallel streams, chunks of ``--chunk`` steps with the
state carried, Adam, gradient-norm clipping, the learning rate a cosine over the share of
the budget spent. Each trains for ``--minutes`` of wall-clock time (evaluation paused);
the held-out loss (the first ``--held-chars`` characters of the last 10 % of the text) is
measured ``--points`` times on the way.

    python benchmarks/charlm_cells.py --minutes 4 --json benchmarks/results/charlm_cells.json \\
        --plot docs/img/charlm_cells.png
    python benchmarks/charlm_cells.py --quick        # 20 s each, a smoke run
    python benchmarks/charlm_cells.py --models lstm,ln_lstm --hidden 128 --steps 800 \
        --json benchmarks/results/layernorm_lstm.json --plot docs/img/layernorm_lstm.png

The AWD-style LSTM is the plain LSTM with DropConnect on W_hh (``--weight-drop``),
recurrent dropout (one mask per sequence on h_(t-1)), embedding dropout (whole rows) and
AR/TAR on the LSTM's outputs (Merity et al. 2018). MinGRU and QRNN have no recurrent
product (their gates read the input only), so they are stacked ``--parallel-layers`` deep.
Prints a table, writes JSON and a PNG; the load average is recorded before and after
each model.
"""
import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

DEFAULT_DATA = "/work/shared/data/tinyshakespeare/input.txt"


def models(a):
    awd = dict(weight_drop=a.weight_drop, recurrent_dropout=a.recurrent_dropout,
               embed_dropout=a.embed_dropout, ar=a.ar, tar=a.tar)
    return {"lstm": dict(cell="lstm"),
            "awd_lstm": dict(cell="lstm", **awd),
            "mingru": dict(cell="mingru", num_layers=a.parallel_layers),
            "qrnn": dict(cell="qrnn", num_layers=a.parallel_layers),
            "ln_lstm": dict(cell="layernorm_lstm")}


def train_one(a, name, kw, V, train, held):
    from charlm_vs_torch import Budget, lr_at, schedule

    from unrolled.data import stream_batches
    from unrolled.losses import CrossEntropy
    from unrolled.optim import Adam, clip_grad_norm
    from unrolled.tasks.text import build_char_model, chunk_xy, stream_loss

    kw = dict(kw)
    layers = kw.pop("num_layers", 1)
    model = build_char_model(V, a.embedding, a.hidden, layers, seed=a.seed, **kw)
    opt, ce = Adam(lr=a.lr), CrossEntropy()
    budget = Budget(a.minutes * 60 if not a.steps else float("inf"))
    marks = [(k + 1) / a.points for k in range(a.points - 1)]

    def progress():  # the share of the budget (wall time or steps) spent
        return steps / a.steps if a.steps else 1 - budget.left() / budget.seconds
    load_before = os.getloadavg()

    def point():
        if budget.t0 is not None:
            budget.stop()
        t = time.perf_counter()
        loss = stream_loss(model, held)["loss"]
        curve.append({"seconds": round(budget.used, 1), "steps": steps, "chars": chars,
                      "held_out_loss": round(loss, 4)})
        print(f"  {name:9s} {budget.used:7.1f} s  {steps:6d} steps  held-out "
              f"{loss:.4f} nats/char  (eval {time.perf_counter() - t:.1f} s)", flush=True)

    # compile the loops before the clock starts (a forward and backward, no update)
    warm = np.asarray(train[:2 * a.chunk]).reshape(2, a.chunk)
    _, _, cache = model.forward(warm, training=True)
    model.backward(cache, ce.value_and_grad(model.forward(warm)[0], warm)[1])
    curve, steps, chars, last, streams = [], 0, 0, None, {}
    point()  # the untrained model
    budget.start()
    for _, offset, i in schedule(len(train), a.batch, a.chunk, a.seed):
        if progress() >= 1:
            break
        if offset not in streams:
            streams = {offset: stream_batches(train, a.batch, a.chunk, offset)}
            state = None
        X, Y = chunk_xy(streams[offset], i)
        out, state, cache = model.forward(X, initial_state=state, training=True)
        last, d_out = ce.value_and_grad(out, Y)
        grads, _, _ = model.backward(cache, d_out)
        grads, _ = clip_grad_norm(grads, a.clip, inplace=True)
        opt.lr = lr_at(a, progress())
        opt.step(model.params, grads)
        steps += 1
        chars += X.size
        if marks and progress() >= marks[0]:
            marks.pop(0)
            point()
            budget.start()
    point()
    return {"config": {"num_layers": layers, **kw}, "steps": steps, "chars": chars,
            "train_seconds": round(budget.used, 1), "last_train_loss": last,
            "held_out_loss": curve[-1]["held_out_loss"], "curve": curve,
            "load_before": load_before, "load_after": os.getloadavg()}


def plot(results, path, title, x="seconds"):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, r in results.items():
        c = r["curve"][1:]
        ax.plot([p[x] for p in c], [p["held_out_loss"] for p in c], "o-", ms=3,
                label=f"{name} ({r['held_out_loss']:.3f})")
    ax.set_xlabel("training wall time (s)" if x == "seconds" else "training steps")
    ax.set_ylabel("held-out loss (nats per character)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=DEFAULT_DATA)
    ap.add_argument("--minutes", type=float, default=4.0, help="training wall time per model")
    ap.add_argument("--models", default="lstm,awd_lstm,mingru,qrnn",
                    help="of lstm, awd_lstm, mingru, qrnn, ln_lstm (layer-normalised LSTM)")
    ap.add_argument("--steps", type=int, default=0,
                    help="train this many steps each instead of --minutes (convergence "
                         "per step; the plot's x axis is then steps)")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--embedding", type=int, default=32)
    ap.add_argument("--parallel-layers", type=int, default=2,
                    help="stacked layers of MinGRU and QRNN")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--chunk", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--schedule", choices=("cosine", "constant"), default="cosine")
    ap.add_argument("--clip", type=float, default=5.0)
    ap.add_argument("--weight-drop", type=float, default=0.25)
    ap.add_argument("--recurrent-dropout", type=float, default=0.1)
    ap.add_argument("--embed-dropout", type=float, default=0.05)
    ap.add_argument("--ar", type=float, default=1.0)
    ap.add_argument("--tar", type=float, default=1.0)
    ap.add_argument("--points", type=int, default=8, help="held-out measurements per model")
    ap.add_argument("--held-chars", type=int, default=40000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="20 s per model, a small model")
    ap.add_argument("--json")
    ap.add_argument("--plot")
    ap.add_argument("--from-json", nargs="+", help="print and plot the results saved in "
                    "these files (a name seen before gets a suffix), training nothing")
    a = ap.parse_args(argv)
    if a.from_json:
        merged = {}
        for i, f in enumerate(a.from_json):
            saved = json.loads(Path(f).read_text())
            for k in ("minutes", "steps", "hidden"):
                setattr(a, k, saved["args"].get(k, getattr(a, k)))
            for name, r in saved["results"].items():
                merged[name if name not in merged else f"{name} (run {i + 1})"] = r
        report(a, merged)
        return 0
    if a.quick:
        a.minutes, a.hidden, a.points, a.held_chars = 1 / 3, 64, 3, 5000
        a.steps = min(a.steps, 100)

    from unrolled.backend import limit_blas_threads, reuse_freed_memory
    from unrolled.data import Vocab, read_text

    limit_blas_threads()
    reuse_freed_memory()
    text = read_text(a.data)
    vocab = Vocab.from_text(text)
    ids = vocab.encode(text)
    cut = len(ids) - round(len(ids) * 0.1)
    train, held = ids[:cut], ids[cut:cut + a.held_chars]
    V = len(vocab)
    print(f"data: {a.data}: {len(ids)} characters, vocabulary {V}; train {len(train)}, "
          f"held out {len(held)} (from the last 10 %)")
    print(f"hidden {a.hidden}, embedding {a.embedding}, batch {a.batch} x chunk {a.chunk}, "
          f"Adam lr {a.lr} ({a.schedule}), clip {a.clip}, {a.minutes:g} min each; "
          f"load average {os.getloadavg()}")
    table = models(a)
    results = {}
    for name in a.models.split(","):
        print(f"training {name} {table[name]} ...", flush=True)
        results[name] = train_one(a, name, table[name], V, train, held)
    report(a, results)
    out = {"args": vars(a), "python": platform.python_version(), "numpy": np.__version__,
           "cpu_count": os.cpu_count(), "results": results}
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(out, indent=1) + "\n")
        print(f"json: {a.json}")
    return 0


def report(a, results):
    print(f"\n{'model':10s} {'config':100s} {'steps':>6s} {'chars/s':>8s} {'held-out':>9s}"
          f"  load before / after")
    for name, r in results.items():
        cfg = ", ".join(f"{k}={v}" for k, v in r["config"].items())
        print(f"{name:10s} {cfg:100s} {r['steps']:6d} {r['chars'] / r['train_seconds']:8.0f} "
              f"{r['held_out_loss']:9.4f}  {r['load_before'][0]:.2f} / {r['load_after'][0]:.2f}")
    if a.plot:
        budget = f"{a.steps} steps" if a.steps else f"{a.minutes:g} min"
        loads = [r[k][0] for r in results.values() for k in ("load_before", "load_after")]
        plot(results, a.plot, f"tinyshakespeare, H={a.hidden}, {budget} each, one after "
             f"another (load average {min(loads):.1f}-{max(loads):.1f})",
             "steps" if a.steps else "seconds")


if __name__ == "__main__":
    sys.exit(main())
