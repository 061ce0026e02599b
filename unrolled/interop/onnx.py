"""Export a trained model to ONNX: recurrent layers as ONNX's RNN, LSTM and GRU operators.

    model_proto = to_onnx(model, "model.onnx", lengths=True)

Supported: ``Elman`` (tanh or relu), ``LSTM``, ``GRU`` (both reset-gate placements), each
stacked and/or bidirectional, folded (``return_sequences=False``) or not, and a
``Sequential`` of those with ``Embedding``, ``Dense`` and ``Dropout`` (the identity at
inference). The graph takes ``input`` batch-first, as the model does: (B, T, D) float32,
or (B, T) int64 symbols when the model starts with an Embedding; with ``lengths=True`` it
also takes ``lengths`` (B,) int32, the number of valid steps of each record (padding on
the right), which plays the part of the model's ``mask``. Its output ``output`` is what
the model returns: (B, T, F) or (B, F).

How the parameters map (ONNX operator docs, opset 14+): ONNX keeps one weight tensor per
layer with the directions stacked first, W (dirs, G*H, D), R (dirs, G*H, H) and
B (dirs, 2*G*H) = [input biases, hidden biases], the same matrices as PyTorch's
``weight_ih`` / ``weight_hh`` / ``bias_ih`` / ``bias_hh`` but with the gate blocks in
another order: LSTM i|o|f|c (ours, PyTorch's: i|f|g|o), GRU z|r|h (ours: r|z|n). PyTorch's
GRU (``reset_after=True``) is ONNX's ``linear_before_reset=1``; ``reset_after=False`` is
``linear_before_reset=0``. ONNX's operators are time-major, so the graph transposes the
input once and each output back.

The ``onnx`` package is imported only when this function runs; it is not a dependency
of unrolled (``pip install onnx``, and ``onnxruntime`` to run the exported file).
"""
import numpy as np

__all__ = ["to_onnx"]

# our gate blocks -> ONNX's: LSTM (i, f, g, o) -> (i, o, f, c); GRU (r, z, n) -> (z, r, h)
_GATE_ORDER = {"elman": [0], "lstm": [0, 3, 1, 2], "gru": [1, 0, 2]}
_OP = {"elman": "RNN", "lstm": "LSTM", "gru": "GRU"}


def _reorder(w, cell, H):
    """Gate blocks of ``w`` (G*H, ...) or (G*H,) in ONNX's order."""
    return np.concatenate([w[g * H:(g + 1) * H] for g in _GATE_ORDER[cell]], axis=0)


