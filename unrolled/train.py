"""The training loop: epochs, minibatches, the learner, validation, checkpoints, resume.

:class:`Trainer` is generic over tasks (:mod:`unrolled.tasks.base`): the task hands it the
batches of each epoch and evaluates the model; the trainer runs forward, loss and BPTT,
clips the gradient, steps the learner on a schedule, validates after every epoch, stops
early, shows a progress bar and logs every epoch to ``log.csv`` and ``log.json``.

Determinism and resume. Everything random comes from generators seeded by
``config["seed"]``: the task's split, the initialisation, the shuffling generator owned by
the trainer, and the dropout generators inside the layers. A checkpoint holds the
parameters, the learner's state, the position in the epoch (the shuffling generator's
state at the start of the epoch and the number of batches done), the state of every
generator, the running sums and the history. Resuming rebuilds the epoch's batch order
from the saved generator state and continues with the next batch, so an interrupted and
resumed run ends with the same weights as an uninterrupted one, bit for bit.

The loop, in labelled sections (see :meth:`Trainer.fit`)::

    for each epoch:
        plan = task.epoch_batches(shuffle_rng);  policy.start_epoch()
        for each batch:   lr -> policy.forward -> loss -> policy.backward -> clip -> step
                          -> log; checkpoint every N batches
        validate -> early stopping -> log -> checkpoint

It is the one training loop of the library. What differs between tasks is how a batch
is unrolled, a :class:`BatchPolicy` the task chooses (:meth:`unrolled.tasks.base.Task.
policy`): from the zero state; from the state the previous batch carried
(:class:`unrolled.streams.CarryState`, truncated BPTT over streams, whose carried state
the checkpoint holds); through an encoder and a teacher-forced decoder
(:class:`unrolled.seq2seq.TeacherForcing`). :class:`unrolled.streams.TBPTT` makes its
updates with :meth:`Trainer.train_step`.
"""
import json
import math
import signal
import sys
import time
from pathlib import Path

import numpy as np

from . import io
from .grad import backward_params, loss_mask_for
from .losses import get_loss
from .optim import CosineLR, StepLR, WarmupLR, clip_grad_norm, get_optimizer
from .tree import tree_flatten, tree_unflatten

__all__ = ["BatchPolicy", "Callback", "History", "Trainer"]


class BatchPolicy:
    """How the trainer turns one batch into outputs and gradients.

    The trainer's loop is the same for every task; what differs between them is how a
    batch is unrolled: from the zero state (this class), from the state the previous
    batch left (:class:`unrolled.streams.CarryState`, truncated BPTT over streams), or
    through an encoder and a teacher-forced decoder (:class:`unrolled.seq2seq.
    TeacherForcing`). A task names its policy in :meth:`unrolled.tasks.base.Task.policy`.

    ``forward(trainer, batch)`` returns ``(outputs, cache)``; the trainer scores the
    outputs against ``batch.Y`` and hands ``d outputs`` to ``backward(trainer, cache,
    d_out)``, which returns the gradient tree of ``trainer.model.params``.

    A policy may keep state between batches in ``carry`` (a dict of arrays or None): the
    checkpoint saves it and resuming restores it; ``start_epoch()`` is called at the
    start of every epoch (not when resuming in the middle of one).
    """

    carry = None

    def start_epoch(self):
        """Called before the first batch of every epoch."""

    def forward(self, trainer, batch):
        out, _, cache = trainer.model.forward(batch.X, mask=batch.mask, training=True)
        return out, cache

    def backward(self, trainer, cache, d_out):
        grads, _, _ = backward_params(trainer.model, cache, d_out)
        return grads


class Callback:
    """Hooks called by :class:`Trainer`; subclass and override the ones you need.

    ``logs`` is a dict of floats: after a batch ``{"loss", "lr", "grad_norm"}``; after an
    epoch the row written to the log (``epoch``, ``loss``, ``val_<metric>``, ``lr``, ...).
    Set ``trainer.stop_training = True`` to stop after the current epoch.
    """

    def on_train_begin(self, trainer):
        pass

    def on_epoch_begin(self, trainer, epoch):
        pass

    def on_batch_end(self, trainer, batch, logs):
        pass

    def on_epoch_end(self, trainer, epoch, logs):
        pass

    def on_train_end(self, trainer, logs):
        pass


