"""Whole Keras model files -> unrolled models, without TensorFlow or Keras.

Reads, with h5py and zipfile only (``pip install unrolled[interop]``):

* Keras 2 / tf.keras HDF5 files (``.h5``, ``.hdf5``): ``model.save`` files (a
  ``model_config`` attribute with the architecture, weights under ``model_weights``) and
  ``model.save_weights`` files (weights only: the layers are then recognised from their
  weights, see below). Keras 3 writes the same layout with ``model.save("x.h5")``.
* Keras 3 files (``.keras``): a zip of ``config.json``, ``metadata.json`` and
  ``model.weights.h5`` (weights under ``layers/<snake_case class name>[_n]``).

Layers: ``InputLayer`` (skipped), ``Embedding`` (``mask_zero`` noted: pass
``mask=X != 0``), ``Masking`` (noted: pass the mask), ``SimpleRNN``/``LSTM``/``GRU`` and
Keras 2's ``CuDNNLSTM``/``CuDNNGRU`` (see :func:`unrolled.interop.from_keras_weights`),
``Bidirectional`` (merge modes concat, sum, ave), ``Dense`` and ``TimeDistributed(Dense)``
(linear, or softmax as the last layer: the model then gives the logits), ``Dropout``
and ``SpatialDropout1D`` (identity at inference). A file's layers must form a chain;
``layers=[names]`` takes the named layers, in that order, as a ``Sequential`` (for
models with layers of their own, such as an attention layer).

A weights-only file has no config, so each named layer is recognised from its weights:
an ``embeddings`` table is an Embedding; ``kernel`` + ``recurrent_kernel`` a recurrent
layer whose type is read from the shapes (gates per unit, and a CuDNN bias of 8H or 6H);
``kernel`` (+ ``bias``) a Dense. What the weights cannot tell (a plain LSTM/GRU's gate
activation: Keras 2 defaulted to hard_sigmoid, tf.keras to sigmoid) must be passed
(``recurrent_activation=``); recurrent layers are read with ``return_sequences=True``.
"""
import json
import re
import zipfile
from pathlib import Path

import numpy as np

from .keras import (from_keras_dense, from_keras_embedding, from_keras_weights,
                    merge_directions, options_from_config)

__all__ = ["load_keras", "read_keras"]

_RECURRENT = ("SimpleRNN", "LSTM", "GRU", "CuDNNLSTM", "CuDNNGRU")
_SKIP = ("InputLayer",)
_DROPOUT = ("Dropout", "SpatialDropout1D")
SUPPORTED = ("Embedding", "Masking", *_RECURRENT, "Bidirectional", "Dense", "TimeDistributed",
             *_DROPOUT)


def _h5py():
    try:
        import h5py
    except ImportError:
        raise ImportError("reading Keras files needs h5py: pip install 'unrolled[interop]'") \
            from None
    return h5py


def _text(v):
    return v.decode("utf-8") if isinstance(v, bytes) else str(v)


