"""Keras weight layouts <-> unrolled layers, both ways.

Keras keeps one ``kernel`` (D, G*H), one ``recurrent_kernel`` (H, G*H) and a ``bias`` per
layer, and computes ``x @ kernel + h @ recurrent_kernel + bias``. unrolled keeps PyTorch's
layout: ``weight_ih`` (G*H, D), ``weight_hh`` (G*H, H) and two biases. The gate blocks:

    LSTM   Keras i|f|c|o   unrolled i|f|g|o   (same order)
    GRU    Keras z|r|h     unrolled r|z|n     (first two blocks swap)

A Keras GRU has ``reset_after=True`` (bias (2, 3H): input and recurrent biases, the reset
gate applied after the recurrent matmul, as in PyTorch) or ``reset_after=False`` (bias
(3H,), reset applied to h before the matmul). The bias shape tells which; a mismatch
with what is asked for is refused rather than guessed. No Keras import is needed here.
"""
import numpy as np

_GATES = {"SimpleRNN": 1, "LSTM": 4, "GRU": 3}


def _reorder(a, kind, axis=0):
    """Swap Keras's z|r blocks into unrolled's r|z (an involution: also the way back)."""
    if kind != "GRU":
        return a
    z, r, h = np.split(a, 3, axis=axis)
    return np.concatenate([r, z, h], axis=axis)


def _check_kind(kind):
    if kind not in _GATES:
        raise ValueError(f"Keras layer type must be one of {sorted(_GATES)}, got {kind!r}")


def _split_bias(kind, bias, G, H, reset_after):
    """(bias_ih, bias_hh) in Keras gate order, checking the layout against reset_after."""
    if bias is None:
        return np.zeros(G * H), np.zeros(G * H), reset_after
    bias = np.asarray(bias)
    if kind == "GRU":
        layout = True if bias.shape == (2, G * H) else False if bias.shape == (G * H,) else None
        if layout is None:
            raise ValueError(f"GRU bias has shape {bias.shape}; Keras's layouts are (2, {G * H}) "
                             f"for reset_after=True and ({G * H},) for reset_after=False")
        if reset_after is not None and reset_after != layout:
            raise ValueError(f"GRU bias of shape {bias.shape} is the reset_after={layout} layout, "
                             f"but reset_after={reset_after} was asked for; the two compute "
                             f"different functions, so pass the weights of a "
                             f"reset_after={reset_after} layer or drop the argument")
        if layout:
            return bias[0], bias[1], True
        return bias, np.zeros_like(bias), False
    if bias.shape != (G * H,):
        raise ValueError(f"{kind} bias has shape {bias.shape}, expected ({G * H},)")
    return bias, np.zeros_like(bias), reset_after


def _one_direction(kind, weights, reset_after):
    if len(weights) not in (2, 3):
        raise ValueError(f"expected [kernel, recurrent_kernel(, bias)] for a Keras {kind}, got "
                         f"{len(weights)} arrays")
    kernel, rec = np.asarray(weights[0]), np.asarray(weights[1])
    G = _GATES[kind]
    if rec.ndim != 2 or rec.shape[1] != G * rec.shape[0]:
        ratio = rec.shape[1] / rec.shape[0] if rec.ndim == 2 and rec.shape[0] else None
        guess = {v: k for k, v in _GATES.items()}.get(ratio)
        hint = f"; it looks like a {guess}" if guess else ""
        raise ValueError(f"recurrent_kernel of shape {rec.shape} does not fit a Keras {kind} "
                         f"(expected (H, {G}*H)){hint}")
    H = rec.shape[0]
    if kernel.ndim != 2 or kernel.shape[1] != G * H:
        raise ValueError(f"kernel of shape {kernel.shape} does not fit a {kind} with {H} units "
                         f"(expected (input_size, {G * H}))")
    b_ih, b_hh, reset_after = _split_bias(kind, weights[2] if len(weights) == 3 else None, G, H,
                                          reset_after)
    p = {"weight_ih": _reorder(kernel.T, kind), "weight_hh": _reorder(rec.T, kind),
         "bias_ih": _reorder(b_ih, kind), "bias_hh": _reorder(b_hh, kind)}
    return p, kernel.shape[0], H, reset_after


