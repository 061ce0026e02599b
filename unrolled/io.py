"""Saving and loading models and checkpoints safely: arrays and JSON, never pickle.

A model file is one ``.npz`` archive (NumPy's zip of ``.npy`` arrays) that holds

- the parameters, one array per leaf of ``model.params`` under ``params/<path>``;
- ``__meta__``: a UTF-8 JSON document stored as a ``uint8`` array, with the format name
  and version, the model's architecture (enough to rebuild it, see :func:`model_spec`),
  the resolved training config, and what the task learned from data (vocabulary, classes,
  normalisation statistics).

``save_model(model, DIR)`` writes ``DIR/model.npz`` and, for people, ``DIR/config.json``
(the same metadata, pretty-printed); ``load_model`` reads the ``.npz`` only.

Safety. Files are read with ``numpy.load(allow_pickle=False)``, so an archive crafted to
run code (a pickled object array) is refused instead of unpickled; every array must be
numeric or bool. The format name and version are checked: a file from a newer or unknown
version is refused with a message saying so. A truncated or corrupt file (zip CRC,
missing members, bad JSON) raises a one-line ``ValueError``.

Atomic writes. Every file is written to a temporary file in the same directory, flushed
and ``fsync``-ed, then moved over the target with ``os.replace`` (atomic on POSIX and
Windows), and the directory is ``fsync``-ed: a crash or ``kill -9`` at any moment leaves
either the old file or the new one, never a mix, so the last good checkpoint survives.
"""
import contextlib
import errno
import json
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from .tree import tree_flatten

MODEL_FORMAT = "unrolled-model"
CHECKPOINT_FORMAT = "unrolled-checkpoint"
FORMAT_VERSION = 1  # the newest version this code reads and the one it writes

__all__ = ["CHECKPOINT_FORMAT", "FORMAT_VERSION", "MODEL_FORMAT", "atomic_open",
           "atomic_write_bytes", "remove_stale_temps",
           "atomic_write_text", "build_model", "load_arrays", "load_model", "model_spec",
           "save_arrays", "save_model"]


# --------------------------------------------------------------------------- atomic files

def _fsync_dir(path):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def remove_stale_temps(directory, names):
    """Remove the temporary files that :func:`atomic_open` left in ``directory`` for the
    files ``names`` when its process was killed (``kill -9``) in the middle of a write.
    Returns the paths removed."""
    directory, gone = Path(directory), []
    if not directory.is_dir():
        return gone
    for name in names:
        for p in directory.glob(f".{name}.*.tmp"):
            try:
                p.unlink()
                gone.append(p)
            except OSError:
                pass
    return gone


