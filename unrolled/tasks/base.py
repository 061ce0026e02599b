"""The Task interface: what the trainer, the model files and the CLI need from a task.

A *task* (``names``, ``digits``, ``text``, ``series``, ...) turns files into batches,
builds the model, computes its metrics and knows how to use a trained model. The
trainer (:mod:`unrolled.train`) is generic: it asks the task for the batches of an
epoch, runs forward, loss and BPTT, steps the learner, and asks the task to evaluate.

Life of a task object
---------------------
Training (``unrolled train TASK``)::

    task = TaskClass(config)          # config: the resolved dict (see below)
    task.load(path)                   # read + split + fit vocab / stats on train only
    model = task.build_model()        # a fresh Module, seeded from config["seed"]
    ...trainer loop: task.epoch_batches(rng), task.get_batch("train", key),
       task.evaluate(model, "val") each epoch...
    task.report(model, out_dir)       # test metrics, confusion matrix / plots
    save: config + task.state() + model params (unrolled.io)

Using a saved model (``unrolled evaluate / predict / generate``)::

    task = TaskClass(config, state)   # state: what task.state() returned; no data read
    model = ...rebuilt by unrolled.io from the saved architecture, params loaded
    task.load_eval(path); task.evaluate(model, "eval")
    task.predict(model, ["Dostoevsky"]); task.generate(model, ...)

Configuration
-------------
``Task.defaults`` is THE one source of defaults for a task's own options (hidden size,
window, ...). It may also override the trainer's defaults (``epochs``, ``batch_size``,
``lr``, ... listed in :data:`unrolled.config.TRAIN_DEFAULTS`). The resolved config is
``TRAIN_DEFAULTS | Task.defaults | TOML file | --key value``; a key in neither defaults
dict is an error. Values keep the type of their default (``None`` defaults accept any
JSON-like value). ``config["data"]`` is the data path used (``None``: ``default_data``).

Batches
-------
``epoch_batches(rng)`` returns the ordered list of *keys* for one training epoch (index
arrays, chunk numbers, anything ``get_batch`` understands). It must draw its randomness
only from ``rng`` (a ``numpy.random.Generator`` the trainer owns and checkpoints), so the
plan of an epoch can be rebuilt exactly on resume. ``get_batch(split, key)`` returns a
:class:`Batch`. ``stateful = True`` makes the trainer carry each batch's final
recurrent state into the next one (truncated BPTT over streams; reset at each epoch);
the batches of an epoch must then keep the same batch size and order of streams. A batch
may overlap the previous one (TBPTT with k2 > k1): it then sets ``Batch.carry_at`` to the
step where the next batch starts and masks the repeated steps out of the loss with
``loss_mask``. The trainer runs one loop for every task; how it unrolls a batch is the
task's :meth:`Task.policy`.

Errors
------
Bad input (missing file, empty file, bad CSV, ...) raises ``ValueError`` with a one-line
message that names the file and the fix; the CLI prints it and exits with code 2.
"""
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..losses import CrossEntropy, log_softmax


@dataclass
class Batch:
    """One minibatch, in the form the model and the loss take.

    Attributes
    ----------
    X : (B, T, D) float array, or (B, T) int symbols for a model starting with Embedding.
    Y : targets in the loss's form: (B,) class ids for many-to-one classification,
        (B, T) ids for many-to-many, (B, O) or (B, T, O) floats for regression.
    mask : (B, T) bool, True at real steps, or None when every step is real.
    size : number of records (B), used for examples per second and loss averaging.
    loss_mask : what the trainer passes to the loss as its mask; ``None`` means ``mask``
        for outputs with a time axis (B, T, ...) and no mask for folded outputs (B, ...).
        Give e.g. a (B, O) bool array to leave missing regression targets out of the loss.
    carry_at : int or None, for a stateful task: the step of ``X`` whose initial state is
        carried into the next batch (the state after ``X[:, :carry_at]``); None: the state
        after the last step. TBPTT(k1, k2 > k1) uses it: each batch repeats the last
        ``k2 - k1`` steps of the previous one, whose start state is what is carried.
    """

    X: Any
    Y: Any
    mask: Any = None
    size: int = 0
    loss_mask: Any = None
    carry_at: Any = None

    def __post_init__(self):
        if not self.size:
            self.size = len(self.X)