def from_keras_weights(kind, weights, *, activation="tanh", reset_after=None,
                       backward_weights=None, dtype=None, **layer_options):
    """Build the unrolled layer that computes what a Keras recurrent layer computes.

    Parameters
    ----------
    kind : "SimpleRNN", "LSTM" or "GRU".
    weights : ``layer.get_weights()``: [kernel, recurrent_kernel, bias] (bias optional).
    activation : for SimpleRNN, "tanh" or "relu".
    reset_after : for GRU; read from the bias shape when None, refused when it disagrees.
    backward_weights : the backward layer's weights of a ``Bidirectional`` wrapper
        (merge_mode="concat"); the result is then a bidirectional layer.
    dtype : "float32" or "float64" (default: the kernel's).
    """
    from .. import layers

    _check_kind(kind)
    p, D, H, reset_after = _one_direction(kind, weights, reset_after)
    tree = {"l0": p}
    if backward_weights is not None:
        pb, Db, Hb, _ = _one_direction(kind, backward_weights, reset_after)
        if (Db, Hb) != (D, H):
            raise ValueError("forward and backward weights of a Bidirectional wrapper differ in "
                             f"size: ({D}, {H}) vs ({Db}, {Hb})")
        tree["l0_reverse"] = pb
    dtype = dtype or np.asarray(weights[0]).dtype.name
    kw = dict(bidirectional=backward_weights is not None, dtype=dtype, **layer_options)
    if kind == "SimpleRNN":
        layer = layers.Elman(D, H, nonlinearity=activation, **kw)
    elif kind == "LSTM":
        layer = layers.LSTM(D, H, **kw)
    else:
        layer = layers.GRU(D, H, reset_after=bool(reset_after) if reset_after is not None
                           else True, **kw)
    layer.params = {n: {k: v.astype(dtype) for k, v in q.items()} for n, q in tree.items()}
    return layer


def from_keras(keras_layer, **layer_options):
    """Read a Keras ``SimpleRNN``/``LSTM``/``GRU`` (or ``Bidirectional`` of one) object."""
    name = type(keras_layer).__name__
    if name == "Bidirectional":
        fwd, bwd = keras_layer.forward_layer, keras_layer.backward_layer
        if keras_layer.merge_mode != "concat":
            raise ValueError(f"Bidirectional merge_mode={keras_layer.merge_mode!r} is not "
                             "supported; unrolled concatenates the directions (merge_mode='concat')")
        kind, cfg = type(fwd).__name__, fwd.get_config()
        options = _options_from_config(kind, cfg)
        options.update(layer_options)
        return from_keras_weights(kind, fwd.get_weights(), backward_weights=bwd.get_weights(),
                                  **options)
    kind = name
    _check_kind(kind)
    cfg = keras_layer.get_config()
    if cfg.get("go_backwards"):
        raise ValueError("go_backwards=True layers are read through their Bidirectional wrapper")
    options = _options_from_config(kind, cfg)
    options.update(layer_options)
    return from_keras_weights(kind, keras_layer.get_weights(), **options)


def _options_from_config(kind, cfg):
    opts = {"return_sequences": bool(cfg.get("return_sequences", False))}
    act = cfg.get("activation", "tanh")
    if act not in ("tanh", "relu") or (kind != "SimpleRNN" and act != "tanh"):
        raise ValueError(f"Keras {kind} with activation={act!r} has no unrolled equivalent")
    if kind == "SimpleRNN":
        opts["activation"] = act
    if cfg.get("recurrent_activation", "sigmoid") not in ("sigmoid",) and kind != "SimpleRNN":
        raise ValueError(f"recurrent_activation={cfg['recurrent_activation']!r} is not supported; "
                         "unrolled's gates use the sigmoid")
    if kind == "GRU":
        opts["reset_after"] = bool(cfg.get("reset_after", True))
    return opts


def _direction_to_keras(layer, p):
    kind = {"elman": "SimpleRNN", "lstm": "LSTM", "gru": "GRU"}[layer.cell]
    kernel = _reorder(p["weight_ih"], kind).T
    rec = _reorder(p["weight_hh"], kind).T
    zeros = np.zeros(p["weight_ih"].shape[0], p["weight_ih"].dtype)
    b_ih = _reorder(p.get("bias_ih", zeros), kind)
    b_hh = _reorder(p.get("bias_hh", zeros), kind)
    if kind == "GRU" and layer.reset_after:
        bias = np.stack([b_ih, b_hh])
    else:
        # one Keras bias: the two add up outside every matmul (for a GRU with the reset
        # before the matmul too: b_hn is not scaled by r there)
        bias = b_ih + b_hh
    return [np.ascontiguousarray(kernel), np.ascontiguousarray(rec), bias]


def to_keras_weights(layer):
    """``[kernel, recurrent_kernel, bias]`` for ``layer.set_weights`` (forward then backward
    lists concatenated for a bidirectional layer, as ``Bidirectional.get_weights`` orders them)."""
    if getattr(layer, "cell", None) not in ("elman", "lstm", "gru"):
        raise ValueError("to_keras_weights maps Elman, LSTM and GRU layers only")
    if layer.num_layers != 1:
        raise ValueError("a Keras recurrent layer has one level; export each level of a stacked "
                         "layer separately (num_layers must be 1)")
    out = []
    for name in layer.names:
        out += _direction_to_keras(layer, layer.params[name])
    return out