class History:
    """Keras-like record of training: ``history["val_loss"]`` is a list, one per epoch."""

    def __init__(self, rows=()):
        self.rows = [dict(r) for r in rows]

    def append(self, row):
        """Add one epoch's row (a dict of floats)."""
        self.rows.append(dict(row))

    @property
    def history(self):
        """``{key: [value per epoch]}`` over every key any row has (None where missing)."""
        keys = []
        for r in self.rows:
            keys += [k for k in r if k not in keys]
        return {k: [r.get(k) for r in self.rows] for k in keys}

    @property
    def epoch(self):
        """The epoch numbers of the rows (1 for the first)."""
        return [r["epoch"] for r in self.rows]

    def __getitem__(self, key):
        return self.history[key]

    def __len__(self):
        return len(self.rows)


def _rng_layers(model):
    """Every layer of ``model`` that owns a random generator (dropout), in a fixed order."""
    out = []
    if hasattr(model, "layers"):
        for ly in model.layers:
            out += _rng_layers(ly)
    elif isinstance(getattr(model, "rng", None), np.random.Generator):
        out.append(model)
    return out


def make_schedule(cfg, steps_per_epoch):
    """The learning rate as a float or a schedule ``step -> lr`` from the config."""
    lr = cfg["lr"]
    # the schedule starts after the warm-up, so cosine decays over the steps left
    total = max(1, cfg["epochs"] * steps_per_epoch - cfg["warmup"])
    if cfg["schedule"] == "cosine":
        lr = CosineLR(lr, total)
    elif cfg["schedule"] == "step":
        lr = StepLR(lr, max(1, cfg["step_epochs"] * steps_per_epoch), cfg["gamma"])
    if cfg["warmup"]:
        lr = WarmupLR(lr, cfg["warmup"])
    return lr


def make_optimizer(cfg, steps_per_epoch):
    """The learner named in the config, with its schedule."""
    kw = {"lr": make_schedule(cfg, steps_per_epoch)}
    if cfg["weight_decay"]:
        kw["weight_decay"] = cfg["weight_decay"]
    return get_optimizer(cfg["optimizer"], **kw)