class _Graph:
    """The nodes and initializers of the graph being built, with fresh names."""

    def __init__(self, helper, numpy_helper):
        self.helper, self.numpy_helper = helper, numpy_helper
        self.nodes, self.inits, self.n = [], [], 0

    def name(self, stem):
        self.n += 1
        return f"{stem}_{self.n}"

    def const(self, stem, array):
        name = self.name(stem)
        self.inits.append(self.numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(self, op, inputs, n_out=1, stem=None, **attrs):
        outs = [self.name(stem or op.lower()) for _ in range(n_out)]
        self.nodes.append(self.helper.make_node(op, inputs, outs, name=self.name(op), **attrs))
        return outs[0] if n_out == 1 else outs


def _recurrent(g, layer, x, lengths):
    """Nodes of a recurrent layer; ``x`` is (T, B, D) time-major. Returns (name, is_seq):
    (T, B, dirs*H) time-major if the layer returns sequences, else (B, dirs*H)."""
    cell, H = layer.cell, layer.hidden_size
    peep = cell == "peephole_lstm"  # ONNX's LSTM with its P input
    cell = "lstm" if peep else cell
    nd = 2 if layer.bidirectional else 1
    attrs = {"hidden_size": H, "direction": "bidirectional" if nd == 2 else "forward"}
    if cell == "elman":
        attrs["activations"] = ["Relu" if layer.nonlinearity == "relu" else "Tanh"] * nd
    if cell == "gru":
        attrs["linear_before_reset"] = 1 if layer.reset_after else 0
    seq_len = "" if lengths is None else lengths
    for k in range(layer.num_layers):
        names = [f"l{k}", f"l{k}_reverse"][:nd]
        p = [layer.params[n] for n in names]
        W = np.stack([_reorder(q["weight_ih"], cell, H) for q in p]).astype(np.float32)
        R = np.stack([_reorder(q["weight_hh"], cell, H) for q in p]).astype(np.float32)
        ins = [x, g.const(f"W_{cell}{k}", W), g.const(f"R_{cell}{k}", R)]
        if layer.bias:
            B = np.stack([np.concatenate([_reorder(q["bias_ih"], cell, H),
                                          _reorder(q["bias_hh"], cell, H)]) for q in p])
            ins.append(g.const(f"B_{cell}{k}", B.astype(np.float32)))
        else:
            ins.append("")
        ins.append(seq_len)
        if peep:  # P (dirs, 3H) in ONNX's order i, o, f; no initial states given
            P = np.stack([np.concatenate([q["peephole_i"], q["peephole_o"], q["peephole_f"]])
                          for q in p])
            ins += ["", "", g.const(f"P_{cell}{k}", P.astype(np.float32))]
        n_out = 3 if cell == "lstm" else 2
        Y, Y_h = g.node(_OP[cell], ins, n_out=n_out, stem=f"{cell}{k}", **attrs)[:2]
        last = k == layer.num_layers - 1
        if last and not layer.return_sequences:
            # Y_h (dirs, B, H) -> (B, dirs, H) -> (B, dirs*H): forward state, then reverse
            h = g.node("Transpose", [Y_h], perm=[1, 0, 2])
            return g.node("Reshape", [h, g.const("shape", np.array([0, -1]))]), False
        # Y (T, dirs, B, H) -> (T, B, dirs, H) -> (T, B, dirs*H), the next layer's input
        y = g.node("Transpose", [Y], perm=[0, 2, 1, 3])
        x = g.node("Reshape", [y, g.const("shape", np.array([0, 0, -1]))])
    return x, True


def _step_mask(g, source, lengths):
    """(B, T, 1) float32 mask, 1 at valid steps, from ``lengths`` and the input's T."""
    T = g.node("Gather", [g.node("Shape", [source]), g.const("axis1", np.array(1))], axis=0)
    steps = g.node("Range", [g.const("zero", np.array(0)), T, g.const("one", np.array(1))])
    steps = g.node("Unsqueeze", [steps, g.const("axes", np.array([0]))])          # (1, T)
    n = g.node("Cast", [lengths], to=7)                                             # int64
    n = g.node("Unsqueeze", [n, g.const("axes", np.array([1]))])                    # (B, 1)
    m = g.node("Cast", [g.node("Less", [steps, n])], to=1)                          # (B, T)
    return g.node("Unsqueeze", [m, g.const("axes", np.array([2]))])                 # (B, T, 1)


def _layers(model):
    from ..layers import Sequential

    if isinstance(model, Sequential):
        out = []
        for ly in model.layers:
            out += _layers(ly)
        return out
    return [model]


def to_onnx(model, path=None, *, lengths=False, opset=17, name="unrolled"):
    """Export ``model`` as an ONNX graph (float32), optionally writing it to ``path``.

    Args:
        model: an ``Elman``, ``LSTM`` or ``GRU`` layer, or a ``Sequential`` of those with
            ``Embedding``, ``Dense`` and ``Dropout`` layers.
        path: where to write the ``.onnx`` file (None: do not write).
        lengths: add a second graph input ``lengths`` (B,) int32, the valid steps of
            each record (right padding), for batches of different lengths; outputs at
            padded steps are zero, as the model's.
        opset: the ONNX opset version (14 or later).
        name: the graph's name.

    Returns:
        ``onnx.ModelProto``, checked by ``onnx.checker``. Inputs: ``input`` (B, T, D)
        float32 or (B, T) int64, and ``lengths`` if asked; output: ``output``.

    Raises:
        ImportError: the ``onnx`` package is not installed.
        TypeError: a layer ONNX has no operator for (Jordan, an unknown layer).
        ValueError: a learned or constant initial state; a recurrent layer after a
            folded one.
    """
    try:
        import onnx
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        raise ImportError("ONNX export needs the onnx package: pip install onnx "
                          "(and onnxruntime to run the exported model)") from None
    from ..layers import Dense, Dropout, Embedding, Recurrent

    if opset < 14:
        raise ValueError(f"opset must be 14 or later, got {opset}")
    layers = _layers(model)
    for ly in layers:
        if isinstance(ly, Recurrent):
            if ly.cell not in ("elman", "lstm", "gru", "peephole_lstm"):
                raise TypeError(f"{type(ly).__name__} (cell {ly.cell!r}) has no ONNX operator; "
                                "export Elman, LSTM (also with peepholes) or GRU layers")
            if ly.initial_state != "zeros":
                raise ValueError(f"{type(ly).__name__} has initial_state="
                                 f"{ly.initial_state!r}; ONNX export supports zero initial "
                                 "states only")
        elif not isinstance(ly, (Dense, Dropout, Embedding)):
            raise TypeError(f"cannot export a {type(ly).__name__} layer to ONNX; supported: "
                             "Elman, LSTM, GRU, Embedding, Dense, Dropout")
    if isinstance(layers[0], Embedding):
        first = helper.make_tensor_value_info("input", TensorProto.INT64, ["batch", "time"])
    else:
        D = next(ly for ly in layers if not isinstance(ly, Dropout))
        D = D.input_size if isinstance(D, Recurrent) else D.in_features
        first = helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                              ["batch", "time", D])
    inputs = [first]
    g = _Graph(helper, numpy_helper)
    lens = None
    if lengths:
        inputs.append(helper.make_tensor_value_info("lengths", TensorProto.INT32, ["batch"]))
        lens = "lengths"
    mask = None  # (B, T, 1), built the first time a padded step must be zeroed

    x, seq = "input", True  # x is batch-first (B, T, ...) while seq, else (B, F)
    for ly in layers:
        if isinstance(ly, Dropout):
            continue
        if isinstance(ly, Recurrent):
            if not seq:
                raise ValueError("a recurrent layer after a folded one (return_sequences="
                                 "False) has no sequence to read")
            xt = g.node("Transpose", [x], perm=[1, 0, 2])                   # (T, B, D)
            y, seq = _recurrent(g, ly, xt, lens)
            feat = ly.output_size
            x = g.node("Transpose", [y], perm=[1, 0, 2]) if seq else y      # (B, T, F)
            continue   # ONNX's operators already zero the padded steps
        if isinstance(ly, Embedding):
            W = ly.params["weight"].astype(np.float32)
            x = g.node("Gather", [g.const("embedding", W), x], axis=0)      # (B, T, E)
            feat = ly.embedding_dim
        else:  # Dense: x W^T + b on the last axis
            W = np.ascontiguousarray(ly.params["weight"].T, dtype=np.float32)
            x = g.node("MatMul", [x, g.const("dense_W", W)])
            feat = ly.out_features
            if ly.bias:
                x = g.node("Add", [x, g.const("dense_b", ly.params["bias"].astype(np.float32))])
        if seq and lens is not None:
            if mask is None:
                mask = _step_mask(g, "input", lens)
            x = g.node("Mul", [x, mask])
    g.nodes.append(helper.make_node("Identity", [x], ["output"], name="output"))
    out = helper.make_tensor_value_info("output", TensorProto.FLOAT,
                                        ["batch", "time", feat] if seq else ["batch", feat])
    graph = helper.make_graph(g.nodes, name, inputs, [out], initializer=g.inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="unrolled")
    onnx.checker.check_model(proto)
    if path is not None:
        onnx.save(proto, str(path))
    return proto
