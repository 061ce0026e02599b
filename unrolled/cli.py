"""The ``unrolled`` command: train, evaluate, predict, generate and describe models.

    unrolled train [TASK] [--data PATH] [--out DIR] [--epochs N] [--seed N]
                   [--config FILE.toml] [--resume] [--key value ...]
    unrolled evaluate MODEL --data PATH
    unrolled predict MODEL INPUT [INPUT ...] [--top K]
    unrolled generate MODEL [--length N] [--temperature T] [--prime TEXT] [--top-k K]
    unrolled generate MODEL --tunes N --out DIR [--check]      (folk models)
    unrolled info MODEL

Subcommands live in :data:`COMMANDS` (name -> ``(add_parser, run)``); a module can add
one with :func:`register_command`, and the modules named in :data:`PLUGINS` are asked to
do so when the CLI starts (see ``docs/cli.md``). Errors in the input print one line on
stderr that names the fix and exit with code 2 (no traceback; set ``UNROLLED_DEBUG=1``
to see one).
"""
import argparse
import importlib
import json
import os
import sys
import time
from pathlib import Path

from .backend import limit_blas_threads, reuse_freed_memory

__all__ = ["COMMANDS", "PLUGINS", "main", "register_command"]

# name -> (add_parser(subparsers) -> parser, run(args) -> exit code)
COMMANDS = {}
# modules imported at start-up that may call register_command (missing ones are skipped)
PLUGINS = ["unrolled.inspect.cli", "unrolled.interop.cli"]


def register_command(name, add_parser, run):
    """Add a subcommand: ``add_parser(subparsers)`` creates its argparse parser (use
    ``subparsers.add_parser(name, help=..., description=...)``) and ``run(args)`` does
    the work and returns the exit code."""
    COMMANDS[name] = (add_parser, run)


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors on one line."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}; see `{self.prog} --help`\n")


def _out(*lines):
    for line in lines:
        print(line, flush=True)


def _err(msg):
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------ train

def _task_options_help():
    from .config import TRAIN_DEFAULTS, TRAIN_HELP
    from .tasks import REGISTRY, get_task

    lines = ["trainer options (every task; a task may change the default):"]
    for k, v in TRAIN_DEFAULTS.items():
        lines.append(f"  --{k.replace('_', '-'):<18} {TRAIN_HELP.get(k, '')} (default "
                     f"{json.dumps(v)})")
    for name in REGISTRY:
        try:
            cls = get_task(name)
        except ValueError:
            continue
        if not getattr(cls, "trainable", True):  # e.g. `imported`: models from elsewhere
            continue
        lines.append("")
        lines.append(f"task {name}: {cls.summary}")
        if cls.default_data:
            where = getattr(cls, "default_data_note", None) or f"bundled {cls.default_data!r}"
            lines.append(f"  data default: {where}")
        elif cls.defaults.get("data"):
            lines.append(f"  data default: {cls.defaults['data']!r}")
        else:
            lines.append("  data: --data is required")
        for k, v in cls.defaults.items():
            h = cls.help.get(k, TRAIN_HELP.get(k, ""))
            lines.append(f"  --{k.replace('_', '-'):<18} {h} (default {json.dumps(v)})")
    return "\n".join(lines)


def _add_train(sub):
    from .tasks import DEFAULT_TASK

    p = sub.add_parser(
        "train", help="train a model on a task", formatter_class=argparse.RawTextHelpFormatter,
        description="Train TASK's model, print the resolved config, validate every epoch, "
                    "and save the model, the logs and the report into --out.",
        epilog=_task_options_help() + "\n\nexamples:\n  unrolled train\n"
               "  unrolled train names --data ../shared/data/names --out runs/names\n"
               "  unrolled train digits --epochs 20 --hidden 64\n"
               "  unrolled train ctf --data train.ctf --features x --labels y\n"
               "  unrolled train names --out runs/names --resume")
    p.add_argument("task", nargs="?", default=DEFAULT_TASK,
                   help=f"task name (default: {DEFAULT_TASK})")
    p.add_argument("--data", help="data file or directory (default: the task's bundled data)")
    p.add_argument("--out", help="output directory (default: runs/TASK-YYYYmmdd-HHMMSS)")
    p.add_argument("--epochs", help="passes over the training data")
    p.add_argument("--seed", help="seed of the split, initialisation, shuffling and dropout")
    p.add_argument("--config", help="TOML file of options (top level or a [train] table)")
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted run in --out from its checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--force", action="store_true",
                   help="train into an --out that holds a run, replacing it")
    return p


