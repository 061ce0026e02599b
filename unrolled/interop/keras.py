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

Keras 2's CuDNNLSTM / CuDNNGRU stored their arrays in cuDNN's layout (see
:func:`_cudnn_kernels`), with input and recurrent biases end to end: (8H,) and (6H,),
shapes no plain layer has, so they are recognised; an LSTM bias of (2, 4H) could be a
reshaped CuDNN bias or a pair of Keras biases and needs ``layout=``. Whole model files
are read by :mod:`unrolled.interop.keras_file`; docs/interop.md has the tables.
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


_LAYOUTS = (None, "keras", "cudnn")


def _cudnn_kernels(kernel, rec, G):
    """Keras 2's CuDNNLSTM/CuDNNGRU kernels in the plain Keras layout.

    As Keras 2's ``_convert_rnn_weights`` (keras/engine/saving.py, 2.1-2.3) reads them:
    each gate block ``k`` (D, H) of the input kernel holds ``k.T`` written in Fortran
    order, so the Keras block is ``k.T.reshape(k.shape, order="F")``; each recurrent
    block (H, H) is stored transposed."""
    kernel = np.hstack([k.T.reshape(k.shape, order="F") for k in np.hsplit(kernel, G)])
    rec = np.hstack([k.T for k in np.hsplit(rec, G)])
    return kernel, rec


def _bias_layout(kind, shape, G, H, layout, reset_after):
    """``(layout, reset_after, split)`` that a bias of ``shape`` is; refuses what cannot be
    told apart. ``split``: how the bias divides into (input, recurrent) halves."""
    one, two, flat2 = (G * H,), (2, G * H), (2 * G * H,)
    ask = ("pass layout='cudnn' for weights of a Keras 2 CuDNNLSTM/CuDNNGRU layer, "
           "layout='keras' for a plain Keras layer")
    if kind == "SimpleRNN":
        if layout == "cudnn":
            raise ValueError("a SimpleRNN has no CuDNN layout; drop layout='cudnn'")
        if shape != one:
            raise ValueError(f"SimpleRNN bias has shape {shape}, expected {one}")
        return "keras", reset_after, "one"
    if kind == "LSTM":
        if shape == one:
            if layout == "cudnn":
                raise ValueError(f"LSTM bias of shape {shape} is the plain Keras layout; a "
                                 f"CuDNNLSTM bias is ({2 * G * H},) (input and recurrent "
                                 "biases): drop layout='cudnn'")
            return "keras", None, "one"
        if shape == flat2:
            if layout == "keras":
                raise ValueError(f"LSTM bias of shape {shape} is a CuDNNLSTM's (input and "
                                 f"recurrent biases, kernels in CuDNN's layout); a plain Keras "
                                 f"LSTM has ({G * H},): pass layout='cudnn' or drop layout=")
            return "cudnn", None, "flat"
        if shape == two:
            if layout is None:
                raise ValueError(f"LSTM bias of shape {shape} holds two biases, as a "
                                 f"CuDNNLSTM's does (its kernels then in CuDNN's layout) but "
                                 f"also as a reshaped pair of Keras biases; {ask}")
            return layout, None, "two"
        raise ValueError(f"LSTM bias has shape {shape}; Keras's layouts are {one} (LSTM) and "
                         f"{flat2} (CuDNNLSTM: input and recurrent biases)")
    # GRU
    if shape == one:
        if layout == "cudnn":
            raise ValueError(f"GRU bias of shape {shape} is a reset_after=False GRU's, which "
                             f"CuDNNGRU is not; a CuDNNGRU bias is ({2 * G * H},): drop "
                             "layout='cudnn'")
        found, lay, split = False, "keras", "one"
    elif shape == two:
        found, lay, split = True, layout or "keras", "two"
    elif shape == flat2:
        if layout == "keras":
            raise ValueError(f"GRU bias of shape {shape} is a CuDNNGRU's (kernels in CuDNN's "
                             f"layout); a plain Keras GRU has {two} (reset_after=True) or {one} "
                             "(reset_after=False): pass layout='cudnn' or drop layout=")
        found, lay, split = True, "cudnn", "flat"
    else:
        raise ValueError(f"GRU bias has shape {shape}; Keras's layouts are {two} for "
                         f"reset_after=True, {one} for reset_after=False and {flat2} for "
                         "CuDNNGRU")
    if reset_after is not None and reset_after != found:
        raise ValueError(f"GRU bias of shape {shape} is the reset_after={found} layout, "
                         f"but reset_after={reset_after} was asked for; the two compute "
                         f"different functions, so pass the weights of a "
                         f"reset_after={reset_after} layer or drop the argument")
    return lay, found, split


