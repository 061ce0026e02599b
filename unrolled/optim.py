"""Learners, learning-rate schedules and gradient clipping, on parameter trees.

A learner walks two trees of the same structure, the parameters and their gradients
(nested dicts of arrays), and updates the parameter arrays in place; it never knows
which layer a leaf belongs to. Every update follows ``torch.optim`` formula for
formula, with the same defaults, so ten steps here equal ten steps there:

- :class:`SGD` (momentum, dampening, Nesterov, weight decay)
- :class:`Adagrad` (lr decay, initial accumulator), as in min-char-rnn
- :class:`RMSprop` (centered, momentum)
- :class:`Adam` (amsgrad) and :class:`AdamW` (decoupled weight decay)

The learning rate is a float or a schedule, any callable ``step -> lr`` called with the
number of updates done so far (the first update uses ``schedule(0)``); this is
PyTorch's convention of one ``scheduler.step()`` after each ``optimizer.step()``.
"""
import math

import numpy as np

from . import fused
from .backend import get_xp
from .tree import tree_flatten, tree_map, tree_unflatten

__all__ = [
    "SGD",
    "Adagrad",
    "Adam",
    "AdamW",
    "CosineLR",
    "RMSprop",
    "StepLR",
    "WarmupLR",
    "clip_grad_norm",
    "clip_grad_value",
    "get_optimizer",
]


# ---------------------------------------------------------------------------- schedules