def _parse_overrides(extra, prog):
    """``--key value`` / ``--key=value`` pairs from the arguments argparse did not know."""
    out, i = {}, 0
    while i < len(extra):
        a = extra[i]
        if not a.startswith("--") or len(a) < 3:
            raise ValueError(f"unexpected argument {a!r}; options are written --key value "
                             f"(see `{prog} --help`)")
        if "=" in a:
            k, v = a[2:].split("=", 1)
            i += 1
        else:
            if i + 1 >= len(extra) or (extra[i + 1].startswith("--") and len(extra[i + 1]) > 2):
                raise ValueError(f"option {a} needs a value, e.g. {a} 3")
            k, v = a[2:], extra[i + 1]
            i += 2
        out[k.replace("-", "_")] = v
    return out


_TRAIN_VALUE_FLAGS = {"--data", "--out", "--epochs", "--seed", "--config"}
_TRAIN_BOOL_FLAGS = {"--resume", "--quiet", "--force", "--help", "-h"}


def _split_train_args(argv):
    """Separate the fixed arguments of ``train`` from the task's ``--key value`` options
    (argparse alone would take the value of an unknown option for the TASK argument)."""
    known, extra, i = [argv[0]], [], 1
    while i < len(argv):
        a = argv[i]
        flag = a.split("=", 1)[0]
        if flag in _TRAIN_BOOL_FLAGS or not a.startswith("-") or a == "-":
            known.append(a)
            i += 1
        elif flag in _TRAIN_VALUE_FLAGS:
            n = 1 if "=" in a else 2
            known += argv[i:i + n]
            i += n
        else:
            n = 1 if "=" in a or i + 1 >= len(argv) or (argv[i + 1].startswith("--")
                                                         and len(argv[i + 1]) > 2) else 2
            extra += argv[i:i + n]
            i += n
    return known, extra


# files a run writes into its --out; an --out holding any of them is a used one
RUN_FILES = ("model.npz", "checkpoint.npz", "config.json", "log.csv", "log.json",
             "report.txt", "checkpoint.prev.npz")
# options that may be given when resuming without changing the run's results
_RESUME_FREE = ("progress", "checkpoint_every", "checkpoint_seconds")


def _explicit_options(task_cls, args, overrides):
    """The options given on this command line or in its --config file, resolved."""
    from .config import load_toml, resolve_config

    given = resolve_config(task_cls, args.config, overrides)
    keys = set(overrides)
    if args.config:
        keys |= {k.replace("-", "_") for k in load_toml(args.config)}
    keys.discard("task")
    out = {k: given[k] for k in keys if k in given}
    if out.get("test"):  # a path, compared as the absolute one the run saved
        out["test"] = str(Path(out["test"]).expanduser().resolve())
    return out


