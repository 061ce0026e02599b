"""Losses: a value and its gradient with respect to the outputs, mask-aware.

Each loss has ``value_and_grad(outputs, targets, mask=None) -> (value, d_outputs)``;
``d_outputs`` has the shape and dtype of ``outputs`` and is what BPTT starts from.
Reductions follow PyTorch: ``"mean"`` divides by the number of valid (unmasked)
elements, ``"sum"`` adds them up. Masked positions give no loss and no gradient, and
their targets are never read, so padded steps may hold anything (even NaN or -1).

- :class:`CrossEntropy`: softmax cross-entropy over integer class targets, logits in
  (``torch.nn.functional.cross_entropy`` on the valid steps).
- :class:`MSE`: mean squared error (``torch.nn.functional.mse_loss`` on the valid part).
- :class:`BCE`: binary cross-entropy with logits in
  (``torch.nn.functional.binary_cross_entropy_with_logits`` on the valid part).
"""
import numpy as np

from . import fused
from .backend import get_xp

__all__ = ["BCE", "MSE", "CrossEntropy", "get_loss", "log_softmax"]


class _Loss:
    """Shared plumbing: reduction, mask and finiteness checks."""

    name = None

    def __init__(self, reduction="mean"):
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        self.reduction = reduction

    def __repr__(self):
        return f"{type(self).__name__}(reduction={self.reduction!r})"

    def _scale(self, n_valid):
        # "mean" averages over the valid elements, "sum" adds them
        return 1.0 / n_valid if self.reduction == "mean" else 1.0


def _as_float_outputs(outputs, ndims, what):
    """Check that ``outputs`` is a floating array with one of the allowed ranks."""
    xp = get_xp(outputs)
    outputs = xp.asarray(outputs)
    if outputs.dtype.kind != "f":
        raise TypeError(
            f"outputs must be a floating-point array ({what}), got dtype {outputs.dtype}; "
            "pass the model's raw outputs")
    if outputs.ndim not in ndims:
        shapes = " or ".join({2: "(B, C)", 3: "(B, T, C)"}[d] for d in ndims)
        raise ValueError(f"outputs must have shape {shapes} ({what}), got {outputs.shape}")
    return xp, outputs


def _as_mask(xp, mask, shape, name="mask"):
    """A boolean array of ``shape`` from a bool or 0/1 integer mask."""
    mask = xp.asarray(mask)
    if mask.dtype.kind not in "biu":
        raise TypeError(f"{name} must be boolean (True = valid step), got dtype {mask.dtype}; "
                        f"use {name}.astype(bool)")
    if mask.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {mask.shape}")
    return mask if mask.dtype.kind == "b" else mask != 0


def _count_valid(xp, valid, what):
    n = int(xp.count_nonzero(valid))
    if n == 0:
        raise ValueError(f"no valid {what}: the mask is False everywhere; every batch needs "
                         "at least one unmasked step (drop empty records before batching)")
    return n


def _check_finite(xp, outputs, valid):
    bad = valid & ~xp.isfinite(outputs)
    if bool(xp.any(bad)):
        raise ValueError(
            f"outputs hold NaN or inf at {int(xp.count_nonzero(bad))} valid positions; "
            "training has diverged: lower the learning rate or clip the gradients")


def log_softmax(logits, axis=-1):
    """``log softmax(logits)`` along ``axis``, stable for large logits.

    The logits are shifted by their maximum before exponentiating, so nothing overflows;
    works for NumPy and CuPy arrays alike. Shape and dtype are those of ``logits``.
    """
    xp = get_xp(logits)
    z = logits - logits.max(axis=axis, keepdims=True)
    return z - xp.log(xp.exp(z).sum(axis=axis, keepdims=True))


