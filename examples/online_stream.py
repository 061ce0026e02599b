"""Learn from one endless stream, one update per step, keeping no history.

The stream is a delayed echo: a random bit arrives at every step and the target is the
bit that arrived ``delay`` steps earlier, so the network must hold the last few bits in
its state. An Elman (or GRU / LSTM) layer with a logistic read-out learns it online:
at each step it reads one bit, predicts, takes the loss, and updates its weights with
the gradient RTRL (exact) or UORO (unbiased, cheaper) carries forward. Nothing about
past steps is stored but the state and its sensitivity to the weights, so memory does
not grow with the length of the stream (BPTT would need the whole history).

    python examples/online_stream.py                       # RTRL, Elman, 6000 steps
    python examples/online_stream.py --method uoro --steps 20000
    python examples/online_stream.py --cell gru --delay 4
"""
import argparse
import time
import tracemalloc

import numpy as np

import unrolled as u
from unrolled.online import RTRL, UORO


def echo_stream(rng, delay):
    """Endless (x_t, y_t): a random bit and the bit from ``delay`` steps ago (0 at first)."""
    past = [0.0] * delay  # the task's own memory, not the learner's
    while True:
        bit = float(rng.integers(2))
        past.append(bit)
        yield np.array([[bit]]), np.array([[past.pop(0)]])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--method", choices=["rtrl", "uoro"], default="rtrl")
    ap.add_argument("--cell", choices=["elman", "gru", "lstm"], default="elman")
    ap.add_argument("--hidden", type=int, default=16)
    ap.add_argument("--delay", type=int, default=3)
    ap.add_argument("--steps", type=int, default=6000)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    cls = {"elman": u.Elman, "gru": u.GRU, "lstm": u.LSTM}[args.cell]
    rnn = cls(1, args.hidden, seed=args.seed, dtype="float64")
    readout = u.Dense(args.hidden, 1, seed=args.seed, dtype="float64")
    learner = (RTRL(rnn) if args.method == "rtrl" else UORO(rnn, seed=args.seed))
    lr = args.lr or (1e-2 if args.method == "rtrl" else 3e-3)
    opt = u.Adam(lr)
    params = {"rnn": rnn.params, "out": readout.params}  # the layers' own arrays
    loss = u.BCE()

    print(f"{args.method.upper()} on a {args.cell} (H={args.hidden}), echo delay "
          f"{args.delay}; chance loss is ln 2 = 0.693")
    tracemalloc.start()
    running, hits, t0 = None, 0.0, time.perf_counter()
    stream = echo_stream(np.random.default_rng(args.seed + 1), args.delay)
    for step in range(1, args.steps + 1):
        x, y = next(stream)
        h = learner.step(x)                               # (1, H) the new state
        logit, _, cache = readout.forward(h, training=True)
        value, d_logit = loss.value_and_grad(logit, y)
        g_out, dh, _ = readout.backward(cache, d_logit)
        g_rnn = learner.grad(dh)                          # dL_t/dθ carried forward
        opt.step(params, {"rnn": g_rnn, "out": g_out})
        running = value if running is None else 0.99 * running + 0.01 * value
        hits = 0.99 * hits + 0.01 * float((logit[0, 0] > 0) == (y[0, 0] > 0.5))
        if step % (args.steps // 10) == 0:
            mem = tracemalloc.get_traced_memory()[0]
            print(f"step {step:6d}  loss {running:.3f}  accuracy {hits:.2f}  "
                  f"memory {mem / 1024:.0f} KiB  {1e3 * (time.perf_counter() - t0) / step:.2f} "
                  f"ms/step")
    tracemalloc.stop()
    return running, hits


if __name__ == "__main__":
    main()
