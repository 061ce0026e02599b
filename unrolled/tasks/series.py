"""The ``series`` task: forecast one column of a CSV time series from a window of the past.

Each record is a window of ``window`` consecutive rows (every input channel) and its
target is the target column ``horizon`` rows after the window's last row; an LSTM reads
the window and a Dense layer gives the forecast from its last state (regression on the
last step, squared-error loss).

Honest preparation, in this order:

1. **Split in time**: windows are ordered by their forecast time; the last
   ``test_fraction`` are the test windows, the ``val_fraction`` before them validate, the
   rest train. No window of a later split lends its target to an earlier one.
2. **Normalise** every numeric column with the mean and standard deviation of the rows
   the training windows cover (``log = true`` first takes the logarithm of the target).
   One-hot columns of categorical text columns stay 0/1.
3. **Missing inputs** are imputed by carrying the last observed value forward (the
   training mean before the first observation) and flagged: every column with missing
   values gets an indicator channel that is 1 where the value was imputed.
4. **Missing targets** are masked out of the loss (``Batch.loss_mask``) and out of every
   metric; the windows stay in the data (their inputs are real) and nothing is set to
   zero. The number of missing values is reported per column and per split.
5. **Baselines** on the same test windows and the same targets, in original units:
   naive (the last observed value at the forecast origin) and seasonal naive (the
   value one season before the forecast time, ``season`` rows).

With ``delta = true`` (default) the network predicts the change from the last observed
target value, in normalised units, which lets it follow a trend beyond the training range.

Every window is read from the zero state and its forecast is backpropagated through the
whole window: full BPTT over ``window`` steps, no state carried between records. For
stateful training on one long series with TBPTT(k1, k2), use
:class:`unrolled.streams.TBPTT` with :func:`unrolled.data.stream_batches` (docs/tasks.md).
"""
import re
import warnings
from pathlib import Path
from typing import ClassVar

import numpy as np

from ..data import read_csv_series
from ..layers import Dense, Sequential
from .base import Batch, Task, recurrent_class

__all__ = ["SeriesTask", "baselines", "forward_fill", "prepare_series"]


# ------------------------------------------------------------------------ plain functions

def forward_fill(values, fill=0.0):
    """Replace each NaN by the last non-NaN value above it in its column.

    ``values`` (N, F); NaNs before a column's first observation become ``fill``.
    """
    v = np.array(values, dtype=np.float64, copy=True)
    N = v.shape[0]
    ok = ~np.isnan(v)
    # index of the last observed row at or before each row (-1: none yet)
    idx = np.where(ok, np.arange(N)[:, None], -1)
    np.maximum.accumulate(idx, axis=0, out=idx)
    out = np.take_along_axis(v, np.maximum(idx, 0), axis=0)
    out[idx < 0] = fill
    return out


def baselines(y_filled, origins, targets_at, season):
    """Naive and seasonal-naive forecasts.

    Parameters
    ----------
    y_filled : (N,) the target series with missing values carried forward (NaN before
        the first observation).
    origins : (M,) row of each window's last input step (the forecast origin).
    targets_at : (M,) row each forecast is for.
    season : int, rows per season (0: no seasonal baseline).

    Returns
    -------
    (naive, seasonal) : (M,) arrays; NaN where a baseline is not defined.
    """
    naive = y_filled[origins]
    if not season:
        return naive, np.full(len(origins), np.nan)
    h = targets_at - origins
    back = targets_at - season * np.ceil(h / season).astype(np.int64)  # <= origin
    seasonal = np.where(back >= 0, y_filled[np.maximum(back, 0)], np.nan)
    return naive, seasonal