@contextlib.contextmanager
def atomic_open(path, text=False, keep=None):
    """Open a temporary file beside ``path`` for writing; on a clean exit it replaces
    ``path`` (flushed, ``fsync``-ed, renamed), on an exception it is removed.

    ``text=True`` gives a UTF-8 text file with Unix line ends, else a binary one.
    ``keep``: a path in the same directory that receives the file being replaced (a hard
    link, atomically, so ``path`` itself always exists), e.g. the previous checkpoint.

    >>> with atomic_open(tmp / "out.txt", text=True) as f:  # doctest: +SKIP
    ...     f.write("all or nothing")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        mode = {"mode": "w", "encoding": "utf-8", "newline": "\n"} if text else {"mode": "wb"}
        with os.fdopen(fd, **mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a model file is an ordinary file
        if keep is not None and path.exists():
            _keep_previous(path, Path(keep))
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            kept = " (the previous file is intact)" if path.exists() else ""
            raise OSError(e.errno, f"{path}: no space left on the device to write it{kept}; "
                          "free some space and run the command again (a run continues with "
                          "--resume)") from None
        raise
    _fsync_dir(path.parent)


def _keep_previous(path, keep):
    """Hard-link ``path`` to ``keep`` atomically (nothing kept where links are refused)."""
    link = keep.with_name(f".{keep.name}.{os.getpid()}.tmp")
    try:
        link.unlink(missing_ok=True)
        os.link(path, link)
        os.replace(link, keep)
    except OSError:
        link.unlink(missing_ok=True)


def _atomic_write(path, write, keep=None):
    """Call ``write(fileobj)`` on a temporary file beside ``path``, then rename it over."""
    with atomic_open(path, keep=keep) as f:
        write(f)
    return Path(path)


def atomic_write_bytes(path, data):
    """Write ``data`` to ``path`` atomically (temporary file + fsync + rename)."""
    return _atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path, text):
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


# --------------------------------------------------------------------------- array files

def save_arrays(path, arrays, meta, keep=None):
    """Write ``{name: array}`` and a JSON-able ``meta`` dict into one ``.npz``, atomically.

    Parameters
    ----------
    path : file to write (any suffix; ``.npz`` is customary).
    arrays : dict of str -> numeric or bool ndarray.
    meta : dict with at least ``"format"``; saved as JSON under ``__meta__``.
    keep : None, or a path that receives the file being replaced (see :func:`atomic_open`).
    """
    out = {}
    for k, v in arrays.items():
        a = np.asarray(v)
        if a.dtype.kind not in "biuf":
            raise TypeError(f"array {k!r} has dtype {a.dtype}; only numeric and bool arrays "
                            "are saved (no objects, no pickle)")
        out[k] = a
    if "__meta__" in out:
        raise ValueError("'__meta__' is reserved for the metadata; rename that array")
    blob = json.dumps(meta, allow_nan=True, sort_keys=True).encode("utf-8")
    out["__meta__"] = np.frombuffer(blob, dtype=np.uint8)
    return _atomic_write(path, lambda f: np.savez(f, **out), keep=keep)


def load_arrays(path, expect_format):
    """Read a file written by :func:`save_arrays`; refuse anything unsafe or unknown.

    Returns
    -------
    (arrays, meta) : dict of name -> ndarray, and the metadata dict.

    Raises
    ------
    ValueError : missing, truncated or corrupt file; pickled (object) arrays; a format
        other than ``expect_format``; a version newer than :data:`FORMAT_VERSION`.
    """
    path = Path(path).expanduser()
    what = "model" if expect_format == MODEL_FORMAT else "checkpoint"
    if not path.is_file():
        raise ValueError(f"{path}: no such {what} file; check the path")
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
    except OSError as e:
        raise ValueError(f"{path}: cannot read it ({e.strerror}); check its permissions") from None
    if len(magic) < 6:
        raise ValueError(f"{path}: corrupt or truncated {what} file ({len(magic)} bytes); use "
                         "another copy or train again")
    if magic == b"\x93NUMPY":
        raise ValueError(f"{path}: a single NumPy array (.npy), not an unrolled {what} file; "
                         f"pass the model.npz that `unrolled train` wrote")
    if magic[:4] not in (b"PK\x03\x04", b"PK\x05\x06"):
        raise ValueError(f"{path}: not an unrolled {what} file (not a .npz archive); pass the "
                         "model.npz that `unrolled train` wrote")
    arrays = {}
    try:
        with np.load(path, allow_pickle=False) as z:
            for k in z.files:
                arrays[k] = z[k]
    except ValueError as e:
        if "allow_pickle" in str(e) or "Object arrays" in str(e):
            raise ValueError(f"{path}: refused: the file holds pickled Python objects, which "
                             f"could run code when loaded; a {what} file holds only numeric "
                             "arrays") from None
        raise ValueError(f"{path}: not a readable {what} file ({e}); it may be truncated or "
                         "corrupt: use another copy or train again") from None
    except (OSError, EOFError, zipfile.BadZipFile, KeyError, RuntimeError) as e:
        raise ValueError(f"{path}: corrupt or truncated {what} file ({type(e).__name__}: "
                         f"{e}); use another copy or train again") from None
    if "__meta__" not in arrays:
        raise ValueError(f"{path}: not an unrolled {what} file (no metadata); save models "
                         "with unrolled.io.save_model")
    try:
        meta = json.loads(arrays.pop("__meta__").tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: the metadata of this {what} file is corrupt ({e}); use "
                         "another copy or train again") from None
    fmt, version = meta.get("format"), meta.get("version")
    if fmt != expect_format:
        raise ValueError(f"{path}: this is a {fmt!r} file, not an {expect_format!r} file; "
                         f"pass a {what} file")
    if not isinstance(version, int) or version < 1:
        raise ValueError(f"{path}: unknown {what} format version {version!r}; it was not "
                         "written by unrolled")
    if version > FORMAT_VERSION:
        raise ValueError(f"{path}: {what} format version {version} is newer than this unrolled "
                         f"reads (version {FORMAT_VERSION}); upgrade unrolled to load it")
    for k, a in arrays.items():
        if a.dtype.kind not in "biuf":
            raise ValueError(f"{path}: refused: array {k!r} has dtype {a.dtype}; a {what} "
                             "file holds only numeric arrays")
    return arrays, meta


# --------------------------------------------------------------------------- architecture

_RECURRENT_ARGS = ("input_size", "hidden_size", "num_layers", "bidirectional", "dropout",
                   "return_sequences", "bias", "initial_state", "truncate", "dtype",
                   "input_init", "recurrent_init", "memory", "weight_drop",
                   "recurrent_dropout", "input_dropout", "zoneout")
_EXTRA_ARGS = {"Elman": ("nonlinearity",), "LSTM": ("forget_bias", "peepholes", "proj_size",
                                                   "layer_norm"),
               "GRU": ("reset_after",),
               "Jordan": ("nonlinearity", "output_activation")}


_SEQ2SEQ_ARGS = ("src_vocab", "tgt_vocab", "embed_size", "hidden_size", "cell", "num_layers",
                 "attention", "attn_size", "bos", "eos", "dtype")


def model_spec(model):
    """A JSON-able description of a model's architecture (no weights).

    Supports ``Sequential``, ``Dense``, ``Embedding``, ``Dropout``, the recurrent layers
    ``Elman``, ``LSTM``, ``GRU``, ``Jordan`` (and any registered cell) and ``Seq2Seq``;
    :func:`build_model` inverts it.
    """
    from . import layers as L
    from .seq2seq import Seq2Seq

    kind = type(model).__name__
    if isinstance(model, Seq2Seq):
        spec = {"layer": "Seq2Seq"}
        for k in _SEQ2SEQ_ARGS:
            spec[k] = getattr(model, k)
        spec["dropout"] = model.encoder.dropout
        return spec
    if isinstance(model, L.Sequential):
        return {"layer": "Sequential", "layers": [model_spec(ly) for ly in model.layers]}
    if isinstance(model, L.Dense):
        return {"layer": "Dense", "in_features": model.in_features,
                "out_features": model.out_features, "bias": model.bias, "dtype": model.dtype}
    if isinstance(model, L.Embedding):
        return {"layer": "Embedding", "num_embeddings": model.num_embeddings,
                "embedding_dim": model.embedding_dim, "dtype": model.dtype,
                "dropout": getattr(model, "dropout", 0.0)}
    if isinstance(model, L.Dropout):
        return {"layer": "Dropout", "p": model.p}
    if isinstance(model, L.ActivationRegularization):
        return {"layer": "ActivationRegularization", "alpha": model.alpha, "beta": model.beta}
    if isinstance(model, L.Recurrent) and kind in _EXTRA_ARGS:
        spec = {"layer": kind}
        for k in _RECURRENT_ARGS + _EXTRA_ARGS[kind]:
            spec[k] = getattr(model, k)
        if kind == "Jordan":
            spec["output_size"] = model._cell.output_size
        return spec
    if isinstance(model, L.Recurrent):  # any registered cell, through the generic layer
        import dataclasses

        cell = model._cell
        spec = {"layer": "Recurrent", "cell": cell.name,
                "cell_args": {f.name: getattr(cell, f.name) for f in dataclasses.fields(cell)}
                if dataclasses.is_dataclass(cell) else {}}
        for k in _RECURRENT_ARGS:
            spec[k] = getattr(model, k)
        return spec
    raise TypeError(f"cannot describe a {kind} layer for saving; build the model from "
                    "unrolled.layers (Sequential, Dense, Embedding, Dropout, Elman, LSTM, GRU, "
                    "Jordan)")


def build_model(spec, seed=0):
    """Rebuild a model (with fresh weights) from :func:`model_spec`'s description."""
    from . import layers as L

    if not isinstance(spec, dict) or "layer" not in spec:
        raise ValueError("the model architecture in this file is missing or malformed; "
                         "the file is corrupt")
    spec = dict(spec)
    kind = spec.pop("layer")
    if kind == "Sequential":
        return L.Sequential([build_model(s, seed) for s in spec["layers"]])
    if kind == "Seq2Seq":
        from .seq2seq import Seq2Seq

        try:
            return Seq2Seq(**spec, seed=seed)
        except TypeError as e:
            raise ValueError(f"the architecture of the Seq2Seq model in the file does not "
                             f"match this unrolled ({e}); upgrade unrolled") from None
    if kind == "Recurrent":
        from .cells import get

        try:
            cell = get(spec.pop("cell"))(**spec.pop("cell_args", {}))
        except ValueError as e:
            raise ValueError(f"{e}; import the module that registers it before loading") \
                from None
        return L.Recurrent(cell, **spec, seed=seed)
    classes = {"Dense": L.Dense, "Embedding": L.Embedding, "Dropout": L.Dropout,
               "ActivationRegularization": L.ActivationRegularization,
               "Elman": L.Elman, "LSTM": L.LSTM, "GRU": L.GRU, "Jordan": L.Jordan}
    if kind not in classes:
        raise ValueError(f"unknown layer {kind!r} in the model file; it needs a newer unrolled")
    try:
        return classes[kind](**spec, seed=seed)
    except TypeError as e:
        raise ValueError(f"the architecture of layer {kind!r} in the model file does not "
                         f"match this unrolled ({e}); upgrade unrolled") from None


