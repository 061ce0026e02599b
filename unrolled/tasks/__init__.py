"""The task registry: ``unrolled train TASK`` looks the task up here by name.

Each task lives in its own module (``unrolled.tasks.<name>``) and defines one subclass of
:class:`unrolled.tasks.base.Task`. Modules are imported lazily, so a task whose module is
missing or broken does not stop the others from working.
"""
import importlib

from .base import Batch, Task, stratified_split

# task name -> "module:Class"; the default task comes first
REGISTRY = {
    "names": "unrolled.tasks.names:NamesTask",
    "text": "unrolled.tasks.text:TextTask",
    "series": "unrolled.tasks.series:SeriesTask",
    "digits": "unrolled.tasks.digits:DigitsTask",
    "tagging": "unrolled.tasks.tagging:TaggingTask",
    "ctf": "unrolled.tasks.ctf:CTFTask",
    "g2p": "unrolled.tasks.g2p:G2PTask",
    "imported": "unrolled.tasks.imported:ImportedTask",
    "folk": "unrolled.tasks.folk:FolkTask",
}

DEFAULT_TASK = "names"


def get_task(name):
    """The Task subclass registered under ``name``; ValueError if unknown or missing."""
    if name not in REGISTRY:
        raise ValueError(f"unknown task {name!r}; choose one of: {', '.join(REGISTRY)}")
    module, cls = REGISTRY[name].split(":")
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        raise ValueError(f"task {name!r} is not available in this installation ({e}); "
                         "reinstall unrolled") from None
    return getattr(mod, cls)


def available_tasks():
    """Names of the tasks whose module imports."""
    out = []
    for name in REGISTRY:
        try:
            get_task(name)
        except ValueError:
            continue
        out.append(name)
    return out


__all__ = ["DEFAULT_TASK", "REGISTRY", "Batch", "Task", "available_tasks", "get_task",
           "stratified_split"]
