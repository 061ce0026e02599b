"""PyTorch ``nn.RNN`` / ``nn.LSTM`` / ``nn.GRU`` <-> unrolled layers, both ways.

The parameter names are PyTorch's own without the layer suffix: ``weight_ih_l1_reverse``
is ``params["l1_reverse"]["weight_ih"]``, same shape, same gate order, so the mapping is
one-to-one. PyTorch is imported only by the caller; this module needs only NumPy.
"""
import re
from pathlib import Path

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


# ------------------------------------------------------------------------- whole models

_SPEC_RE = re.compile(r"\s*(?:([\w.]+)\s*=\s*)?(\w+)\s*\(([^()]*)\)\s*,?")
_KINDS = {"embedding": ("num_embeddings", "embedding_dim"),
          "linear": ("in_features", "out_features"),
          "rnn": ("input_size", "hidden_size"), "lstm": ("input_size", "hidden_size"),
          "gru": ("input_size", "hidden_size"), "dropout": ("p",)}
_OPTIONS = {"embedding": ("padding_idx",), "linear": ("bias",), "dropout": ("inplace",),
            "rnn": ("num_layers", "nonlinearity", "bias", "batch_first", "dropout",
                    "bidirectional"),
            "lstm": ("num_layers", "bias", "batch_first", "dropout", "bidirectional",
                     "proj_size"),
            "gru": ("num_layers", "bias", "batch_first", "dropout", "bidirectional")}
_SPEC_HELP = ("e.g. \"embedding(65,32) lstm(32,256,num_layers=2) linear(256,65)\" (an optional "
              "name= before each layer gives its state-dict prefix)")


def _value(text, where):
    text = text.strip()
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    low = text.strip("'\"")
    if low in ("True", "False"):
        return low == "True"
    if low in ("tanh", "relu"):
        return low
    raise ValueError(f"cannot read {text!r} in {where}; {_SPEC_HELP}")


def parse_torch_spec(spec):
    """A list of ``{"layer": kind, "name": prefix or None, args...}`` from a spec string
    (``"embedding(65,32) lstm(32,256,num_layers=2) linear(256,65)"``), a list of such
    strings or dicts, or a dict ``{state-dict prefix: layer string or dict}``."""
    if isinstance(spec, dict) and "layer" not in spec:
        items = []
        for name, v in spec.items():
            for it in parse_torch_spec([v]):
                it["name"] = name
                items.append(it)
        return items
    if isinstance(spec, dict):
        spec = [spec]
    if isinstance(spec, str):
        pos, items = 0, []
        spec = spec.strip()
        while pos < len(spec):
            m = _SPEC_RE.match(spec, pos)
            if not m or m.end() == pos:
                raise ValueError(f"cannot read the spec at {spec[pos:pos + 30]!r}; {_SPEC_HELP}")
            name, kind, args = m.groups()
            pos = m.end()
            items.append(_spec_item(name, kind, args))
        if not items:
            raise ValueError(f"the spec is empty; {_SPEC_HELP}")
        return items
    if not isinstance(spec, (list, tuple)):
        raise ValueError(f"spec must be a string, list or dict; {_SPEC_HELP}")
    out = []
    for it in spec:
        if isinstance(it, str):
            out += parse_torch_spec(it)
        elif isinstance(it, dict) and "layer" in it:
            it = dict(it)
            kind = str(it.pop("layer")).lower()
            name = it.pop("name", None)
            _check_item(kind, it)
            out.append({"layer": kind, "name": name, **it})
        else:
            raise ValueError(f"a spec item must be a string or a dict with 'layer', got {it!r}")
    return out


def _spec_item(name, kind, args):
    kind = kind.lower()
    where = f"{kind}({args})"
    if kind not in _KINDS:
        raise ValueError(f"unknown layer {kind!r} in the spec (known: {', '.join(_KINDS)}); "
                         f"{_SPEC_HELP}")
    pos, kw = [], {}
    for part in filter(None, (a.strip() for a in args.split(","))):
        if "=" in part:
            k, v = part.split("=", 1)
            kw[k.strip()] = _value(v, where)
        else:
            if kw:
                raise ValueError(f"positional argument after a keyword in {where}")
            pos.append(_value(part, where))
    names = _KINDS[kind]
    if len(pos) > len(names):
        raise ValueError(f"{where}: {kind} takes {len(names)} positional arguments "
                         f"({', '.join(names)}), got {len(pos)}")
    item = dict(zip(names, pos))
    item.update(kw)
    _check_item(kind, item)
    return {"layer": kind, "name": name, **item}


def _check_item(kind, item):
    if kind not in _KINDS:
        raise ValueError(f"unknown layer {kind!r} in the spec (known: {', '.join(_KINDS)})")
    need = [n for n in _KINDS[kind] if n not in item and not (kind == "dropout")]
    if need:
        raise ValueError(f"{kind} in the spec needs {', '.join(need)}; {_SPEC_HELP}")
    bad = sorted(set(item) - set(_KINDS[kind]) - set(_OPTIONS[kind]))
    if bad:
        raise ValueError(f"{kind} in the spec has no option {', '.join(bad)} (options: "
                         f"{', '.join(_KINDS[kind] + _OPTIONS[kind])})")