def _one_direction(kind, weights, reset_after, layout=None):
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
    if len(weights) == 3:
        bias = np.asarray(weights[2])
        layout, reset_after, split = _bias_layout(kind, bias.shape, G, H, layout, reset_after)
        if split == "one":
            b_ih, b_hh = bias, np.zeros_like(bias)
        else:
            b_ih, b_hh = bias.reshape(2, G * H)
    else:  # no bias: CuDNN layers always have one, so this is the plain layout
        if layout == "cudnn":
            raise ValueError("CuDNN layers always have a bias; pass [kernel, "
                             "recurrent_kernel, bias]")
        layout = "keras"
        b_ih = b_hh = np.zeros(G * H, kernel.dtype)
    if layout == "cudnn":
        kernel, rec = _cudnn_kernels(kernel, rec, G)
        reset_after = True if kind == "GRU" else reset_after
    p = {"weight_ih": _reorder(kernel.T, kind), "weight_hh": _reorder(rec.T, kind),
         "bias_ih": _reorder(b_ih, kind), "bias_hh": _reorder(b_hh, kind)}
    return p, kernel.shape[0], H, reset_after, layout


def hard_sigmoid_slope(keras_version):
    """The slope of ``hard_sigmoid`` in a Keras version: 0.2 (clip(0.2x + 0.5, 0, 1)) in
    Keras 1-2 and tf.keras before 2.16, 1/6 (relu6(x + 3) / 6) in Keras 3."""
    try:
        major = int(str(keras_version).split(".")[0])
    except ValueError:
        major = None
    if major not in (1, 2, 3):
        raise ValueError(f"recurrent_activation='hard_sigmoid' differs between Keras versions "
                         f"(clip(0.2x + 0.5, 0, 1) in Keras 2, clip(x/6 + 0.5, 0, 1) in Keras 3); "
                         f"pass keras_version=2 or keras_version=3 (got {keras_version!r})")
    return 0.2 if major < 3 else 1 / 6


def from_keras_weights(kind, weights, *, activation="tanh", recurrent_activation="sigmoid",
                       reset_after=None, layout=None, keras_version=None,
                       backward_weights=None, dtype=None, **layer_options):
    """Build the unrolled layer that computes what a Keras recurrent layer computes.

    Parameters
    ----------
    kind : "SimpleRNN", "LSTM" or "GRU" ("CuDNNLSTM"/"CuDNNGRU": ``layout="cudnn"``).
    weights : ``layer.get_weights()`` or the arrays of a saved file: [kernel,
        recurrent_kernel, bias] (bias optional).
    activation : for SimpleRNN, "tanh" or "relu" (LSTM and GRU: "tanh").
    recurrent_activation : LSTM/GRU gates: "sigmoid" or "hard_sigmoid" (the
        ``hard_sigmoid_lstm``/``hard_sigmoid_gru`` cells; its slope needs ``keras_version``).
    reset_after : for GRU; read from the bias shape when None, refused when it disagrees.
    layout : None (read from the bias shape), "keras" or "cudnn" (Keras 2's CuDNNLSTM /
        CuDNNGRU: input kernel blocks in Fortran order, recurrent blocks transposed, input
        and recurrent biases stored end to end). An LSTM bias of shape (2, 4H) could be
        either and is refused without it.
    keras_version : the Keras version the weights come from (for ``hard_sigmoid``).
    backward_weights : the backward layer's weights of a ``Bidirectional`` wrapper
        (merge_mode="concat"); the result is then a bidirectional layer.
    dtype : "float32" or "float64" (default: the kernel's).
    """
    from .. import layers

    if kind in ("CuDNNLSTM", "CuDNNGRU"):
        if layout == "keras":
            raise ValueError(f"{kind} weights are in CuDNN's layout; drop layout='keras'")
        kind, layout = kind[5:], "cudnn"
    _check_kind(kind)
    if layout not in _LAYOUTS:
        raise ValueError(f"layout must be None, 'keras' or 'cudnn', got {layout!r}")
    if recurrent_activation not in ("sigmoid", "hard_sigmoid"):
        raise ValueError(f"recurrent_activation={recurrent_activation!r} has no unrolled "
                         "equivalent; the gates can be 'sigmoid' or 'hard_sigmoid'")
    if kind != "SimpleRNN" and activation != "tanh":
        raise ValueError(f"a Keras {kind} with activation={activation!r} has no unrolled "
                         "equivalent (its cells use tanh)")
    p, D, H, reset_after, used = _one_direction(kind, weights, reset_after, layout)
    if used == "cudnn" and recurrent_activation != "sigmoid":
        raise ValueError("CuDNN layers gate with the sigmoid; recurrent_activation="
                         f"{recurrent_activation!r} does not go with layout='cudnn'")
    tree = {"l0": p}
    if backward_weights is not None:
        pb, Db, Hb, _, _ = _one_direction(kind, backward_weights, reset_after, used)
        if (Db, Hb) != (D, H):
            raise ValueError("forward and backward weights of a Bidirectional wrapper differ in "
                             f"size: ({D}, {H}) vs ({Db}, {Hb})")
        tree["l0_reverse"] = pb
    dtype = dtype or np.asarray(weights[0]).dtype.name
    kw = dict(bidirectional=backward_weights is not None, dtype=dtype, **layer_options)
    hard = kind != "SimpleRNN" and recurrent_activation == "hard_sigmoid"
    if kind == "SimpleRNN":
        layer = layers.Elman(D, H, nonlinearity=activation, **kw)
    elif hard:
        from ..cells import HardSigmoidGRUCell, HardSigmoidLSTMCell

        slope = hard_sigmoid_slope(keras_version)
        cell = (HardSigmoidLSTMCell(slope) if kind == "LSTM" else
                HardSigmoidGRUCell(bool(reset_after) if reset_after is not None else True,
                                   slope))
        layer = layers.Recurrent(cell, D, H, **kw)
    elif kind == "LSTM":
        layer = layers.LSTM(D, H, **kw)
    else:
        layer = layers.GRU(D, H, reset_after=bool(reset_after) if reset_after is not None
                           else True, **kw)
    layer.params = {n: {k: v.astype(dtype) for k, v in q.items()} for n, q in tree.items()}
    return layer


