"""Watching the gradient during training: norms per layer and time step, and warnings.

:class:`GradientMonitor` measures ‖∂L/∂h_t‖ for every recurrent layer and time step
(with :func:`unrolled.inspect.gradflow.gradient_flow`, i.e. exactly what BPTT carries)
and the norm of each layer's weight gradient, keeps them in ``history``, and warns,
naming the training step, the layer and the time step, when the gradient vanishes or
explodes. Use it as a trainer callback::

    Trainer(task, config, callbacks=[GradientMonitor(every=50)]).fit()

or by hand, after any update::

    mon = GradientMonitor()
    mon.record(model, X, Y, mask, loss="cross_entropy", step=k)

With a trainer it measures a fixed *probe* batch (by default the first training batch
of a plan drawn from its own generator, so the trainer's shuffling is untouched) with
the model as it stands after the update: the same batch every time, so the curves of
different steps compare.
"""
import logging
import warnings

import numpy as np

from ..backend import to_numpy
from .gradflow import gradient_flow
from .traces import new_figure, save_figure

try:  # the trainer's hook protocol, when the trainer is installed
    from ..train import Callback as _Base
except ImportError:  # pragma: no cover
    _Base = object


class GradientWarning(RuntimeWarning):
    """The gradient vanished or exploded in a recurrent layer."""