def _resume_config(task_cls, args, overrides):
    """The run's own saved config for ``--resume``, with the options given now checked:
    one that would change the run is refused with the reason."""
    from . import io

    if not args.out:
        raise ValueError("--resume needs --out DIR, the directory of the run to continue")
    ckpt = Path(args.out) / "checkpoint.npz"
    if not ckpt.exists():
        return _restart_config(task_cls, args, overrides, ckpt)
    try:
        _, meta = io.load_arrays(ckpt, io.CHECKPOINT_FORMAT)
    except ValueError as e:
        prev = ckpt.with_name("checkpoint.prev.npz")
        if prev.exists():
            raise ValueError(f"{e}; the checkpoint before it is kept: `mv {prev} {ckpt}` "
                             "and resume again") from None
        raise
    cfg = dict(meta["config"])
    if cfg.get("task") != task_cls.name:
        raise ValueError(f"{ckpt} is a {cfg.get('task')!r} run, not {task_cls.name!r}; "
                         f"resume with `unrolled train {cfg.get('task')} --out {args.out} "
                         "--resume`")
    given = _explicit_options(task_cls, args, overrides)
    given.pop("data", None)
    changed = {k: v for k, v in given.items() if k not in _RESUME_FREE and v != cfg.get(k)}
    epochs = changed.pop("epochs", None)
    if changed:
        what = ", ".join(f"--{k.replace('_', '-')} {json.dumps(v)} (the run has "
                         f"{json.dumps(cfg.get(k))})" for k, v in sorted(changed.items()))
        raise ValueError(f"{what}: a resumed run keeps its own options; drop them to resume, "
                         "or train into a new --out")
    if epochs is not None:
        done = int(meta.get("epoch", 0))
        if cfg.get("schedule") == "cosine":
            raise ValueError(f"--epochs {epochs}: the run's cosine schedule is laid out over "
                             f"its {cfg['epochs']} epochs, so other epochs would not continue "
                             "it; drop --epochs to resume, or train into a new --out")
        if epochs < done:
            raise ValueError(f"--epochs {epochs}: the run has done {done} epochs already; "
                             "drop --epochs to resume it")
        cfg["epochs"] = epochs
    for k in _RESUME_FREE:
        if k in given:
            cfg[k] = given[k]
    data = _resume_data(cfg, args.data, meta)
    return cfg, data, (meta.get("extra") or {}).get("data_sha256")


def _restart_config(task_cls, args, overrides, ckpt):
    """``--resume`` of a run stopped before its first checkpoint: its saved config.json
    starts it again from the beginning (the same options are checked as for a resume)."""
    saved = Path(args.out) / "config.json"
    try:
        cfg = dict(json.loads(saved.read_text(encoding="utf-8"))["config"])
    except (OSError, ValueError, KeyError, TypeError):
        raise ValueError(f"{ckpt}: no checkpoint to resume from; start the run without "
                         "--resume") from None
    if (Path(args.out) / "model.npz").exists() or cfg.get("task") != task_cls.name:
        raise ValueError(f"{ckpt}: no checkpoint to resume from; start the run without "
                         "--resume")
    given = _explicit_options(task_cls, args, overrides)
    given.pop("data", None)
    changed = sorted(k for k, v in given.items() if k not in _RESUME_FREE and v != cfg.get(k))
    if changed:
        raise ValueError(f"options {', '.join('--' + k.replace('_', '-') for k in changed)} "
                         "differ from the run's; a resumed run keeps its own options")
    for k in _RESUME_FREE:
        if k in given:
            cfg[k] = given[k]
    _out(f"{args.out}: no checkpoint yet; starting the run again from its saved config")
    return cfg, _resume_data(cfg, args.data, {}), None


def _resume_data(cfg, given, meta):
    """The data path of a resumed run: the saved one, or ``given`` when it holds the same
    bytes (the data moved); anything else is refused."""
    saved = cfg.get("data")
    saved_sha = (meta.get("extra") or {}).get("data_sha256")
    if given is None:
        if saved is None or not Path(saved).exists():
            raise ValueError(f"the run's data {saved} is not there any more; pass --data "
                             "with the path where it is now")
        return saved
    path = Path(given).expanduser().resolve()
    if saved is not None and path == Path(saved).expanduser().resolve():
        return saved
    if not path.exists():
        raise ValueError(f"--data {given}: no such file or directory; check the path, or "
                         "drop --data to use the run's own data")
    if saved_sha is not None and fingerprint(path) == saved_sha:
        return str(path)
    raise ValueError(f"--data {given} is not the data of the run to resume ({saved}); "
                     "drop --data to resume, or train into a new --out")