def from_keras_dense(kernel, bias=None, dtype=None):
    """``Dense`` from a Keras ``Dense`` layer's [kernel (in, out), bias (out,)]: the kernel
    is transposed here (unrolled's ``weight`` is (out, in), as PyTorch's)."""
    from .. import layers

    kernel = np.asarray(kernel)
    if kernel.ndim != 2:
        raise ValueError(f"a Keras Dense kernel is (in_features, out_features), got shape "
                         f"{kernel.shape}")
    if bias is not None and np.shape(bias) != (kernel.shape[1],):
        raise ValueError(f"Dense bias has shape {np.shape(bias)}, expected "
                         f"({kernel.shape[1]},) for a kernel of shape {kernel.shape}")
    dtype = dtype or kernel.dtype.name
    d = layers.Dense(kernel.shape[0], kernel.shape[1], bias=bias is not None, dtype=dtype)
    tree = {"weight": kernel.T.astype(dtype)}
    if bias is not None:
        tree["bias"] = np.asarray(bias).astype(dtype)
    d.params = tree
    return d


def from_keras_embedding(table, dtype=None):
    """``Embedding`` from a Keras ``Embedding``'s (input_dim, output_dim) table."""
    from .. import layers

    table = np.asarray(table)
    if table.ndim != 2:
        raise ValueError(f"a Keras Embedding table is (input_dim, output_dim), got shape "
                         f"{table.shape}")
    dtype = dtype or table.dtype.name
    e = layers.Embedding(table.shape[0], table.shape[1], dtype=dtype)
    e.params = {"weight": table.astype(dtype)}
    return e


def merge_directions(mode, H, dtype):
    """The Dense layer that turns a bidirectional layer's [forward, backward] (2H wide)
    into Keras's ``merge_mode`` "sum" ([I I]) or "ave" ([I/2 I/2]): exact, since every
    output is one or two nonzero products. "mul" and None are not linear and refused."""
    from .. import layers

    if mode not in ("sum", "ave"):
        raise ValueError(f"Bidirectional merge_mode={mode!r} has no unrolled equivalent "
                         "(supported: 'concat', 'sum', 'ave')")
    w = 1.0 if mode == "sum" else 0.5
    d = layers.Dense(2 * H, H, bias=False, dtype=dtype)
    d.params = {"weight": np.hstack([np.eye(H), np.eye(H)]).astype(dtype) * w}
    return d


