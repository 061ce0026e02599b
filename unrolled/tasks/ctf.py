"""``ctf``: learn from a CNTK Text Format file, one label per sequence or one per step.

    unrolled train ctf --data train.ctf --features x --labels y [--streams x:8:dense,y:2:sparse]

Data: a CTF file (see ``docs/ctf.md``) with a feature stream (``--features``, dense or
sparse; its rows are the input vectors, one per step) and a label stream (``--labels``).
The stream table is inferred from the file (:func:`unrolled.data.ctf.infer_ctf_streams`)
unless ``--streams`` gives it as ``name:dim:kind`` items; other streams are skipped.

A label row is a class: the index of its largest value for a one-hot stream (dim >= 2,
dense or sparse, the CNTK way), or the value itself for a dense stream of dim 1 (class
ids 0, 1, ...). The shape of the problem is read off the file:

- every sequence has one label row: **sequence classification** (many-to-one; the
  recurrent layer is folded to its last valid step, as in ``names`` and ``digits``);
- every sequence has as many label rows as feature rows: **tagging** (many-to-many,
  one class per step, loss and metrics per step).

The sequences are split at random into train, validation and test parts
(``val_fraction``, ``test_fraction``; stratified by class for sequence classification).
Metrics: loss, accuracy and macro-F1 (per sequence, or per step for tagging), against
the majority-class baseline in the report; for BIO/IOB2 tags (class names ``B-X``,
``I-X``, ``O``) also conlleval's span precision, recall and F1.

CNTK's ATIS recipe (Embedding 150 -> BiLSTM 300 -> Dense over a 943-word sparse stream):
``--embedding N`` reads a sparse one-hot feature stream as word ids into an embedding of
N (instead of dense one-hot rows into the recurrent layer), ``--dropout p`` adds dropout
around and between the recurrent layers, ``--label-names FILE.wl`` and
``--feature-names FILE.wl`` name the classes and the words (one name per line, CNTK's
vocabulary files), and ``--first-label true`` keeps the first label row of a sequence
that has several (a compound intent).
"""
from pathlib import Path

import numpy as np

from ..losses import log_softmax
from .base import Batch, SequenceClassification, recurrent_class, stratified_split

_KINDS = ("dense", "sparse")


def parse_streams(text):
    """``"x:8:dense,y:2:sparse"`` -> ``{"x": (8, "dense"), "y": (2, "sparse")}``."""
    out = {}
    for item in str(text).split(","):
        if not item.strip():
            continue
        parts = item.strip().split(":")
        if len(parts) != 3 or parts[2] not in _KINDS or not parts[1].isdigit() \
                or int(parts[1]) < 1:
            raise ValueError(f"--streams item {item.strip()!r} is not name:dim:kind; write "
                             "e.g. --streams x:8:dense,y:2:sparse")
        out[parts[0]] = (int(parts[1]), parts[2])
    return out


def _table(streams):
    return ", ".join(f"{n} ({d}, {k})" for n, (d, k) in streams.items())