class Task:
    """Base class of all tasks; subclasses fill in the methods marked *required*.

    Class attributes
    ----------------
    name : str, the name used on the command line (``unrolled train NAME``).
    summary : str, one line shown by ``unrolled train --help``.
    defaults : dict, the task's options with their defaults, and overrides of the
        trainer's defaults (see :data:`unrolled.config.TRAIN_DEFAULTS`).
    help : dict, optional one-line help per option in ``defaults``.
    default_data : str or None, a bundled data set name (``unrolled.data.bundled_path``)
        used when no ``--data`` is given (see :meth:`default_data_path`).
    loss : str or loss object, given to :func:`unrolled.losses.get_loss`.
    monitor : str, the validation metric for early stopping and the best model
        (a key of ``evaluate``'s result, e.g. ``"loss"`` or ``"accuracy"``).
    monitor_mode : ``"min"`` or ``"max"``.
    stateful : bool, carry the recurrent state from batch to batch (see module doc).
    """

    name = ""
    summary = ""
    defaults: dict = {}
    help: dict = {}
    default_data = None
    loss = "cross_entropy"
    monitor = "loss"
    monitor_mode = "min"
    stateful = False

    def __init__(self, config, state=None):
        """Store the resolved config; ``state`` (from :meth:`state`) restores a trained
        task's vocabulary / classes / normalisation statistics without reading data."""
        self.config = dict(config)
        self.saved_state = state

    @classmethod
    def default_data_path(cls):
        """The path of the data used when none is given: the bundled data set
        ``default_data`` (``unrolled.data.bundled_path``)."""
        from ..data import bundled_path

        return bundled_path(cls.default_data)

    @classmethod
    def resolve_data(cls, path):
        """The absolute path of the data named ``path`` (a task may map a data set's name
        to its file, as ``tagging`` does for ``hironsancorpus``)."""
        from pathlib import Path

        return Path(path).expanduser().resolve()

    # -- required for training --------------------------------------------------------
    def load(self, path):
        """Read the data at ``path`` (a str or Path; the CLI resolves ``default_data``
        first), split it into ``"train"``, ``"val"`` and ``"test"`` and fit anything
        learned from data (vocabulary, classes, normalisation) on the training split only.
        Raise ValueError (one line, naming the fix) on bad input."""
        raise NotImplementedError

    def describe(self):
        """Lines printed before training: sizes of the splits, classes, missing values."""
        return []

    def build_model(self):
        """A fresh model (a :class:`unrolled.layers.Module`) for ``self.config`` and the
        loaded data, initialised from ``self.config["seed"]``."""
        raise NotImplementedError

    def epoch_batches(self, rng):
        """The training batch keys of one epoch, in order; randomness from ``rng`` only."""
        raise NotImplementedError

    def get_batch(self, split, key):
        """The :class:`Batch` for ``key`` of ``split`` (``"train"``, ...)."""
        raise NotImplementedError

    def evaluate(self, model, split):
        """Metrics of ``model`` on ``split`` (``"val"``, ``"test"``, ``"train"``, or
        ``"eval"`` after :meth:`load_eval`): a dict of floats that includes ``"loss"``
        (mean per record or per predicted step), and fractions (not percents)."""
        raise NotImplementedError

    def state(self):
        """A JSON-able dict of what was learned from data (vocabulary, classes,
        normalisation statistics, split sizes); saved with the model."""
        return {}

    # -- optional ---------------------------------------------------------------------
    def policy(self):
        """How the trainer unrolls each training batch (a
        :class:`unrolled.train.BatchPolicy`): by default from the zero state, or, for a
        ``stateful`` task, from the state the previous batch carried
        (:class:`unrolled.streams.CarryState`: truncated BPTT over streams)."""
        if self.stateful:
            from ..streams import CarryState

            return CarryState()
        from ..train import BatchPolicy

        return BatchPolicy()

    def output_names(self):
        """What each output unit of the model stands for (classes, tags, symbols), from
        the saved state; None when it is not a list. Checked against the model file."""
        return None

    def report(self, model, out_dir):
        """Write the task's report files into ``out_dir`` (confusion matrix as text and
        PNG, forecast plots, ...); return ``{"description": path}``. Called after training
        with the final model; usually evaluates on ``"test"``."""
        return {}

    def load_eval(self, path):
        """Read new data for ``unrolled evaluate`` into the split ``"eval"``, with the
        saved vocabulary / statistics (``self.saved_state``)."""
        raise ValueError(f"task {self.name!r} cannot evaluate on new data")

    def predict(self, model, inputs, top=3):
        """Lines of text answering ``unrolled predict MODEL INPUT...``."""
        raise ValueError(f"task {self.name!r} has no predict; try `unrolled evaluate` or "
                         "`unrolled generate`")

    def generate(self, model, length=500, temperature=1.0, prime="", top_k=None, seed=None,
                 progress=False):
        """Text sampled from ``model`` for ``unrolled generate`` (``progress``: a progress
        bar on stderr for long texts)."""
        raise ValueError(f"task {self.name!r} cannot generate; `unrolled generate` needs a "
                         "model trained by the `text` task")