class StepLR:
    """``base_lr * gamma ** (step // step_size)``: decay by ``gamma`` every ``step_size``.

    Equals ``torch.optim.lr_scheduler.StepLR`` with one ``scheduler.step()`` per update.
    """

    def __init__(self, base_lr, step_size, gamma=0.1):
        if step_size < 1:
            raise ValueError(f"step_size must be a positive number of steps, got {step_size}")
        self.base_lr, self.step_size, self.gamma = base_lr, int(step_size), gamma

    def __call__(self, step):
        return self.base_lr * self.gamma ** (step // self.step_size)

    def config(self):
        """The constructor arguments as a JSON-able dict (saved with the learner)."""
        return {"schedule": "step", "base_lr": self.base_lr, "step_size": self.step_size,
                "gamma": self.gamma}


class CosineLR:
    """Cosine decay from ``base_lr`` at step 0 to ``min_lr`` at ``total_steps``.

    ``min_lr + (base_lr - min_lr) * (1 + cos(pi * step / total_steps)) / 2``, then
    ``min_lr`` from ``total_steps`` on. Up to ``total_steps`` it equals
    ``torch.optim.lr_scheduler.CosineAnnealingLR(T_max=total_steps, eta_min=min_lr)``,
    which would rise again afterwards.
    """

    def __init__(self, base_lr, total_steps, min_lr=0.0):
        if total_steps < 1:
            raise ValueError(f"total_steps must be at least 1, got {total_steps}")
        self.base_lr, self.total_steps, self.min_lr = base_lr, int(total_steps), min_lr

    def __call__(self, step):
        s = min(step, self.total_steps)
        cos = math.cos(math.pi * s / self.total_steps)
        return self.min_lr + (self.base_lr - self.min_lr) * (1 + cos) / 2

    def config(self):
        """The constructor arguments as a JSON-able dict (saved with the learner)."""
        return {"schedule": "cosine", "base_lr": self.base_lr,
                "total_steps": self.total_steps, "min_lr": self.min_lr}


class WarmupLR:
    """Linear warm-up over ``warmup_steps``, then the wrapped schedule (or constant).

    For ``step < warmup_steps`` the rate is ``peak * (f + (1 - f) * step / warmup_steps)``
    with ``peak = schedule(0)`` and ``f = start_factor`` (0: the first update has rate 0);
    from then on it is ``schedule(step - warmup_steps)``, so the wrapped schedule starts
    where the warm-up ends. With ``start_factor > 0`` this equals PyTorch's
    ``SequentialLR([LinearLR(start_factor, total_iters=warmup_steps), inner],
    milestones=[warmup_steps])``.
    """

    def __init__(self, schedule, warmup_steps, start_factor=0.0):
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        if not 0 <= start_factor <= 1:
            raise ValueError(f"start_factor must lie in [0, 1], got {start_factor}")
        self.schedule, self.warmup_steps = schedule, int(warmup_steps)
        self.start_factor = start_factor

    def _inner(self, step):
        return self.schedule(step) if callable(self.schedule) else self.schedule

    def __call__(self, step):
        if step < self.warmup_steps:
            f = self.start_factor
            return self._inner(0) * (f + (1 - f) * step / self.warmup_steps)
        return self._inner(step - self.warmup_steps)

    def config(self):
        """The constructor arguments as a JSON-able dict, or None when the wrapped
        schedule is a callable without ``config()``."""
        inner = self.schedule
        if callable(inner):
            inner = inner.config() if hasattr(inner, "config") else None
        return None if inner is None else {
            "schedule": "warmup", "inner": inner, "warmup_steps": self.warmup_steps,
            "start_factor": self.start_factor}


_SCHEDULES = {"step": StepLR, "cosine": CosineLR, "warmup": WarmupLR}


def _schedule_from_config(cfg):
    """Inverse of ``schedule.config()`` (a float stays a float)."""
    if not isinstance(cfg, dict):
        return cfg
    cfg = dict(cfg)
    cls = _SCHEDULES[cfg.pop("schedule")]
    if cls is WarmupLR:
        cfg["schedule"] = _schedule_from_config(cfg.pop("inner"))
    return cls(**cfg)


def _lr_config(lr):
    """A JSON-able description of ``lr``: a float, a schedule's config, or None."""
    if callable(lr):
        return lr.config() if hasattr(lr, "config") else None
    return float(lr)


# ----------------------------------------------------------------------------- learners

def _flat_views(p, g, s):
    """1-D views of ``p`` and the state arrays ``s`` and a 1-D ``g``, for the compiled
    updates; None where they cannot run (not NumPy, not float32/float64, not
    C-contiguous, or state of another dtype): the readable update runs then."""
    if not (isinstance(p, np.ndarray) and isinstance(g, np.ndarray)
            and p.dtype in (np.float32, np.float64) and fused.use_compiled(np)):
        return None
    pf = fused.flat(p)
    views = {}
    for k, a in s.items():
        views[k] = fused.flat(a) if isinstance(a, np.ndarray) and a.dtype == p.dtype else None
    if pf is None or any(v is None for v in views.values()):
        return None
    return pf, np.ascontiguousarray(g).reshape(-1), views


def _lerp(a, b, w):
    """``a + w * (b - a)`` computed as torch's ``lerp`` does (two forms by ``w``)."""
    return a + w * (b - a) if abs(w) < 0.5 else b - (b - a) * (1 - w)


class Optimizer:
    """Base learner: tree walking, lazy state, learning rate, ``state_dict``.

    Subclasses list their hyperparameters in ``_hyper`` and implement ``_slots(params)``
    (the state arrays each leaf needs) and ``_update(p, g, s, lr, t)`` for one leaf,
    where ``p`` is updated in place, ``s`` maps slot names to that leaf's state arrays
    and ``t`` is the number of this update (1 for the first). SGD, Adam and AdamW run
    their update as one compiled loop per leaf where they can (:mod:`unrolled.fused`),
    the readable formula elsewhere; both give the same bits.
    """

    name = None
    _hyper = ()

    def __init__(self, lr):
        if not callable(lr) and not lr >= 0:
            raise ValueError(f"lr must be a float >= 0 or a schedule step -> lr, got {lr!r}")
        self._lr = lr
        self.step_count = 0  # updates done so far
        self.state = None  # {slot: {leaf path: array}}, created on the first step

    def __repr__(self):
        args = ", ".join(f"{k}={getattr(self, k)!r}" for k in ("lr",) + self._hyper)
        return f"{type(self).__name__}({args})"

    @property
    def lr(self):
        """The learning rate the next update uses."""
        return self._lr(self.step_count) if callable(self._lr) else self._lr

    @lr.setter
    def lr(self, value):
        self._lr = value

    def step(self, params, grads):
        """Update the arrays of ``params`` in place from ``grads``; return ``params``.

        Parameters
        ----------
        params : dict
            Parameter tree (nested dicts of float arrays); its arrays are modified.
        grads : dict
            Gradient tree of the same structure, shapes and dtypes.
        """
        flat_p, flat_g = tree_flatten(params), tree_flatten(grads)
        _check_same_tree(flat_p, flat_g)
        if self.state is None:
            self.state = self._init_state(flat_p)
        else:
            self._check_state(flat_p)
        lr, t = self.lr, self.step_count + 1
        for k, p in flat_p.items():
            s = {slot: arrays[k] for slot, arrays in self.state.items()}
            self._update(p, flat_g[k], s, lr, t)
            for slot, arrays in self.state.items():
                arrays[k] = s[slot]
        self.step_count = t
        return params

    def _init_state(self, flat_p):
        state = {}
        for slot, fill in self._slots().items():
            state[slot] = {k: get_xp(p).full(p.shape, fill, dtype=p.dtype)
                           for k, p in flat_p.items()}
        return state

    def _check_state(self, flat_p):
        for slot, arrays in self.state.items():
            shapes = {k: tuple(v.shape) for k, v in arrays.items()}
            if shapes != {k: tuple(p.shape) for k, p in flat_p.items()}:
                raise ValueError(
                    f"the optimizer state ({slot!r}) was built for another parameter tree: "
                    f"{_diff(shapes, {k: tuple(p.shape) for k, p in flat_p.items()})}; "
                    "use a fresh optimizer for a new model")

    def state_dict(self):
        """The learner's state: ``{"optimizer", "step", "hyperparams", "state"}``.

        ``state`` is a tree ``{slot: params-shaped tree of arrays}`` (copies); the rest
        are plain scalars and lists, so it saves as ``.npz`` (``tree_flatten(d["state"])``)
        plus JSON. ``hyperparams["lr"]`` is a float, a schedule's ``config()``, or None
        for a custom callable (keep passing it to the constructor).
        """
        state = {} if self.state is None else {
            slot: tree_unflatten({k: v.copy() for k, v in arrays.items()})
            for slot, arrays in self.state.items()}
        hyper = {k: _plain(getattr(self, k)) for k in self._hyper}
        hyper["lr"] = _lr_config(self._lr)
        return {"optimizer": self.name, "step": self.step_count, "hyperparams": hyper,
                "state": state}

    def load_state_dict(self, d):
        """Restore what :meth:`state_dict` returned; later steps continue bit for bit.

        Hyperparameters are restored too (as ``torch.optim`` does), except a learning
        rate saved as None (a custom callable), which keeps the one given here.
        """
        if d.get("optimizer") != self.name:
            raise ValueError(f"this state belongs to optimizer {d.get('optimizer')!r}, not "
                             f"{self.name!r}; build a {d.get('optimizer')!r} learner to load it")
        hyper = dict(d["hyperparams"])
        unknown = set(hyper) - set(self._hyper) - {"lr"}
        if unknown:
            raise ValueError(f"unknown hyperparameters {sorted(unknown)} for {self.name!r}; "
                             "was this state saved by another version?")
        lr = hyper.pop("lr", None)
        old = {k: getattr(self, k) for k in hyper}
        for k, v in hyper.items():
            setattr(self, k, tuple(v) if isinstance(v, list) else v)
        state = d["state"]
        if state and set(state) != set(self._slots()):
            for k, v in old.items():  # leave this learner as it was
                setattr(self, k, v)
            raise ValueError(f"state slots {sorted(state)} do not match the slots "
                             f"{sorted(self._slots())} of {self.name!r} with these "
                             "hyperparameters; the saved state is incomplete")
        if lr is not None:  # None: a custom callable, keep the one we were given
            self._lr = _schedule_from_config(lr)
        self.step_count = int(d["step"])
        self.state = None if not state else {
            slot: {k: get_xp(v).array(v, copy=True) for k, v in tree_flatten(tree).items()}
            for slot, tree in state.items()}


def _plain(v):
    return list(v) if isinstance(v, tuple) else v


def _diff(a, b):
    """Describe how two {path: shape} dicts differ, for error messages."""
    missing = sorted(set(b) - set(a))
    extra = sorted(set(a) - set(b))
    shapes = [f"{k}: {a[k]} vs {b[k]}" for k in a if k in b and a[k] != b[k]]
    parts = []
    if missing:
        parts.append(f"missing {missing}")
    if extra:
        parts.append(f"unexpected {extra}")
    if shapes:
        parts.append("shape " + ", ".join(shapes))
    return "; ".join(parts)


def _check_same_tree(flat_p, flat_g):
    sp = {k: tuple(getattr(v, "shape", ())) for k, v in flat_p.items()}
    sg = {k: tuple(getattr(v, "shape", ())) for k, v in flat_g.items()}
    if sp != sg:
        raise ValueError(f"grads must have the structure and shapes of params: {_diff(sg, sp)}")
    for k, p in flat_p.items():
        g = flat_g[k]
        if getattr(p, "dtype", None) is None or p.dtype.kind != "f":
            raise TypeError(f"parameter {k!r} must be a float array, got {type(p).__name__}")
        if g.dtype != p.dtype:
            raise ValueError(f"gradient {k!r} is {g.dtype} but its parameter is {p.dtype}; "
                             "cast the gradients (or the model) to one dtype")


class SGD(Optimizer):
    """Stochastic gradient descent, as ``torch.optim.SGD``.

    ``g += weight_decay * p``; with momentum ``b = momentum * b + (1 - dampening) * g``
    (``b = g`` on the first step) and ``g = b`` (or ``g + momentum * b`` with Nesterov);
    ``p -= lr * g``.
    """

    name = "sgd"
    _hyper = ("momentum", "dampening", "nesterov", "weight_decay")

    def __init__(self, lr, momentum=0, dampening=0, nesterov=False, weight_decay=0):
        super().__init__(lr)
        if momentum < 0 or weight_decay < 0:
            raise ValueError(f"momentum and weight_decay must be >= 0, got {momentum}, "
                             f"{weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("nesterov=True needs momentum > 0 and dampening = 0")
        self.momentum, self.dampening = momentum, dampening
        self.nesterov, self.weight_decay = nesterov, weight_decay

    def _slots(self):
        return {"momentum_buffer": 0.0} if self.momentum != 0 else {}

    def _update(self, p, g, s, lr, t):
        views = _flat_views(p, g, s)
        if views is not None:  # the formula below as one loop, in place
            pf, gf, sf = views
            T = p.dtype.type
            buf = sf.get("momentum_buffer", pf)  # unread without momentum
            fused.kernel("sgd")(pf, gf, buf, T(self.weight_decay), T(self.momentum), t == 1,
                                T(1 - self.dampening), bool(self.nesterov), T(lr))
            return
        if self.weight_decay != 0:
            g = g + self.weight_decay * p
        if self.momentum != 0:
            if t == 1:  # torch starts the buffer at the first gradient, undamped
                s["momentum_buffer"] = g.copy()
            else:
                buf = s["momentum_buffer"]
                s["momentum_buffer"] = buf * self.momentum + (1 - self.dampening) * g
            buf = s["momentum_buffer"]
            g = g + self.momentum * buf if self.nesterov else buf
        p -= lr * g


class Adagrad(Optimizer):
    """Adagrad, as ``torch.optim.Adagrad``.

    ``sum += g * g``; ``p -= lr / (1 + (t - 1) * lr_decay) * g / (sqrt(sum) + eps)``.
    """

    name = "adagrad"
    _hyper = ("lr_decay", "weight_decay", "initial_accumulator_value", "eps")

    def __init__(self, lr=1e-2, lr_decay=0, weight_decay=0, initial_accumulator_value=0,
                 eps=1e-10):
        super().__init__(lr)
        if min(lr_decay, weight_decay, initial_accumulator_value, eps) < 0:
            raise ValueError("lr_decay, weight_decay, initial_accumulator_value and eps must "
                             "be >= 0")
        self.lr_decay, self.weight_decay = lr_decay, weight_decay
        self.initial_accumulator_value, self.eps = initial_accumulator_value, eps

    def _slots(self):
        return {"sum": self.initial_accumulator_value}

    def _update(self, p, g, s, lr, t):
        xp = get_xp(p)
        if self.weight_decay != 0:
            g = g + self.weight_decay * p
        clr = lr / (1 + (t - 1) * self.lr_decay)
        s["sum"] = s["sum"] + g * g
        p -= clr * (g / (xp.sqrt(s["sum"]) + self.eps))


class RMSprop(Optimizer):
    """RMSprop, as ``torch.optim.RMSprop``.

    ``v = alpha * v + (1 - alpha) * g * g``; centered: ``m = lerp(m, g, 1 - alpha)`` and
    ``avg = sqrt(v - m * m) + eps``, else ``sqrt(v) + eps``; with momentum
    ``b = momentum * b + g / avg`` and ``p -= lr * b``, else ``p -= lr * g / avg``.
    """

    name = "rmsprop"
    _hyper = ("alpha", "eps", "weight_decay", "momentum", "centered")

    def __init__(self, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0,
                 centered=False):
        super().__init__(lr)
        if min(alpha, eps, weight_decay, momentum) < 0:
            raise ValueError("alpha, eps, weight_decay and momentum must be >= 0")
        self.alpha, self.eps, self.weight_decay = alpha, eps, weight_decay
        self.momentum, self.centered = momentum, centered

    def _slots(self):
        slots = {"square_avg": 0.0}
        if self.centered:
            slots["grad_avg"] = 0.0
        if self.momentum > 0:
            slots["momentum_buffer"] = 0.0
        return slots

    def _update(self, p, g, s, lr, t):
        xp = get_xp(p)
        if self.weight_decay != 0:
            g = g + self.weight_decay * p
        s["square_avg"] = s["square_avg"] * self.alpha + (1 - self.alpha) * (g * g)
        if self.centered:
            s["grad_avg"] = _lerp(s["grad_avg"], g, 1 - self.alpha)
            avg = xp.sqrt(s["square_avg"] - s["grad_avg"] * s["grad_avg"])
        else:
            avg = xp.sqrt(s["square_avg"])
        avg = avg + self.eps
        if self.momentum > 0:
            s["momentum_buffer"] = s["momentum_buffer"] * self.momentum + g / avg
            p -= lr * s["momentum_buffer"]
        else:
            p -= lr * (g / avg)


class Adam(Optimizer):
    """Adam, as ``torch.optim.Adam`` (``weight_decay`` adds ``weight_decay * p`` to g).

    ``m = lerp(m, g, 1 - beta1)``, ``v = beta2 * v + (1 - beta2) * g * g``;
    ``p -= lr / (1 - beta1**t) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)``, with
    ``v`` replaced by its running maximum when ``amsgrad``.
    """

    name = "adam"
    _hyper = ("betas", "eps", "weight_decay", "amsgrad")
    _decoupled = False  # AdamW decays the weights directly instead

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False):
        super().__init__(lr)
        if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"betas must lie in [0, 1), got {betas}")
        if eps < 0 or weight_decay < 0:
            raise ValueError("eps and weight_decay must be >= 0")
        self.betas, self.eps = tuple(betas), eps
        self.weight_decay, self.amsgrad = weight_decay, amsgrad

    def _slots(self):
        slots = {"exp_avg": 0.0, "exp_avg_sq": 0.0}
        if self.amsgrad:
            slots["max_exp_avg_sq"] = 0.0
        return slots

    def _update(self, p, g, s, lr, t):
        xp = get_xp(p)
        beta1, beta2 = self.betas
        views = _flat_views(p, g, s)
        if views is not None:  # the formula below as one loop, in place
            pf, gf, sf = views
            T, wd, w = p.dtype.type, self.weight_decay, 1 - beta1
            fused.kernel("adam")(
                pf, gf, sf["exp_avg"], sf["exp_avg_sq"], sf.get("max_exp_avg_sq", pf),
                wd != 0 and not self._decoupled, T(wd), wd != 0 and self._decoupled,
                T(1 - lr * wd), abs(w) < 0.5, T(w), T(1 - w), T(beta2), T(1 - beta2),
                bool(self.amsgrad), T(lr / (1 - beta1**t)), T((1 - beta2**t) ** 0.5),
                T(self.eps))
            return
        if self.weight_decay != 0:
            if self._decoupled:
                p *= 1 - lr * self.weight_decay
            else:
                g = g + self.weight_decay * p
        s["exp_avg"] = _lerp(s["exp_avg"], g, 1 - beta1)
        s["exp_avg_sq"] = s["exp_avg_sq"] * beta2 + (1 - beta2) * (g * g)
        step_size = lr / (1 - beta1**t)
        bias_correction2_sqrt = (1 - beta2**t) ** 0.5
        if self.amsgrad:
            s["max_exp_avg_sq"] = xp.maximum(s["max_exp_avg_sq"], s["exp_avg_sq"])
            v = s["max_exp_avg_sq"]
        else:
            v = s["exp_avg_sq"]
        denom = xp.sqrt(v) / bias_correction2_sqrt + self.eps
        p -= step_size * (s["exp_avg"] / denom)