def _check_out(out, force):
    """Refuse an --out that holds a run, unless ``force`` (its run files are removed)."""
    held = [f for f in RUN_FILES if (out / f).exists()]
    if not held:
        return
    if not force:
        resume = ("continue it with --resume, " if (out / "checkpoint.npz").exists()
                  else "")
        state = "an unfinished run" if "model.npz" not in held else "a run already"
        raise ValueError(f"{out} holds {state} ({', '.join(held)}); {resume}pass another "
                         "--out, or --force to replace it")
    for f in RUN_FILES + ("confusion.txt", "confusion.png"):
        (out / f).unlink(missing_ok=True)


def _new_run_dir(task_name):
    """A fresh ``runs/TASK-YYYYmmdd-HHMMSS[-N]`` directory, created here (two runs
    started in the same second get two directories)."""
    base = Path("runs") / f"{task_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    base.parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, 10000):
        out = base if n == 1 else base.with_name(f"{base.name}-{n}")
        try:
            out.mkdir()
            return out
        except FileExistsError:
            continue
    raise OSError(f"{base}: cannot find a free run directory name; pass --out")


def _run_train(args, extra):
    from .distributed import command

    with command("train") as mpi:  # under mpiexec: data-parallel, rank 0 writes
        return _train(args, extra, mpi)


