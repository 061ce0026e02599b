"""``tagging``: one label per token (many-to-many) with a bidirectional LSTM.

Data: a column file (CoNLL style): one token per line, columns separated by tabs or
spaces, the token in the first column and the tag in the column ``tag_column``
(default: the last), a blank line between sentences. With ``--data hironsancorpus`` the
task reads the Japanese named-entity corpus shipped by the PyPI package
``hironsancorpus`` (``pip install hironsancorpus``; 500 sentences of news text, ~15,500
tokens, MeCab-segmented, with the MeCab part of speech in column 3 and IOB2 entity tags
(DATE, LOCATION, ORGANIZATION, PERSON, ...) in the last column).

Model: word embedding -> bidirectional LSTM -> Dense logits per token. Words seen fewer
than ``min_count`` times in training become an unknown-word symbol of their character
class (digits, katakana, hiragana, kanji, Latin, other), so an unseen katakana word is
still known to be katakana. Metrics: per-token accuracy, and for BIO/IOB2 tags the
span-level precision, recall and F1 of CoNLL's conlleval (a span counts only when its
type and both ends are right); the baseline tags each word with its most frequent
training tag.
"""
import re
import unicodedata
from collections import Counter
from pathlib import Path

import numpy as np

from ..losses import log_softmax
from .base import Batch, Task

PAD = "<pad>"
CLASSES = ("digit", "katakana", "hiragana", "kanji", "latin", "other")


def hironsan_path():
    """The corpus file of the ``hironsancorpus`` package, or a ValueError naming the fix."""
    import importlib.util

    spec = importlib.util.find_spec("hironsan")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("the hironsancorpus data set is not installed: "
                         "pip install hironsancorpus")
    path = Path(next(iter(spec.submodule_search_locations))) / "corpus" / "iob_sents.txt"
    if not path.exists():
        raise ValueError(f"{path} is missing; reinstall hironsancorpus")
    return path