class AdamW(Adam):
    """AdamW, as ``torch.optim.AdamW``: Adam with ``p *= 1 - lr * weight_decay`` first."""

    name = "adamw"
    _decoupled = True

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False):
        super().__init__(lr, betas, eps, weight_decay, amsgrad)


_OPTIMIZERS = {"sgd": SGD, "adagrad": Adagrad, "rmsprop": RMSprop, "adam": Adam,
               "adamw": AdamW}


def get_optimizer(name, **kwargs):
    """A learner by name (``"sgd"``, ``"adagrad"``, ``"rmsprop"``, ``"adam"``, ``"adamw"``).

    >>> get_optimizer("adam", lr=3e-3)
    Adam(lr=0.003, betas=(0.9, 0.999), eps=1e-08, weight_decay=0, amsgrad=False)
    """
    if name not in _OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; valid names: {', '.join(_OPTIMIZERS)}")
    return _OPTIMIZERS[name](**kwargs)


# ----------------------------------------------------------------------------- clipping

def clip_grad_norm(grads, max_norm, inplace=False):
    """Scale the whole gradient tree so its global L2 norm is at most ``max_norm``.

    The scale is ``min(1, max_norm / (total_norm + 1e-6))``, as in
    ``torch.nn.utils.clip_grad_norm_``.

    Parameters
    ----------
    grads : dict
        Gradient tree (nested dicts of arrays); it is not modified unless ``inplace``.
    max_norm : float
        Largest global norm allowed.
    inplace : bool
        Scale the arrays of ``grads`` themselves (as PyTorch does) and return ``grads``:
        no copy of the gradients, and none at all when no scaling is needed.

    Returns
    -------
    clipped_grads : dict
        A new tree of the same structure (``grads`` itself when ``inplace``).
    total_norm : float
        The global norm before clipping (the norm of all leaves concatenated).
    """
    if not max_norm > 0:
        raise ValueError(f"max_norm must be > 0, got {max_norm}")
    flat = tree_flatten(grads)
    compiled = fused.use_compiled(np)
    sq = 0.0
    with np.errstate(over="ignore"):  # an overflow is reported below, by name
        for g in flat.values():
            gf = (fused.flat(g) if compiled and isinstance(g, np.ndarray)
                  and g.dtype in (np.float32, np.float64) else None)
            if gf is not None:  # one pass, summed in float64
                sq += fused.kernel("sum_squares")(gf)
            else:  # the norm of the per-leaf norms, as torch computes it
                n = float(get_xp(g).linalg.norm(g.ravel()))
                sq += n * n
    total_norm = math.sqrt(sq)
    if not math.isfinite(total_norm):
        bad = [k for k, g in flat.items() if not bool(get_xp(g).all(get_xp(g).isfinite(g)))]
        where = (f"gradient {bad[0]!r} holds NaN or inf" + (f" (also {bad[1:]})" if bad[1:] else "")
                 if bad else "the gradient norm overflows although every leaf is finite")
        raise ValueError(f"{where}: training has diverged; lower the learning rate, clip "
                         "earlier with a smaller max_norm or clip_grad_value, and check the "
                         "data for NaN")
    coef = min(max_norm / (total_norm + 1e-6), 1.0)
    if inplace:
        if coef < 1.0:
            for g in flat.values():
                g *= coef
        return grads, total_norm
    return tree_map(lambda g: g * coef, grads), total_norm


def clip_grad_value(grads, clip_value):
    """Clip every gradient element into ``[-clip_value, clip_value]`` (a new tree).

    As ``torch.nn.utils.clip_grad_value_``.
    """
    if not clip_value > 0:
        raise ValueError(f"clip_value must be > 0, got {clip_value}")
    return tree_map(lambda g: get_xp(g).clip(g, -clip_value, clip_value), grads)