def load_trained(path, fix="use it from Python with unrolled.io.load_model"):
    """``(model, meta, task)`` from a model saved by ``unrolled train``: the model with
    its weights, the file's metadata and the task rebuilt from the saved config and
    state (no data read). ``fix`` ends the error for a model saved without a task."""
    from .. import io
    from . import get_task

    model, meta = io.load_model(path)
    cfg = meta.get("config") or {}
    if "task" not in cfg:
        raise ValueError(f"{path}: the model was not trained by `unrolled train` (no task "
                         f"in its config); {fix}")
    state = meta.get("task_state") or {}
    try:
        task = get_task(cfg["task"])(cfg, state)
    except (KeyError, IndexError, TypeError, AttributeError) as e:
        raise ValueError(f"{path}: the model's metadata does not fit task {cfg['task']!r} "
                         f"({type(e).__name__}: {e}); the file is corrupt or was edited: use "
                         "another copy or train again") from None
    out = _output_size(meta.get("architecture") or {})
    names = task.output_names()
    if names is not None and out is not None and len(names) != out:
        raise ValueError(f"{path}: the model's metadata gives {len(names)} outputs for task "
                         f"{cfg['task']!r} but its output layer has {out}; the file is "
                         "corrupt or was edited: use another copy or train again")
    return model, meta, task


def _output_size(spec):
    """The output width of a saved architecture's last Dense layer, or None."""
    while spec.get("layer") == "Sequential" and spec.get("layers"):
        spec = spec["layers"][-1]
    return spec.get("out_features") if spec.get("layer") == "Dense" else None


def recurrent_class(cell):
    """The recurrent layer for the ``--cell`` option: any registered cell that reads an
    input sequence into a hidden state (``gru``, ``lstm``, ``elman``, ``peephole_lstm``,
    ...; not ``jordan``, whose state is its output)."""
    from ..cells import REGISTRY
    from ..layers.recurrent import layer_class

    ok = sorted(n for n in REGISTRY if n != "jordan")
    if str(cell).lower() not in ok:
        raise ValueError(f"--cell must be one of {', '.join(ok)}, got {cell!r}")
    return layer_class(cell)