def _read_state_dict(obj):
    if isinstance(obj, (str, Path)):
        path = Path(obj).expanduser()
        if not path.is_file():
            raise ValueError(f"{path}: no such file; check the path")
        import torch

        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # pickle.UnpicklingError for whole pickled modules, ...
            raise ValueError(f"{path}: not a state dict that loads safely (weights_only=True: "
                             f"{type(e).__name__}); save one with torch.save(model.state_dict(), "
                             "path)") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj:
        raise ValueError("expected a state dict ({name: tensor}); save one with "
                         "torch.save(model.state_dict(), path)")
    out = {}
    for k, v in obj.items():
        if hasattr(v, "detach"):
            v = v.detach().cpu().numpy()
        a = np.asarray(v)
        if a.dtype.kind not in "fiub":
            raise ValueError(f"state dict entry {k!r} is not an array of numbers")
        out[str(k)] = a
    return out


def _prefixes(sd):
    """State-dict prefixes in order of first appearance (module registration order)."""
    seen = []
    for k in sd:
        p = k.rsplit(".", 1)[0] if "." in k else ""
        if p not in seen:
            seen.append(p)
    return seen


def load_torch(state_dict, spec, dtype=None):
    """An unrolled ``Sequential`` from a PyTorch state dict and a spec of its layers.

    Parameters
    ----------
    state_dict : ``module.state_dict()``, or the path of a file saved with
        ``torch.save(module.state_dict(), path)`` (read with ``weights_only=True``: no
        pickled code runs).
    spec : the layers, in order: ``"embedding(65,32) lstm(32,256,num_layers=2)
        linear(256,65)"`` (``nn.Embedding``, ``nn.RNN``/``LSTM``/``GRU`` with their
        ``num_layers``, ``bidirectional``, ``bias``, ``nonlinearity``, ``proj_size``;
        ``nn.Linear``; ``dropout(p)``), a list of such strings or of dicts
        (``{"layer": "lstm", "input_size": 32, ...}``), or a dict ``{prefix: layer}``.
        Layers take the state dict's prefixes in order (``name=`` before a layer, or the
        dict form, names them). ``batch_first`` is accepted either way: unrolled is
        batch-first.
    dtype : default: the state dict's.

    The spec describes the layers only: what the module's ``forward`` does between them
    (e.g. taking the last step) is not read.
    """
    from .. import layers as L

    sd = _read_state_dict(state_dict)
    items = parse_torch_spec(spec)
    prefixes = _prefixes(sd)
    with_params = [it for it in items if it["layer"] != "dropout"]
    named = all(it["name"] is not None for it in with_params)
    if not named:
        if any(it["name"] is not None for it in with_params):
            raise ValueError("name= is given for some layers of the spec but not all; name "
                             "every layer or none")
        if len(prefixes) != len(with_params):
            raise ValueError(f"the state dict has {len(prefixes)} modules with weights "
                             f"({', '.join(repr(p) for p in prefixes)}) but the spec "
                             f"{len(with_params)} layers with weights; fix the spec (or name "
                             "the layers: name=lstm(...))")
        for it, p in zip(with_params, prefixes):
            it["name"] = p
    out, expected = [], set()
    for it in items:
        kind, name = it["layer"], it["name"]
        pre = f"{name}." if name else ""
        if kind == "dropout":
            out.append(L.Dropout(float(it.get("p", 0.5))))
            continue
        first = next((k for k in sd if k.startswith(pre)), None)
        dt = dtype or (sd[first].dtype.name if first is not None else "float32")
        if kind == "embedding":
            layer = L.Embedding(it["num_embeddings"], it["embedding_dim"], dtype=dt)
            keys = {"weight": f"{pre}weight"}
        elif kind == "linear":
            layer = L.Dense(it["in_features"], it["out_features"], bias=it.get("bias", True),
                            dtype=dt)
            keys = {k: f"{pre}{k}" for k in layer.params}
        else:
            kw = dict(num_layers=int(it.get("num_layers", 1)),
                      bidirectional=bool(it.get("bidirectional", False)),
                      bias=bool(it.get("bias", True)), dtype=dt)
            if kind == "rnn":
                layer = L.Elman(it["input_size"], it["hidden_size"],
                                nonlinearity=it.get("nonlinearity", "tanh"), **kw)
            elif kind == "lstm":
                layer = L.LSTM(it["input_size"], it["hidden_size"],
                               proj_size=int(it.get("proj_size", 0)), **kw)
            else:
                layer = L.GRU(it["input_size"], it["hidden_size"], reset_after=True, **kw)
            keys = {(d, k): f"{pre}{k}_{d}" for d, p in layer.params.items() for k in p
                    if k not in ("h0", "c0")}
        expected |= set(keys.values())
        missing = sorted(v for v in keys.values() if v not in sd)
        if missing:
            extra = sorted(k for k in sd if k.startswith(pre) and k not in keys.values())
            raise ValueError(f"the state dict does not fit {kind} {name!r} of the spec: missing "
                             f"{missing[:6]}" + (f", unexpected {extra[:6]}" if extra else "")
                             + "; fix the spec's sizes and options")
        tree = {}
        for k, src in keys.items():
            a = sd[src]
            if isinstance(k, tuple):
                tree.setdefault(k[0], {})[k[1]] = a.astype(dt)
            else:
                tree[k] = a.astype(dt)
        try:
            layer.params = tree
        except ValueError as e:
            raise ValueError(f"the state dict does not fit {kind} {name!r} of the spec ({e}); "
                             "fix the spec's sizes") from None
        out.append(layer)
    extra = sorted(set(sd) - expected)
    if extra:
        raise ValueError(f"the state dict has entries the spec does not use: {extra[:6]}; fix the "
                         "spec (num_layers, bidirectional, proj_size, bias) or add their layers")
    return L.Sequential(*out)


__all__ = ["from_torch", "load_torch", "parse_torch_spec", "to_torch_state_dict"]