def prepare_series(cs, target, window, horizon, val_fraction, test_fraction, stats=None,
                   log=False, change=True):
    """Arrays for the network from a :class:`unrolled.data.CSVSeries`.

    Parameters
    ----------
    cs : the series read by :func:`unrolled.data.read_csv_series`.
    target : name of the target column (one of ``cs.columns``).
    window, horizon : ints >= 1.
    val_fraction, test_fraction : shares of the windows (in time order) for val and test.
    stats : None to fit the statistics on the training rows, or the dict returned before
        (``"mean"``, ``"std"``, ``"flagged"``) to apply them to new data.
    log : take the logarithm of the target first.
    change : add a channel with the target's change from the previous row (normalised
        units, after imputation), which makes seasonal patterns of the changes easy to see.

    Returns
    -------
    dict with ``X`` (N, C) float32 input channels per row, ``channels`` (C names),
    ``y`` (N,) raw target, ``y_filled``, ``yt`` (N,) transformed and normalised target
    with NaN where missing, ``base`` (N,) normalised last observed target (for
    ``delta``), ``origins``/``targets_at`` (M,) rows of each window, ``splits`` (name ->
    window index array), ``stats``.
    """
    N = cs.values.shape[0]
    M = N - window - horizon + 1
    if M < 3:
        raise ValueError(f"{cs.path}: {N} rows are too few for window={window} and "
                         f"horizon={horizon}; use a shorter --window or --horizon")
    j = cs.columns.index(target)
    vals = cs.values.astype(np.float64, copy=True)
    y = vals[:, j].copy()
    if log:
        present = ~np.isnan(y)
        if (y[present] <= 0).any():
            raise ValueError(f"{cs.path}: --log needs a positive target, but column "
                             f"{target!r} has values <= 0; use --log false")
        vals[:, j] = np.log(vals[:, j])

    # -- split the windows in time: by the row each one forecasts
    n_test = round(M * test_fraction) if stats is None else M
    n_val = round(M * val_fraction) if stats is None else 0
    n_train = M - n_val - n_test
    if stats is None and (n_train < 1 or (val_fraction and n_val < 1)
                          or (test_fraction and n_test < 1)):
        raise ValueError(f"{cs.path}: {M} windows cannot be split into train/val/test with "
                         f"--val-fraction {val_fraction} and --test-fraction {test_fraction}; "
                         "use more rows or a shorter --window")
    order = np.arange(M)
    splits = {"train": order[:n_train], "val": order[n_train:n_train + n_val],
              "test": order[n_train + n_val:]} if stats is None else {"eval": order}

    onehot = np.array(["=" in c and c.split("=", 1)[0] in cs.categories for c in cs.columns])
    if stats is None:
        # statistics of the rows the training windows cover, NaNs ignored
        rows = slice(0, n_train - 1 + window + horizon)
        train = vals[rows]
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an empty column: named below
            mean = np.nanmean(train, axis=0)
            std = np.nanstd(train, axis=0)
        empty = np.isnan(mean) & ~onehot
        if empty[j]:
            raise ValueError(f"{cs.path}: the target column {target!r} has no value in the "
                             "training part; fill it in, or forecast another --target")
        if empty.any():
            names = [c for c, e in zip(cs.columns, empty) if e]
            raise ValueError(f"{cs.path}: column(s) {names} have no value in the training "
                             "part; leave them out of --features")
        mean = np.where(onehot | np.isnan(mean), 0.0, mean)
        std = np.where(onehot | ~(std > 1e-12), 1.0, std)
        # one indicator channel per source column with missing values
        flagged = []
        for c, miss in zip(cs.columns, cs.missing.T):
            src = c.split("=", 1)[0] if "=" in c and c.split("=", 1)[0] in cs.categories else c
            if miss.any() and src not in flagged:
                flagged.append(src)
        stats = {"mean": mean.tolist(), "std": std.tolist(), "flagged": flagged}
    mean, std = np.array(stats["mean"]), np.array(stats["std"])
    z = (vals - mean) / std                                  # (N, F), NaN where missing
    filled = forward_fill(z, fill=0.0)                       # 0 = the training mean
    flags = []
    for src in stats["flagged"]:
        cols = [k for k, c in enumerate(cs.columns) if c == src or c.startswith(src + "=")]
        flags.append(cs.missing[:, cols].any(axis=1) if cols else np.zeros(N, bool))
    extra, channels = [], list(cs.columns)
    if change:
        extra.append(np.diff(filled[:, j], prepend=filled[0, j])[:, None])
        channels.append(f"{target} change")
    extra += [f[:, None].astype(np.float64) for f in flags]
    channels += [f"{s} missing" for s in stats["flagged"]]
    X = np.concatenate([filled] + extra, axis=1)

    origins = order + window - 1
    targets_at = origins + horizon
    big = np.abs(vals[~np.isnan(vals)]).max(initial=0.0)
    if not (np.isfinite(z[~np.isnan(z)]).all() and np.isfinite(big) and big < 1e150):
        raise ValueError(f"{cs.path}: values up to {big:.3g} are too large to train on "
                         "(their squares overflow); rescale the columns, e.g. to other units")
    for name, idx in splits.items():
        # every split needs a target to score, checked before training starts
        if len(idx) and np.isnan(y[targets_at[idx]]).all():
            rows = targets_at[idx]
            raise ValueError(f"{cs.path}: every target of the {name} part (rows "
                             f"{rows.min() + 2} to {rows.max() + 2} of the file) is missing, "
                             f"so it cannot be scored; fill in {target!r} there or change "
                             "--val-fraction / --test-fraction")
    y_filled = forward_fill(y[:, None], fill=np.nan)[:, 0]
    return {"X": X.astype(np.float32), "channels": channels, "y": y, "y_filled": y_filled,
            "yt": z[:, j], "base": filled[:, j], "origins": origins, "targets_at": targets_at,
            "splits": splits, "stats": stats, "target_col": j}