def stratified_split(labels, fractions, rng, groups=None):
    """Split records into parts with every class in the same proportions.

    Parameters
    ----------
    labels : (N,) class ids.
    fractions : sequence of floats, the share of each part after the first (e.g.
        ``(0.1, 0.1)`` for val and test); the first part takes the rest.
    rng : numpy Generator.
    groups : (N,) hashable keys or None. Records with the same key always land in the
        same part (e.g. the name string, so one name never sits in train and test).

    Returns
    -------
    list of int64 index arrays, one per part (len(fractions) + 1), each sorted.
    """
    labels = np.asarray(labels)
    if groups is None:
        groups = np.arange(len(labels))
    # one unit per distinct (group): assign whole groups, stratified by the group's label
    keys = {}
    for i, g in enumerate(groups):
        keys.setdefault(g, []).append(i)
    units = list(keys.values())
    unit_label = np.array([np.bincount(labels[u]).argmax() for u in units])
    parts = [[] for _ in range(len(fractions) + 1)]
    for c in np.unique(unit_label):
        idx = np.flatnonzero(unit_label == c)
        idx = idx[rng.permutation(len(idx))]
        start = 0
        counts = [round(f * len(idx)) for f in fractions]
        for p, n in enumerate(counts, start=1):
            for j in idx[start:start + n]:
                parts[p].extend(units[j])
            start += n
        for j in idx[start:]:
            parts[0].extend(units[j])
    return [np.array(sorted(p), dtype=np.int64) for p in parts]


class WeightedCrossEntropy(CrossEntropy):
    """Softmax cross-entropy for (B, C) logits with a weight per class.

    The value is ``sum_i w[y_i] * -log softmax(o_i)[y_i] / sum_i w[y_i]`` (the weighted
    mean, as ``torch.nn.functional.cross_entropy(weight=w)``); with ``w_c = N / (C n_c)``
    ("balanced") every class weighs the same in the loss however few records it has.
    ``CrossEntropy(weight=weights)`` under the name the tasks use.
    """

    def __init__(self, weights):
        super().__init__(weight=weights)