# --------------------------------------------------------------------------- models

def tree_fill(template, flat, sep="/", prefix=""):
    """A tree shaped like ``template`` with the leaves of ``flat`` ({path: array}).

    Unlike ``tree_unflatten`` it keeps the empty dicts of parameter-free layers (Dropout).
    Raises KeyError naming a missing path; extra paths are reported by the caller.
    """
    out = {}
    for k, v in template.items():
        path = f"{prefix}{k}"
        if isinstance(v, dict):
            out[k] = tree_fill(v, flat, sep, path + sep)
        else:
            if path not in flat:
                raise KeyError(path)
            out[k] = flat[path]
    return out


def set_params(model, flat, where):
    """Assign ``{path: array}`` to ``model.params``; ValueError if the trees differ."""
    expected = set(tree_flatten(model.params))
    if set(flat) != expected:
        missing, extra = sorted(expected - set(flat)), sorted(set(flat) - expected)
        raise ValueError(f"{where}: the saved weights do not fit the architecture (missing "
                         f"{missing[:5]}, unexpected {extra[:5]}); the file is corrupt")
    try:
        model.params = tree_fill(model.params, flat)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{where}: the saved weights do not fit the architecture ({e}); "
                         "the file is corrupt") from None

def save_model(model, path, config=None, task_state=None, extra=None, arrays=None):
    """Save a model into ``path``: a directory (``model.npz`` + ``config.json`` in it) or
    a file name ending in ``.npz``.

    Parameters
    ----------
    model : a layer or Sequential from :mod:`unrolled.layers`.
    config : dict or None, the resolved training config (saved as JSON).
    task_state : dict or None, what the task learned from data (vocab, classes, stats).
    extra : dict or None, anything else JSON-able (metrics, history).
    arrays : dict or None, numeric arrays kept beside the weights under ``extra/<name>``
        (e.g. the hashes of the training records); :func:`load_model` returns them in
        ``meta["extra_arrays"]``.

    Returns
    -------
    Path of the ``.npz`` file written.
    """
    path = Path(path)
    npz = path if path.suffix == ".npz" else path / "model.npz"
    meta = {"format": MODEL_FORMAT, "version": FORMAT_VERSION, "architecture": model_spec(model),
            "config": config or {}, "task_state": task_state or {}, "extra": extra or {}}
    stored = {"params/" + k: v for k, v in tree_flatten(model.params).items()}
    stored.update({"extra/" + k: v for k, v in (arrays or {}).items()})
    save_arrays(npz, stored, meta)
    atomic_write_text(npz.with_name("config.json") if path.suffix != ".npz"
                      else npz.with_suffix(".json"), json.dumps(meta, indent=2) + "\n")
    return npz