def _train(args, extra, mpi=None):
    from . import io
    from .config import format_config, resolve_config
    from .tasks import get_task
    from .train import Trainer

    task_cls = get_task(args.task)
    overrides = _parse_overrides(extra, "unrolled train")
    for key in ("epochs", "seed"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    if args.quiet:
        overrides["progress"] = "false"
    if args.resume:
        if args.force:
            raise ValueError("--resume continues a run and --force replaces it; pass one")
        cfg, data, saved_sha = _resume_config(task_cls, args, overrides)
    else:
        cfg = resolve_config(task_cls, args.config, overrides)
        if args.data:
            data = args.data
        elif cfg.get("data"):
            data = cfg["data"]
        elif task_cls.default_data:
            data = str(task_cls.default_data_path())
        else:
            raise ValueError(f"task {task_cls.name!r} has no bundled data; pass --data PATH")
        # absolute paths, so the run resumes from any directory
        data = str(task_cls.resolve_data(data))
        if cfg.get("test"):
            cfg["test"] = str(Path(cfg["test"]).expanduser().resolve())
    cfg["data"] = data
    if args.out:
        out = Path(args.out)
        if not args.resume:
            if mpi is None or mpi.root:  # under mpiexec, rank 0 alone looks and writes
                _check_out(out, args.force)

    task = task_cls(cfg)
    task.load(data)  # bad data fails here, before anything is printed or written
    trainer = Trainer(task, cfg, log=_out, distributed=mpi is not None)  # so does a bad option
    data_sha = fingerprint(data, getattr(task, "data_files", None))
    if args.resume and saved_sha is not None and data_sha != saved_sha:
        raise ValueError(f"{data}: the data changed since the run started; restore it to "
                         "resume, or train into a new --out")
    _out(f"unrolled train {task_cls.name}: resolved config", format_config(cfg), "")
    _out(*task.describe())
    if not args.out:
        out = _new_run_dir(task_cls.name) if mpi is None or mpi.root else None
        if mpi is not None:  # the directory rank 0 made
            out = mpi.comm.bcast(out, root=0)
    out.mkdir(parents=True, exist_ok=True)
    root = mpi is None or mpi.root  # under mpiexec, rank 0 alone writes
    if root:
        io.remove_stale_temps(out, RUN_FILES + ("confusion.txt", "confusion.png"))
    trainer.out_dir = out
    trainer.extra_meta["data_sha256"] = data_sha
    if not args.resume and root:
        io.atomic_write_text(out / "config.json", json.dumps({"config": cfg}, indent=2) + "\n")
    _out(f"model: {trainer.model.num_params()} parameters; {trainer.steps_per_epoch} batches "
         f"per epoch")
    t0 = time.perf_counter()
    try:
        history = trainer.fit(resume=args.resume)
    except KeyboardInterrupt:
        if mpi is None or mpi.root:
            _err(f"interrupted: checkpoint saved in {out / 'checkpoint.npz'}; continue with "
                 f"`unrolled train {task_cls.name} --out {out} --resume`")
        return 130
    seconds = time.perf_counter() - t0

    # -- the model first (training is never lost to a failing report), then the report
    extra = {"history": history.rows, "best_epoch": trainer.best["epoch"],
             "train_seconds": round(seconds, 1), "data_sha256": data_sha,
             "data_files": _file_hashes(data, getattr(task, "data_files", None)),
             "sizes": _split_sizes(task)}
    seen = {"train_records": record_hashes(task, "train")}
    model_path = io.save_model(trainer.model, out, config=cfg, task_state=task.state(),
                               extra=extra, arrays=seen) if root else None
    try:
        if mpi is not None:  # the test split over the ranks; rank 0 writes
            from .distributed import report as split_report

            files = split_report(task, trainer.model, out, mpi)
        else:
            files = task.report(trainer.model, out)
        test = (getattr(task, "last_report", {}).get("metrics")
                or task.evaluate(trainer.model, "test"))
        _check_finite(test, "test")
    except ValueError as e:
        raise ValueError(f"the model is saved in {model_path}, but its test evaluation "
                         f"failed: {e}") from None
    if not root:
        return 0
    extra["test"] = test
    model_path = io.save_model(trainer.model, out, config=cfg, task_state=task.state(),
                               extra=extra, arrays=seen)
    lines = [f"task: {task_cls.name}", f"data: {data}",
             f"epochs run: {len(history)} (best validation epoch {trainer.best['epoch']})",
             f"training time: {seconds:.1f} s", "", "test metrics:"]
    lines += [f"  {k}: {v:.4f}" for k, v in test.items()]
    if getattr(task, "last_report", {}).get("text"):
        lines += ["", task.last_report["text"]]
    report = io.atomic_write_text(out / "report.txt", "\n".join(lines) + "\n")
    _out("", "test " + "  ".join(f"{k} {v:.4f}" for k, v in test.items()),
         f"model:  {model_path}", f"config: {out / 'config.json'}",
         f"log:    {out / 'log.csv'} (and log.json)", f"report: {report}")
    for what, path in files.items():
        _out(f"{what}: {path}")
    return 0


def _split_sizes(task):
    """Records per split of a loaded task (``{"train": n, ...}``), where it keeps them."""
    sizes = dict((task.state() or {}).get("sizes") or {})
    for split, recs in (getattr(task, "records", None) or {}).items():
        sizes.setdefault(split, len(recs))
    return {k: int(v) for k, v in sizes.items() if isinstance(v, int)}


# ------------------------------------------------------------------------------ use

def _load(model_path):
    from .tasks.base import load_trained

    return load_trained(model_path)


def _add_evaluate(sub):
    p = sub.add_parser("evaluate", help="metrics of a trained model on data",
                       description="Print one `name: value` line per metric (fractions, not "
                                   "percents) of MODEL on the data at --data.")
    p.add_argument("model", help="model directory (the --out of train) or .npz file")
    p.add_argument("--data", required=True, help="data file or directory, as for train")
    return p


def fingerprint(path, files=None):
    """sha256 of a file's bytes, or of the names and bytes of a directory's data files
    (documentation such as SOURCE.md and hidden files are left out; ``files``: only these
    files of the directory, as a task that reads part of a folder gives them)."""
    import hashlib

    h = hashlib.sha256()
    path = Path(path)
    files = sorted(map(Path, files)) if files else [path] if path.is_file() else sorted(
        p for p in path.rglob("*")
        if p.is_file() and p.suffix != ".md" and not p.name.startswith("."))
    for f in files:
        h.update(f.relative_to(path).as_posix().encode() if f != path else b"")
        h.update(f.read_bytes())
    return h.hexdigest()


def _file_hashes(path, files=None):
    """``{relative name: sha256}`` of each data file of ``path`` (as :func:`fingerprint`
    walks it; a file's own name for a single file)."""
    import hashlib

    path = Path(path)
    if files:
        return {Path(f).relative_to(path).as_posix(): hashlib.sha256(Path(f).read_bytes())
                .hexdigest() for f in sorted(map(Path, files))}
    if path.is_file():
        return {path.name: hashlib.sha256(path.read_bytes()).hexdigest()}
    return {f.relative_to(path).as_posix(): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(path.rglob("*"))
            if f.is_file() and f.suffix != ".md" and not f.name.startswith(".")}


def record_hashes(task, split):
    """(N,) uint64 hashes of the input of each record of ``split`` (empty for tasks that
    keep no per-record inputs, such as one long text or series)."""
    import hashlib

    import numpy as np

    recs = (getattr(task, "records", None) or {}).get(split) or []
    out = np.empty(len(recs), dtype=np.uint64)
    for i, r in enumerate(recs):
        a = np.ascontiguousarray(r)
        h = hashlib.blake2b(f"{a.dtype.str}{a.shape}".encode(), digest_size=8)
        h.update(a.tobytes())
        out[i] = int.from_bytes(h.digest(), "little")
    return out


def _drop_seen(task, split, seen):
    """Remove from ``split`` the records whose input the model was trained on; returns
    (records before, records dropped)."""
    import numpy as np

    n = len((getattr(task, "records", None) or {}).get(split) or [])
    if not n or seen is None or not len(seen):
        return n, 0
    keep = ~np.isin(record_hashes(task, split), seen)
    if keep.all():
        return n, 0
    idx = np.flatnonzero(keep)
    task.records[split] = [task.records[split][i] for i in idx]
    labels = task.labels[split]
    task.labels[split] = (labels[idx] if isinstance(labels, np.ndarray)
                          else [labels[i] for i in idx])
    sents = getattr(task, "sents", None)
    if isinstance(sents, dict) and split in sents:
        sents[split] = [sents[split][i] for i in idx]
    return n, n - len(idx)


def _run_evaluate(args):
    model, meta, task = _load(args.model)
    extra = meta.get("extra") or {}
    data = type(task).resolve_data(args.data)
    if data.exists() and fingerprint(data) == extra.get("data_sha256"):
        # the training data: rebuild the same split (same seed) and score its held-out test
        # part only, so that records seen in training do not inflate the figures
        task = type(task)(meta["config"])
        task.load(str(data))
        n = len((getattr(task, "records", None) or {}).get("test") or [])
        what = f" ({n} records)" if n else ""
        _err(f"{args.data} is this model's training data: metrics on its held-out test "
             f"split{what} only")
        split = "test"
    else:
        task.load_eval(str(data))
        split = "eval"
        seen = (meta.get("extra_arrays") or {}).get("train_records")
        n, dropped = _drop_seen(task, split, seen)
        ours = set((extra.get("data_files") or {}).values())
        if dropped == n and n:
            raise ValueError(f"{args.data}: all {n} records were in this model's training "
                             "split; evaluate on data it has not seen")
        if dropped:
            _err(f"{args.data}: {dropped} of its {n} records were in this model's training "
                 f"split; metrics on the other {n - dropped} only")
        elif (seen is None or not len(seen)) and ours & set(_file_hashes(data).values()):
            # no record hashes (one long text or series): a file of the training data
            _err(f"warning: {args.data} holds data this model was trained on; these "
                 "figures include training data and overstate the model: evaluate on "
                 "held-out data")
        elif n:
            _err(f"{args.data}: metrics on all its {n} records")
    scores = task.evaluate(model, split)
    _check_finite(scores, str(args.data))
    for k, v in scores.items():
        _out(f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}")
    return 0


def _check_finite(metrics, what):
    """A NaN or infinite metric is an error, not a figure."""
    import math

    bad = {k: v for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v)}
    if bad:
        shown = ", ".join(f"{k} {v}" for k, v in bad.items())
        raise ValueError(f"the metrics on {what} are not finite ({shown}); the data may hold "
                         "values too large for the model's arithmetic (rescale them), or the "
                         "model diverged (train again with a lower --lr)")


