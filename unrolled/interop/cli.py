"""``unrolled import FILE --out DIR``: a Keras or PyTorch model as an unrolled model directory.

The directory is the one ``unrolled train`` writes (``model.npz`` + ``config.json``, see
:mod:`unrolled.io`), so ``info``, ``predict`` and ``inspect`` take it; a character model
(``--vocab``) whose last layer gives one logit per symbol is saved as a ``text`` model
and also ``generate``s and ``evaluate``s. Anything else is saved under the ``imported``
task (:mod:`unrolled.tasks.imported`).
"""
import json
from pathlib import Path

from ..cli import _err, _out, register_command

KERAS_SUFFIXES = (".h5", ".hdf5", ".keras")
TORCH_SUFFIXES = (".pt", ".pth", ".bin")


def read_vocab(path):
    """A :class:`unrolled.data.Vocab` from a JSON file: a list of symbols in id order, or
    a ``{symbol: id}`` object (Keras tokenizers, textgenrnn: ids may start at 1; an id
    with no symbol, such as the padding id 0, gets a placeholder ``<id N>`` that no text
    encodes to)."""
    from ..data import Vocab

    path = Path(path).expanduser()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ValueError(f"{path}: cannot read the vocabulary ({e.strerror})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not a JSON file ({e})") from None
    if isinstance(data, list):
        symbols = data
    elif isinstance(data, dict) and data and all(isinstance(v, int) for v in data.values()):
        ids = sorted(data.values())
        if len(set(ids)) != len(ids) or ids[0] < 0:
            raise ValueError(f"{path}: the ids of the vocabulary must be distinct and >= 0")
        by_id = {v: k for k, v in data.items()}
        symbols = [by_id.get(i, f"<id {i}>") for i in range(ids[-1] + 1)]
    else:
        raise ValueError(f"{path}: a vocabulary is a JSON list of symbols in id order or an "
                         "object {symbol: id}")
    try:
        return Vocab(symbols)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def import_model(src, out, *, layers=None, spec=None, vocab=None, recurrent_activation=None,
                 dtype=None):
    """Read ``src`` (Keras ``.h5``/``.keras`` or a PyTorch state dict with ``spec``) and
    save it into the directory ``out``. Returns ``(model, task name, notes)``."""
    from .. import io
    from ..config import resolve_config
    from ..layers import Dense, Embedding, Sequential
    from ..tasks import get_task

    src = Path(src).expanduser()
    if not src.is_file():
        raise ValueError(f"{src}: no such file; check the path")
    if src.suffix.lower() in TORCH_SUFFIXES or spec is not None:
        if spec is None:
            raise ValueError(f"{src}: a PyTorch state dict needs --spec naming its layers, e.g. "
                             "--spec \"embedding(65,32) lstm(32,256) linear(256,65)\"")
        if layers:
            raise ValueError("--layers is for Keras files; a PyTorch state dict takes --spec")
        from .torch import load_torch

        model = load_torch(str(src), spec, dtype=dtype)
        info = {"format": "PyTorch state dict", "file": str(src), "spec": spec, "notes": []}
        softmax = False
    elif src.suffix.lower() in KERAS_SUFFIXES or src.suffix == "":
        from .keras_file import read_keras

        model, info = read_keras(src, layers, recurrent_activation=recurrent_activation,
                                 dtype=dtype)
        softmax = any(n.startswith("softmax") for n in info["notes"])
    else:
        raise ValueError(f"{src}: unknown kind of model file ({src.suffix}); pass a Keras "
                         f"file ({', '.join(KERAS_SUFFIXES)}) or a PyTorch state dict "
                         f"({', '.join(TORCH_SUFFIXES)}) with --spec")
    notes = list(info.get("notes", []))
    voc = read_vocab(vocab) if vocab else None
    seq = model.layers if isinstance(model, Sequential) else [model]
    first, last = seq[0], seq[-1]
    if voc is not None and not isinstance(first, Embedding):
        raise ValueError(f"--vocab is for models that read symbols, but the first layer is a "
                         f"{type(first).__name__}, not an Embedding; drop --vocab")
    if voc is not None and first.num_embeddings != len(voc):
        raise ValueError(f"the vocabulary has {len(voc)} symbols but the Embedding reads "
                         f"{first.num_embeddings}; pass the vocabulary the model was trained "
                         "with")
    char_model = (voc is not None and isinstance(last, Dense) and last.out_features == len(voc)
                  and all(len(s) == 1 for s in voc.symbols if not s.startswith("<id ")))
    if char_model:
        task_cls = get_task("text")
        config = resolve_config(task_cls)
        state = {"vocab": voc.to_dict(), "sizes": {}}
    else:
        task_cls = get_task("imported")
        config = {"task": "imported", "loss": "cross_entropy" if softmax else "mse"}
        state = {"vocab": voc.to_dict() if voc else None, "source": info}
        if voc is not None:
            notes.append("the model's outputs are not one logit per symbol of the vocabulary, "
                         "so it is saved as an imported model (no generate/evaluate)")
    extra = {"imported": info}
    io.save_model(model, out, config=config, task_state=state, extra=extra)
    return model, task_cls.name, notes


def _add_import(sub):
    p = sub.add_parser(
        "import", help="read a Keras or PyTorch model into an unrolled model directory",
        description="Read a Keras 2 / tf.keras HDF5 file (.h5), a Keras 3 file (.keras) or a "
                    "PyTorch state dict (.pt, with --spec) and write an unrolled model "
                    "directory that info, predict and inspect take (and generate and "
                    "evaluate, for a character model given --vocab).")
    p.add_argument("file", help="the model file")
    p.add_argument("--out", required=True, help="model directory to write")
    p.add_argument("--layers", help="comma-separated Keras layer names to take, in order "
                                    "(for models with layers of their own, weights-only files)")
    p.add_argument("--spec", help="PyTorch: the layers, e.g. \"embedding(65,32) "
                                  "lstm(32,256,num_layers=2) linear(256,65)\"")
    p.add_argument("--vocab", help="JSON vocabulary of a character model: a list of symbols "
                                   "in id order or an object {symbol: id}")
    p.add_argument("--recurrent-activation", choices=("sigmoid", "hard_sigmoid"),
                   help="gate activation of plain LSTM/GRU layers in a weights-only file")
    p.add_argument("--dtype", choices=("float32", "float64"), help="default: the file's")
    p.add_argument("--force", action="store_true", help="replace a model already in --out")
    return p


def _run_import(args):
    out = Path(args.out).expanduser()
    if (out / "model.npz").exists() and not args.force:
        raise ValueError(f"{out} already holds a model; pass --force to replace it or choose "
                         "another --out")
    layers = [s.strip() for s in args.layers.split(",") if s.strip()] if args.layers else None
    try:
        model, task, notes = import_model(args.file, out, layers=layers, spec=args.spec,
                                          vocab=args.vocab,
                                          recurrent_activation=args.recurrent_activation,
                                          dtype=args.dtype)
    except ImportError as e:  # h5py for Keras files, torch for .pt files
        raise ValueError(f"{e}; install it to read this file") from None
    for note in notes:
        _err(f"note: {note}")
    _out(f"model: {out / 'model.npz'} ({task} task, {model.num_params()} parameters)",
         *("  " + line for line in repr(model).splitlines()))
    return 0


register_command("import", _add_import, _run_import)
