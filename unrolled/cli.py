"""The ``unrolled`` command: train, evaluate, predict, generate and describe models.

    unrolled train [TASK] [--data PATH] [--out DIR] [--epochs N] [--seed N]
                   [--config FILE.toml] [--resume] [--key value ...]
    unrolled evaluate MODEL --data PATH
    unrolled predict MODEL INPUT [INPUT ...] [--top K]
    unrolled generate MODEL [--length N] [--temperature T] [--prime TEXT] [--top-k K]
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
PLUGINS = ["unrolled.inspect.cli"]


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
        lines.append("")
        lines.append(f"task {name}: {cls.summary}")
        lines.append(f"  data default: bundled {cls.default_data!r}" if cls.default_data
                     else "  data: --data is required")
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
_TRAIN_BOOL_FLAGS = {"--resume", "--quiet", "--help", "-h"}


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


def _run_train(args, extra):
    from .distributed import command

    with command("train") as mpi:  # under mpiexec: data-parallel, rank 0 writes
        return _train(args, extra, mpi)


def _train(args, extra, mpi=None):
    from . import io
    from .config import format_config, resolve_config
    from .data import bundled_path
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
        if not args.out:
            raise ValueError("--resume needs --out DIR, the directory of the run to continue")
        ckpt = Path(args.out) / "checkpoint.npz"
        if not ckpt.exists():
            raise ValueError(f"{ckpt}: no checkpoint to resume from; start the run without "
                             "--resume")
        _, meta = io.load_arrays(ckpt, io.CHECKPOINT_FORMAT)
        cfg = dict(meta["config"])
        if cfg.get("task") != task_cls.name:
            raise ValueError(f"{ckpt} is a {cfg.get('task')!r} run, not {task_cls.name!r}; "
                             f"resume with `unrolled train {cfg.get('task')} --out {args.out} "
                             "--resume`")
        given = resolve_config(task_cls, args.config, overrides)
        changed = [k for k in overrides if k not in ("epochs", "progress", "data")
                   and given[k] != cfg.get(k)]
        if changed:
            raise ValueError(f"options {changed} differ from the checkpoint's config; drop "
                             "them to resume, or train into a new --out")
        cfg["epochs"], cfg["progress"] = given["epochs"], given["progress"]
        if args.data and Path(args.data).expanduser().resolve() != Path(cfg["data"]).resolve():
            raise ValueError(f"--data {args.data} is not the data of the run to resume "
                             f"({cfg['data']}); drop --data to resume")
        data = cfg["data"]
    else:
        cfg = resolve_config(task_cls, args.config, overrides)
        if args.data:
            data = args.data
        elif cfg.get("data"):
            data = cfg["data"]
        elif task_cls.default_data:
            data = str(bundled_path(task_cls.default_data))
        else:
            raise ValueError(f"task {task_cls.name!r} has no bundled data; pass --data PATH")
    data = str(Path(data).expanduser())
    cfg["data"] = data
    out = Path(args.out or f"runs/{task_cls.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    if not args.resume and (out / "checkpoint.npz").exists():
        raise ValueError(f"{out} holds a run already; continue it with --resume, or pass "
                         "another --out")

    task = task_cls(cfg)
    task.load(data)  # bad data fails here, before anything is printed or written
    _out(f"unrolled train {task_cls.name}: resolved config", format_config(cfg), "")
    _out(*task.describe())
    out.mkdir(parents=True, exist_ok=True)
    if mpi is None or mpi.root:
        io.atomic_write_text(out / "config.json", json.dumps({"config": cfg}, indent=2) + "\n")
    trainer = Trainer(task, cfg, out_dir=out, log=_out, distributed=mpi is not None)
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

    # -- the model, the report, and where everything went
    if mpi is not None:  # the test split over the ranks; rank 0 writes
        from .distributed import report

        files = report(task, trainer.model, out, mpi)
        if not mpi.root:
            return 0
    else:
        files = task.report(trainer.model, out)
    test = getattr(task, "last_report", {}).get("metrics") or task.evaluate(trainer.model, "test")
    extra = {"history": history.rows, "test": test, "best_epoch": trainer.best["epoch"],
             "train_seconds": round(seconds, 1), "data_sha256": fingerprint(data)}
    model_path = io.save_model(trainer.model, out, config=cfg, task_state=task.state(),
                               extra=extra)
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


def fingerprint(path):
    """sha256 of a file's bytes, or of the names and bytes of a directory's data files
    (documentation such as SOURCE.md and hidden files are left out)."""
    import hashlib

    h = hashlib.sha256()
    path = Path(path)
    files = [path] if path.is_file() else sorted(
        p for p in path.rglob("*")
        if p.is_file() and p.suffix != ".md" and not p.name.startswith("."))
    for f in files:
        h.update(f.relative_to(path).as_posix().encode() if f != path else b"")
        h.update(f.read_bytes())
    return h.hexdigest()


def _run_evaluate(args):
    model, meta, task = _load(args.model)
    data = Path(args.data).expanduser()
    split = "eval"
    if data.exists() and fingerprint(data) == (meta.get("extra") or {}).get("data_sha256"):
        # the training data: rebuild the same split (same seed) and score its held-out test
        # part only, so that names seen in training do not inflate the figures
        task = type(task)(meta["config"])
        task.load(str(data))
        split = "test"
        _err(f"{data} is the training data: metrics on its held-out test split")
    else:
        task.load_eval(str(data))
    for k, v in task.evaluate(model, split).items():
        _out(f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}")
    return 0


def _add_predict(sub):
    p = sub.add_parser("predict", help="classify inputs with a trained model",
                       description="Print the top classes with their probabilities for each "
                                   "INPUT (e.g. `unrolled predict runs/names Dostoevsky`).")
    p.add_argument("model", help="model directory or .npz file")
    p.add_argument("inputs", nargs="+", help="inputs (names for the names task)")
    p.add_argument("--top", type=int, default=3, help="classes shown per input (default 3)")
    return p


def _run_predict(args):
    model, _, task = _load(args.model)
    _out(*task.predict(model, args.inputs, top=args.top))
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
    return p


def _run_generate(args):
    model, _, task = _load(args.model)
    if args.length < 1:
        raise ValueError(f"--length must be at least 1, got {args.length}")
    if not args.temperature > 0:
        raise ValueError(f"--temperature must be > 0, got {args.temperature}")
    text = task.generate(model, length=args.length, temperature=args.temperature,
                         prime=args.prime, top_k=args.top_k, seed=args.seed)
    _out(text)
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


def _describe_spec(spec, indent=""):
    """One line per layer of a saved architecture."""
    if spec.get("layer") == "Sequential":
        out = []
        for i, sub in enumerate(spec["layers"]):
            out += _describe_spec(sub, f"{indent}{i}: ")
        return out
    args = ", ".join(f"{k}={v!r}" for k, v in spec.items() if k != "layer")
    return [f"{indent}{spec['layer']}({args})"]


def _run_info(args):
    from . import io
    from .config import format_config

    path = io.resolve_model_path(args.model)
    model, meta = io.load_model(path)
    cfg, st, extra = meta.get("config", {}), meta.get("task_state", {}), meta.get("extra", {})
    lines = [(f"file: {path} ({path.stat().st_size} bytes, {meta['format']} version "
              f"{meta['version']})"), f"task: {cfg.get('task', '-')}",
             f"parameters: {model.num_params()}", "architecture:"]
    lines += ["  " + line for line in _describe_spec(meta["architecture"])]
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
        msg = " ".join(str(e).split("\n"))
        _err(f"unrolled {args.command}: error: {msg}")
        return 2


if __name__ == "__main__":
    # run the imported module's main, so that plugins register into the same COMMANDS
    from unrolled.cli import main as _main

    sys.exit(_main())