def _add_predict(sub):
    p = sub.add_parser("predict", help="classify inputs with a trained model",
                       description="Print the top classes with their probabilities for each "
                                   "INPUT (e.g. `unrolled predict runs/names Dostoevsky`).")
    p.add_argument("model", help="model directory or .npz file")
    p.add_argument("inputs", nargs="+", help="inputs (names for the names task)")
    p.add_argument("--top", type=int, default=3, help="classes shown per input (default 3)")
    return p


def _run_predict(args):
    if args.top < 1:
        raise ValueError(f"--top must be at least 1 (the classes shown per input), got "
                         f"{args.top}")
    model, _, task = _load(args.model)
    lines = task.predict(model, args.inputs, top=args.top)
    for note in getattr(task, "notes", None) or []:
        _err(note)
    _out(*lines)
    return 0


def _add_generate(sub):
    p = sub.add_parser("generate", help="sample text from a trained language model",
                       description="Sample characters one at a time from a `text` model.")
    p.add_argument("model", help="model directory or .npz file")
    p.add_argument("--length", type=int, default=500, help="characters to sample (default 500)")
    p.add_argument("--temperature", type=float, default=1.0,
                   help="softmax temperature; lower is more conservative (default 1.0)")
    p.add_argument("--prime", default="", help="text to start from (default: none)")
    p.add_argument("--top-k", type=int, default=None, help="sample among the k likeliest only")
    p.add_argument("--seed", type=int, default=None, help="seed of the sampler")
    p.add_argument("--tunes", type=int, default=None,
                   help="folk models: sample N whole tunes into --out (.abc, .mid, index.html)")
    p.add_argument("--out", default=None, help="folder for --tunes")
    p.add_argument("--check", action="store_true",
                   help="with --tunes: judge the tunes (parse, bar lengths, novelty) beside "
                        "30 held-out real tunes; writes checks.txt and checks.json")
    return p