def balanced_weights(labels, n_classes):
    """(C,) weights N / (C n_c) of scikit-learn's class_weight="balanced" (1 if n_c = 0)."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    return np.where(counts > 0, len(labels) / (n_classes * np.maximum(counts, 1)), 1.0)


class SequenceClassification(Task):
    """Shared machinery of the many-to-one classification tasks (``names``, ``digits``).

    A subclass's :meth:`load` fills ``self.records[split]`` (a list of per-record arrays:
    (n_i,) symbol ids or (n_i, D) floats), ``self.labels[split]`` ((N,) int64) and
    ``self.classes`` (list of str); it implements :meth:`build_model` and
    :meth:`encode` (raw input -> record). This class gives batching by length buckets,
    evaluation (loss, accuracy, macro-F1, majority-class baseline), the confusion matrix
    report and top-k prediction.
    """

    loss = "cross_entropy"
    monitor = "loss"
    monitor_mode = "min"
    batch_dtype = None  # None: int64 symbols; else e.g. "float32"

    def __init__(self, config, state=None):
        super().__init__(config, state)
        self.records, self.labels = {}, {}
        self.classes = list(state["classes"]) if state else []

    def output_names(self):
        return self.classes or None

    def use_balanced_loss(self):
        """Weigh the classes equally in the training loss (call at the end of load)."""
        self.loss = WeightedCrossEntropy(balanced_weights(self.labels["train"],
                                                          len(self.classes)))

    def _lengths(self, split):
        return np.array([len(r) for r in self.records[split]])

    def epoch_batches(self, rng):
        from ..data import bucket_batches

        return bucket_batches(self._lengths("train"), self.config["batch_size"], rng=rng)

    def get_batch(self, split, key):
        from ..data import pad

        recs = [self.records[split][i] for i in key]
        X, mask = pad(recs, dtype=self.batch_dtype)
        if mask.all():
            mask = None
        return Batch(X, self.labels[split][key], mask, len(key))

    def logits(self, model, split, batch_size=256):
        """(N, C) logits for every record of ``split``, in the split's order."""
        from ..data import bucket_batches

        out = None
        for idx in bucket_batches(self._lengths(split), batch_size, shuffle=False):
            b = self.get_batch(split, idx)
            o = model(b.X, mask=b.mask)
            if out is None:
                out = np.zeros((len(self.records[split]), o.shape[-1]), dtype=np.float64)
            out[idx] = o
        return out

    def evaluate(self, model, split):
        if not len(self.records.get(split, ())):
            raise ValueError(f"the {split!r} split is empty; use more data or change the "
                             "split fractions")
        return self._scores(self.logits(model, split), self.labels[split])

    def _scores(self, logits, y):
        """Mean cross-entropy, accuracy and macro-F1 of (N, C) ``logits`` for labels ``y``."""
        from .. import metrics as M

        logp = log_softmax(logits)  # (N, C)
        pred = logits.argmax(1)
        return {"loss": float(-logp[np.arange(len(y)), y].mean()),
                "accuracy": M.accuracy(y, pred),
                "macro_f1": M.macro_f1(y, pred, len(self.classes))}

    def report(self, model, out_dir, split="test"):
        """Test metrics, the majority-class baseline, and the confusion matrix as
        ``confusion.txt`` and ``confusion.png`` in ``out_dir``."""
        from pathlib import Path

        from .. import metrics as M

        out_dir = Path(out_dir)
        y = self.labels[split]
        if not len(y):
            raise ValueError(f"the {split!r} split is empty; use more data or change the "
                             "split fractions")
        logits = self.logits(model, split)  # one pass over the split serves every number
        pred = logits.argmax(1)
        C = len(self.classes)
        cm = M.confusion_matrix(y, pred, C)
        counts = np.bincount(self.labels["train"], minlength=C)
        major = int(counts.argmax())
        res = self._scores(logits, y)
        lines = [f"{split} set: {len(y)} records, {C} classes",
                 *(f"{k}: {v:.4f}" for k, v in res.items()),
                 (f"majority-class baseline ({self.classes[major]}): accuracy "
                  f"{M.accuracy(y, np.full_like(y, major)):.4f}, macro_f1 "
                  f"{M.macro_f1(y, np.full_like(y, major), C):.4f}"),
                 "", "confusion matrix (rows: true class, columns: predicted)",
                 M.format_confusion(cm, self.classes)]
        txt = out_dir / "confusion.txt"
        from ..io import atomic_write_text

        atomic_write_text(txt, "\n".join(lines) + "\n")
        png = M.plot_confusion(cm, self.classes, out_dir / "confusion.png",
                               title=f"{self.name}: {split} accuracy {res['accuracy']:.3f}, "
                                     f"macro-F1 {res['macro_f1']:.3f}")
        self.last_report = {"metrics": res, "text": "\n".join(lines)}
        return {"confusion matrix (text)": txt, "confusion matrix (PNG)": png}

    def encode(self, raw):
        """One raw input (a string, an array) as a record for :func:`unrolled.data.pad`;
        *required* for :meth:`predict`."""
        raise NotImplementedError

    def probabilities(self, model, inputs):
        """(N, C) class probabilities for raw inputs (strings, arrays) via :meth:`encode`."""
        from ..data import pad
        from ..metrics import softmax

        recs = [self.encode(x) for x in inputs]
        X, mask = pad(recs, dtype=self.batch_dtype)
        return softmax(np.asarray(model(X, mask=mask), dtype=np.float64))

    def predict(self, model, inputs, top=3):
        from ..metrics import top_k

        probs = self.probabilities(model, inputs)
        lines = []
        for x, p in zip(inputs, probs):
            idx, ps = top_k(p, min(top, len(p)))
            lines.append(str(x))
            w = max(len(self.classes[i]) for i in idx)
            lines += [f"  {self.classes[i]:<{w}}  {q:.3f}" for i, q in zip(idx, ps)]
        return lines
