"""Jordan vs Elman on a real series: monthly sunspot numbers (Zurich, 1749–1983).

Both networks read the sunspot number s_t of one month and predict the next one, s_{t+1}.

- Elman:  h_t = tanh(U s_t + W h_{t-1} + b),  y_t = V h_t + c    (hidden-to-hidden)
- Jordan: h_t = tanh(U s_t + W y_{t-1} + b),  y_t = V h_t + c    (output-to-hidden)

The Jordan network is trained three ways:

- teacher forcing: the true previous target s_t stands in for y_{t-1}; the steps no longer
  depend on each other and the layer runs all of them as one batched step
  (``layer.forward(X, teacher=Y)``: no sequential loop, forward or backward);
- free running: its own previous output is fed back (ordinary BPTT through y);
- scheduled sampling (Bengio et al. 2015): the true value with probability falling
  linearly from 1 to 0 over training, else its own output
  (:func:`unrolled.patterns.scheduled_forward`).

Evaluation on the held-out last 820 months (1915–1983): one-step RMSE, and forecasts run
24 months ahead with each prediction fed back as the next input (and, for Jordan, as the
feedback), from many starting months. Writes two figures into --out (default
runs/examples/jordan_vs_elman).

    OPENBLAS_NUM_THREADS=1 python examples/jordan_vs_elman.py --data sunspots.csv [--epochs 300]

The data is not bundled: pass --data with the CSV of monthly sunspot numbers (a header
line, then month and count), e.g. the copy in a project's shared data folder.
"""
import argparse
import csv
import time
from pathlib import Path

import numpy as np

from unrolled.backend import limit_blas_threads
from unrolled.layers import Dense, Elman, Jordan
from unrolled.optim import Adam, clip_grad_norm
from unrolled.patterns import scheduled_backward, scheduled_forward

ROOT = Path(__file__).resolve().parents[1]
# the copy beside the project's checkout, if there is one; else --data is needed
DATA = ROOT.parent / "shared" / "data" / "monthly-sunspots" / "monthly-sunspots.csv"
H, WINDOW, STRIDE, N_TEST, HORIZON, WARMUP = 32, 120, 24, 820, 24, 120


def load(path=DATA):
    path = Path(path)
    if not path.is_file():
        raise SystemExit(f"{path}: no such file; pass --data with the CSV of monthly sunspot "
                         "numbers (month, count)")
    with open(path, newline="") as f:
        rows = list(csv.reader(f))[1:]
    return np.array([float(r[1]) for r in rows])


def windows(z):
    """(B, WINDOW, 1) inputs s_t and targets s_{t+1} cut from the training segment."""
    starts = range(0, len(z) - WINDOW - 1, STRIDE)
    X = np.stack([z[s:s + WINDOW] for s in starts])[..., None]
    Y = np.stack([z[s + 1:s + WINDOW + 1] for s in starts])[..., None]
    return X.astype(np.float32), Y.astype(np.float32)


class ElmanNet:
    def __init__(self, seed):
        self.rnn, self.out = Elman(1, H, seed=seed), Dense(H, 1, seed=seed + 1)
        self.params = {"rnn": self.rnn.params, "out": self.out.params}

    def loss_grad(self, X, Y, frac):
        h, _, c1 = self.rnn.forward(X, training=True)
        y, _, c2 = self.out.forward(h)
        d = 2 * (y - Y) / Y.size
        g2, dh, _ = self.out.backward(c2, d)
        g1, _, _ = self.rnn.backward(c1, dh)
        return float(np.mean((y - Y) ** 2)), {"rnn": g1, "out": g2}

    def predict(self, X):
        return self.out.forward(self.rnn.forward(X, keep_tape=False)[0])[0]

    def start(self, X):
        """Run over the history X (B, T, 1); the carried state and the last prediction."""
        h, state, _ = self.rnn.forward(X, keep_tape=False)
        return state, self.out.forward(h[:, -1])[0]

    def step(self, state, x):
        h, state, _ = self.rnn.forward(x[:, None], initial_state=state, keep_tape=False)
        return state, self.out.forward(h[:, 0])[0]


