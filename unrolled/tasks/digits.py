"""``digits``: classify handwritten digits read row by row (many-to-one over 8 steps).

Data: the UCI optdigits files (``optdigits.tra`` / ``optdigits.tes``: 64 block counts
0..16 of an 8x8 image, then the class). An image is a sequence of 8 rows of 8 values,
scaled to 0..1. ``--data`` may be the directory holding both files (the test set is
``optdigits.tes``, the validation set is held out of ``optdigits.tra``), a training file
whose test file sits beside it (``X.tra`` -> ``X.tes``, ``X-train.csv`` -> ``X-test.csv``,
as in the bundled samples), or a single file, which is then split three ways.
"""
from pathlib import Path

import numpy as np

from ..data import read_optdigits
from .base import SequenceClassification, recurrent_class, stratified_split

_PAIRS = ((".tra", ".tes"), ("-train.csv", "-test.csv"), ("train.csv", "test.csv"))


def find_files(path):
    """(train file, test file or None) for a directory or a file."""
    path = Path(path).expanduser()
    if path.is_dir():
        for tr, te in _PAIRS:
            trains = sorted(path.glob(f"*{tr}"))
            if trains and trains[0].with_name(trains[0].name[:-len(tr)] + te).exists():
                return trains[0], trains[0].with_name(trains[0].name[:-len(tr)] + te)
        raise ValueError(f"{path}: no optdigits files in this directory; expected optdigits.tra "
                         "and optdigits.tes (or NAME-train.csv and NAME-test.csv)")
    for tr, te in _PAIRS:
        if path.name.endswith(tr):
            test = path.with_name(path.name[: -len(tr)] + te)
            return path, (test if test.exists() else None)
    return path, None


class DigitsTask(SequenceClassification):
    """An 8x8 optdigits image -> its digit, read one row per time step (many-to-one)."""

    name = "digits"
    summary = "classify handwritten digits read row by row (UCI optdigits: 8 steps of 8 values)"
    default_data = "optdigits-train"
    defaults = {
        "cell": "gru",          # gru | lstm | elman
        "hidden": 64,
        "layers": 1,
        "bidirectional": False,
        "val_fraction": 0.1,    # held out of the training file
        "test_fraction": 0.2,   # used only when there is no separate test file
        "epochs": 20,
        "batch_size": 32,
        "lr": 5e-3,
        "schedule": "cosine",
        "patience": 0,
    }
    help = {
        "cell": "recurrent cell: gru, lstm or elman",
        "hidden": "hidden units of the recurrent layer",
        "layers": "stacked recurrent layers",
        "bidirectional": "read the rows in both directions",
        "val_fraction": "share of the training file held out for validation",
        "test_fraction": "share held out for the test when there is no test file",
    }
    batch_dtype = "float32"

    def __init__(self, config, state=None):
        super().__init__(config, state)
        self.classes = [str(d) for d in range(10)]
        self.sizes = dict(state.get("sizes", {})) if state else {}

    def load(self, path):
        cfg = self.config
        train_file, test_file = find_files(path)
        X, y = read_optdigits(train_file, dtype=np.float32)
        rng = np.random.default_rng(np.random.SeedSequence([int(cfg["seed"]), 0]))
        if test_file is not None:
            Xt, yt = read_optdigits(test_file, dtype=np.float32)
            tr, va = stratified_split(y, (cfg["val_fraction"],), rng)
            parts = {"train": (X[tr], y[tr]), "val": (X[va], y[va]), "test": (Xt, yt)}
        else:
            tr, va, te = stratified_split(y, (cfg["val_fraction"], cfg["test_fraction"]), rng)
            parts = {"train": (X[tr], y[tr]), "val": (X[va], y[va]), "test": (X[te], y[te])}
        for split, (Xs, ys) in parts.items():
            if not len(ys):
                raise ValueError(f"{path}: too few images to make a {split} set; pass more data")
            self.records[split] = list(Xs / 16.0)   # (8, 8) per image, values 0..1
            self.labels[split] = ys
            self.sizes[split] = len(ys)
        self.files = (str(train_file), None if test_file is None else str(test_file))

    def load_eval(self, path):
        path = Path(path).expanduser()
        if path.is_dir():
            train_file, test_file = find_files(path)
            path = test_file or train_file  # the test file when the folder has one
        X, y = read_optdigits(path, dtype=np.float32)
        self.records["eval"], self.labels["eval"] = list(X / 16.0), y
        self.labels.setdefault("train", y)

    def describe(self):
        test = self.files[1] or "held out of the training file"
        return [(f"digits: train {self.sizes['train']}, val {self.sizes['val']}, test "
                 f"{self.sizes['test']} images of 8 rows x 8 values (test: {test})")]

    def encode(self, raw):
        """64 comma-separated values 0..16 (one optdigits row without the class) -> (8, 8)."""
        try:
            v = np.array([float(s) for s in str(raw).split(",")], dtype=np.float32)
        except ValueError:
            raise ValueError(f"{raw!r}: pass an image as 64 comma-separated numbers 0..16") from None
        if v.size != 64:
            raise ValueError(f"an image needs 64 values (8 rows of 8), got {v.size}")
        return v.reshape(8, 8) / 16.0

    def state(self):
        return {"classes": self.classes, "sizes": self.sizes}

    def build_model(self):
        from .. import layers as L

        cfg = self.config
        seeds = np.random.SeedSequence([int(cfg["seed"]), 2]).generate_state(2)
        rnn = recurrent_class(cfg["cell"])(8, cfg["hidden"], num_layers=cfg["layers"],
                                           bidirectional=cfg["bidirectional"],
                                           return_sequences=False, seed=int(seeds[0]))
        return L.Sequential(rnn, L.Dense(rnn.output_size, 10, seed=int(seeds[1])))
