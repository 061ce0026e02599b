"""PyTorch ``nn.RNN`` / ``nn.LSTM`` / ``nn.GRU`` <-> unrolled layers, both ways.

The parameter names are PyTorch's own without the layer suffix: ``weight_ih_l1_reverse``
is ``params["l1_reverse"]["weight_ih"]``, same shape, same gate order, so the mapping is
one-to-one. PyTorch is imported only by the caller; this module needs only NumPy.
"""
import numpy as np


def _kind(module):
    name = type(module).__name__
    if name not in ("RNN", "LSTM", "GRU"):
        raise TypeError(f"from_torch expects torch.nn.RNN, LSTM or GRU, got {name}")
    return name


def from_torch(module, **layer_options):
    """The unrolled layer equivalent to a ``torch.nn.RNN``, ``LSTM`` or ``GRU``.

    Same weights and dtype; batch-first input whatever ``module.batch_first`` says;
    ``layer_options`` (e.g. ``return_sequences=False``) pass through to the layer.
    """
    from .. import layers

    kind = _kind(module)
    sd = {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}
    dtype = next(iter(sd.values())).dtype.name
    kw = dict(num_layers=module.num_layers, bidirectional=module.bidirectional,
              bias=module.bias, dtype=dtype)
    kw.update(layer_options)
    if kind == "RNN":
        layer = layers.Elman(module.input_size, module.hidden_size,
                             nonlinearity=module.nonlinearity, **kw)
    elif kind == "LSTM":
        layer = layers.LSTM(module.input_size, module.hidden_size,
                            proj_size=getattr(module, "proj_size", 0), **kw)
    else:
        layer = layers.GRU(module.input_size, module.hidden_size, reset_after=True, **kw)
    tree = {name: {} for name in layer.names}
    for name, p in layer.params.items():
        for key in p:
            if key in ("h0", "c0"):  # a learned initial state is ours alone; keep it
                tree[name][key] = p[key]
                continue
            src = f"{key}_{name}"
            if src not in sd:
                raise ValueError(f"the torch module has no '{src}'; its keys are {sorted(sd)}")
            tree[name][key] = sd[src]
    layer.params = tree
    return layer


def to_torch_state_dict(layer, tree=None):
    """``{torch_name: array}`` for ``tree`` (default the layer's params; pass grads to map
    gradients). Load with ``module.load_state_dict({k: torch.from_numpy(v) ...})``."""
    if getattr(layer, "cell", None) not in ("elman", "lstm", "gru", "proj_lstm"):
        raise ValueError("to_torch_state_dict maps Elman, LSTM (also with proj_size) and GRU "
                         "layers only")
    if layer.cell == "gru" and not layer.reset_after:
        raise ValueError("PyTorch's GRU applies the reset gate after the hidden matmul; a GRU "
                         "with reset_after=False has no PyTorch equivalent")
    tree = layer.params if tree is None else tree
    out = {}
    for name, p in tree.items():
        for key, v in p.items():
            if key in ("h0", "c0"):
                raise ValueError("a learned initial state has no place in a torch state_dict")
            out[f"{key}_{name}"] = np.ascontiguousarray(v)
    return out


__all__ = ["from_torch", "to_torch_state_dict"]
