"""Vanishing gradients made visible: an Elman network and an LSTM on the same task.

The task needs a memory of T steps: each record is T values of noise, and its label is
the sign of the *first* value. Whatever the network learns about the label must travel
from step 0 to the last step, and the gradient that teaches it must travel back.

Both networks are trained the same way (same data, Adam, 300 updates of 32 records;
the LSTM's forget gate starts open, ``forget_bias=2``), then
the gradient BPTT carries back, ‖∂L/∂h_t‖, is measured at every step with
:func:`unrolled.inspect.gradient_flow`, and the singular values of the state Jacobians
∂s_T/∂s_t with :func:`unrolled.inspect.state_jacobians`. For the Elman network the
gradient falls by orders of magnitude over the record (it vanishes before it reaches the
step that holds the answer); for the LSTM it survives, carried by the cell state.

Run (about a minute on two cores)::

    python examples/gradient_flow.py [--out runs/examples/gradient_flow]

Writes ``gradflow_elman_vs_lstm.png`` (‖∂L/∂h_t‖ against t, before and after training),
``gradflow_jacobians.png`` (largest singular value of ∂s_T/∂s_t against T - t) and
``trace_lstm_first_value.png`` (the trained LSTM's states and gates over one record),
and prints the numbers behind them.
"""
import argparse
import time
from pathlib import Path

import numpy as np

from unrolled import LSTM, Adam, Dense, Elman, Sequential, value_and_grad
from unrolled.inspect.gradflow import gradient_flow, plot_jacobians, state_jacobians
from unrolled.inspect.traces import new_figure, plot_traces, save_figure, traces


def make_data(n, T, rng):
    """(n, T, 1) noise whose first value is ±1; label 1 where it is +1."""
    X = 0.5 * rng.standard_normal((n, T, 1))
    y = rng.integers(0, 2, n)
    X[:, 0, 0] = 2.0 * y - 1
    return X.astype("float32"), y


def build(kind, H, seed):
    rnn = (Elman(1, H, return_sequences=False, seed=seed) if kind == "elman"
           else LSTM(1, H, return_sequences=False, forget_bias=2.0, seed=seed))
    return Sequential(rnn, Dense(H, 2, seed=seed))


def accuracy(model, X, y):
    return float(np.mean(model(X).argmax(-1) == y))


def train(model, X, y, steps, batch, lr, rng):
    opt = Adam(lr=lr)
    for _ in range(steps):
        idx = rng.integers(0, len(X), batch)
        _, grads = value_and_grad(model, "cross_entropy", X[idx], y[idx])
        opt.step(model.params, grads)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/examples/gradient_flow",
                    help="folder for the pictures")
    ap.add_argument("--T", type=int, default=40, help="record length (steps to remember)")
    ap.add_argument("--hidden", type=int, default=24)
    ap.add_argument("--steps", type=int, default=300, help="training updates per network")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    out = Path(args.out)
    rng = np.random.default_rng(args.seed)
    Xtr, ytr = make_data(4000, args.T, rng)
    Xte, yte = make_data(1000, args.T, rng)
    Xp, yp = Xte[:256], yte[:256]  # the probe batch the gradient is measured on

    flows, jacs, results = {}, {}, {}
    for kind in ("elman", "lstm"):
        model = build(kind, args.hidden, args.seed)
        before = gradient_flow(model, Xp, yp, "cross_entropy")
        t0 = time.perf_counter()
        train(model, Xtr, ytr, args.steps, 32, 1e-2, np.random.default_rng(args.seed))
        secs = time.perf_counter() - t0
        after = gradient_flow(model, Xp, yp, "cross_entropy")
        jac = state_jacobians(model, Xp, record=0)
        acc = accuracy(model, Xte, yte)
        name = "Elman (tanh)" if kind == "elman" else "LSTM"
        flows[name] = (before, after)
        jacs[f"{name}: test accuracy {acc:.2f}"] = jac
        n = after.total_norms["0/l0"]
        sv = jac["singular_values"][:, 0]
        results[kind] = model
        print(f"{name:13s} trained {args.steps} steps in {secs:5.1f} s, test accuracy "
              f"{acc:.3f}; ||dL/dh_t|| at t=0 / t=T-1: {n[0]:.2e} / {n[-1]:.2e} "
              f"(ratio {n[0] / n[-1]:.1e}); sigma_max(ds_T/ds_0) = {sv[0]:.2e}")

    # ‖∂L/∂h_t‖ side by side, at initialisation (dashed) and after training (solid)
    fig = new_figure(9.0, 3.6)
    axes = fig.subplots(1, 2, sharey=True)
    for ax, (name, (before, after)) in zip(axes, flows.items()):
        for fl, style, label in ((before, "--", "at initialisation"), (after, "-", "trained")):
            y = fl.total_norms["0/l0"]
            ax.semilogy(np.arange(len(y)), np.where(y > 0, y, np.nan), style, lw=1.8,
                        label=label)
        ax.set_title(name, fontsize=11)
        ax.set_xlabel("time step t (the label is at t = 0, the loss after t = T-1)")
        ax.grid(True, which="both", alpha=0.25)
        ax.legend(fontsize=8)
    axes[0].set_ylabel(r"$\|\partial L / \partial h_t\|$ (probe batch)")
    fig.suptitle(f"gradient flow over T = {args.T} steps: remember the first value",
                 fontsize=11)
    save_figure(fig, out / "gradflow_elman_vs_lstm.png")
    plot_jacobians(jacs, out / "gradflow_jacobians.png", top=3)

    # the trained LSTM's states and gates over one record
    tr = traces(results["lstm"], Xte[0])
    plot_traces(tr, out / "trace_lstm_first_value.png", names=["h", "c", "i", "f", "o"])
    print("wrote", ", ".join(str(out / f) for f in ("gradflow_elman_vs_lstm.png",
                                                    "gradflow_jacobians.png",
                                                    "trace_lstm_first_value.png")))


if __name__ == "__main__":
    main()
