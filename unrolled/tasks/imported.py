"""The ``imported`` task: a model brought from another framework by ``unrolled import``.

It has no data reader and trains nothing; it keeps what ``unrolled predict``, ``info``
and ``inspect`` need to feed the model: its vocabulary (symbols in id order) when it
reads characters, else windows of numbers. A character model whose outputs are the
next character's logits over that vocabulary is saved as a ``text`` model instead (and
then also generates and evaluates).
"""
import numpy as np

from ..data import Vocab
from .base import Task

__all__ = ["ImportedTask"]


class ImportedTask(Task):
    name = "imported"
    summary = "a model read by `unrolled import` (predict, info, inspect)"
    trainable = False  # left out of `unrolled train --help`

    def __init__(self, config, state=None):
        super().__init__(config, state)
        state = state or {}
        self.vocab = Vocab.from_dict(state["vocab"]) if state.get("vocab") else None
        self.loss = config.get("loss", "mse")
        self.source = state.get("source") or {}

    def load(self, path):
        raise ValueError("an imported model is not trained by `unrolled train`; train it in "
                         "its own framework, or train a new model with another task")

    def load_eval(self, path):
        raise ValueError("an imported model has no data reader, so `unrolled evaluate` has "
                         "no metrics for it; import a character model with --vocab and a last "
                         "layer of one logit per symbol (it is then a text model), or evaluate "
                         "it from Python")

    def state(self):
        return {"vocab": self.vocab.to_dict() if self.vocab else None, "source": self.source}

    def encode(self, text):
        """Characters -> ids with the vocabulary; without one, the text is not a record
        here (inspect then reads a window of numbers)."""
        if self.vocab is None:
            raise NotImplementedError
        from .text import encode_prime

        return encode_prime(self.vocab, text)

    def predict(self, model, inputs, top=3):
        from ..inspect.report import record_from_input

        lines = []
        for text in inputs:
            rec = record_from_input(self, text, model)[0]
            out = np.asarray(model(rec[None]))[0]
            last = out[-1] if out.ndim == 2 else out
            shown = ", ".join(f"{v:.4g}" for v in last[:8])
            more = f", ... ({last.size} values)" if last.size > 8 else ""
            lines.append(f"{text!r} -> output at the last step: [{shown}{more}]")
        return lines