class CrossEntropy(_Loss):
    """Softmax cross-entropy over integer class targets (logits in).

    .. math:: \\ell_t = -\\log \\mathrm{softmax}(o_t)[y_t], \\qquad
              \\partial \\ell_t / \\partial o_t = \\mathrm{softmax}(o_t) - \\mathrm{onehot}(y_t)

    Parameters
    ----------
    reduction : {"mean", "sum"}
        ``"mean"`` divides by the number of valid steps, or with ``weight`` by the sum
        of the weights of their targets, as PyTorch does.
    weight : (C,) floats or None
        A weight per class: step ``t`` counts ``weight[y_t]`` times (e.g. the
        ``"balanced"`` weights ``N / (C n_c)``, so rare classes count as much as common
        ones), as ``torch.nn.functional.cross_entropy(weight=...)``.

    Shapes: ``outputs`` (B, T, C) logits with ``targets`` (B, T) and ``mask`` (B, T)
    bool, or ``outputs`` (B, C) with ``targets`` (B,) for classification at the last
    step (``mask`` is then ignored: the model already picked each record's last valid
    step). Targets are integers in ``[0, C)`` (floats holding whole numbers are accepted).

    On NumPy arrays the loss runs as two compiled passes over the logits and one
    exponentiation in place (:mod:`unrolled.fused`): no temporaries, ``d_outputs`` in
    the memory layout of ``outputs``; it agrees with the readable code to rounding.
    """

    name = "cross_entropy"

    def __init__(self, reduction="mean", weight=None):
        super().__init__(reduction)
        if weight is not None:
            weight = np.asarray(weight, dtype=np.float64)
            if weight.ndim != 1 or not np.all(np.isfinite(weight)) or np.any(weight < 0):
                raise ValueError("weight must be a 1-D array of finite, non-negative class "
                                 f"weights (one per class), got {weight!r}")
        self.weight = weight

    def __repr__(self):
        w = "" if self.weight is None else f", weight={self.weight.tolist()!r}"
        return f"{type(self).__name__}(reduction={self.reduction!r}{w})"

    def value_and_grad(self, outputs, targets, mask=None):
        """Loss value (float) and ``d_outputs`` (shape and dtype of ``outputs``)."""
        done = self._fused(outputs, targets, mask)
        if done is not None:
            return done
        xp, outputs = _as_float_outputs(outputs, (2, 3), "logits")
        C = outputs.shape[-1]  # number of classes
        lead = outputs.shape[:-1]  # (B, T) or (B,)
        targets = xp.asarray(targets)
        if targets.shape != lead:
            hint = ("; one-hot or probability targets are not supported, use "
                    "targets.argmax(-1)" if targets.shape == outputs.shape else "")
            raise ValueError(f"targets must have shape {lead} (class indices for outputs of "
                             f"shape {outputs.shape}), got {targets.shape}{hint}")
        if outputs.ndim == 3 and mask is not None:
            valid = _as_mask(xp, mask, lead)
        else:
            valid = xp.ones(lead, dtype=bool)
        n = _count_valid(xp, valid, "step")

        # targets: integers at valid steps; masked ones are replaced by class 0, unread
        if targets.dtype.kind == "f":
            t = xp.where(valid, targets, 0)
            if not bool(xp.all(xp.isfinite(t) & (t == xp.floor(t)))):
                raise ValueError("cross-entropy targets must be integer class indices; got "
                                 "non-integer values at valid steps (one-hot or soft labels? "
                                 "use targets.argmax(-1))")
        elif targets.dtype.kind in "iu":
            t = xp.where(valid, targets, 0)
        else:
            raise TypeError(f"cross-entropy targets must be integer class indices, got dtype "
                            f"{targets.dtype}; use targets.astype(int)")
        out_of_range = (t < 0) | (t >= C)
        if bool(xp.any(out_of_range)):
            bad = t[out_of_range]
            raise ValueError(f"cross-entropy targets must lie in [0, {C}) at valid steps, got "
                             f"values from {bad.min()} to {bad.max()}; check the number of "
                             "classes of the output layer, or mask the padded steps")
        t = t.astype(np.int64)

        _check_finite(xp, outputs, valid[..., None])
        o = xp.where(valid[..., None], outputs, 0)  # garbage at masked steps cannot leak
        logp = log_softmax(o)  # (..., C)
        picked = xp.take_along_axis(logp, t[..., None], axis=-1)[..., 0]  # (...,)
        # each valid step counts w_t: 1, or the weight of its target class
        if self.weight is None:
            w, denom = valid.astype(outputs.dtype), n
        else:
            if self.weight.shape != (C,):
                raise ValueError(f"weight has {self.weight.shape[0]} class weights but the "
                                 f"outputs have {C} classes; pass one weight per class")
            w = xp.where(valid, xp.asarray(self.weight)[t], 0)  # (...,) float64
            denom = float(w.sum())  # PyTorch's weighted mean divides by sum(w), not n
            if denom == 0 and self.reduction == "mean":
                raise ValueError("every valid step has a class of weight 0, so the weighted "
                                 "mean is undefined; give those classes a weight > 0")
        total = -float((w * picked).sum())
        value = total / denom if self.reduction == "mean" else total

        # d/do of -log softmax(o)[y] is softmax(o) - onehot(y); zero at masked steps
        onehot = xp.arange(C) == t[..., None]  # (..., C) bool
        weight = w.astype(outputs.dtype) * outputs.dtype.type(self._scale(denom))
        d_outputs = (xp.exp(logp) - onehot) * weight[..., None]
        return value, d_outputs.astype(outputs.dtype, copy=False)

    def _fused(self, outputs, targets, mask):
        """The loss and its gradient from the compiled passes, or None where they do not
        apply: other arrays or dtypes, and every input the readable code rejects (it
        runs then, and names the problem)."""
        if not (isinstance(outputs, np.ndarray) and outputs.dtype in (np.float32, np.float64)
                and outputs.ndim in (2, 3) and outputs.shape[-1] > 0
                and isinstance(targets, np.ndarray) and targets.dtype.kind in "iuf"
                and targets.shape == outputs.shape[:-1] and fused.use_compiled(np)):
            return None
        C = outputs.shape[-1]
        weighted = self.weight is not None
        if weighted and self.weight.shape != (C,):
            return None
        has_mask = outputs.ndim == 3 and mask is not None
        valid = np.ones((1, 1), bool)  # unread without a mask
        if has_mask:
            valid = np.asarray(mask)
            if valid.shape != targets.shape or valid.dtype.kind not in "biu":
                return None
            valid = valid if valid.dtype.kind == "b" else valid != 0
        if targets.dtype.kind == "f":  # whole numbers at the valid steps, as integers
            tt = np.where(valid, targets, 0) if has_mask else targets
            if not np.all(np.isfinite(tt) & (tt == np.floor(tt))):
                return None
            targets = tt.astype(np.int64)
        o, t = (outputs, targets) if outputs.ndim == 3 else (outputs[:, None], targets[:, None])
        d = np.empty_like(o)  # the layout of the logits
        zt, wrow = np.empty(o.shape[:2], o.dtype), np.empty(o.shape[:2])
        cw = self.weight if weighted else np.zeros(1)
        status, n, wsum = fused.kernel("ce_shift")(o, t, valid, has_mask, cw, weighted, d,
                                                   zt, wrow)
        denom = wsum if weighted else n
        if status or n == 0 or (denom == 0 and self.reduction == "mean"):
            return None
        np.exp(d, out=d)
        total = fused.kernel("ce_finish")(t, valid, has_mask, d, zt, wrow,
                                          float(self._scale(denom)))
        value = total / denom if self.reduction == "mean" else total
        return value, (d if outputs.ndim == 3 else d[:, 0])