class Trainer:
    """Train a task's model; see the module docstring.

    Parameters
    ----------
    task : a loaded :class:`unrolled.tasks.base.Task` (``task.load(path)`` done).
    config : the resolved config (defaults: ``task.config``).
    out_dir : directory for ``checkpoint.npz``, ``log.csv``, ``log.json``; None: nothing
        is written.
    model : a model to train; default ``task.build_model()``.
    callbacks : list of :class:`Callback`.
    log : function for one-line messages (default ``print`` to stderr).
    distributed : bool, train data-parallel over the ranks of an MPI job (a
        :class:`unrolled.distributed.DistributedTrainer`; see ``docs/distributed.md``).
    optimizer : a learner from :mod:`unrolled.optim` to use instead of the one the config
        names (``optimizer``, ``lr``, ``schedule``, ...).
    policy : the :class:`BatchPolicy` that unrolls each batch; default ``task.policy()``.

    Attributes
    ----------
    model, optimizer, history (:class:`History`), epoch (epochs done), step (updates done).
    """

    _warm = False  # has an update run in this process (kernels compiled)?

    def __new__(cls, *args, distributed=False, **kwargs):
        if distributed:  # data-parallel over the ranks of an MPI job
            from .distributed import distributed_class

            cls = distributed_class(cls)
        return super().__new__(cls)

    def __init__(self, task, config=None, out_dir=None, model=None, callbacks=(), log=None,
                 distributed=False, optimizer=None, policy=None):
        self.task = task
        self.config = dict(config or task.config)
        self.out_dir = None if out_dir is None else Path(out_dir)
        self.model = model if model is not None else task.build_model()
        self.callbacks = list(callbacks)
        self.log = log or (lambda msg: print(msg, file=sys.stderr))
        self.loss = get_loss(task.loss)
        cfg = self.config
        # the shuffling generator is separate from those of the split and the weights
        self.rng = np.random.default_rng(np.random.SeedSequence([int(cfg["seed"]), 1]))
        self.steps_per_epoch = self._plan_length()
        self.optimizer = optimizer or make_optimizer(cfg, self.steps_per_epoch)
        self.policy = policy or task.policy()
        self.history = History()
        self.epoch = 0               # epochs completed
        self.batch_in_epoch = 0      # batches completed in the current epoch
        self.step = 0                # updates done
        self.epoch_rng_state = self.rng.bit_generator.state
        self.sums = {"loss": 0.0, "n": 0, "correct": 0, "count": 0}
        self.best = {"value": None, "epoch": 0, "wait": 0, "params": None}
        self.stop_training = False
        self._interrupted = False
        self.extra_meta = {}         # JSON-able facts saved with each checkpoint ("extra")
        self._last_checkpoint = time.monotonic()

    # -------------------------------------------------------------------- helpers
    @property
    def carry(self):
        """The state the batch policy carries into the next batch (``{"h": (L, B, H),
        ...}``), or None."""
        return self.policy.carry

    @carry.setter
    def carry(self, value):
        self.policy.carry = value

    def _plan_length(self):
        n = len(self.task.epoch_batches(np.random.default_rng(0)))
        if self.config["max_batches"]:
            n = min(n, self.config["max_batches"])
        return max(n, 1)

    @property
    def monitor(self):
        """(metric, mode): the validation metric watched and "min" or "max"."""
        key = self.config.get("monitor") or self.task.monitor
        if key == self.task.monitor:
            return key, self.task.monitor_mode
        lower = any(w in key for w in ("loss", "rmse", "mae", "bits", "perplexity", "error"))
        return key, "min" if lower else "max"

    def _better(self, value):
        b = self.best["value"]
        if b is None:
            return True
        d = self.config["min_delta"]
        return value < b - d if self.monitor[1] == "min" else value > b + d

    # -------------------------------------------------------------------- checkpoints
    @property
    def checkpoint_path(self):
        """``out_dir/checkpoint.npz``, or None without an ``out_dir``."""
        return None if self.out_dir is None else self.out_dir / "checkpoint.npz"

    @property
    def previous_checkpoint_path(self):
        """``out_dir/checkpoint.prev.npz``: the checkpoint before the last one (kept as a
        hard link, so it costs no writing), or None without an ``out_dir``."""
        return None if self.out_dir is None else self.out_dir / "checkpoint.prev.npz"

    def save_checkpoint(self, path=None):
        """Write everything needed to resume into ``path`` (atomically)."""
        path = path or self.checkpoint_path
        if path is None:
            return None
        arrays = {"params/" + k: v for k, v in tree_flatten(self.model.params).items()}
        opt = self.optimizer.state_dict()
        for slot, tree in opt.pop("state").items():
            arrays.update({f"opt/{slot}/{k}": v for k, v in tree_flatten(tree).items()})
        # at an epoch's end the best weights are often the current ones: kept once
        best_is_params = (self.best["params"] is not None and self.batch_in_epoch == 0
                          and self.best["epoch"] == self.epoch)
        if self.best["params"] is not None and not best_is_params:
            arrays.update({"best/" + k: v for k, v in self.best["params"].items()})
        if self.carry is not None:
            arrays.update({"carry/" + k: v for k, v in self.carry.items()})
        meta = {
            "format": io.CHECKPOINT_FORMAT, "version": io.FORMAT_VERSION,
            "config": self.config, "task_state": self.task.state(),
            "architecture": io.model_spec(self.model),
            "optimizer": opt, "opt_slots": sorted(self.optimizer.state or {}),
            "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "step": self.step,
            "epoch_rng_state": self.epoch_rng_state,
            "layer_rng_states": [ly.rng.bit_generator.state for ly in _rng_layers(self.model)],
            "sums": self.sums,
            "best": {k: v for k, v in self.best.items() if k != "params"},
            "history": self.history.rows, "stop_training": self.stop_training,
            "extra": self.extra_meta, "best_is_params": best_is_params,
        }
        keep = self.previous_checkpoint_path if path == self.checkpoint_path else None
        out = io.save_arrays(path, arrays, meta, keep=keep)
        self._last_checkpoint = time.monotonic()
        return out

    def load_checkpoint(self, path=None):
        """Restore the state saved by :meth:`save_checkpoint`."""
        path = path or self.checkpoint_path
        arrays, meta = io.load_arrays(path, io.CHECKPOINT_FORMAT)
        if meta.get("architecture") != io.model_spec(self.model):
            raise ValueError(f"{path}: the checkpoint was made for another model "
                             "architecture; resume with the same task options")

        def sub(prefix):
            return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}

        io.set_params(self.model, sub("params/"), path)
        opt = dict(meta["optimizer"])
        opt["state"] = {slot: tree_unflatten(sub(f"opt/{slot}/")) for slot in meta["opt_slots"]}
        self.optimizer.load_state_dict(opt)
        best = sub("best/")
        if meta.get("best_is_params"):
            best = {k: v.copy() for k, v in sub("params/").items()}
        self.best = {**meta["best"], "params": best or None}
        carry = sub("carry/")
        self.carry = carry or None
        self.epoch, self.batch_in_epoch = meta["epoch"], meta["batch_in_epoch"]
        self.step = meta["step"]
        self.epoch_rng_state = meta["epoch_rng_state"]
        self.rng.bit_generator.state = self.epoch_rng_state
        layers = _rng_layers(self.model)
        if len(layers) != len(meta["layer_rng_states"]):
            raise ValueError(f"{path}: the checkpoint's random generators do not match the "
                             "model; resume with the same task options")
        for ly, st in zip(layers, meta["layer_rng_states"]):
            ly.rng.bit_generator.state = st
        self.sums = dict(meta["sums"])
        self.history = History(meta["history"])
        self.stop_training = meta.get("stop_training", False)
        return meta

    # -------------------------------------------------------------------- logs
    def write_logs(self):
        """Write the history to ``out_dir/log.json`` and ``out_dir/log.csv`` (atomically)."""
        if self.out_dir is None:
            return
        rows = self.history.rows
        io.atomic_write_text(self.out_dir / "log.json", json.dumps(rows, indent=1) + "\n")
        keys = []
        for r in rows:
            keys += [k for k in r if k not in keys]
        lines = [",".join(keys)]
        for r in rows:
            lines.append(",".join(_fmt(r.get(k)) for k in keys))
        io.atomic_write_text(self.out_dir / "log.csv", "\n".join(lines) + "\n")

    # -------------------------------------------------------------------- one batch
    def train_step(self, batch):
        """Forward, loss, BPTT, clipping and one update on ``batch``; returns the loss."""
        value, grads, correct, count = self._gradients(batch)
        norm = float("nan")
        if self.config["clip"]:
            grads, norm = clip_grad_norm(grads, self.config["clip"])
        self.optimizer.step(self.model.params, grads)
        if count:  # running accuracy for classification
            self.sums["correct"] += int(correct)
            self.sums["count"] += int(count)
        return float(value), norm

    def _gradients(self, batch):
        """``(loss, gradients, correct, count)`` of ``batch``; see :meth:`_forward_backward`."""
        return self._forward_backward(batch, self.loss)

    def _forward_backward(self, batch, loss):
        """Forward, ``loss`` and BPTT on ``batch``, as the batch policy runs them
        (:class:`BatchPolicy`; a stateful task's :class:`unrolled.streams.CarryState`
        carries the state from batch to batch).

        Returns ``(loss value, gradient tree, correct, count)``: ``correct`` of ``count``
        valid predictions are right (argmax of the logits; 0 of 0 unless cross-entropy).
        """
        out, cache = self.policy.forward(self, batch)
        lmask = loss_mask_for(out, batch.mask, batch.loss_mask)
        value, d_out = loss.value_and_grad(out, batch.Y, lmask)
        grads = self.policy.backward(self, cache, d_out)
        correct = count = 0
        if getattr(self.loss, "name", "") == "cross_entropy":
            ok = out.argmax(-1) == batch.Y
            if out.ndim == 3 and lmask is not None:
                ok = ok[lmask]
            correct, count = int(np.sum(ok)), int(np.size(ok))
        return value, grads, correct, count

    def evaluate(self, split):
        """The task's metrics of the model on ``split`` (``"val"`` after each epoch)."""
        return self.task.evaluate(self.model, split)

    # -------------------------------------------------------------------- the loop
    def fit(self, resume=False):
        """Train for ``config["epochs"]`` epochs (or until early stopping).

        Parameters
        ----------
        resume : bool, continue from ``out_dir/checkpoint.npz`` if it exists.

        Returns
        -------
        History
        """
        from .backend import reuse_freed_memory

        reuse_freed_memory()  # each step reuses the last one's memory (no page faults)
        cfg = self.config
        if self.out_dir is not None:  # left by a process killed in the middle of a write
            io.remove_stale_temps(self.out_dir, ("checkpoint.npz", "checkpoint.prev.npz",
                                                 "log.json", "log.csv"))
        if resume and self.checkpoint_path is not None and self.checkpoint_path.exists():
            self.load_checkpoint()
            self.log(f"resumed from {self.checkpoint_path} at epoch {self.epoch + 1}, batch "
                     f"{self.batch_in_epoch} (step {self.step})")
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        for cb in self.callbacks:
            cb.on_train_begin(self)
        old_handler = self._catch_sigint()
        try:
            while self.epoch < cfg["epochs"] and not self.stop_training:
                self._run_epoch()
                if self._interrupted:
                    break
        finally:
            self._restore_sigint(old_handler)
        if self._interrupted:
            self.save_checkpoint()
            raise KeyboardInterrupt
        if cfg["restore_best"] and self.best["params"] is not None:
            self.model.params = io.tree_fill(self.model.params, self.best["params"])
        logs = self.history.rows[-1] if self.history.rows else {}
        for cb in self.callbacks:
            cb.on_train_end(self, logs)
        return self.history

    def _catch_sigint(self):
        """Ctrl-C (or SIGTERM) sets a flag; the loop stops at the next batch boundary and
        checkpoints, so the saved state is never half-way through an update."""
        def handler(signum, frame):
            if self._interrupted:  # a second Ctrl-C stops at once
                raise KeyboardInterrupt
            self._interrupted = True
        try:
            return {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        except ValueError:  # not in the main thread
            return None

    def _restore_sigint(self, old):
        for s, h in (old or {}).items():
            signal.signal(s, h)

    def _run_epoch(self):
        cfg, task = self.config, self.task
        E = cfg["epochs"]
        # -- the batch order of this epoch, rebuilt from the generator's saved state
        self.rng.bit_generator.state = self.epoch_rng_state
        plan = task.epoch_batches(self.rng)
        if cfg["max_batches"]:
            plan = plan[: cfg["max_batches"]]
        if self.batch_in_epoch == 0:
            self.sums = {"loss": 0.0, "n": 0, "correct": 0, "count": 0}
            self.policy.start_epoch()
        for cb in self.callbacks:
            cb.on_epoch_begin(self, self.epoch)
        bar = _progress(len(plan), self.batch_in_epoch, f"epoch {self.epoch + 1}/{E}",
                        cfg["progress"])
        t0, seen0 = time.perf_counter(), self.sums["n"]
        try:
            for i in range(self.batch_in_epoch, len(plan)):
                # -- forward, backward, clip, step
                batch = task.get_batch("train", plan[i])
                lr = self.optimizer.lr
                first = not Trainer._warm
                if first:  # the first update of a process may compile the kernels
                    bar.set_postfix_str("compiling kernels (first run only)", refresh=True)
                value, norm = self.train_step(batch)
                if first:
                    Trainer._warm = True
                    bar.unpause()  # the compile time is left out of the time estimate
                if not math.isfinite(value):
                    raise ValueError(f"the training loss became {value} at step {self.step + 1}; "
                                     "lower --lr or --clip")
                self.step += 1
                self.batch_in_epoch = i + 1
                self.sums["loss"] += value * batch.size
                self.sums["n"] += batch.size
                # -- progress and callbacks
                rate = (self.sums["n"] - seen0) / max(time.perf_counter() - t0, 1e-9)
                post = {"loss": f"{self.sums['loss'] / self.sums['n']:.4f}"}
                if self.sums["count"]:
                    post["acc"] = f"{self.sums['correct'] / self.sums['count']:.3f}"
                post["ex/s"] = f"{rate:.0f}"
                bar.set_postfix(post, refresh=False)
                bar.update(1)
                blogs = {"loss": value, "lr": lr, "grad_norm": norm}
                for cb in self.callbacks:
                    cb.on_batch_end(self, self.step, blogs)
                # -- checkpoint every N batches or seconds (not at the last batch: the
                # epoch end does it)
                every, secs = cfg["checkpoint_every"], cfg.get("checkpoint_seconds", 0)
                due = (every and self.step % every == 0) or (
                    secs and time.monotonic() - self._last_checkpoint >= secs)
                if due and i + 1 < len(plan):
                    self.save_checkpoint()
                if self._interrupted:
                    return
        finally:
            bar.close()
        elapsed = time.perf_counter() - t0
        # -- validation
        row = {"epoch": self.epoch + 1, "loss": self.sums["loss"] / max(self.sums["n"], 1)}
        if self.sums["count"]:
            row["accuracy"] = self.sums["correct"] / self.sums["count"]
        val = self.evaluate("val")
        row.update({f"val_{k}": float(v) for k, v in val.items()})
        row["lr"] = float(self.optimizer.lr)
        row["seconds"] = round(elapsed, 3)
        row["examples_per_s"] = round((self.sums["n"] - seen0) / max(elapsed, 1e-9), 1)
        # -- early stopping and the best weights
        key = f"val_{self.monitor[0]}"
        if key not in row:
            raise ValueError(f"--monitor {self.monitor[0]!r} is not a validation metric of "
                             f"task {task.name!r}; choose one of {sorted(val)}")
        if self._better(row[key]):
            self.best.update(value=row[key], epoch=row["epoch"], wait=0,
                             params={k: v.copy() for k, v in
                                     tree_flatten(self.model.params).items()})
        else:
            self.best["wait"] += 1
            if cfg["patience"] and self.best["wait"] >= cfg["patience"]:
                self.stop_training = True
                self.log(f"early stopping: no better {key} for {cfg['patience']} epochs "
                         f"(best {self.best['value']:.4f} at epoch {self.best['epoch']})")
        # -- log, callbacks, checkpoint
        self.history.append(row)
        self.log(_epoch_line(row, self.config["epochs"]))
        for cb in self.callbacks:
            cb.on_epoch_end(self, self.epoch, row)
        self.epoch += 1
        self.batch_in_epoch = 0
        self.epoch_rng_state = self.rng.bit_generator.state
        self.write_logs()
        # by time only (--checkpoint-every 0 --checkpoint-seconds S): an epoch's end is
        # checkpointed when S seconds have passed, and always at the end of training
        secs = cfg.get("checkpoint_seconds", 0)
        by_time = secs and not cfg["checkpoint_every"]
        last = self.epoch >= cfg["epochs"] or self.stop_training
        if not by_time or last or time.monotonic() - self._last_checkpoint >= secs:
            self.save_checkpoint()


def _fmt(v):
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def _epoch_line(row, epochs):
    parts = [f"epoch {row['epoch']}/{epochs}"]
    for k, v in row.items():
        if k in ("epoch", "seconds", "examples_per_s", "lr"):
            continue
        parts.append(f"{k} {v:.4f}")
    parts.append(f"{row['seconds']:.1f}s")
    return "  ".join(parts)


class _NoBar:
    def set_postfix(self, *a, **k):
        pass

    def set_postfix_str(self, *a, **k):
        pass

    def unpause(self):
        pass

    def update(self, n=1):
        pass

    def close(self):
        pass


def _progress(total, initial, desc, enabled):
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    # disable=None: no bar when stderr is not a terminal (logs stay readable)
    return tqdm(total=total, initial=initial, desc=desc, unit="batch", file=sys.stderr,
                leave=False, dynamic_ncols=True, mininterval=0.5, disable=None)