def _run_generate(args):
    model, _, task = _load(args.model)
    if args.tunes is not None or args.out is not None or args.check:
        return _generate_tunes(args, model, task)
    if args.length < 1:
        raise ValueError(f"--length must be at least 1, got {args.length}")
    if not args.temperature > 0:
        raise ValueError(f"--temperature must be > 0, got {args.temperature}")
    text = task.generate(model, length=args.length, temperature=args.temperature,
                         prime=args.prime, top_k=args.top_k, seed=args.seed, progress=True)
    _out(text)
    return 0


def _generate_tunes(args, model, task):
    if not hasattr(task, "sample_tunes"):
        raise ValueError(f"--tunes needs a model trained by `unrolled train folk`, not "
                         f"{task.name!r}; drop --tunes/--out/--check")
    if args.tunes is None or args.tunes < 1 or args.out is None:
        raise ValueError("pass --tunes N (at least 1) and --out DIR, e.g. "
                         "`unrolled generate MODEL --tunes 30 --out tunes`")
    if not args.temperature > 0:
        raise ValueError(f"--temperature must be > 0, got {args.temperature}")
    from .tasks.folk import write_tunes

    rows, lines = write_tunes(task, model, args.tunes, args.out, args.temperature, args.seed,
                              args.check, log=_out)
    midi = sum(r["midi"] is not None for r in rows)
    _out(f"{len(rows)} tunes in {args.out}: tune_NNN.abc, {midi} MIDI files, index.html",
         *lines[:2])
    return 0


def _add_info(sub):
    p = sub.add_parser("info", help="describe a saved model",
                       description="Print the format, task, architecture, parameter count, "
                                   "training config and test metrics of a saved model.")
    p.add_argument("model", help="model directory or .npz file")
    p.add_argument("--batch-size", type=int, default=None,
                   help="batch size for the memory plan (default: the training batch size)")
    p.add_argument("--steps", type=int, default=100,
                   help="time steps for the memory plan (default: 100)")
    return p


def _memory_line(model, B, T):
    """The planner's bytes for one training update of the model's recurrent layers."""
    from .layers import Recurrent, Sequential
    from .memory import plan_memory

    layers = model.layers if isinstance(model, Sequential) else [model]
    if not any(isinstance(ly, Recurrent) for ly in layers):
        return None
    return f"memory of one training update: {plan_memory(model, B, T)}"