class _Elementwise(_Loss):
    """Losses on real-valued targets of the outputs' shape, with a step or element mask."""

    def _prepare(self, outputs, targets, mask):
        xp, outputs = _as_float_outputs(outputs, (2, 3), self.what)
        targets = xp.asarray(targets)
        if targets.shape != outputs.shape:
            hint = ("; reshape them, e.g. targets[..., None]"
                    if targets.size == outputs.size else "")
            raise ValueError(f"targets must have the outputs' shape {outputs.shape}, got "
                             f"{targets.shape}{hint}")
        if targets.dtype.kind not in "fiub":
            raise TypeError(f"targets must be numeric, got dtype {targets.dtype}")
        if mask is None:
            valid = xp.ones(outputs.shape, dtype=bool)
        else:
            mask = xp.asarray(mask)
            if mask.shape == outputs.shape:  # element mask (missing targets)
                valid = _as_mask(xp, mask, outputs.shape)
            elif outputs.ndim == 3 and mask.shape == outputs.shape[:2]:  # step mask
                valid = xp.broadcast_to(_as_mask(xp, mask, outputs.shape[:2])[..., None],
                                        outputs.shape)
            else:
                steps = (f" or a step mask {outputs.shape[:2]}" if outputs.ndim == 3 else
                         "; for last-step outputs the step mask does not apply: pass "
                         "mask=None")
                raise ValueError(f"mask must be an element mask of the outputs' shape "
                                 f"{outputs.shape}{steps}, got {mask.shape}")
        n = _count_valid(xp, valid, "element")
        _check_finite(xp, outputs, valid)
        t = xp.where(valid, targets, 0).astype(outputs.dtype, copy=False)
        if not bool(xp.all(xp.isfinite(t))):
            raise ValueError("targets hold NaN or inf at valid positions; mark missing targets "
                             "with an element mask (same shape as the outputs, False where "
                             "missing)")
        o = xp.where(valid, outputs, 0)
        return xp, o, t, valid, n

    def _finish(self, total, grad, valid, n, dtype):
        value = total / n if self.reduction == "mean" else total
        d_outputs = grad * (valid.astype(dtype) * dtype.type(self._scale(n)))
        return value, d_outputs.astype(dtype, copy=False)


