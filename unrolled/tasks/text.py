"""The ``text`` task: a character-level language model on any UTF-8 text file.

Embedding -> LSTM -> Dense over the characters of one long text, trained with truncated
BPTT over ``batch_size`` parallel streams: the text is cut into that many contiguous
streams, each chunk of ``chunk`` steps continues every stream where the previous chunk
stopped, and the final state of one chunk is the initial state of the next (the trainer
carries it, ``stateful = True``). The gradient reaches back ``chunk`` steps.

TBPTT(k1, k2) (Williams & Peng 1990): ``k1`` new characters per update (default: the
chunk) and a gradient reaching back ``k2 >= k1`` steps (default: k1). With ``k2 > k1``
every batch is a window of the last ``k2`` steps: the ``k2 - k1`` steps before the
chunk, already scored by the previous update, are read again from the text with the
current weights, from the state carried at their start, and masked out of the loss
(:func:`tbptt_window`). The semantics are those of :class:`unrolled.streams.TBPTT`.
Because the repeated inputs come from the text, the carried state is all a checkpoint
needs: resuming stays bit-exact.

Splits are contiguous: the last ``test_fraction`` of the file is the held-out test text
(by default the last 10 %), the first ``val_fraction`` validates, and the text between
them trains, so that training runs right up to the test text. The vocabulary is every character of the file, so held-out text can always be
encoded; nothing else is learned from the held-out parts.

Plain functions (usable without the trainer): :func:`build_char_model`,
:func:`split_text`, :func:`stream_loss` (held-out loss with the state carried across
chunks) and :func:`sample` (generation with temperature, top-k and a prime).
"""
import math
from typing import ClassVar

import numpy as np

from ..data import Vocab, read_text, stream_batches
from ..layers import LSTM, Dense, Embedding, Sequential
from ..losses import log_softmax
from .base import Batch, Task

__all__ = ["TextTask", "build_char_model", "chunk_xy", "encode_prime", "sample", "split_text",
           "stream_loss", "tbptt_window"]


# ------------------------------------------------------------------------ plain functions

def build_char_model(vocab_size, embedding_size=32, hidden_size=256, num_layers=1,
                     dropout=0.0, seed=0, dtype="float32", cell="lstm", weight_drop=0.0,
                     recurrent_dropout=0.0, embed_dropout=0.0, ar=0.0, tar=0.0):
    """Embedding(V, E) -> recurrent(E, H, num_layers) -> Dense(H, V), logits at every step.

    ``cell``: the recurrent layer (``lstm`` by default, or any registered cell, e.g.
    ``mingru``, ``qrnn``). An AWD-style LSTM (Merity et al. 2018) is ``weight_drop``
    (DropConnect on W_hh), ``recurrent_dropout`` (one mask per sequence on h_(t-1)),
    ``embed_dropout`` (whole rows of the embedding table) and ``ar``/``tar`` (activation
    and temporal activation regularisation of the recurrent outputs, an
    :class:`~unrolled.layers.ActivationRegularization` layer, present only when used).

    Returns a :class:`unrolled.layers.Sequential`; input (B, T) int ids, output
    (B, T, V) logits of the next character.
    """
    from ..layers import ActivationRegularization
    from .base import recurrent_class

    opts = {k: v for k, v in (("weight_drop", weight_drop),
                              ("recurrent_dropout", recurrent_dropout)) if v}
    layers = [Embedding(vocab_size, embedding_size, dtype=dtype, seed=seed,
                        dropout=embed_dropout),
              recurrent_class(cell)(embedding_size, hidden_size, num_layers=num_layers,
                                    dropout=dropout, dtype=dtype, seed=seed + 1, **opts)]
    if ar or tar:
        layers.append(ActivationRegularization(ar, tar))
    layers.append(Dense(hidden_size, vocab_size, dtype=dtype, seed=seed + 2))
    return Sequential(*layers)