def _run_info(args):
    from . import io
    from .config import format_config

    path = io.resolve_model_path(args.model)
    model, meta = io.load_model(path)
    cfg, st, extra = meta.get("config", {}), meta.get("task_state", {}), meta.get("extra", {})
    lines = [(f"file: {path} ({path.stat().st_size} bytes, {meta['format']} version "
              f"{meta['version']})"), f"task: {cfg.get('task', '-')}",
             f"parameters: {model.num_params()}", "architecture:"]
    lines += ["  " + line for line in repr(model).splitlines()]
    if callable(getattr(model, "summary", None)):
        lines += ["  " + line for line in str(model.summary()).splitlines()]
    if st.get("classes"):
        lines.append(f"classes ({len(st['classes'])}): {', '.join(st['classes'])}")
    if st.get("vocab"):
        lines.append(f"vocabulary: {len(st['vocab']['symbols'])} symbols")
    if extra.get("test"):
        lines.append("test metrics: " + "  ".join(f"{k} {v:.4f}"
                                                  for k, v in extra["test"].items()))
    if extra.get("history"):
        lines.append(f"epochs trained: {len(extra['history'])} (best {extra.get('best_epoch')}), "
                     f"{extra.get('train_seconds')} s")
    mem = _memory_line(model, args.batch_size or int(cfg.get("batch_size", 32)), args.steps)
    if mem:
        lines.append(mem)
    if cfg:
        lines += ["config:"] + ["  " + line for line in format_config(cfg).splitlines()]
    _out(*lines)
    return 0


register_command("train", _add_train, None)  # train parses its own --key value options
register_command("evaluate", _add_evaluate, _run_evaluate)
register_command("predict", _add_predict, _run_predict)
register_command("generate", _add_generate, _run_generate)
register_command("info", _add_info, _run_info)


# ------------------------------------------------------------------------------ main

def build_parser():
    for mod in PLUGINS:
        try:
            importlib.import_module(mod)
        except ImportError:
            pass
    parser = _Parser(prog="unrolled", description="Recurrent neural networks from plain "
                     "matrices: train, evaluate and use models from the command line.")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"unrolled {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for add, _ in COMMANDS.values():
        add(sub)
    return parser


def main(argv=None):
    """Entry point of the ``unrolled`` command; returns the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    try:
        if argv and argv[0] == "train":
            known, extra = _split_train_args(argv)
            args = parser.parse_args(known)
        else:
            args, extra = parser.parse_args(argv), []
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 2
    if args.command is None:
        parser.print_help()
        return 0
    limit_blas_threads()
    reuse_freed_memory()
    try:
        if args.command == "train":
            return _run_train(args, extra)
        return COMMANDS[args.command][1](args) or 0
    except KeyboardInterrupt:
        _err("interrupted")
        return 130
    except BrokenPipeError:  # e.g. `unrolled info MODEL | head`
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - stays open until exit
        return 0
    except (ValueError, TypeError, OSError) as e:
        if os.environ.get("UNROLLED_DEBUG"):
            raise
        _err(f"unrolled {args.command}: error: {_one_line(e)}")
        return 2
    except MemoryError:
        if os.environ.get("UNROLLED_DEBUG"):
            raise
        _err(f"unrolled {args.command}: error: out of memory; use a smaller --batch-size "
             "(or a smaller model)")
        return 2
    except Exception as e:  # a bug: still one line, and how to see and report it
        if os.environ.get("UNROLLED_DEBUG"):
            raise
        _err(f"unrolled {args.command}: internal error ({type(e).__name__}: {_one_line(e)}); "
             "run again with UNROLLED_DEBUG=1 to see the traceback, and report it")
        return 1


def _one_line(e):
    """The message of an exception on one line (an OSError as 'file: reason')."""
    if isinstance(e, OSError) and e.strerror:
        msg = e.strerror if e.filename is None else f"{e.filename}: {e.strerror}"
    else:
        msg = str(e)
    return " ".join(msg.split())


if __name__ == "__main__":
    # run the imported module's main, so that plugins register into the same COMMANDS
    from unrolled.cli import main as _main

    sys.exit(_main())