class MSE(_Elementwise):
    """Mean squared error, ``mean((outputs - targets)**2)`` over the valid elements.

    Parameters
    ----------
    reduction : {"mean", "sum"}
        ``"mean"`` divides by the number of valid elements (valid steps x features).

    Shapes: ``outputs`` and ``targets`` (B, T, F) or (B, F). ``mask`` is a step mask
    (B, T) or an element mask of the outputs' full shape (False where a target is
    missing; such targets may be NaN).
    """

    name = "mse"
    what = "predictions"

    def value_and_grad(self, outputs, targets, mask=None):
        """Loss value (float) and ``d_outputs`` (shape and dtype of ``outputs``)."""
        _, o, t, valid, n = self._prepare(outputs, targets, mask)
        diff = o - t  # zero at masked positions: both were zeroed
        total = float((diff * diff).sum())
        return self._finish(total, 2 * diff, valid, n, o.dtype)


class BCE(_Elementwise):
    """Binary cross-entropy with logits in (PyTorch's ``BCEWithLogitsLoss``).

    .. math:: \\ell = \\max(x, 0) - x y + \\log(1 + e^{-|x|}), \\qquad
              \\partial \\ell / \\partial x = \\sigma(x) - y

    Parameters
    ----------
    reduction : {"mean", "sum"}
        ``"mean"`` divides by the number of valid elements.

    Shapes as :class:`MSE`; targets lie in [0, 1] at valid positions.
    """

    name = "bce"
    what = "logits"

    def value_and_grad(self, outputs, targets, mask=None):
        """Loss value (float) and ``d_outputs`` (shape and dtype of ``outputs``)."""
        xp, x, y, valid, n = self._prepare(outputs, targets, mask)
        if not bool(xp.all((y >= 0) & (y <= 1))):
            raise ValueError("BCE targets must lie in [0, 1] at valid positions; rescale "
                             "them, or mask the positions that hold no target")
        # stable form: never exponentiate a positive number
        e = xp.exp(-xp.abs(x))
        loss = xp.maximum(x, 0) - x * y + xp.log1p(e)
        total = float(xp.where(valid, loss, 0).sum())
        sig = xp.where(x >= 0, 1 / (1 + e), e / (1 + e))  # sigmoid(x)
        return self._finish(total, sig - y, valid, n, x.dtype)


_LOSSES = {"cross_entropy": CrossEntropy, "mse": MSE, "bce": BCE}


def get_loss(loss):
    """A loss instance from a name (``"cross_entropy"``, ``"mse"``, ``"bce"``).

    An object with a ``value_and_grad(outputs, targets, mask)`` method is returned as is.
    """
    if isinstance(loss, str):
        if loss not in _LOSSES:
            raise ValueError(f"unknown loss {loss!r}; valid names: {', '.join(_LOSSES)}, "
                             "or pass an object with value_and_grad(outputs, targets, mask)")
        return _LOSSES[loss]()
    if isinstance(loss, type):
        raise TypeError(f"pass a loss instance, e.g. {loss.__name__}(), not the class")
    if not callable(getattr(loss, "value_and_grad", None)):
        raise TypeError(f"loss must be a name ({', '.join(_LOSSES)}) or an object with "
                        f"value_and_grad(outputs, targets, mask), got {type(loss).__name__}")
    return loss


def activation_regularization(h, alpha=0.0, beta=0.0, mask=None):
    """AR and TAR (Merity et al. 2018) on a layer's outputs ``h`` (B, T, H): the value
    alpha·mean(h²) + beta·mean((h_t − h_(t−1))²) over the valid steps (and pairs of
    consecutive valid steps), and its gradient w.r.t. h, to add to the layer's output
    gradient. AR keeps activations small; TAR keeps them from jumping between steps."""
    import numpy as np

    xp = np if not hasattr(h, "__cuda_array_interface__") else __import__("cupy")
    m = xp.ones(h.shape[:2], h.dtype) if mask is None else xp.asarray(mask, h.dtype)
    m3 = m[:, :, None]
    value, grad = 0.0, xp.zeros_like(h)
    H = h.shape[-1]
    if alpha:
        n = max(float(m.sum()) * H, 1.0)
        value += alpha * float((h * h * m3).sum()) / n
        grad += (2 * alpha / n) * h * m3
    if beta and h.shape[1] > 1:
        pair = (m[:, 1:] * m[:, :-1])[:, :, None]
        diff = (h[:, 1:] - h[:, :-1]) * pair
        n = max(float(pair.sum()) * H, 1.0)
        value += beta * float((diff * diff).sum()) / n
        g = (2 * beta / n) * diff
        grad[:, 1:] += g
        grad[:, :-1] -= g
    return value, grad