def resolve_model_path(path):
    """``path`` itself if it is a file, else ``path/model.npz``."""
    path = Path(path).expanduser()
    if path.is_dir():
        npz = path / "model.npz"
        if not npz.is_file():
            raise ValueError(f"{path}: no model.npz in this directory; pass the --out "
                             "directory of `unrolled train` or a .npz model file")
        return npz
    return path


def load_model(path):
    """Load a model saved by :func:`save_model`.

    Returns
    -------
    (model, meta) : the rebuilt model with its parameters, and the metadata dict
        (``architecture``, ``config``, ``task_state``, ``extra``).
    """
    npz = resolve_model_path(path)
    arrays, meta = load_arrays(npz, MODEL_FORMAT)
    model = build_model(meta.get("architecture"))
    params = {k[len("params/"):]: v for k, v in arrays.items() if k.startswith("params/")}
    bad = sorted(k for k, v in params.items()
                 if v.dtype.kind == "f" and not np.isfinite(v).all())
    if bad:
        raise ValueError(f"{npz}: the weights {bad[:3]} hold NaN or infinite values, so every "
                         "answer would be NaN; the file is corrupt or training diverged: train "
                         "again (e.g. with a lower --lr)")
    set_params(model, params, npz)
    meta["extra_arrays"] = {k[len("extra/"):]: v for k, v in arrays.items()
                            if k.startswith("extra/")}
    return model, meta