class JordanNet:
    """mode: "teacher", "free" or "scheduled"."""

    def __init__(self, seed, mode):
        self.rnn, self.mode = Jordan(1, H, output_size=1, seed=seed), mode
        self.params = {"rnn": self.rnn.params}
        self.rng = np.random.default_rng(seed)

    def loss_grad(self, X, Y, frac):
        if self.mode == "scheduled":
            y, cache = scheduled_forward(self.rnn, X, Y, sampling=frac, rng=self.rng)
            g, _ = scheduled_backward(self.rnn, cache, 2 * (y - Y) / Y.size)
        else:
            teacher = Y if self.mode == "teacher" else None
            y, _, cache = self.rnn.forward(X, training=True, teacher=teacher)
            g, _, _ = self.rnn.backward(cache, 2 * (y - Y) / Y.size)
        return float(np.mean((y - Y) ** 2)), {"rnn": g}

    def predict(self, X):
        return self.rnn.forward(X, keep_tape=False)[0]

    def start(self, X):
        y, state, _ = self.rnn.forward(X, keep_tape=False)
        return state, y[:, -1]

    def step(self, state, x):
        y, state, _ = self.rnn.forward(x[:, None], initial_state=state, keep_tape=False)
        return state, y[:, 0]


def train(net, X, Y, epochs, lr=3e-3):
    """Full-batch Adam; returns (median seconds per epoch, loss curve)."""
    opt = Adam(lr)
    times, curve = [], []
    for e in range(epochs):
        t0 = time.perf_counter()
        loss, g = net.loss_grad(X, Y, frac=e / max(epochs - 1, 1))
        clip_grad_norm(g, 1.0)
        opt.step(net.params, g)
        times.append(time.perf_counter() - t0)
        curve.append(loss)
    return float(np.median(times)), curve


def one_step(net, z, start, observed=False):
    """Predictions of z[start+1:] from the true inputs z[:-1], one pass over the whole
    series. Jordan's feedback is its own previous output, or with ``observed`` the
    observed previous value (known when forecasting one step ahead)."""
    X = z[None, :-1, None].astype(np.float32)
    if observed:
        y = net.rnn.forward(X, teacher=z[None, 1:, None].astype(np.float32),
                            keep_tape=False)[0]
    else:
        y = net.predict(X)
    return y[0, start - 1:, 0]


