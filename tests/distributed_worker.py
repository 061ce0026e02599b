"""One training run for tests/test_distributed.py, in one process or on every rank of
``mpiexec -n N``: ``python distributed_worker.py SPEC.json``.

SPEC keys: ``task`` ("names", "text", or another task, whose own model is trained), ``data``, ``out`` (npz of the final parameters
and the history, written by rank 0), ``options`` (config overrides), ``dtype``,
``distributed`` (bool), ``run_dir`` (checkpoints), ``resume``, ``stop_at`` (interrupt at
that step, as Ctrl-C does), ``fail_at`` / ``kill_at`` / ``perturb_at`` with ``fail_rank``
(raise, SIGKILL, or change a weight on that rank at that step), ``lag`` (seconds that
rank sleeps after every second step), ``check_every``.
"""
import json
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np

from unrolled import layers as L
from unrolled.config import resolve_config
from unrolled.tasks import get_task
from unrolled.tasks.base import recurrent_class
from unrolled.tasks.text import build_char_model
from unrolled.train import Callback, Trainer
from unrolled.tree import tree_flatten


def names_model(task, dtype):
    """The names task's model (as NamesTask.build_model) in ``dtype``."""
    cfg = task.config
    seeds = np.random.SeedSequence([int(cfg["seed"]), 2]).generate_state(5)
    V, E, H, p = len(task.vocab), cfg["embed"], cfg["hidden"], cfg["dropout"]
    rnn = recurrent_class(cfg["cell"])(E, H, num_layers=cfg["layers"],
                                       bidirectional=cfg["bidirectional"], dropout=p,
                                       return_sequences=False, seed=int(seeds[1]),
                                       dtype=dtype)
    drop = [L.Dropout(p, seed=int(seeds[3])), L.Dropout(p, seed=int(seeds[4]))] if p else []
    return L.Sequential([L.Embedding(V, E, seed=int(seeds[0]), dtype=dtype), *drop[:1], rnn,
                         *drop[1:], L.Dense(rnn.output_size, len(task.classes),
                                            seed=int(seeds[2]), dtype=dtype)])


def text_model(task, dtype):
    c = task.config
    return build_char_model(len(task.vocab), c["embed"], c["hidden"], c["layers"],
                            c["dropout"], seed=c["seed"], dtype=dtype)


class Events(Callback):
    def __init__(self, spec, rank):
        self.spec, self.rank = spec, rank

    def on_batch_end(self, trainer, batch, logs):
        s = self.spec
        if batch == s.get("stop_at"):
            trainer._interrupted = True
        if self.rank == s.get("fail_rank", 1):
            if batch % 2 == 0:  # a rank whose clock runs ahead of rank 0's, unevenly
                time.sleep(s.get("lag", 0))
            if batch == s.get("perturb_at"):  # a rank drifting from the others
                next(iter(tree_flatten(trainer.model.params).values())).flat[0] += 1e-6
            if batch == s.get("fail_at"):
                raise RuntimeError(f"failure injected at step {batch}")
            if batch == s.get("kill_at"):
                os.kill(os.getpid(), signal.SIGKILL)


def main(spec):
    from unrolled.backend import limit_blas_threads

    limit_blas_threads()
    rank = 0
    if spec.get("distributed"):
        from unrolled.distributed import init

        rank = init().rank
    T = get_task(spec["task"])
    cfg = resolve_config(T, overrides={k: str(v) for k, v in spec["options"].items()})
    task = T(cfg)
    task.load(spec["data"])
    build = {"names": names_model, "text": text_model}.get(spec["task"])
    model = build(task, spec.get("dtype", "float64")) if build else None  # the task's own
    trainer = Trainer(task, cfg, out_dir=spec.get("run_dir"), log=lambda m: None, model=model,
                      callbacks=[Events(spec, rank)], distributed=spec.get("distributed"))
    if "check_every" in spec:
        trainer.check_every = spec["check_every"]
    saved_at = []  # the steps at which this rank took part in a checkpoint
    save = trainer.save_checkpoint
    trainer.save_checkpoint = lambda path=None: (saved_at.append(trainer.step), save(path))[1]
    start = {"init:" + k: np.array(v) for k, v in tree_flatten(trainer.model.params).items()}
    try:
        trainer.fit(resume=spec.get("resume", False))
    except KeyboardInterrupt:
        return 130
    finally:
        if spec.get("run_dir"):
            Path(spec["run_dir"], f"saved-at-{rank}.json").write_text(json.dumps(saved_at))
    if rank == 0:
        from threadpoolctl import threadpool_info

        arrays = {k: np.asarray(v) for k, v in tree_flatten(trainer.model.params).items()}
        threads = min(p["num_threads"] for p in threadpool_info())
        np.savez(spec["out"], history=json.dumps(trainer.history.rows), threads=threads,
                 **arrays, **start)
    return 0


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        sys.exit(main(json.load(f)))
