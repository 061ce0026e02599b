"""Input checks that fail early, in unrolled's own words, with the fix in the message."""
import numpy as np

from .backend import to_numpy

FLOATS = ("float32", "float64")


def check_dtype_name(dtype):
    """The name of ``dtype`` (``"float32"`` or ``"float64"``); TypeError for any other."""
    name = np.dtype(dtype).name
    if name not in FLOATS:
        raise TypeError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    return name


def check_float_input(X, input_size, dtype, who):
    """X must be a (B, T, input_size) float array of the layer's dtype, all finite."""
    if not hasattr(X, "ndim"):
        raise TypeError(f"{who}: input must be an array of shape (batch, time, {input_size}), "
                        f"got {type(X).__name__}; convert it with np.asarray(...)")
    if X.ndim != 3:
        raise ValueError(f"{who}: input must have shape (batch, time, {input_size}), got shape "
                         f"{tuple(X.shape)}; a single record needs X[None], a univariate "
                         f"series X[..., None]")
    if X.shape[2] != input_size:
        raise ValueError(f"{who}: input has {X.shape[2]} features per step but the layer was "
                         f"built with input_size={input_size}; rebuild the layer or fix the data")
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"{who}: input has an empty batch or time axis (shape "
                         f"{tuple(X.shape)}); every record needs at least one step")
    if X.dtype.name != dtype:
        raise TypeError(f"{who}: input is {X.dtype.name} but the layer is {dtype}; pass "
                        f"X.astype('{dtype}') or build the layer with dtype='{X.dtype.name}'")


def check_finite(X, who, mask=None):
    """X must hold no NaN or inf, at least where ``mask`` ((B, T) bool, or None) is True."""
    # a NaN or inf anywhere makes the sum NaN or inf: a finite sum needs no second look
    # (and no temporary the size of X); a non-finite one may also be overflow, so look
    if bool(np.isfinite(to_numpy(X.sum()))):
        return
    bad = ~np.isfinite(to_numpy(X))
    if mask is not None:
        m = to_numpy(mask)
        bad &= m.reshape(m.shape + (1,) * (bad.ndim - m.ndim))  # (B, T) -> (B, T, 1, ...)
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{who}: input holds {int(bad.sum())} non-finite value(s) (NaN or "
                         f"inf), first at index {idx}; impute or mask them before training")


def check_mask(mask, B, T, who):
    """mask must be (B, T) bool with at least one valid step per record."""
    if mask is None:
        return None
    if not hasattr(mask, "ndim") or mask.shape != (B, T):
        shape = tuple(mask.shape) if hasattr(mask, "shape") else type(mask).__name__
        raise ValueError(f"{who}: mask must have shape (batch, time) = ({B}, {T}), got {shape}")
    if mask.dtype != bool:
        if hasattr(mask, "dtype") and mask.dtype.kind in "iu" and ((mask == 0) | (mask == 1)).all():
            mask = mask.astype(bool)
        else:
            raise TypeError(f"{who}: mask must be boolean (True = a real step), got "
                            f"{mask.dtype}; pass mask.astype(bool)")
    empty = ~mask.any(axis=1)
    if empty.any():
        i = int(np.argmax(to_numpy(empty)))
        raise ValueError(f"{who}: record {i} has no valid step (its mask row is all False); "
                         f"drop empty records before batching")
    return mask