def multi_step(net, z, origins):
    """(len(origins), HORIZON) forecasts, each output fed back as the next input."""
    hist = np.stack([z[o - WARMUP:o] for o in origins])[..., None].astype(np.float32)
    state, y = net.start(hist)
    out = [y]
    for _ in range(HORIZON - 1):
        state, y = net.step(state, y)
        out.append(y)
    return np.concatenate(out, 1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=300)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--data", default=str(DATA), help="CSV of monthly sunspot numbers")
    ap.add_argument("--out", default="runs/examples/jordan_vs_elman",
                    help="folder for the figures")
    a = ap.parse_args()
    limit_blas_threads()
    s = load(a.data)
    train_end = len(s) - N_TEST
    mu, sd = s[:train_end].mean(), s[:train_end].std()
    z = (s - mu) / sd
    X, Y = windows(z[:train_end])
    print(f"monthly sunspots: {len(s)} months; train {train_end} (1749-{1749 + train_end // 12 - 1}),"
          f" test {N_TEST}; {len(X)} training windows of {WINDOW} months")
    origins = np.arange(train_end, len(s) - HORIZON, 3)
    truth = np.stack([s[o:o + HORIZON] for o in origins])
    persistence = np.sqrt(((truth - s[origins - 1][:, None]) ** 2).mean(0))
    kinds = {"Elman": lambda sd_: ElmanNet(sd_),
             "Jordan, teacher forcing": lambda sd_: JordanNet(sd_, "teacher"),
             "Jordan, scheduled sampling": lambda sd_: JordanNet(sd_, "scheduled"),
             "Jordan, free running": lambda sd_: JordanNet(sd_, "free")}
    results = {}
    for name, make in kinds.items():
        rows, obs = [], []
        for seed in range(a.seeds):
            net = make(seed)
            secs, curve = train(net, X, Y, a.epochs)
            p1 = one_step(net, z, train_end) * sd + mu
            rmse1 = float(np.sqrt(np.mean((p1 - s[train_end:]) ** 2)))
            f = multi_step(net, z, origins) * sd + mu
            if isinstance(net, JordanNet):
                po = one_step(net, z, train_end, observed=True) * sd + mu
                obs.append(float(np.sqrt(np.mean((po - s[train_end:]) ** 2))))
            rows.append((secs, rmse1, np.sqrt(((f - truth) ** 2).mean(0)), f, curve))
        secs = np.mean([r[0] for r in rows])
        r1 = [r[1] for r in rows]
        hz = np.mean([r[2] for r in rows], 0)
        results[name] = {"secs": secs, "rmse1": r1, "horizon": hz, "forecast": rows[0][3]}
        print(f"{name:<28} train {secs * 1e3:6.1f} ms/epoch  one-step RMSE "
              f"{np.mean(r1):5.1f} ± {np.std(r1):4.1f}   {HORIZON}-month mean RMSE "
              f"{hz.mean():5.1f}  (h=1 {hz[0]:5.1f}, h=12 {hz[11]:5.1f}, h=24 {hz[23]:5.1f})")
        if obs:
            print(f"{'':<28}   one-step RMSE with the observed value fed back: "
                  f"{np.mean(obs):5.1f} ± {np.std(obs):4.1f}")
    print(f"{'persistence (last value)':<28} {'':>24}one-step RMSE "
          f"{np.sqrt(np.mean((s[train_end - 1:-1] - s[train_end:]) ** 2)):5.1f}"
          f"{'':>10}{HORIZON}-month mean RMSE {persistence.mean():5.1f}  (h=1 "
          f"{persistence[0]:5.1f}, h=12 {persistence[11]:5.1f}, h=24 {persistence[23]:5.1f})")
    plot(results, persistence, s, origins, Path(a.out))


def plot(results, persistence, s, origins, out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4))
    h = np.arange(1, HORIZON + 1)
    for name, r in results.items():
        ax.plot(h, r["horizon"], marker=".", label=name)
    ax.plot(h, persistence, "k--", label="persistence (last value)")
    ax.set_xlabel("months ahead (outputs fed back as inputs)")
    ax.set_ylabel("RMSE (sunspot number)")
    ax.set_title("Monthly sunspots, test 1915–1983: forecast error by horizon")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "jordan_vs_elman_horizon.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(9, 4))
    pick = origins[::8][:12]
    first = origins[0]
    span = np.arange(first - 12, pick[-1] + HORIZON)
    ax.plot(span, s[span], color="0.6", lw=1, label="observed")
    for k, (name, r) in enumerate(results.items()):
        if name not in ("Elman", "Jordan, teacher forcing"):
            continue
        for j, o in enumerate(pick):
            row = np.flatnonzero(origins == o)[0]
            ax.plot(np.arange(o, o + HORIZON), r["forecast"][row], color=f"C{k}", lw=1.2,
                    label=name if j == 0 else None)
    ax.set_xlabel("month index")
    ax.set_ylabel("sunspot number")
    ax.set_title("24-month forecasts from every 24th month of the test period")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "jordan_vs_elman_forecasts.png", dpi=110)
    plt.close(fig)
    print(f"figures: {out / 'jordan_vs_elman_horizon.png'}, "
          f"{out / 'jordan_vs_elman_forecasts.png'}")


if __name__ == "__main__":
    main()