def _snake(name):
    """Keras 3's ``to_snake_case`` of a class name (the key of its weights in .keras)."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


# ------------------------------------------------------------------------- the containers

class _File:
    """The layer configs (or None) and the weights per layer name of one model file."""

    def __init__(self, path):
        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise ValueError(f"{self.path}: no such file; check the path")
        with open(self.path, "rb") as f:
            magic = f.read(8)
        self.notes = []
        read = (self._read_keras3 if magic[:4] == b"PK\x03\x04" else
                self._read_h5 if magic == b"\x89HDF\r\n\x1a\n" else None)
        if read is not None:
            try:
                read()
            except (KeyError, OSError, TypeError, AttributeError, json.JSONDecodeError) as e:
                raise ValueError(f"{self.path}: a damaged or unusual Keras file "
                                 f"({type(e).__name__}: {e}); save it again with "
                                 "model.save") from None
        else:
            raise ValueError(f"{self.path}: neither a Keras HDF5 file (.h5) nor a Keras 3 "
                             "file (.keras); pass the file that model.save wrote")

    # Keras 2 / tf.keras / Keras 3 legacy HDF5
    def _read_h5(self):
        h5py = _h5py()
        with h5py.File(self.path, "r") as f:
            self.keras_version = _text(f.attrs.get("keras_version", "")) or None
            cfg = f.attrs.get("model_config")
            self.config = json.loads(_text(cfg)) if cfg is not None else None
            g = f["model_weights"] if "model_weights" in f else f
            if "layer_names" not in g.attrs:
                raise ValueError(f"{self.path}: an HDF5 file without Keras layers (no "
                                 "layer_names); pass a file written by Keras's model.save "
                                 "or save_weights")
            self.order = [_text(n) for n in g.attrs["layer_names"]]
            self.weights = {}
            for name in self.order:
                grp = g[name]
                names = [_text(n) for n in grp.attrs.get("weight_names", [])]
                self.weights[name] = [(n, np.asarray(grp[n])) for n in names]
        self.format = "HDF5" + (" weights only" if self.config is None else "")

    # Keras 3 .keras zip
    def _read_keras3(self):
        h5py = _h5py()
        import io

        try:
            with zipfile.ZipFile(self.path) as z:
                self.config = json.loads(z.read("config.json"))
                meta = json.loads(z.read("metadata.json")) if "metadata.json" in \
                    z.namelist() else {}
                blob = z.read("model.weights.h5")
        except (KeyError, zipfile.BadZipFile, json.JSONDecodeError) as e:
            raise ValueError(f"{self.path}: not a readable Keras 3 file ({e}); pass the "
                             ".keras file that model.save wrote") from None
        self.keras_version = meta.get("keras_version", "3")
        self.format = "Keras 3 (.keras)"
        layers = _config_layers(self.config, self.path)
        self.order = [lc["config"]["name"] for lc in layers]
        self.weights = {}
        used = {}
        with h5py.File(io.BytesIO(blob), "r") as f:
            top = f["layers"] if "layers" in f else None
            for lc in layers:
                key = _snake(lc["class_name"])
                n = used.get(key, 0)
                used[key] = n + 1
                path = key if n == 0 else f"{key}_{n}"
                grp = top[path] if top is not None and path in top else None
                self.weights[lc["config"]["name"]] = [] if grp is None else _k3_vars(grp)

    def layer_config(self, name):
        if self.config is None:
            return None
        for lc in _config_layers(self.config, self.path):
            if lc["config"].get("name") == name:
                return lc
        return None


def _k3_vars(grp, prefix=""):
    """The arrays of one layer of a .keras weights file, in the layer's weight order:
    its own ``vars/0, 1, ...``, then its parts (cell, wrapped layer, forward then
    backward layer)."""
    out = []
    if "vars" in grp:
        v = grp["vars"]
        out += [(f"{prefix}vars/{i}", np.asarray(v[str(i)])) for i in range(len(v))]
    for part in ("cell", "layer", "forward_layer", "backward_layer"):
        if part in grp:
            out += _k3_vars(grp[part], f"{prefix}{part}/")
    return out


def _config_layers(config, path):
    cfg = config.get("config", config) if isinstance(config, dict) else config
    layers = cfg if isinstance(cfg, list) else cfg.get("layers") if isinstance(cfg, dict) \
        else None
    if not isinstance(layers, list):
        raise ValueError(f"{path}: the model config has no list of layers; a nested or "
                         "subclassed model is not read: pass layers=[...]")
    for lc in layers:
        lc.setdefault("config", {}).setdefault("name", _snake(lc.get("class_name", "layer")))
    return layers


def _inbound(lc):
    """Names of the layers feeding ``lc`` in a functional config (Keras 2 and 3 forms)."""
    found = []

    def walk(x):
        if isinstance(x, dict):
            if "keras_history" in x:
                found.append(x["keras_history"][0])
                return
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            if len(x) >= 3 and isinstance(x[0], str) and isinstance(x[1], int):
                found.append(x[0])
                return
            for v in x:
                walk(v)

    walk(lc.get("inbound_nodes") or [])
    return found


# ------------------------------------------------------------------------- the layers

def _arrays(ws):
    return [a for _, a in ws]


def _short(name):
    """'model/rnn_1/kernel:0' -> 'kernel'; 'cell/vars/1' -> 'vars/1'."""
    return name.split("/")[-1].split(":")[0]


def _infer(name, ws, path):
    """(class_name, config) of a layer of a weights-only file, from its weights."""
    keys = [_short(n) for n, _ in ws]
    if not ws:
        raise ValueError(f"{path}: layer {name!r} has no weights, and the file has no model "
                         "config to say what it is; leave it out of layers=")
    if keys == ["embeddings"]:
        return "Embedding", {}
    if keys[:2] == ["kernel", "recurrent_kernel"] and len(ws) in (2, 3):
        rec = ws[1][1]
        G = rec.shape[1] // rec.shape[0] if rec.ndim == 2 and rec.shape[0] else 0
        kind = {1: "SimpleRNN", 3: "GRU", 4: "LSTM"}.get(G)
        if kind is None or rec.shape[1] != G * rec.shape[0]:
            raise ValueError(f"{path}: layer {name!r} has a recurrent_kernel of shape "
                             f"{rec.shape}, which is no SimpleRNN, GRU or LSTM")
        if len(ws) == 3 and ws[2][1].shape == (2 * G * rec.shape[0],) and G > 1:
            return "CuDNN" + kind, {"return_sequences": True}
        return kind, {"return_sequences": True, "__weights_only__": True}
    if keys in (["kernel", "bias"], ["kernel"]) and ws[0][1].ndim == 2:
        return "Dense", {"activation": "linear"}
    raise ValueError(f"{path}: cannot tell what layer {name!r} is from its weights "
                     f"({', '.join(keys)}) and the file has no model config; leave it out "
                     "of layers=")


def _recurrent(kind, cfg, version, recurrent_activation, name, path):
    cfg = dict(cfg)
    if cfg.get("go_backwards"):
        raise ValueError(f"layer {name!r} runs backwards (go_backwards=True); unrolled reads "
                         "that through a Bidirectional wrapper only")
    weights_only = cfg.pop("__weights_only__", False)
    base = kind[5:] if kind.startswith("CuDNN") else kind
    opts = options_from_config(base, cfg, version)
    if kind.startswith("CuDNN"):
        opts.pop("recurrent_activation", None)
        opts["layout"] = "cudnn"
    elif base != "SimpleRNN":
        opts["layout"] = "keras"
        if recurrent_activation is not None:
            opts["recurrent_activation"] = recurrent_activation
        elif weights_only:
            raise ValueError(f"{path}: layer {name!r} is a plain {base} in a weights-only file, "
                             "so its gate activation is unknown (Keras 2 defaulted to "
                             "hard_sigmoid, tf.keras to sigmoid); pass recurrent_activation="
                             "'sigmoid' or 'hard_sigmoid'")
    return opts, base


def _convert(lc, ws, version, recurrent_activation, dtype, path, last):
    """(unrolled layers, notes) for one Keras layer config and its weights."""
    kind, cfg, name = lc["class_name"], lc.get("config", {}), lc["config"]["name"]
    arrays = _arrays(ws)
    if kind in _SKIP:
        return [], []
    if kind == "Embedding":
        notes = []
        if cfg.get("mask_zero"):
            notes.append(f"mask_zero: {name!r} masks symbol 0; call the model with "
                         "mask=(X != 0)")
        return [from_keras_embedding(arrays[0], dtype)], notes
    if kind == "Masking":
        return [], [f"Masking: {name!r} masks steps equal to {cfg.get('mask_value', 0.0)}; "
                    "call the model with that mask"]
    if kind in _DROPOUT:
        from ..layers import Dropout

        return [Dropout(float(cfg.get("rate", 0.0)))], []
    if kind == "TimeDistributed":
        inner = cfg.get("layer", {})
        if inner.get("class_name") != "Dense":
            raise ValueError(f"{path}: layer {name!r} is TimeDistributed({inner.get('class_name')})"
                             "; only TimeDistributed(Dense) is read: pass layers=[...] without it")
        return _convert({"class_name": "Dense", "config": {**inner.get("config", {}),
                                                            "name": name}},
                        ws, version, recurrent_activation, dtype, path, last)
    if kind == "Dense":
        act = cfg.get("activation", "linear")
        notes = []
        if act == "softmax" and last:
            notes.append(f"softmax: the model gives the logits of {name!r}; its "
                         "probabilities are softmax(output)")
        elif act != "linear":
            raise ValueError(f"{path}: Dense layer {name!r} has activation={act!r}; unrolled's "
                             "Dense is linear (a softmax only as the last layer): pass "
                             "layers=[...] ending before it")
        return [from_keras_dense(arrays[0], arrays[1] if len(arrays) > 1 else None, dtype)], \
            notes
    if kind in _RECURRENT:
        opts, base = _recurrent(kind, cfg, version, recurrent_activation, name, path)
        return [from_keras_weights(base, arrays, dtype=dtype, **opts)], []
    if kind == "Bidirectional":
        inner = cfg.get("layer", {})
        ik, icfg = inner.get("class_name"), inner.get("config", {})
        if ik not in _RECURRENT:
            raise ValueError(f"{path}: Bidirectional layer {name!r} wraps a {ik}; unrolled "
                             "reads Bidirectional(SimpleRNN/LSTM/GRU) only")
        merge = cfg.get("merge_mode", "concat")
        if merge != "concat":
            merge_directions(merge, 1, "float64")  # refuses mul / None
        opts, base = _recurrent(ik, icfg, version, recurrent_activation, name, path)
        n = len(arrays) // 2
        layer = from_keras_weights(base, arrays[:n], backward_weights=arrays[n:], dtype=dtype,
                                   **opts)
        out = [layer]
        if merge != "concat":
            out.append(merge_directions(merge, layer.hidden_size, layer.dtype))
        return out, []
    raise ValueError(f"{path}: layer {name!r} is a {kind}, which unrolled does not read "
                     f"(it reads {', '.join(SUPPORTED)}); pass layers=[...] naming the layers "
                     "to take")


def read_keras(path, layers=None, *, recurrent_activation=None, dtype=None):
    """:func:`load_keras`, also returning what was read: ``(model, info)`` with ``info``
    a JSON-able dict (``format``, ``keras_version``, ``layers``: the Keras layers taken,
    ``notes``: masks to pass, a softmax left to the caller)."""
    f = _File(path)
    if layers is not None:
        if isinstance(layers, str) or not all(isinstance(n, str) for n in layers):
            raise ValueError("layers= takes a list of layer names, e.g. layers=['embedding', "
                             "'rnn_1']")
        missing = [n for n in layers if n not in f.weights]
        if missing:
            raise ValueError(f"{f.path}: no layer named {missing}; its layers are "
                             f"{f.order}")
        names = list(layers)
    else:
        if f.config is None:
            raise ValueError(f"{f.path}: the file holds weights only (no model config), so "
                             f"its architecture is unknown; pass layers=[...] naming the "
                             f"layers to take, from {f.order}")
        names = [lc["config"]["name"] for lc in _config_layers(f.config, f.path)]
        _check_chain(f, names)
    out, notes, taken = [], [], []
    kept = [n for n in names if f.layer_config(n) is None
            or f.layer_config(n)["class_name"] not in _SKIP]
    for name in names:
        lc = f.layer_config(name)
        if lc is None:
            kind, cfg = _infer(name, f.weights[name], f.path)
            lc = {"class_name": kind, "config": {**cfg, "name": name}}
        got, why = _convert(lc, f.weights.get(name, []), f.keras_version,
                            recurrent_activation, dtype, f.path, last=name == kept[-1])
        out += got
        notes += why
        if lc["class_name"] not in _SKIP:
            taken.append({"name": name, "class_name": lc["class_name"]})
    if not out:
        raise ValueError(f"{f.path}: no layer with weights among {names}; pass layers=[...]")
    from ..layers import Sequential

    model = Sequential(*out)
    info = {"format": f.format, "keras_version": f.keras_version, "file": str(f.path),
            "layers": taken, "notes": notes,
            "mask_zero": any(n.startswith("mask_zero") for n in notes)}
    return model, info


def _check_chain(f, names):
    """A functional model's layers must each read the one before (a chain)."""
    prev = None
    for name in names:
        lc = f.layer_config(name)
        if lc["class_name"] in _SKIP:
            prev = name
            continue
        src = _inbound(lc)
        if prev is not None and src and src != [prev]:
            raise ValueError(f"{f.path}: layer {name!r} reads {src}, not the layer before it "
                             f"({prev!r}); the model is not a chain: pass layers=[...] naming "
                             "a chain of its layers")
        prev = name


def load_keras(path, layers=None, *, recurrent_activation=None, dtype=None):
    """An unrolled ``Sequential`` that computes what a saved Keras model computes.

    Parameters
    ----------
    path : a Keras 2 / tf.keras HDF5 file (``model.save`` or ``save_weights``) or a
        Keras 3 ``.keras`` file. Neither TensorFlow nor Keras is needed (h5py is).
    layers : None (the whole model; it must be a chain of supported layers), or a list of
        layer names taken in that order as a Sequential (models with layers of their
        own, weights-only files).
    recurrent_activation : the gate activation of plain LSTM/GRU layers in a weights-only
        file ("sigmoid" or "hard_sigmoid"); overrides the config's where given.
    dtype : "float32" or "float64" (default: the stored weights').

    Masks are not computed by the model: an ``Embedding(mask_zero=True)`` or a
    ``Masking`` layer means calling it with ``mask=`` (see :func:`read_keras`'s notes).
    """
    return read_keras(path, layers, recurrent_activation=recurrent_activation, dtype=dtype)[0]