def split_text(n, val_fraction, test_fraction):
    """Contiguous split points of a text of ``n`` characters.

    The test text is the end; the validation text is the start, so that the training
    text runs right up to the test text (a long text changes as it goes: in
    tinyshakespeare the last plays bring new speakers, whom a model trained up to the
    test text has met).

    Returns ``(a, b)``: val is ``[0, a)``, train ``[a, b)``, test ``[b, n)``.
    """
    for name, f in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 <= f < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be in [0, 1), got {f}")
    if val_fraction + test_fraction >= 0.9:
        raise ValueError("--val-fraction + --test-fraction must leave at least 10 % of the "
                         "text for training; lower them")
    b = n - round(n * test_fraction)
    a = round(n * val_fraction)
    return a, b


def stream_loss(model, ids, streams=16, chunk=256):
    """Mean next-character cross-entropy (nats) of ``model`` over the text ``ids``.

    The text is read as ``streams`` contiguous parallel streams (state carried from chunk
    to chunk, like training), so each character except the first of a stream is
    predicted from everything before it in its stream.

    Parameters
    ----------
    model : Sequential, (B, T) ids -> (B, T, V) logits.
    ids : (N,) int ids.

    Returns
    -------
    dict with ``loss`` (nats per character), ``bits_per_char``, ``accuracy`` (of the
    most likely next character) and ``chars`` (characters predicted).
    """
    ids = np.asarray(ids)
    streams = max(1, min(int(streams), (len(ids) - 1) // 2))
    if len(ids) < 2:
        raise ValueError("the held-out text has fewer than 2 characters; nothing to predict "
                         "(use a longer text or a larger --val-fraction / --test-fraction)")
    total, correct, count, state = 0.0, 0, 0, None
    for X, Y in stream_batches(ids, streams, chunk):
        logits, state = model(X, initial_state=state, return_state=True)  # (B, k, V)
        logp = log_softmax(logits.astype(np.float64))
        total -= float(np.take_along_axis(logp, Y[..., None], -1).sum())
        correct += int((logits.argmax(-1) == Y).sum())
        count += Y.size
    loss = total / count
    return {"loss": loss, "bits_per_char": loss / math.log(2), "accuracy": correct / count,
            "chars": count}


def chunk_xy(streams, i):
    """Chunk ``i`` of a :class:`unrolled.data.batching.StreamBatches`: inputs (B, k) and
    next-character targets (B, k); the last chunk of a pass may be shorter."""
    t = i * streams.chunk
    k = min(streams.chunk, streams.steps - t)
    if k < 1:
        raise ValueError(f"chunk {i} is past the end of the streams ({len(streams)} chunks)")
    X = streams.streams[:, t:t + k]
    Y = streams.streams[:, t + 1:t + k + 1]
    return np.ascontiguousarray(X), np.ascontiguousarray(Y)


def tbptt_window(streams, i, k2):
    """The TBPTT(k1, k2) window of chunk ``i`` (``k1 = streams.chunk``), as
    :class:`unrolled.streams.TBPTT` builds it.

    The window ends with the chunk's ``k`` new steps (``k = k1`` but for a shorter last
    chunk) and starts up to ``k2 - k1`` steps earlier (fewer at the start of the streams).

    Returns
    -------
    X : (B, h + k) inputs, h = min(i k1, k2 - k1) repeated steps then the chunk.
    Y : (B, h + k) next-character targets.
    loss_mask : (B, h + k) bool, True at the chunk's new steps only; None when h = 0.
    carry_at : int, the step of the window where the next window starts (its state is
        the one to carry).
    """
    k1 = streams.chunk
    if k2 < k1:
        raise ValueError(f"--k2 {k2} is smaller than --k1 {k1}; use k2 >= k1")
    t = i * k1
    k = min(k1, streams.steps - t)
    if k < 1:
        raise ValueError(f"chunk {i} is past the end of the streams ({len(streams)} chunks)")
    h = min(t, k2 - k1)
    X = np.ascontiguousarray(streams.streams[:, t - h:t + k])
    Y = np.ascontiguousarray(streams.streams[:, t - h + 1:t + k + 1])
    loss_mask = None
    if h:
        loss_mask = np.zeros(X.shape, dtype=bool)
        loss_mask[:, h:] = True
    # the next window keeps the last k2 - k1 steps (or all of a shorter window)
    carry_at = h + k - min(k2 - k1, h + k)
    return X, Y, loss_mask, carry_at


def encode_prime(vocab, prime):
    """The ids of ``prime``; a ValueError naming every character the model never saw."""
    unknown = sorted({c for c in prime if c not in vocab})
    if unknown:
        shown = ", ".join(repr(c) for c in unknown[:20])
        raise ValueError(f"the prime {prime[:40]!r} has {len(unknown)} character(s) outside "
                         f"the model's vocabulary: {shown}; use only characters of the "
                         "training text")
    return vocab.encode(prime)


def sample(model, vocab, length=500, temperature=1.0, prime="", top_k=None, rng=None,
           progress=False):
    """Generate ``length`` characters after ``prime``, one at a time.

    Parameters
    ----------
    model : Sequential, (B, T) ids -> (B, T, V) logits, with a recurrent state.
    vocab : the :class:`unrolled.data.Vocab` the model was trained with.
    length : int >= 0, characters to generate (the prime is not counted).
    temperature : float >= 0; logits are divided by it (below 1: safer, above 1: wilder;
        0: always the most likely character).
    prime : str, text the model reads first; the result starts with it. Empty: the model
        starts from a newline (or the first symbol if the text has none).
    top_k : int or None, sample among the ``top_k`` most likely characters only.
    rng : numpy Generator or int seed.
    progress : show a progress bar on stderr (when it is a terminal) for 1000 characters
        or more.

    Returns
    -------
    str : ``prime`` followed by the generated characters.
    """
    if not isinstance(length, (int, np.integer)) or length < 0:
        raise ValueError(f"--length must be a non-negative integer, got {length!r}")
    if not temperature >= 0:
        raise ValueError(f"--temperature must be >= 0 (0 = greedy), got {temperature}")
    if top_k is not None and (not isinstance(top_k, (int, np.integer)) or top_k < 1):
        raise ValueError(f"--top-k must be a positive integer, got {top_k!r}")
    rng = np.random.default_rng(rng)
    start = encode_prime(vocab, prime) if prime else \
        np.array([vocab.index("\n") if "\n" in vocab else 0])
    # read the prime in one call; its last logits give the first generated character
    logits, state = model(start[None, :], return_state=True)
    out = []
    steps = range(length)
    if progress and length >= 1000:
        import sys

        from tqdm import tqdm

        steps = tqdm(steps, desc="generating", unit="char", file=sys.stderr, leave=False,
                     mininterval=0.5, disable=None)
    for _ in steps:
        z = logits[0, -1].astype(np.float64)
        if temperature == 0:
            nxt = int(z.argmax())
        else:
            z = z / temperature
            if top_k is not None and top_k < len(z):
                cut = np.partition(z, -top_k)[-top_k]
                z = np.where(z >= cut, z, -np.inf)
            p = np.exp(z - z.max())
            nxt = int(rng.choice(len(p), p=p / p.sum()))
        out.append(nxt)
        logits, state = model(np.array([[nxt]]), initial_state=state, return_state=True)
    return prime + (vocab.decode(out) if out else "")


# ------------------------------------------------------------------------------- the task

class TextTask(Task):
    name = "text"
    summary = "character-level language model on a UTF-8 text file (then `unrolled generate`)"
    defaults: ClassVar[dict] = {
        "embed": 32,            # character embedding size
        "hidden": 256,          # LSTM units per layer
        "layers": 1,
        "cell": "lstm",         # lstm | gru | mingru | qrnn | ... (any registered cell)
        "dropout": 0.0,         # between stacked LSTM layers
        "weight_drop": 0.0,     # AWD-LSTM: DropConnect on W_hh
        "recurrent_dropout": 0.0,  # AWD-LSTM: one mask per sequence on h_(t-1)
        "embed_dropout": 0.0,   # AWD-LSTM: whole rows of the embedding table
        "ar": 0.0,              # AWD-LSTM: activation regularisation (alpha)
        "tar": 0.0,             # AWD-LSTM: temporal activation regularisation (beta)
        "chunk": 64,            # truncated BPTT: steps per chunk, state carried across
        "k1": 0,                # TBPTT: new steps per update (0: the chunk)
        "k2": 0,                # TBPTT: steps the gradient reaches back (0: k1)
        "val_fraction": 0.05,
        "test_fraction": 0.1,   # the end of the text
        "eval_streams": 16,
        # trainer options for a character model; about a minute on the bundled 200 kB slice
        "batch_size": 32,       # parallel streams
        "epochs": 10,
        "lr": 3e-3,
        "schedule": "cosine",
        "clip": 5.0,
        "patience": 3,
    }
    help: ClassVar[dict] = {
        "embed": "character embedding size",
        "hidden": "LSTM hidden units per layer",
        "layers": "stacked LSTM layers",
        "cell": "recurrent cell: lstm, gru, elman, mingru, minlstm, sru, qrnn, ...",
        "dropout": "dropout between stacked LSTM layers (training only)",
        "weight_drop": "DropConnect on the recurrent weight W_hh (AWD-LSTM)",
        "recurrent_dropout": "dropout on h_(t-1) in the recurrent product, one mask per "
                             "sequence",
        "embed_dropout": "dropout of whole rows of the embedding table",
        "ar": "activation regularisation: alpha * mean(h^2) on the recurrent outputs",
        "tar": "temporal activation regularisation: beta * mean((h_t - h_(t-1))^2)",
        "chunk": "truncated BPTT: steps per chunk; the state is carried across chunks",
        "k1": "TBPTT(k1, k2): new steps per update; 0: --chunk (sets the chunk when given)",
        "k2": "TBPTT(k1, k2): steps the gradient reaches back, >= k1; 0: k1",
        "val_fraction": "share of the text at its start used for validation",
        "test_fraction": "share of the text at its end held out for the test",
        "eval_streams": "parallel streams when measuring the held-out loss",
        "batch_size": "parallel streams the text is cut into (rows of every batch)",
    }
    default_data = "tinyshakespeare"
    loss = "cross_entropy"
    monitor = "loss"
    monitor_mode = "min"
    stateful = True

    def __init__(self, config, state=None):
        super().__init__(config, state)
        self.vocab = Vocab.from_dict(state["vocab"]) if state else None
        self.splits = {}
        self._streams = (None, None)  # (offset, StreamBatches) of the current epoch

    # -- TBPTT(k1, k2) -------------------------------------------------------------------
    @property
    def k1(self):
        """New steps per update: ``--k1``, or ``--chunk`` when k1 is 0."""
        return self.config.get("k1") or self.config["chunk"]

    @property
    def k2(self):
        """Steps the gradient reaches back: ``--k2``, or k1 when k2 is 0."""
        return self.config.get("k2") or self.k1

    def _check_tbptt(self):
        cfg = self.config
        if cfg["chunk"] < 1:
            raise ValueError(f"--chunk must be at least 1, got {cfg['chunk']}")
        for key in ("k1", "k2"):
            if cfg.get(key, 0) < 0:
                raise ValueError(f"--{key} must be a number of steps >= 1 (or 0 for the "
                                 f"default), got {cfg[key]}")
        if self.k2 < self.k1:
            raise ValueError(f"--k2 {self.k2} is smaller than --k1 {self.k1}: each update "
                             "backpropagates through at least its own k1 steps; use k2 >= k1")

    # -- data ---------------------------------------------------------------------------
    def load(self, path):
        cfg = self.config
        self._check_tbptt()
        text = read_text(path)
        a, b = split_text(len(text), cfg["val_fraction"], cfg["test_fraction"])
        need = 2 * cfg["batch_size"] + 1
        if b - a < need:
            # a smaller --batch-size helps only while one stream would still fit
            fix = ("use a longer text or a smaller --batch-size" if b - a >= 3
                   else "use a longer text (a few hundred characters at least)")
            raise ValueError(f"{path}: {len(text)} characters leave {b - a} for training, too few "
                             f"for {cfg['batch_size']} streams; {fix}")
        if a < 2 or len(text) - b < 2:
            raise ValueError(f"{path}: {len(text)} characters leave {a} for validation and "
                             f"{len(text) - b} for the test, and each needs 2 to score a "
                             "prediction; use a longer text")
        self.vocab = Vocab.from_text(text)
        ids = self.vocab.encode(text)
        self.splits = {"train": ids[a:b], "val": ids[:a], "test": ids[b:]}
        self.path = str(path)

    def load_eval(self, path):
        text = read_text(path)
        try:
            self.splits["eval"] = self.vocab.encode(text)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None

    def describe(self):
        n = {k: len(v) for k, v in self.splits.items()}
        return [f"text: {sum(n.values())} characters, vocabulary of {len(self.vocab)}",
                "split: " + ", ".join(f"{k} {v}" for k, v in n.items()),
                (f"training: {self.config['batch_size']} streams of "
                 f"{max(n.get('train', 1) - 1, 0) // self.config['batch_size']} steps, "
                 f"TBPTT(k1={self.k1}, k2={self.k2}): chunks of {self.k1}, state carried")]

    def state(self):
        return {"vocab": self.vocab.to_dict(),
                "sizes": {k: len(v) for k, v in self.splits.items()}}

    # -- model and batches ---------------------------------------------------------------
    def build_model(self):
        c = self.config
        return build_char_model(len(self.vocab), c["embed"], c["hidden"], c["layers"],
                                c["dropout"], seed=c["seed"], cell=c.get("cell", "lstm"),
                                weight_drop=c.get("weight_drop", 0.0),
                                recurrent_dropout=c.get("recurrent_dropout", 0.0),
                                embed_dropout=c.get("embed_dropout", 0.0),
                                ar=c.get("ar", 0.0), tar=c.get("tar", 0.0))

    def _train_streams(self, offset):
        if self._streams[0] != offset:
            self._streams = (offset, stream_batches(self.splits["train"],
                                                    self.config["batch_size"],
                                                    self.k1, offset))
        return self._streams[1]

    def epoch_batches(self, rng):
        # a new cut of the streams each epoch: skip 0..chunk-1 leading characters
        B, k = self.config["batch_size"], self.k1
        spare = len(self.splits["train"]) - 1 - B  # keep at least one step per stream
        offset = int(rng.integers(min(k, spare) + 1)) if spare > 0 else 0
        n = len(self._train_streams(offset))
        return [(offset, i) for i in range(n)]

    def get_batch(self, split, key):
        if split != "train":
            raise ValueError(f"text task: batches are for training; evaluate {split!r} with "
                             "evaluate()")
        offset, i = key
        if self.k2 == self.k1:  # classic truncated BPTT: the chunk alone
            X, Y = chunk_xy(self._train_streams(offset), i)
            return Batch(X=X, Y=Y, size=X.shape[0])
        X, Y, loss_mask, carry_at = tbptt_window(self._train_streams(offset), i, self.k2)
        return Batch(X=X, Y=Y, size=X.shape[0], loss_mask=loss_mask, carry_at=carry_at)

    # -- metrics and use -----------------------------------------------------------------
    def evaluate(self, model, split):
        if split not in self.splits:
            raise ValueError(f"text task: no {split!r} split loaded")
        m = stream_loss(model, self.splits[split], self.config["eval_streams"])
        return {"loss": m["loss"], "bits_per_char": m["bits_per_char"],
                "accuracy": m["accuracy"]}

    def report(self, model, out_dir):
        """Test metrics and a 500-character sample (temperature 0.8) in ``sample.txt``."""
        from pathlib import Path

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        metrics = self.evaluate(model, "test")
        text = sample(model, self.vocab, 500, 0.8, "", rng=self.config["seed"])
        path = out / "sample.txt"
        path.write_text(text.lstrip("\n") + "\n", encoding="utf-8")
        self.last_report = {"metrics": metrics,
                            "text": "sample (temperature 0.8):\n" + text.strip("\n")}
        return {"generated sample": str(path)}

    def generate(self, model, length=500, temperature=1.0, prime="", top_k=None, seed=None,
                 progress=False):
        return sample(model, self.vocab, length, temperature, prime, top_k, seed,
                      progress=progress)

    def output_names(self):
        return None if self.vocab is None else self.vocab.symbols

    def predict(self, model, inputs, top=3):
        """The ``top`` most likely next characters after each input text."""
        lines = []
        for text in inputs:
            if not text:
                raise ValueError("an empty text has nothing to continue; pass at least one "
                                 "character, e.g. `unrolled predict MODEL 'ROMEO:'`")
            ids = encode_prime(self.vocab, text)
            logits = model(ids[None, :])[0, -1].astype(np.float64)
            p = np.exp(log_softmax(logits))
            order = np.argsort(-p, kind="stable")[:top]
            best = ", ".join(f"{self.vocab.symbols[i]!r} {p[i]:.3f}" for i in order)
            lines.append(f"{text!r} -> next: {best}")
        return lines
