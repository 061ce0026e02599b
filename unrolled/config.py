"""One source of defaults: the trainer's options, merged with a task's, a TOML file and
``--key value`` pairs into the resolved config that is printed and saved with the model.

Order of precedence (later wins)::

    TRAIN_DEFAULTS  <  Task.defaults  <  TOML file (--config)  <  --key value

A key that is in neither defaults dict is an error, and a value keeps the type of its
default (``"3"`` becomes 3 for an int option); a ``None`` default takes any value.
"""
import json
import tomllib
from pathlib import Path

# The trainer's options; a task may override any of them in its own ``defaults``.
TRAIN_DEFAULTS = {
    "seed": 0,               # one seed for the split, the initialisation, shuffling, dropout
    "epochs": 10,
    "batch_size": 32,
    "optimizer": "adam",     # sgd | adagrad | rmsprop | adam | adamw
    "lr": 3e-3,
    "weight_decay": 0.0,
    "clip": 5.0,             # max global gradient norm; 0 turns clipping off
    "schedule": "constant",  # constant | cosine (to 0 over all steps) | step
    "step_epochs": 5,        # schedule "step": epochs between decays ...
    "gamma": 0.5,            # ... and the factor of each decay
    "warmup": 0,             # steps of linear warm-up before the schedule
    "patience": 5,           # epochs without improvement before stopping; 0 = never stop
    "min_delta": 0.0,        # smallest change of the monitored metric that counts
    "restore_best": True,    # keep the weights of the best validation epoch at the end
    "monitor": "",           # validation metric for early stopping ("": the task's choice)
    "max_batches": 0,        # batches per epoch at most (0: all of them)
    "checkpoint_every": 50,  # batches between checkpoints (0: only at the end of epochs)
    "checkpoint_seconds": 0.0,  # also checkpoint when this many seconds passed (0: off)
    "progress": True,        # show a progress bar
}

TRAIN_HELP = {
    "seed": "seed for the split, the initialisation, the shuffling and dropout",
    "epochs": "passes over the training data",
    "batch_size": "records per minibatch",
    "optimizer": "sgd, adagrad, rmsprop, adam or adamw",
    "lr": "learning rate",
    "weight_decay": "L2 penalty (decoupled for adamw)",
    "clip": "largest global gradient norm; 0 turns clipping off",
    "schedule": "learning-rate schedule: constant, cosine or step",
    "step_epochs": "schedule step: epochs between two decays",
    "gamma": "schedule step: factor of each decay",
    "warmup": "steps of linear learning-rate warm-up",
    "patience": "epochs without improvement before early stopping; 0: never stop early",
    "min_delta": "smallest improvement of the monitored metric that counts",
    "restore_best": "end with the weights of the best validation epoch",
    "monitor": "validation metric watched by early stopping and restore_best, e.g. loss or "
               "accuracy; empty: the task's choice",
    "max_batches": "at most this many batches per epoch (0: all)",
    "checkpoint_every": "batches between checkpoints (0: only at epoch ends)",
    "checkpoint_seconds": "also checkpoint in an epoch once this many seconds passed since "
                          "the last checkpoint (0: off); with --checkpoint-every 0, by time "
                          "only, epoch ends included (the last one is always saved)",
    "progress": "show a progress bar",
}


def defaults_for(task_cls):
    """The defaults of a task: the trainer's, overridden and extended by the task's."""
    out = dict(TRAIN_DEFAULTS)
    out.update(task_cls.defaults)
    out.setdefault("data", None)
    return out


def parse_value(key, text, default):
    """Turn the command-line string ``text`` into the type of ``default``."""
    if not isinstance(text, str):
        return check_type(key, text, default)
    if key == "data":  # a path: "2024" or "true" is a directory name, never JSON
        return text
    if isinstance(default, bool):
        low = text.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"--{key} takes true or false, got {text!r}")
    if isinstance(default, int):
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"--{key} takes an integer, got {text!r}") from None
    if isinstance(default, float):
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"--{key} takes a number, got {text!r}") from None
    if isinstance(default, (list, tuple)):
        return [s.strip() for s in text.split(",") if s.strip()]
    if default is None:
        if text.lower() in ("none", "null"):
            return None
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text
    return text


def check_type(key, value, default):
    """A value from a TOML file, checked against the type of its default."""
    if default is None or value is None:
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValueError(f"option {key!r} takes true or false, got {value!r}")
        return value
    if isinstance(default, float) and isinstance(value, (int, float)) \
            and not isinstance(value, bool):
        return float(value)
    if isinstance(default, int) and isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(default, (list, tuple)) and isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(default, str) and isinstance(value, str):
        return value
    raise ValueError(f"option {key!r} takes a {type(default).__name__}, got {value!r}")


def load_toml(path):
    """The options of a TOML file: top-level keys, or those of a ``[train]`` table."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ValueError(f"{path}: no such config file; check the --config path")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ValueError(f"{path}: the config file is not UTF-8; save it as UTF-8") from None
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path}: not valid TOML ({e}); fix the file") from None
    if isinstance(data.get("train"), dict):
        data = {**{k: v for k, v in data.items() if k != "train"}, **data["train"]}
    return data


def resolve_config(task_cls, file=None, overrides=None):
    """The resolved config of a training run.

    Parameters
    ----------
    task_cls : the Task subclass.
    file : path of a TOML file or None.
    overrides : dict of option -> value (strings from the command line are converted).

    Returns
    -------
    dict with every option of the task and the trainer, plus ``task``.
    """
    defaults = defaults_for(task_cls)
    cfg = dict(defaults)
    sources = []
    if file is not None:
        sources.append(("the config file", load_toml(file)))
    if overrides:
        sources.append(("the command line", overrides))
    for where, values in sources:
        for key, value in values.items():
            k = key.replace("-", "_")
            if k == "task":
                continue
            if k not in defaults:
                close = [d for d in defaults if d.startswith(k[:3])]
                hint = f" (did you mean {', '.join(close)}?)" if close else ""
                raise ValueError(f"unknown option {key!r} in {where} for task "
                                 f"{task_cls.name!r}{hint}; see `unrolled train "
                                 f"{task_cls.name} --help`")
            cfg[k] = parse_value(k, value, defaults[k])
    check_config(cfg)
    cfg["task"] = task_cls.name
    return cfg


def check_config(cfg):
    """Range checks of the trainer's options (one-line errors)."""
    for key in ("epochs", "batch_size"):
        if cfg[key] < 1:
            raise ValueError(f"--{key.replace('_', '-')} must be at least 1, got {cfg[key]}")
    if not cfg["lr"] > 0:
        raise ValueError(f"--lr must be > 0, got {cfg['lr']}")
    if cfg["schedule"] not in ("constant", "cosine", "step"):
        raise ValueError(f"--schedule must be constant, cosine or step, got {cfg['schedule']!r}")
    if cfg["optimizer"] not in ("sgd", "adagrad", "rmsprop", "adam", "adamw"):
        raise ValueError(f"--optimizer must be sgd, adagrad, rmsprop, adam or adamw, got "
                         f"{cfg['optimizer']!r}")
    for key in ("clip", "patience", "warmup", "max_batches", "checkpoint_every",
                "checkpoint_seconds"):
        if cfg.get(key, 0) < 0:
            raise ValueError(f"--{key.replace('_', '-')} must be >= 0, got {cfg[key]}")


def format_config(cfg):
    """The resolved config as aligned ``key = value`` lines (TOML-like)."""
    w = max(len(k) for k in cfg)
    return "\n".join(f"{k:<{w}} = {json.dumps(v)}" for k, v in sorted(cfg.items()))