class CTFTask(SequenceClassification):
    name = "ctf"
    summary = ("classify sequences or tag every step of a CNTK text format file "
               "(--data FILE.ctf --features NAME --labels NAME)")
    defaults = {
        "features": "",         # name of the input stream
        "labels": "",           # name of the label stream
        "streams": "",          # "name:dim:kind,..."; empty: inferred from the file
        "cell": "gru",          # gru | lstm | elman
        "embedding": 0,         # > 0: one-hot feature rows read as word ids into an embedding
        "dropout": 0.0,         # dropout around and between the recurrent layers
        "label_names": "",      # a .wl file: the name of each class, one per line
        "feature_names": "",    # a .wl file: the name of each feature index (the words)
        "first_label": False,   # a sequence with several label rows keeps the first
        "hidden": 64,
        "layers": 1,
        "bidirectional": False,
        "val_fraction": 0.1,
        "test_fraction": 0.1,
        "test": "",             # a CTF file of test sequences ("": held out of --data)
        "epochs": 20,
        "batch_size": 32,
    }
    help = {
        "features": "CTF stream holding the inputs, one row per step (required)",
        "labels": "CTF stream holding the labels: one row per sequence, or one per step "
                  "(required)",
        "streams": "stream table as name:dim:kind items, e.g. x:8:dense,y:2:sparse; "
                   "empty: inferred from the file",
        "cell": "recurrent cell: gru, lstm or elman",
        "embedding": "size of a word embedding: the feature rows must be one-hot (one word "
                     "per step, a sparse stream as CNTK's ATIS files) and are read as word "
                     "ids; 0: the rows are the inputs themselves",
        "dropout": "dropout probability before, between and after the recurrent layers",
        "label_names": "file of class names, one per line (CNTK's .wl files), in the order "
                       "of the label stream's indices",
        "feature_names": "file of feature names (the words), one per line, for the output "
                         "of predict",
        "first_label": "true: a sequence with several label rows (a compound intent) keeps "
                       "the first; false: such a sequence is an error",
        "hidden": "hidden units of the recurrent layer",
        "layers": "stacked recurrent layers",
        "bidirectional": "read each sequence in both directions",
        "val_fraction": "share of the sequences held out for validation",
        "test_fraction": "share of the sequences held out for the test (without --test)",
        "test": "CTF file of test sequences; then --data is split into train and "
                "validation only",
    }
    batch_dtype = "float32"

    def __init__(self, config, state=None):
        super().__init__(config, state)
        state = state or {}
        self.streams = {k: tuple(v) for k, v in state.get("streams", {}).items()}
        self.per_step = bool(state.get("per_step", False))
        self.sizes = dict(state.get("sizes", {}))
        self.feature_names = list(state.get("feature_names") or [])
        if int(self.config.get("embedding") or 0) > 0:
            self.batch_dtype = None   # word ids (int64) into the embedding

    # -- data -------------------------------------------------------------------------
    def _streams_for(self, path):
        """The table of the feature and label streams, checked against the names given."""
        from ..data.ctf import infer_ctf_streams

        cfg = self.config
        table = parse_streams(cfg["streams"]) if cfg["streams"] else infer_ctf_streams(path)
        where = "--streams" if cfg["streams"] else f"{path}"
        for opt in ("features", "labels"):
            name = cfg[opt]
            if not name:
                raise ValueError(f"the ctf task needs --features NAME and --labels NAME; the "
                                 f"streams of {where} are: {_table(table)}")
            if name not in table:
                raise ValueError(f"--{opt} {name!r} is not a stream of {where}; its streams "
                                 f"are: {_table(table)}")
        if cfg["features"] == cfg["labels"]:
            raise ValueError(f"--features and --labels are both {cfg['features']!r}; the "
                             "labels must be another stream")
        return {cfg["features"]: table[cfg["features"]], cfg["labels"]: table[cfg["labels"]]}

    def _read(self, path, streams):
        """(feature arrays, per-row class ids, per-step?) of every sequence of the file."""
        from ..data.ctf import read_ctf

        f, lab = self.config["features"], self.config["labels"]
        dim = streams[lab][0]
        X, Y, n_rows, sids = [], [], [], []
        try:
            seqs = list(read_ctf(path, streams, skip_unknown=True, return_ids=True,
                                 return_lines=True))
        except ValueError as e:
            raise ValueError(self._width_hint(e, path)) from None
        for k, (sid, line, seq) in enumerate(seqs):
            x, y = seq[f], seq[lab]
            name = f"sequence {k}" + ("" if sid is None else f" (id {sid}") \
                + (f", line {line})" if sid is not None else f" (line {line})")
            sids.append(name)
            if not len(x) or not len(y):
                empty = f if not len(x) else lab
                raise ValueError(f"{path}: {name} has no row of stream {empty!r}; "
                                 "every sequence needs features and labels")
            if dim == 1:  # the value is the class id
                ids = y[:, 0]
                if (ids < 0).any() or (ids != np.round(ids)).any():
                    raise ValueError(f"{path}: {name}: labels of a dim-1 stream must "
                                     f"be class ids 0, 1, ..., got {ids.tolist()}")
            else:         # one-hot (or scores): the largest entry
                if (y.max(1) <= 0).any():
                    raise ValueError(f"{path}: {name} has a row of {lab!r} with no "
                                     "positive entry, so it names no class; write one-hot "
                                     "labels")
                ids = y.argmax(1)
            if self.config.get("first_label") and len(ids) > 1 and len(ids) != len(x):
                ids = ids[:1]          # a compound intent: keep the first
            if int(self.config.get("embedding") or 0) > 0:
                x = self._word_ids(x, path, name)
            X.append(x)
            Y.append(ids.astype(np.int64))
            n_rows.append((len(x), len(ids)))
        if not X:
            raise ValueError(f"{path}: no sequence with stream {f!r}")
        rows = np.array(n_rows)
        one, every = rows[:, 1] == 1, rows[:, 0] == rows[:, 1]
        if one.all():
            per_step = False
        elif every.all():
            per_step = True
        else:
            # the kind most sequences have (sequences of one step fit both); name the
            # first sequence that does not fit it
            per_step = (every & ~one).sum() > (one & ~every).sum()
            k = int(np.flatnonzero(~(every if per_step else one))[0])
            kind = "one per step (tagging)" if per_step else "one per sequence"
            hint = ("" if per_step else "; a compound intent (several label rows) can keep "
                    "its first with --first-label true")
            raise ValueError(f"{path}: {sids[k]} has {rows[k, 1]} rows of {lab!r} and "
                             f"{rows[k, 0]} of {f!r}, but the labels of most sequences are "
                             f"{kind}; labels must be one row per sequence (classification) "
                             f"or one per step (tagging) in every sequence{hint}")
        return X, Y, per_step

    @staticmethod
    def _word_ids(x, path, name):
        """One-hot rows (T, V) -> word ids (T,): each row must hold exactly one entry."""
        n = (x != 0).sum(1)
        if (n != 1).any():
            j = int(np.flatnonzero(n != 1)[0])
            raise ValueError(f"{path}: {name}: step {j + 1} has {int(n[j])} nonzero "
                             "feature values; --embedding reads one word per step (a one-hot "
                             "row); without --embedding the rows are fed as they are")
        return x.argmax(1).astype(np.int64)

    @staticmethod
    def _names(path, n=None, what=""):
        """The names of a .wl file (one per line), checked to cover ``n`` indices."""
        lines = Path(path).read_text(encoding="utf-8-sig").splitlines()
        while lines and not lines[-1].strip():
            lines.pop()
        names = [ln.strip() for ln in lines]
        if n is not None and len(names) != n:
            raise ValueError(f"{path}: {len(names)} names, but the {what} has {n}; the file "
                             "must hold one name per line for each index, in order")
        if len(set(names)) != len(names):
            dup = next(x for x in names if names.count(x) > 1)
            raise ValueError(f"{path}: the name {dup!r} is given twice")
        return names

    def _width_hint(self, err, path):
        """A reader's error, with the fix when a sparse stream's dim was read off the
        training file and another file has a larger index (`--streams` gives it)."""
        msg = str(err)
        if "out of range" not in msg or self.config.get("streams"):
            return msg
        from ..data.ctf import infer_ctf_streams

        try:
            here = infer_ctf_streams(path)
        except ValueError:
            here = {}
        table = {n: (max(d, here.get(n, (0,))[0]), k) for n, (d, k) in self.streams.items()}
        spec = ",".join(f"{n}:{d}:{k}" for n, (d, k) in table.items())
        return (f"{msg}; the stream dims were read off the training file (largest index + 1), "
                f"so they are too small for this file: train again with the full dims, e.g. "
                f"--streams {spec}")

    def load(self, path):
        cfg = self.config
        recurrent_class(cfg["cell"])  # a bad --cell fails before anything is written
        self.streams = self._streams_for(path)
        if not cfg["streams"]:
            # a sparse stream's dim read off the file is its largest index + 1; a
            # vocabulary file knows the full size (a class or word the file never uses)
            for opt, stream in (("label_names", cfg["labels"]),
                                ("feature_names", cfg["features"])):
                dim, kind = self.streams[stream]
                if cfg[opt] and kind == "sparse":
                    self.streams[stream] = (max(dim, len(self._names(cfg[opt]))), kind)
        X, Y, self.per_step = self._read(path, self.streams)
        test = None
        if cfg["test"]:
            test = self._read(cfg["test"], self.streams)
            if test[2] != self.per_step:
                raise ValueError(f"--test {cfg['test']}: its labels are "
                                 f"{'per step' if test[2] else 'per sequence'}, those of "
                                 f"{path} are not; pass a test file of the same kind")
        elif not cfg["test_fraction"]:
            raise ValueError("--test-fraction 0 leaves no test set; pass --test FILE with "
                             "test sequences, or a fraction above 0")
        dim = self.streams[cfg["labels"]][0]
        every = Y + (list(test[1]) if test else [])
        n_classes = dim if dim > 1 else int(max(y.max() for y in every)) + 1
        self.classes = [str(c) for c in range(n_classes)]
        if cfg["label_names"]:
            self.classes = self._names(cfg["label_names"], n_classes,
                                       f"label stream {cfg['labels']!r}")
        if cfg["feature_names"]:
            self.feature_names = self._names(cfg["feature_names"],
                                             self.streams[cfg["features"]][0],
                                             f"feature stream {cfg['features']!r}")
        if cfg["embedding"] and self.streams[cfg["features"]][0] < 2:
            raise ValueError("--embedding needs a feature stream of one-hot rows (dim >= 2, "
                             f"one word per step); {cfg['features']!r} has dim 1")
        if len({int(c) for y in Y for c in np.unique(y)}) < 2:
            raise ValueError(f"{path}: every label is the same class, so there is nothing "
                             "to learn; pass data with at least two classes")
        # stratify by the sequence's class (tagging: by its first step's, for a spread)
        first = np.array([y[0] for y in Y])
        rng = np.random.default_rng(np.random.SeedSequence([int(cfg["seed"]), 0]))
        fractions = (cfg["val_fraction"],) if test else (cfg["val_fraction"],
                                                         cfg["test_fraction"])
        parts = stratified_split(first, fractions, rng)
        for split, idx in zip(("train", "val", "test"), parts):
            if not len(idx):
                raise ValueError(f"{path}: {len(X)} sequences are too few to make a {split} "
                                 "set; pass more data or change --val-fraction / "
                                 "--test-fraction")
            self._set(split, [X[i] for i in idx], [Y[i] for i in idx])
        if test:
            self._set("test", test[0], test[1])
        self.path = str(path)

    def _set(self, split, X, Y):
        self.records[split] = X
        self.labels[split] = Y if self.per_step else np.array([y[0] for y in Y])
        self.sizes[split] = len(X)

    def load_eval(self, path):
        X, Y, _ = self._read(path, self.streams)
        if self.per_step and any(len(x) != len(y) for x, y in zip(X, Y)):
            raise ValueError(f"{path}: the model tags every step, but the sequences of this "
                             "file do not have one label per step")
        if not self.per_step and any(len(y) != 1 for y in Y):
            raise ValueError(f"{path}: the model classifies whole sequences, but the "
                             "sequences of this file do not have one label each")
        C = len(self.classes)
        top = max(int(y.max()) for y in Y)
        if top >= C:
            raise ValueError(f"{path}: class {top} is not one of the {C} classes of the model")
        self._set("eval", X, Y)
        self.labels.setdefault("train", self.labels["eval"])

    def describe(self):
        f, lab = self.config["features"], self.config["labels"]
        kind = "tagging (one label per step)" if self.per_step else \
            "sequence classification (one label per sequence)"
        lengths = [len(r) for s in ("train", "val", "test") for r in self.records[s]]
        test = f" (from {self.config['test']})" if self.config["test"] else ""
        lines = [(f"ctf: {self.path}: {kind}; features {f!r} {self.streams[f]}, labels "
                  f"{lab!r} {self.streams[lab]}, {len(self.classes)} classes"),
                 (f"sequences: train {self.sizes['train']}, val {self.sizes['val']}, test "
                  f"{self.sizes['test']}{test}; {min(lengths)} to {max(lengths)} steps")]
        if not self.config["streams"]:
            named = {self.config["labels"]: self.config["label_names"],
                     self.config["features"]: self.config["feature_names"]}
            sparse = [n for n, (d, k) in self.streams.items()
                      if k == "sparse" and not named.get(n)]   # a .wl file gave its size
            if sparse:
                spec = ",".join(f"{n}:{d}:{k}" for n, (d, k) in self.streams.items())
                lines.append(f"note: the dims of sparse stream(s) {', '.join(sparse)} were "
                             "read off the file (largest index + 1); if the vocabulary is "
                             f"larger, give it: --streams {spec} with the full dims")
        if self.sizes["test"] < 30:
            lines.append(f"warning: the test set has {self.sizes['test']} sequences, too few "
                         "for its figures to mean much; pass --test FILE or more data")
        return lines

    def state(self):
        return {"classes": self.classes, "streams": {k: list(v) for k, v in self.streams.items()},
                "per_step": self.per_step, "sizes": self.sizes,
                "feature_names": self.feature_names}

    # -- model and batches ------------------------------------------------------------
    def build_model(self):
        from .. import layers as L

        cfg = self.config
        seeds = np.random.SeedSequence([int(cfg["seed"]), 2]).generate_state(5)
        D = self.streams[cfg["features"]][0]
        E, p = int(cfg.get("embedding") or 0), float(cfg.get("dropout") or 0.0)
        mods = [L.Embedding(D, E, seed=int(seeds[2]))] if E else []
        if p:
            mods.append(L.Dropout(p, seed=int(seeds[3])))
        rnn = recurrent_class(cfg["cell"])(E or D, cfg["hidden"], num_layers=cfg["layers"],
                                 bidirectional=cfg["bidirectional"], dropout=p,
                                 return_sequences=self.per_step, seed=int(seeds[0]))
        mods.append(rnn)
        if p:
            mods.append(L.Dropout(p, seed=int(seeds[4])))
        mods.append(L.Dense(rnn.output_size, len(self.classes), seed=int(seeds[1])))
        return L.Sequential(mods)

    def get_batch(self, split, key):
        if not self.per_step:
            return super().get_batch(split, key)
        from ..data import pad

        X, mask = pad([self.records[split][i] for i in key],
                      dtype=self.batch_dtype or None)   # (B, T, D) rows or (B, T) word ids
        Y, _ = pad([self.labels[split][i] for i in key], dtype=np.int64)        # (B, T)
        return Batch(X, Y, mask, len(key))

    # -- evaluation -------------------------------------------------------------------
    def _steps(self, model, split, batch_size=256):
        """Tagging: (true ids, predicted ids, log-probability of the truth) of every step."""
        from ..data import bucket_batches

        ys, ps, lps, ns = [], [], [], []
        lengths = self._lengths(split)
        for idx in bucket_batches(lengths, batch_size, shuffle=False):
            b = self.get_batch(split, idx)
            logits = np.asarray(model(b.X, mask=b.mask), dtype=np.float64)   # (B, T, C)
            logp = log_softmax(logits)
            m = b.mask if b.mask is not None else np.ones(b.Y.shape, bool)
            ys.append(b.Y[m])
            ps.append(logits.argmax(-1)[m])
            lps.append(np.take_along_axis(logp, b.Y[..., None], -1)[..., 0][m])
            ns.append(m.sum(1))
        self._step_lengths = np.concatenate(ns)   # steps of each sequence, in that order
        return np.concatenate(ys), np.concatenate(ps), np.concatenate(lps)

    def bio(self):
        """Are the classes BIO / IOB2 tags (``B-X``, ``I-X``, ``O``)?"""
        return (any(c.startswith(("B-", "I-")) for c in self.classes)
                and all(c == "O" or c.startswith(("B-", "I-")) for c in self.classes))

    def _spans(self, y, pred):
        """conlleval's span precision, recall and F1 of the steps of :meth:`_steps`."""
        from .tagging import span_prf

        cut = np.cumsum(self._step_lengths)[:-1]
        names = np.array(self.classes, dtype=object)
        return span_prf([list(names[s]) for s in np.split(y, cut)],
                        [list(names[s]) for s in np.split(pred, cut)])

    def evaluate(self, model, split):
        if not self.per_step:
            return super().evaluate(model, split)
        from .. import metrics as M

        if not len(self.records.get(split, ())):
            raise ValueError(f"the {split!r} split is empty; use more data or change the "
                             "split fractions")
        y, pred, lp = self._steps(model, split)
        res = {"loss": float(-lp.mean()), "accuracy": M.accuracy(y, pred),
               "macro_f1": M.macro_f1(y, pred, len(self.classes))}
        if self.bio():
            res.update(self._spans(y, pred))
        return res

    def report(self, model, out_dir, split="test"):
        if not self.per_step:
            return super().report(model, out_dir, split)
        from .. import metrics as M
        from ..io import atomic_write_text

        y, pred, _ = self._steps(model, split)
        C = len(self.classes)
        major = int(np.bincount(np.concatenate(self.labels["train"]), minlength=C).argmax())
        base = np.full_like(y, major)
        res = self.evaluate(model, split)
        lines = [(f"{split} set: {len(self.records[split])} sequences, {len(y)} steps, "
                  f"{C} classes"), *(f"{k}: {v:.4f}" for k, v in res.items()),
                 (f"majority-class baseline ({self.classes[major]}): accuracy "
                  f"{M.accuracy(y, base):.4f}, macro_f1 {M.macro_f1(y, base, C):.4f}"),
                 "", "confusion matrix over steps (rows: true class, columns: predicted)",
                 M.format_confusion(M.confusion_matrix(y, pred, C), self.classes)]
        path = atomic_write_text(Path(out_dir) / "confusion.txt", "\n".join(lines) + "\n")
        self.last_report = {"metrics": res, "text": "\n".join(lines)}
        return {"confusion matrix (text)": path}

    def predict(self, model, inputs, top=3):
        """For each CTF file in ``inputs``: per sequence, the top classes (classification)
        or the predicted class of every step (tagging)."""
        from ..data import pad
        from ..data.ctf import read_ctf
        from ..metrics import softmax, top_k

        f = self.config["features"]
        lines = []
        for path in inputs:
            if not Path(path).is_file():
                raise ValueError(f"{path}: no such file; `unrolled predict` on a ctf model "
                                 "takes CTF files")
            lines.append(str(path))
            streams = {f: self.streams[f]}
            for k, (sid, seq) in enumerate(read_ctf(path, streams, skip_unknown=True,
                                                    return_ids=True)):
                if not len(seq[f]):
                    continue
                x = seq[f]
                words = None
                if self.feature_names and ((x != 0).sum(1) == 1).all():
                    words = [self.feature_names[i] for i in x.argmax(1)]
                if self.batch_dtype is None:
                    x = self._word_ids(x, path, f"sequence {k}")
                X, _ = pad([x], dtype=self.batch_dtype or None)
                p = softmax(np.asarray(model(X), dtype=np.float64))[0]   # (C,) or (T, C)
                name = f"  sequence {k}" + ("" if sid is None else f" (id {sid})")
                if words is not None:
                    name += " " + " ".join(words)
                if self.per_step:
                    tags = [self.classes[i] for i in p.argmax(-1)]
                    if words is not None:
                        tags = [f"{w}/{t}" for w, t in zip(words, tags)]
                    lines.append(f"{name}: " + " ".join(tags))
                else:
                    idx, ps = top_k(p, min(top, len(p)))
                    lines.append(f"{name}: " + ", ".join(f"{self.classes[i]} {q:.3f}"
                                                         for i, q in zip(idx, ps)))
        return lines