class GradientMonitor(_Base):
    """Record gradient norms per layer and time step; warn when they vanish or explode.

    Parameters
    ----------
    every : int, measure every ``every`` training steps; 0 measures once per epoch, at
        its end (trainer use only).
    vanish : float, warn when the smallest ‖∂L/∂h_t‖ of a layer is below ``vanish``
        times its largest (the gradient reaching that step is a vanishing fraction of
        what the loss put in).
    explode : float, warn when a ‖∂L/∂h_t‖ or a layer's weight-gradient norm exceeds
        ``explode``, or is not finite.
    probe : the batch to measure with a trainer: a ``Batch`` or ``(X, Y, mask)``; None
        takes the first training batch.
    logger : a ``logging.Logger`` to also receive the warnings (None: warnings only).
    repeat : warn every time; by default each (layer, kind) warns once per epoch.

    Attributes
    ----------
    history : list of dicts ``{"step", "layer", "norms" (T,), "weight_norm", "ratio"}``
        with ``ratio`` = smallest / largest ‖∂L/∂h_t‖.
    events : list of ``(step, layer, kind, t, message)`` for every warning raised.
    """

    def __init__(self, every=0, vanish=1e-6, explode=1e3, probe=None, logger=None,
                 repeat=False):
        if not isinstance(every, (int, np.integer)) or every < 0:
            raise ValueError(f"every must be a number of steps >= 0, got {every!r}")
        if not 0 < vanish < 1:
            raise ValueError(f"vanish must be a ratio in (0, 1), got {vanish!r}")
        if not explode > 0:
            raise ValueError(f"explode must be positive, got {explode!r}")
        self.every, self.vanish, self.explode = int(every), float(vanish), float(explode)
        self.probe, self.logger, self.repeat = probe, logger, repeat
        self.history, self.events = [], []
        self._warned = set()
        self._loss = None

    # -- by hand ------------------------------------------------------------------------
    def record(self, model, X, Y=None, mask=None, loss=None, step=None, loss_mask=None):
        """Measure ``model`` on one batch; append to ``history``; warn if needed.

        Parameters
        ----------
        model : a recurrent layer or a ``Sequential`` holding them.
        X, Y, mask, loss_mask : a batch as for :func:`unrolled.value_and_grad`.
        loss : a loss name or object (None with Y None: the sum of the outputs).
        step : the training step to report (default: the number of records so far).

        Returns
        -------
        list of the events (warnings) this measurement raised.
        """
        step = len({h["step"] for h in self.history}) if step is None else step
        flow = gradient_flow(model, X, Y, loss, mask=mask, loss_mask=loss_mask)
        new = []
        for key in flow.norms:
            norms = flow.total_norms[key]
            wn = float(np.sqrt(sum(float(np.sum(to_numpy(v).astype(np.float64) ** 2))
                                   for v in _layer_grads(flow.grads, key).values())))
            top = float(np.max(norms)) if np.all(np.isfinite(norms)) else float("inf")
            live = norms[np.isfinite(norms)]
            ratio = float(np.min(live) / top) if top > 0 and np.isfinite(top) else float("nan")
            self.history.append({"step": step, "layer": key, "norms": norms.copy(),
                                 "weight_norm": wn, "ratio": ratio})
            new += self._check(step, key, norms, wn, flow.order[key])
        return new

    def _check(self, step, key, norms, wn, order):
        out = []
        bad = ~np.isfinite(norms)
        if bad.any() or norms.max() > self.explode or not np.isfinite(wn) or wn > self.explode:
            if bad.any():
                t = int(np.flatnonzero(bad)[0])
                what = f"‖∂L/∂h_t‖ is not finite at time step {t}"
            elif norms.max() > self.explode:
                t = int(np.argmax(norms))
                what = (f"‖∂L/∂h_t‖ = {norms[t]:.3g} at time step {t} exceeds "
                        f"{self.explode:g}")
            else:
                t = None
                what = f"the weight gradient norm {wn:.3g} exceeds {self.explode:g}"
            out.append(self._emit(step, key, "explode", t,
                                  f"exploding gradient in layer {key} at training step "
                                  f"{step}: {what}; clip the gradient (--clip) or lower "
                                  "the learning rate"))
        top = norms.max() if not out else 0.0  # a gradient that explodes is not vanishing
        if top > 0:
            small = np.flatnonzero(norms < self.vanish * top)
            if small.size:
                # the step nearest the loss where the gradient has already faded away
                t = int(small.max() if order == "input" else small.min())
                out.append(self._emit(
                    step, key, "vanish", t,
                    f"vanishing gradient in layer {key} at training step {step}: "
                    f"‖∂L/∂h_t‖ at time step {t} is {norms[t] / top:.2g} of its largest "
                    f"value ({top:.3g} at time step {int(np.argmax(norms))}); steps this "
                    "far from the loss barely learn (try a gated cell: LSTM or GRU)"))
        return [e for e in out if e is not None]

    def _emit(self, step, key, kind, t, msg):
        event = (step, key, kind, t, msg)
        self.events.append(event)
        if not self.repeat and (key, kind) in self._warned:
            return event
        self._warned.add((key, kind))
        warnings.warn(msg, GradientWarning, stacklevel=4)
        if self.logger is not None:
            self.logger.log(logging.WARNING, msg)
        return event

    # -- the trainer's hooks -----------------------------------------------------------------
    def on_train_begin(self, trainer):
        self._loss = trainer.loss
        if self.probe is None:
            rng = np.random.default_rng(0)  # its own generator: the trainer's stays untouched
            keys = trainer.task.epoch_batches(rng)
            self.probe = trainer.task.get_batch("train", keys[0])

    def on_epoch_begin(self, trainer, epoch):
        if not self.repeat:
            self._warned.clear()

    def on_batch_end(self, trainer, batch, logs):
        if self.every and trainer.step % self.every == 0:
            self._measure(trainer)

    def on_epoch_end(self, trainer, epoch, logs):
        if not self.every:
            self._measure(trainer)

    def on_train_end(self, trainer, logs):
        pass

    def _measure(self, trainer):
        p = self.probe
        if isinstance(p, tuple):
            X, Y, mask, lmask = (tuple(p) + (None, None))[:4]
        else:
            X, Y, mask, lmask = p.X, p.Y, p.mask, getattr(p, "loss_mask", None)
        self.record(trainer.model, X, Y, mask, loss=self._loss or trainer.loss,
                    step=trainer.step, loss_mask=lmask)

    # -- results -----------------------------------------------------------------------
    def norms(self, layer):
        """(steps, (T,) norms) of one layer: the training steps and the curves recorded."""
        rows = [h for h in self.history if h["layer"] == layer]
        if not rows:
            raise ValueError(f"no records of layer {layer!r}; recorded: "
                             f"{sorted({h['layer'] for h in self.history})}")
        return np.array([h["step"] for h in rows]), [h["norms"] for h in rows]

    def plot(self, path=None, layer=None):
        """‖∂L/∂h_t‖ against t, one curve per recorded training step (light to dark)."""
        layers = sorted({h["layer"] for h in self.history}, key=str)
        if not layers:
            raise ValueError("nothing recorded yet: call record() or train with the monitor")
        layer = layers[0] if layer is None else layer
        steps, curves = self.norms(layer)
        fig = new_figure(5.2, 3.4)
        ax = fig.add_subplot()
        cmap = __import__("matplotlib").colormaps["viridis"]
        for i, (s, y) in enumerate(zip(steps, curves)):
            y = np.where(y > 0, y, np.nan)
            ax.semilogy(np.arange(len(y)), y, color=cmap(i / max(len(steps) - 1, 1)), lw=1.2,
                        label=f"step {s}" if i in (0, len(steps) - 1) else None)
        ax.set_xlabel("time step t")
        ax.set_ylabel(r"$\|\partial L / \partial h_t\|$")
        part = (f" ({layers.index(layer) + 1} of {len(layers)} layers and directions; "
                "plot(layer=...) draws the others)" if len(layers) > 1 else "")
        ax.set_title(f"{layer}: gradient flow during training{part}", fontsize=10)
        ax.grid(True, which="both", alpha=0.25)
        ax.legend(fontsize=8)
        if path is not None:
            save_figure(fig, path)
        return fig


def _layer_grads(grads, key):
    """The gradient dict of one layer/direction key ("l0", "1/l0_reverse") in a grad tree."""
    node = grads
    for part in key.split("/"):
        node = node[part]
    return node
