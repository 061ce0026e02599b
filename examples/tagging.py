"""Tagging with a bidirectional LSTM on a real corpus: entities (BIO spans) and parts of
speech of the Japanese news sentences shipped by the PyPI package ``hironsancorpus``.

    pip install hironsancorpus
    OPENBLAS_NUM_THREADS=1 python examples/tagging.py [--seeds 3] [--epochs 30]

For each tag set and seed: train with the ``tagging`` task's defaults (the same as
``unrolled train tagging``), keep the best validation epoch, and report per-token
accuracy and (for entities) span precision / recall / F1 on the held-out test sentences,
next to the baseline that tags each word with its most frequent training tag. The split
(80/10/10 by sentence) follows the seed, so the spread over seeds includes the split.
"""
import argparse

import numpy as np

from unrolled.backend import limit_blas_threads
from unrolled.config import resolve_config
from unrolled.tasks.tagging import TaggingTask, span_prf_by_type
from unrolled.train import Trainer


def run(tag_column, seed, epochs):
    cfg = resolve_config(TaggingTask, None, {"tag_column": tag_column, "seed": seed,
                                             "epochs": epochs, "progress": False})
    task = TaggingTask(cfg)
    task.load("hironsancorpus")
    trainer = Trainer(task, cfg, log=lambda m: None)
    trainer.fit()
    return task, trainer.model, task.evaluate(trainer.model, "test"), task.baseline("test")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=30)
    a = ap.parse_args()
    limit_blas_threads()
    by_type = {}
    for label, col in (("entities (IOB2)", -1), ("parts of speech", 2)):
        rows, base = [], []
        for seed in range(a.seeds):
            task, model, res, b = run(col, seed, a.epochs)
            rows.append(res)
            base.append(b)
            if col == -1 and seed == 0:
                print(task.describe()[0])
                pred, _ = task.predict_ids(model, "test")
                by_type = span_prf_by_type([t for _, t in task.sents["test"]],
                                           [[task.tags[i] for i in p] for p in pred])
            if col == 2 and seed == 0:
                print(task.describe()[0])
        for key in rows[0]:
            if key == "loss":
                continue
            v = np.array([r[key] for r in rows])
            bv = np.array([r[key] for r in base])
            print(f"{label:<16} {key:<15} BiLSTM {v.mean():.3f} ± {v.std():.3f}   "
                  f"most-frequent-tag baseline {bv.mean():.3f} ± {bv.std():.3f}")
    print("entity spans by type (seed 0; precision, recall, F1, true spans in test):")
    for k, (p, r, f, n) in by_type.items():
        print(f"  {k:<4} P {p:.2f}  R {r:.2f}  F1 {f:.2f}  n={n}")


if __name__ == "__main__":
    main()