def from_keras(keras_layer, **layer_options):
    """Read a Keras layer object: ``SimpleRNN``/``LSTM``/``GRU`` (or ``Bidirectional`` of
    one; merge modes "concat", and "sum"/"ave" as a Sequential ending in the fixed
    :func:`merge_directions` Dense), ``Embedding``, ``Dense`` (linear) or
    ``TimeDistributed(Dense)``. Keras 3 objects: ``hard_sigmoid`` is Keras 3's."""
    import keras

    version = getattr(keras, "__version__", "3")
    name = type(keras_layer).__name__
    if name == "Embedding":
        return from_keras_embedding(keras_layer.get_weights()[0])
    if name == "TimeDistributed":
        return from_keras(keras_layer.layer, **layer_options)
    if name == "Dense":
        act = keras_layer.get_config().get("activation", "linear")
        if act != "linear":
            raise ValueError(f"Keras Dense with activation={act!r}: unrolled's Dense is linear; "
                             "take the layer's logits (its kernel and bias) and apply the "
                             "activation yourself")
        return from_keras_dense(*keras_layer.get_weights())
    if name == "Bidirectional":
        fwd, bwd = keras_layer.forward_layer, keras_layer.backward_layer
        kind, cfg = type(fwd).__name__, fwd.get_config()
        options = options_from_config(kind, cfg, version)
        options.update(layer_options)
        merge = keras_layer.merge_mode
        if merge != "concat":
            merge_directions(merge, 1, "float64")  # refuses mul / None before any work
        layer = from_keras_weights(kind, fwd.get_weights(), backward_weights=bwd.get_weights(),
                                   **options)
        if merge == "concat":
            return layer
        from ..layers import Sequential

        return Sequential(layer, merge_directions(merge, layer.hidden_size, layer.dtype))
    kind = name
    _check_kind(kind)
    cfg = keras_layer.get_config()
    if cfg.get("go_backwards"):
        raise ValueError("go_backwards=True layers are read through their Bidirectional wrapper")
    options = options_from_config(kind, cfg, version)
    options.update(layer_options)
    return from_keras_weights(kind, keras_layer.get_weights(), **options)


def options_from_config(kind, cfg, keras_version=None):
    """``from_keras_weights`` options from a Keras layer config (a ``get_config()`` dict or
    the one saved in a model file). A GRU's ``reset_after`` is left to the bias shape."""
    opts = {"return_sequences": bool(cfg.get("return_sequences", False))}
    act = cfg.get("activation", "tanh")
    if act not in ("tanh", "relu") or (kind != "SimpleRNN" and act != "tanh"):
        raise ValueError(f"Keras {kind} with activation={act!r} has no unrolled equivalent")
    if kind == "SimpleRNN":
        opts["activation"] = act
    if kind in ("LSTM", "GRU"):
        opts["recurrent_activation"] = cfg.get("recurrent_activation", "sigmoid")
        opts["keras_version"] = keras_version
    if kind == "GRU" and "reset_after" in cfg:
        opts["reset_after"] = bool(cfg["reset_after"])
    return opts


def _direction_to_keras(layer, p):
    kind = _EXPORT[layer.cell]
    kernel = _reorder(p["weight_ih"], kind).T
    rec = _reorder(p["weight_hh"], kind).T
    zeros = np.zeros(p["weight_ih"].shape[0], p["weight_ih"].dtype)
    b_ih = _reorder(p.get("bias_ih", zeros), kind)
    b_hh = _reorder(p.get("bias_hh", zeros), kind)
    if kind == "GRU" and layer._cell.reset_after:
        bias = np.stack([b_ih, b_hh])
    else:
        # one Keras bias: the two add up outside every matmul (for a GRU with the reset
        # before the matmul too: b_hn is not scaled by r there)
        bias = b_ih + b_hh
    return [np.ascontiguousarray(kernel), np.ascontiguousarray(rec), bias]


_EXPORT = {"elman": "SimpleRNN", "lstm": "LSTM", "gru": "GRU", "hard_sigmoid_lstm": "LSTM",
           "hard_sigmoid_gru": "GRU"}


def to_keras_weights(layer):
    """``[kernel, recurrent_kernel, bias]`` for ``layer.set_weights`` (forward then backward
    lists concatenated for a bidirectional layer, as ``Bidirectional.get_weights`` orders them)."""
    if getattr(layer, "cell", None) not in _EXPORT:
        raise ValueError("to_keras_weights maps Elman, LSTM and GRU layers (also with "
                         "hard-sigmoid gates) only")
    if layer.num_layers != 1:
        raise ValueError("a Keras recurrent layer has one level; export each level of a stacked "
                         "layer separately (num_layers must be 1)")
    out = []
    for name in layer.names:
        out += _direction_to_keras(layer, layer.params[name])
    return out