# ------------------------------------------------------------------------------- the task

class SeriesTask(Task):
    name = "series"
    summary = "forecast a column of a CSV time series (RMSE/MAE vs naive and seasonal naive)"
    defaults: ClassVar[dict] = {
        "target": "",           # column to forecast ("": the last numeric column)
        "features": [],         # input columns besides the target ([]: every other column)
        "categorical": [],      # text columns to one-hot encode
        "index": "",            # a label column (dates) left out of the inputs
        "window": 12,           # input rows per forecast
        "horizon": 1,           # rows ahead of the window's last row
        "season": 12,           # rows per season for the seasonal-naive baseline (0: none)
        "log": False,           # forecast the logarithm of a positive target
        "delta": True,          # predict the change from the last observed target value
        "cell": "lstm",         # lstm | gru | elman
        "hidden": 32,
        "layers": 1,
        "dropout": 0.0,
        "val_fraction": 0.15,
        "test_fraction": 0.2,
        "plot_points": 500,     # test windows drawn in the forecast plot (the last ones)
        # trainer options for a small series; seconds on the bundled airline data
        "epochs": 150,
        "batch_size": 16,
        "lr": 3e-3,
        "patience": 30,
    }
    help: ClassVar[dict] = {
        "target": "column to forecast; default: the last numeric column",
        "features": "comma-separated input columns besides the target; default: all others",
        "categorical": "comma-separated text columns to one-hot encode",
        "index": "label column (e.g. dates) kept out of the inputs",
        "window": "input rows per forecast",
        "horizon": "how many rows after the last input row the forecast is for",
        "season": "rows per season for the seasonal-naive baseline; 0: none",
        "log": "forecast the logarithm of the target (positive series with growing swings)",
        "delta": "predict the change from the last observed target value",
        "cell": "recurrent cell: lstm, gru or elman",
        "hidden": "hidden units of the recurrent layer",
        "layers": "stacked recurrent layers",
        "dropout": "dropout between stacked recurrent layers",
        "val_fraction": "share of the windows (after train, in time) for validation",
        "test_fraction": "share of the windows at the end held out for the test",
        "plot_points": "how many of the last test windows the forecast plot shows",
    }
    default_data = "airline-passengers"
    loss = "mse"
    monitor = "loss"
    monitor_mode = "min"

    def __init__(self, config, state=None):
        super().__init__(config, state)
        self.saved = state or {}
        self.data = {}

    # -- data ---------------------------------------------------------------------------
    def _check_config(self):
        c = self.config
        for key in ("window", "horizon"):
            if c[key] < 1:
                raise ValueError(f"--{key} must be at least 1, got {c[key]}")
        if c["season"] < 0:
            raise ValueError(f"--season must be >= 0, got {c['season']}")
        recurrent_class(c["cell"])  # refuses an unknown --cell early, before any data is read
        for key in ("val_fraction", "test_fraction"):
            if not 0 <= c[key] < 1:
                raise ValueError(f"--{key.replace('_', '-')} must be in [0, 1), got {c[key]}")

    def _read(self, path, fixed=None):
        """The CSVSeries of ``path`` with the configured (or saved) columns; the reader's
        advice is given in command-line terms."""
        try:
            return self._read_csv(path, fixed)
        except ValueError as e:
            msg = re.sub(r"pass categorical=\[(.*?)\]",
                         lambda m: "pass --categorical " + m.group(1).replace("'", ""), str(e))
            msg = msg.replace("leave it out of columns", "leave it out of --features")
            raise ValueError(msg) from None

    def _read_csv(self, path, fixed=None):
        c = self.config
        if fixed:
            return read_csv_series(path, columns=fixed["columns_read"], target=fixed["target"],
                                   categorical=fixed["categories"],
                                   index=fixed["index"] or None)
        cat = list(c["categorical"])
        index = c["index"] or None
        target = c["target"] or None
        cols = list(c["features"]) or None
        if cols is not None:
            cols = cols + cat if target is None else cols + [n for n in cat if n not in cols]
            cols = list(dict.fromkeys(cols))
        if target is None:
            probe = read_csv_series(path, columns=cols, categorical=cat, index=index)
            numeric = [n for n in probe.columns if "=" not in n or n.split("=")[0] not in cat]
            if not numeric:
                raise ValueError(f"{path}: no numeric column to forecast; pass --target NAME")
            target = numeric[-1]
        return read_csv_series(path, columns=cols, target=target, categorical=cat, index=index)

    def load(self, path):
        self._check_config()
        c = self.config
        cs = self._read(path)
        self.cs = cs
        self.data = prepare_series(cs, cs.target, c["window"], c["horizon"], c["val_fraction"],
                                   c["test_fraction"], log=c["log"], change=c["delta"])
        self.data["path"] = str(path)
        # what the columns were, so new data is read the same way
        source = []
        for n in cs.columns:
            s = n.split("=", 1)[0] if "=" in n and n.split("=", 1)[0] in cs.categories else n
            if s not in source:
                source.append(s)
        self.saved = {"target": cs.target, "columns": cs.columns, "columns_read": source,
                      "categories": cs.categories, "index": c["index"],
                      "channels": self.data["channels"], "stats": self.data["stats"],
                      "missing": {k: int(v) for k, v in cs.missing_counts.items()},
                      "rows": int(cs.values.shape[0]),
                      "windows": {k: len(v) for k, v in self.data["splits"].items()}}

    def load_eval(self, path):
        c = self.config
        cs = self._read(path, fixed=self.saved)
        if cs.columns != self.saved["columns"]:
            raise ValueError(f"{path}: the columns read {cs.columns} differ from the model's "
                             f"{self.saved['columns']}; use data with the same columns")
        self.cs = cs
        self.data = prepare_series(cs, self.saved["target"], c["window"], c["horizon"], 0, 0,
                                   stats=self.saved["stats"], log=c["log"], change=c["delta"])
        self.data["path"] = str(path)

    def _missing_targets(self, split):
        d = self.data
        idx = d["splits"][split]
        return int(np.isnan(d["yt"][d["targets_at"][idx]]).sum())

    def describe(self):
        d, cs = self.data, self.cs
        lines = [(f"series: {cs.values.shape[0]} rows; target {cs.target!r}; "
                  f"{len(d['channels'])} input channels: {', '.join(d['channels'])}"),
                 f"windows of {self.config['window']} rows, forecast {self.config['horizon']} "
                 "row(s) ahead; split in time: "
                 + ", ".join(f"{k} {len(v)}" for k, v in d["splits"].items()),
                 cs.describe_missing()]
        if cs.dropped:
            lines.append(f"text columns left out: {', '.join(cs.dropped)} (pass --categorical "
                         "to use them)")
        if d["stats"]["flagged"]:
            lines.append("missing inputs: last observation carried forward, flagged in an "
                         "indicator channel each (" + ", ".join(d["stats"]["flagged"]) + ")")
        miss = {k: self._missing_targets(k) for k in d["splits"]}
        if any(miss.values()):
            lines.append("missing targets, masked out of the loss and the metrics: "
                         + ", ".join(f"{k} {v} of {len(d['splits'][k])}"
                                     for k, v in miss.items()))
        return lines

    def state(self):
        return self.saved

    # -- model and batches ---------------------------------------------------------------
    def build_model(self):
        c = self.config
        cls = recurrent_class(c["cell"])
        C = len(self.data["channels"]) if self.data else len(self.saved["channels"])
        return Sequential(
            cls(C, c["hidden"], num_layers=c["layers"], dropout=c["dropout"],
                return_sequences=False, seed=c["seed"]),
            Dense(c["hidden"], 1, seed=c["seed"] + 1))

    def _arrays(self, idx):
        """Inputs (B, window, C), normalised targets (B, 1) with NaN where missing, and
        the target mask (B, 1)."""
        d, w = self.data, self.config["window"]
        starts = d["origins"][idx] - (w - 1)
        X = d["X"][starts[:, None] + np.arange(w)]           # (B, window, C)
        t = d["yt"][d["targets_at"][idx]]
        if self.config["delta"]:
            t = t - d["base"][d["origins"][idx]]
        ok = ~np.isnan(t)
        return X, t[:, None].astype(np.float32), ok[:, None]

    def epoch_batches(self, rng):
        idx = self.data["splits"]["train"]
        idx = idx[rng.permutation(len(idx))]
        B = self.config["batch_size"]
        batches = [idx[i:i + B] for i in range(0, len(idx), B)]
        # a batch whose targets are all missing gives no loss: join it to a neighbour
        ok = ~np.isnan(self.data["yt"][self.data["targets_at"]])
        out = []
        for b in batches:
            if out and (not ok[b].any() or not ok[out[-1]].any()):
                out[-1] = np.concatenate([out[-1], b])
            else:
                out.append(b)
        if not any(ok[b].any() for b in out):
            raise ValueError(f"{self.data['path']}: every training target is missing; check "
                             "--target")
        return out

    def get_batch(self, split, key):
        X, Y, ok = self._arrays(np.asarray(key))
        return Batch(X=X, Y=Y, size=len(X), loss_mask=ok)

    # -- metrics and use -----------------------------------------------------------------
    def forecast(self, model, split, batch_size=1024):
        """Forecasts of ``split`` in original units, with the truth and the baselines.

        Returns a dict of (M,) arrays: ``pred``, ``true`` (NaN where missing),
        ``naive``, ``seasonal``, ``pred_norm``, ``true_norm``, and ``at`` (rows).
        """
        d, c = self.data, self.config
        idx = d["splits"][split]
        preds, trues = [], []
        for i in range(0, len(idx), batch_size):
            X, t, _ = self._arrays(idx[i:i + batch_size])
            preds.append(model(X)[:, 0].astype(np.float64))
            trues.append(t[:, 0].astype(np.float64))
        pn, tn = np.concatenate(preds), np.concatenate(trues)
        j = d["target_col"]
        mean, std = d["stats"]["mean"][j], d["stats"]["std"][j]
        z = pn + (d["base"][d["origins"][idx]] if c["delta"] else 0.0)
        pred = z * std + mean
        if c["log"]:
            pred = np.exp(pred)
        naive, seasonal = baselines(d["y_filled"], d["origins"][idx], d["targets_at"][idx],
                                    c["season"])
        return {"pred": pred, "true": d["y"][d["targets_at"][idx]], "naive": naive,
                "seasonal": seasonal, "pred_norm": pn, "true_norm": tn,
                "at": d["targets_at"][idx]}

    def evaluate(self, model, split):
        """``loss`` (normalised MSE), ``rmse`` and ``mae`` in original units; outside the
        per-epoch validation also ``naive_*`` and ``seasonal_naive_*`` on the same targets."""
        if split not in self.data.get("splits", {}):
            raise ValueError(f"series task: no {split!r} split loaded")
        f = self.forecast(model, split)
        ok = ~np.isnan(f["true"])
        if not ok.any():
            raise ValueError(f"every target of the {split} split is missing; nothing to score")
        res = {"loss": float(np.mean((f["pred_norm"][ok] - f["true_norm"][ok]) ** 2))}
        # the model and the baselines on the same targets: present, and baselines defined
        season = self.config["season"]
        both = ok & ~np.isnan(f["naive"])
        if season:
            both &= ~np.isnan(f["seasonal"])
        if not both.any():
            both = ok
        scored = [("", f["pred"])]
        if split != "val":  # the baselines do not change from epoch to epoch
            scored.append(("naive_", f["naive"]))
            if season:
                scored.append(("seasonal_naive_", f["seasonal"]))
        for name, p in scored:
            err = p[both] - f["true"][both]
            res[name + "rmse"] = float(np.sqrt(np.mean(err ** 2)))
            res[name + "mae"] = float(np.mean(np.abs(err)))
        return res

    def report(self, model, out_dir, split="test"):
        """Test metrics next to the baselines, missing values, and ``forecast.png``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        m = self.evaluate(model, split)
        f = self.forecast(model, split)
        tgt = self.saved["target"]
        n = len(f["true"])
        miss = int(np.isnan(f["true"]).sum())
        lines = [(f"{split}: {n} forecasts of {tgt!r}, {self.config['horizon']} row(s) ahead; "
                  f"{miss} missing target(s) left out of the metrics"),
                 f"{'':16} {'rmse':>10} {'mae':>10}",
                 f"{'model':16} {m['rmse']:>10.3f} {m['mae']:>10.3f}",
                 f"{'naive':16} {m['naive_rmse']:>10.3f} {m['naive_mae']:>10.3f}"]
        if "seasonal_naive_rmse" in m:
            lines.append(f"{'seasonal naive':16} {m['seasonal_naive_rmse']:>10.3f} "
                         f"{m['seasonal_naive_mae']:>10.3f}   (season {self.config['season']})")
            lines.append(f"model rmse / seasonal-naive rmse: "
                         f"{m['rmse'] / m['seasonal_naive_rmse']:.3f}")
        lines.append("missing values in the file: " + (", ".join(
            f"{k} {v}" for k, v in self.saved["missing"].items() if v) or "none"))
        path = out / "forecast.png"
        self.plot(f, path, title=f"{tgt}: {split} forecasts, {self.config['horizon']} ahead")
        self.last_report = {"metrics": m, "text": "\n".join(lines)}
        return {"forecast plot": str(path)}

    def plot(self, f, path, title=""):
        """Forecast vs truth (and the seasonal-naive baseline) as a PNG."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        k = self.config["plot_points"]
        sl = slice(-k, None) if k else slice(None)
        if k and len(f["at"]) > k:  # say that the picture is a part of the forecasts
            title = (f"{title} (the last {k} of {len(f['at'])}; --plot-points 0 draws all)"
                     if title else f"the last {k} of {len(f['at'])} forecasts")
        at = f["at"][sl]
        fig, ax = plt.subplots(figsize=(10, 4))
        ax.plot(at, f["true"][sl], color="black", lw=1.2, label="truth")
        if self.config["season"]:
            ax.plot(at, f["seasonal"][sl], color="tab:gray", lw=0.8, ls="--",
                    label="seasonal naive")
        ax.plot(at, f["pred"][sl], color="tab:red", lw=1.2, label="forecast")
        ax.set_xlabel("row of the file")
        ax.set_ylabel(self.saved["target"])
        ax.set_title(title)
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path

    def predict(self, model, inputs, top=3):
        """For each CSV file: the forecast ``horizon`` rows after its last row."""
        lines = []
        c = self.config
        for p in inputs:
            cs = self._read(p, fixed=self.saved)
            if cs.values.shape[0] < c["window"]:
                raise ValueError(f"{p}: {cs.values.shape[0]} rows, the model reads windows "
                                 f"of {c['window']}; pass a longer file")
            # one extra (missing) target row per step ahead, so the last window is usable
            pad = np.full((c["horizon"], cs.values.shape[1]), np.nan)
            cs.values = np.concatenate([cs.values, pad])
            cs.missing = np.concatenate([cs.missing, np.ones(pad.shape, bool)])
            d = prepare_series(cs, self.saved["target"], c["window"], c["horizon"], 0, 0,
                               stats=self.saved["stats"], log=c["log"], change=c["delta"])
            self.data = d
            f = self.forecast(model, "eval")
            value = f["pred"][-1]
            lines.append(f"{p}: {self.saved['target']} {c['horizon']} row(s) after the last "
                         f"row: {value:.4g}")
        return lines