def read_tagged(path, tag_column=-1):
    """Sentences of a column file as a list of (tokens, tags) pairs."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot read ({e}); pass a UTF-8 column file") from None
    sents, toks, tags = [], [], []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line:
            if toks:
                sents.append((toks, tags))
                toks, tags = [], []
            continue
        cols = re.split(r"[\t ]+", line) if "\t" not in line else line.split("\t")
        try:
            tag = cols[tag_column]
        except IndexError:
            raise ValueError(f"{path}, line {n}: no column {tag_column} in {line!r}; set "
                             "--tag-column to the column of the tags") from None
        if len(cols) < 2:
            raise ValueError(f"{path}, line {n}: expected a token and a tag, got {line!r}")
        toks.append(cols[0])
        tags.append(tag)
    if toks:
        sents.append((toks, tags))
    if not sents:
        raise ValueError(f"{path}: no sentences found; expected one token per line and a "
                         "blank line between sentences")
    return sents


def char_class(token):
    """The character class of a token, from its first character."""
    c = token[0]
    if c.isdigit():
        return "digit"
    name = unicodedata.name(c, "")
    for key, cls in (("KATAKANA", "katakana"), ("HIRAGANA", "hiragana"),
                     ("CJK UNIFIED", "kanji"), ("LATIN", "latin")):
        if key in name:
            return cls
    return "other"


def bio_spans(tags):
    """The labelled spans (type, start, end_exclusive) of a BIO / IOB2 tag sequence.

    As CoNLL's conlleval: an ``I-X`` that does not continue an ``X`` span starts one.
    """
    spans, start, kind = set(), None, None
    for i, t in enumerate(list(tags) + ["O"]):
        pre, _, typ = t.partition("-")
        if start is not None and not (pre == "I" and typ == kind):
            spans.add((kind, start, i))
            start = None
        if pre == "B" or (pre == "I" and start is None):
            start, kind = i, typ
    return spans


def span_prf(true_tags, pred_tags):
    """Span precision, recall and F1 over sentences of BIO tags (micro-averaged)."""
    tp = n_true = n_pred = 0
    for t, p in zip(true_tags, pred_tags):
        a, b = bio_spans(t), bio_spans(p)
        tp += len(a & b)
        n_true += len(a)
        n_pred += len(b)
    prec = tp / n_pred if n_pred else 0.0
    rec = tp / n_true if n_true else 0.0
    f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
    return {"span_precision": prec, "span_recall": rec, "span_f1": f1}


def span_prf_by_type(true_tags, pred_tags):
    """{entity type: (precision, recall, f1, number of true spans)}."""
    tp, nt, npred = Counter(), Counter(), Counter()
    for t, p in zip(true_tags, pred_tags):
        a, b = bio_spans(t), bio_spans(p)
        for s in a & b:
            tp[s[0]] += 1
        for s in a:
            nt[s[0]] += 1
        for s in b:
            npred[s[0]] += 1
    out = {}
    for k in sorted(set(nt) | set(npred)):
        pr = tp[k] / npred[k] if npred[k] else 0.0
        rc = tp[k] / nt[k] if nt[k] else 0.0
        out[k] = (pr, rc, 2 * pr * rc / (pr + rc) if pr + rc else 0.0, nt[k])
    return out


class TaggingTask(Task):
    name = "tagging"
    summary = "tag every token (BIO entities or parts of speech) with a bidirectional LSTM"
    defaults = {
        "data": "hironsancorpus",  # a column file, or the hironsancorpus package's corpus
        "tag_column": -1,       # column of the tags (-1: last); hironsancorpus: 2 = POS
        "min_count": 2,         # rarer training words become <unk:character class>
        "embed": 64,
        "hidden": 64,
        "dropout": 0.3,         # after the embedding and before the output layer
        "val_fraction": 0.1,
        "test_fraction": 0.1,
        "test": "",             # a column file of test sentences ("": held out of --data)
        "epochs": 30,
        "batch_size": 16,
        "lr": 3e-3,
        "patience": 6,
    }
    help = {
        "data": "column file (token first, tags in --tag-column, blank line between "
                "sentences), or hironsancorpus",
        "tag_column": "column holding the tags (-1: the last one)",
        "min_count": "training words seen fewer times become an unknown word of their "
                     "character class",
        "embed": "word embedding size",
        "hidden": "LSTM units per direction",
        "dropout": "dropout after the embedding and before the output layer",
        "val_fraction": "share of the sentences held out for validation",
        "test_fraction": "share of the sentences held out for the test (without --test)",
        "test": "column file of test sentences; then --data is split into train and "
                "validation only",
    }
    loss = "cross_entropy"
    monitor = "accuracy"
    monitor_mode = "max"

    def __init__(self, config, state=None):
        super().__init__(config, state)
        self.sents, self.records, self.labels = {}, {}, {}
        if state:
            self.words, self.tags = state["words"], state["tags"]
            self._index()

    def output_names(self):
        return getattr(self, "tags", None)

    def _index(self):
        self.w_id = {w: i for i, w in enumerate(self.words)}
        self.t_id = {t: i for i, t in enumerate(self.tags)}
        self.bio = all(t == "O" or t[:2] in ("B-", "I-") for t in self.tags[1:])
        if self.bio:
            self.monitor = "span_f1"

    # -- data -------------------------------------------------------------------------
    @classmethod
    def resolve_data(cls, path):
        if Path(path).name == "hironsancorpus" and not Path(path).expanduser().exists():
            return hironsan_path()
        return Path(path).expanduser().resolve()

    def _read(self, path):
        path = str(path)
        if Path(path).name == "hironsancorpus" and not Path(path).exists():
            path = hironsan_path()
        return read_tagged(path, int(self.config["tag_column"]))

    def load(self, path):
        cfg = self.config
        sents = self._read(path)
        test = self._read(cfg["test"]) if cfg["test"] else None
        if test is None and not cfg["test_fraction"]:
            raise ValueError("--test-fraction 0 leaves no test set; pass --test FILE with "
                             "test sentences, or a fraction above 0")
        rng = np.random.default_rng(np.random.SeedSequence([int(cfg["seed"]), 0]))
        order = rng.permutation(len(sents))
        n_val = round(cfg["val_fraction"] * len(sents))
        n_test = 0 if test else round(cfg["test_fraction"] * len(sents))
        if n_val < 1 or (n_test < 1 and not test) or len(sents) - n_val - n_test < 1:
            raise ValueError(f"{path}: {len(sents)} sentences are too few to hold out "
                             "validation and test sentences")
        parts = {"test": order[:n_test], "val": order[n_test:n_test + n_val],
                 "train": order[n_test + n_val:]}
        self.sents = {k: [sents[i] for i in v] for k, v in parts.items()}
        if test:
            self.sents["test"] = test
        counts = Counter(w for toks, _ in self.sents["train"] for w in toks)
        self.words = ([PAD] + [f"<unk:{c}>" for c in CLASSES]
                      + sorted(w for w, n in counts.items() if n >= cfg["min_count"]))
        self.tags = [PAD] + sorted({t for _, tags in self.sents["train"] for t in tags})
        self._index()
        for split in self.sents:
            self._encode_split(split)
        # the baseline: each word's most frequent training tag (unknown words: overall)
        by_word = {}
        for toks, tags in self.sents["train"]:
            for w, t in zip(toks, tags):
                by_word.setdefault(w, Counter())[t] += 1
        self.top_tag = {w: c.most_common(1)[0][0] for w, c in by_word.items()}
        self.top_any = Counter(t for _, tags in self.sents["train"] for t in tags).most_common(1)[0][0]

    def load_eval(self, path):
        self.sents["eval"] = self._read(path)
        self._encode_split("eval")

    def _encode_split(self, split):
        unseen = {t for _, tags in self.sents[split] for t in tags} - set(self.t_id)
        if unseen:
            raise ValueError(f"tags {sorted(unseen)} of the {split} sentences are not in the "
                             f"training data (known: {self.tags[1:]})")
        self.records[split] = [self.encode(toks) for toks, _ in self.sents[split]]
        self.labels[split] = [np.array([self.t_id[t] for t in tags], dtype=np.int64)
                              for _, tags in self.sents[split]]

    def encode(self, tokens):
        return np.array([self.w_id.get(w, self.w_id[f"<unk:{char_class(w)}>"])
                         for w in tokens], dtype=np.int64)

    def describe(self):
        n = {k: len(v) for k, v in self.sents.items()}
        toks = {k: sum(len(s[0]) for s in v) for k, v in self.sents.items()}
        kinds = sorted({t[2:] for t in self.tags[1:] if t != "O"}) if self.bio else []
        first = (f"tagging: {sum(n.values())} sentences, {sum(toks.values())} tokens; "
                 f"{len(self.words) - 1 - len(CLASSES)} known words, {len(self.tags) - 1} tags"
                 + (f" (BIO spans: {', '.join(kinds)})" if self.bio else ""))
        second = (f"split by sentence: train {n['train']} ({toks['train']} tokens), val "
                  f"{n['val']}, test {n['test']} ({toks['test']} tokens)"
                  + (f" from {self.config['test']}" if self.config.get("test") else ""))
        warn = ([f"warning: the test set has {n['test']} sentences, too few for its figures "
                 "to mean much; pass --test FILE or more data"] if n["test"] < 30 else [])
        return [first, second] + warn

    def state(self):
        return {"words": self.words, "tags": self.tags}

    # -- model and batches ------------------------------------------------------------
    def build_model(self):
        from .. import layers as L

        cfg = self.config
        s = np.random.SeedSequence([int(cfg["seed"]), 2]).generate_state(5)
        H = int(cfg["hidden"])
        return L.Sequential(
            L.Embedding(len(self.words), int(cfg["embed"]), seed=int(s[0])),
            L.Dropout(cfg["dropout"], seed=int(s[1])),
            L.LSTM(int(cfg["embed"]), H, bidirectional=True, seed=int(s[2])),
            L.Dropout(cfg["dropout"], seed=int(s[3])),
            L.Dense(2 * H, len(self.tags), seed=int(s[4])))

    def epoch_batches(self, rng):
        from ..data import bucket_batches

        lengths = np.array([len(r) for r in self.records["train"]])
        return bucket_batches(lengths, self.config["batch_size"], rng=rng)

    def get_batch(self, split, key):
        from ..data import pad

        X, mask = pad([self.records[split][i] for i in key], dtype=np.int64)
        Y, _ = pad([self.labels[split][i] for i in key], dtype=np.int64)
        return Batch(X, Y, mask, len(key))

    # -- evaluation -------------------------------------------------------------------
    def predict_ids(self, model, split, batch_size=64):
        """Per-sentence predicted tag ids and the summed loss over tokens."""
        out, total = [], 0.0
        n = len(self.records[split])
        for i in range(0, n, batch_size):
            b = self.get_batch(split, np.arange(i, min(i + batch_size, n)))
            logits = np.asarray(model(b.X, mask=b.mask), dtype=np.float64)
            logits[..., 0] = -np.inf                      # never predict <pad>
            logp = log_softmax(logits)
            lp = np.take_along_axis(logp, b.Y[..., None], -1)[..., 0]
            total -= float(lp[b.mask].sum())
            pred = logits.argmax(-1)
            out += [pred[j, :m.sum()] for j, m in enumerate(b.mask)]
        return out, total

    def evaluate(self, model, split):
        if not self.records.get(split):
            raise ValueError(f"the {split!r} split is empty")
        pred, total = self.predict_ids(model, split)
        gold = self.labels[split]
        n = sum(len(g) for g in gold)
        res = {"loss": total / n,
               "accuracy": sum(int((p == g).sum()) for p, g in zip(pred, gold)) / n}
        if self.bio:
            res.update(span_prf([[self.tags[i] for i in g] for g in gold],
                                [[self.tags[i] for i in p] for p in pred]))
        return res

    def baseline(self, split):
        """Metrics of tagging each word with its most frequent training tag."""
        gold = [tags for _, tags in self.sents[split]]
        pred = [[self.top_tag.get(w, self.top_any) for w in toks] for toks, _ in self.sents[split]]
        n = sum(map(len, gold))
        res = {"accuracy": sum(a == b for g, p in zip(gold, pred) for a, b in zip(g, p)) / n}
        if self.bio:
            res.update(span_prf(gold, pred))
        return res

    def report(self, model, out_dir, split="test"):
        from ..io import atomic_write_text

        res = self.evaluate(model, split)
        head = (f"{split}: {len(self.sents[split])} sentences, "
                f"{sum(len(s[0]) for s in self.sents[split])} tokens")
        lines = [head,
                 *(f"{k}: {v:.4f}" for k, v in res.items())]
        if hasattr(self, "top_tag"):
            base = self.baseline(split)
            lines.append("baseline (most frequent tag of each word): "
                         + ", ".join(f"{k} {v:.4f}" for k, v in base.items()))
        path = Path(out_dir) / "tagging.txt"
        atomic_write_text(path, "\n".join(lines) + "\n")
        self.last_report = {"metrics": res, "text": "\n".join(lines)}
        return {"tagging metrics": path}

    def predict(self, model, inputs, top=1):
        lines = []
        for sent in inputs:
            toks = str(sent).split()
            if not toks:
                raise ValueError("an empty sentence cannot be tagged; pass tokens separated "
                                 "by spaces")
            logits = np.asarray(model(self.encode(toks)[None]))[0]
            logits[:, 0] = -np.inf
            lines.append(" ".join(f"{w}/{self.tags[i]}" for w, i in zip(toks,
                                                                        logits.argmax(-1))))
        return lines
