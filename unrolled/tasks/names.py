"""``names``: classify family names by language from their characters (many-to-one).

Data: a directory of ``<Language>.txt`` files, one name per line (the layout of the
PyTorch tutorial "Classifying names with a character-level RNN"); the bundled copy is the
default. Split: stratified by language and made by *distinct name*, so a name that occurs
several times (or under several languages) sits in one split only and the test accuracy is
not inflated by names seen in training. Repeated (name, language) lines are dropped
first (``dedupe``; Arabic.txt repeats 108 names to 2000 lines, so without it a dozen
Arabic test names would weigh a tenth of the test accuracy). Model: character embedding (or one-hot) -> GRU /
LSTM / Elman (final state) -> Dense logits. Metrics: loss, accuracy and macro-F1 (every
language weighs the same, which the accuracy hides since Russian is about half the data),
a majority-class baseline and the confusion matrix as text and PNG.
"""
import numpy as np

from ..data import Vocab, one_hot, read_names_dir
from .base import SequenceClassification, recurrent_class, stratified_split

PAD, UNK = "<pad>", "<unk>"


def dedupe(names, labels):
    """The first line of each distinct (name, language) pair, in file order."""
    seen, keep = set(), []
    for i, key in enumerate(zip(names, labels.tolist())):
        if key not in seen:
            seen.add(key)
            keep.append(i)
    return [names[i] for i in keep], labels[keep]


class NamesTask(SequenceClassification):
    """Family name -> language, read character by character (many-to-one)."""

    name = "names"
    summary = "classify family names by language (a directory of <Language>.txt files)"
    default_data = "names"
    defaults = {
        "cell": "gru",          # gru | lstm | elman
        "embed": 32,            # embedding size; 0: one-hot characters
        "hidden": 128,
        "layers": 1,
        "bidirectional": True,
        "dropout": 0.3,         # after the embedding, between layers, before the output
        "dedupe": True,         # count each (name, language) pair once
        "balance": False,       # weigh every language equally in the loss
        "val_fraction": 0.1,
        "test_fraction": 0.1,
        "epochs": 6,
        "batch_size": 32,
        "lr": 3e-3,
        "schedule": "cosine",
    }
    help = {
        "cell": "recurrent cell: gru, lstm or elman",
        "embed": "character embedding size; 0 feeds one-hot characters",
        "hidden": "hidden units of the recurrent layer",
        "layers": "stacked recurrent layers",
        "bidirectional": "read each name in both directions",
        "dropout": "dropout after the embedding, between recurrent layers and before the "
                   "output layer",
        "dedupe": "drop repeated (name, language) lines before splitting (Arabic.txt repeats "
                  "108 names to 2000 lines); false keeps every line",
        "balance": "weigh every language equally in the training loss (raises macro-F1, "
                   "lowers accuracy)",
        "val_fraction": "share of the distinct names held out for validation",
        "test_fraction": "share of the distinct names held out for the test",
    }

    def __init__(self, config, state=None):
        super().__init__(config, state)
        self.vocab = Vocab.from_dict(state["vocab"]) if state else None
        self.sizes = dict(state.get("sizes", {})) if state else {}
        if config.get("embed", 0) == 0:
            self.batch_dtype = "float32"

    # -- data -------------------------------------------------------------------------
    def load(self, path):
        cfg = self.config
        names, labels, classes = read_names_dir(path)
        if len(classes) < 2:
            raise ValueError(f"{path}: one language ({classes[0]}) is nothing to tell apart; "
                             "add a <Language>.txt file for at least one more language")
        self.classes = classes
        self.n_lines = len(names)
        if cfg["dedupe"]:
            names, labels = dedupe(names, labels)
        rng = np.random.default_rng(np.random.SeedSequence([int(cfg["seed"]), 0]))
        tr, va, te = stratified_split(labels, (cfg["val_fraction"], cfg["test_fraction"]),
                                      rng, groups=names)
        train_text = "".join(names[i] for i in tr)
        self.vocab = Vocab([PAD, UNK] + sorted(set(train_text)), specials=[PAD, UNK])
        for split, idx in (("train", tr), ("val", va), ("test", te)):
            self.records[split] = [self.encode(names[i]) for i in idx]
            self.labels[split] = labels[idx]
            self.sizes[split] = len(idx)
        self._names = {"test": [names[i] for i in te]}
        if cfg["balance"]:
            self.use_balanced_loss()
        if not len(va) or not len(te):
            raise ValueError(f"{path}: too few names to hold out validation and test sets; "
                             "add names or raise --val-fraction/--test-fraction")

    def load_eval(self, path):
        names, labels, classes = read_names_dir(path)
        unknown = sorted(set(classes) - set(self.classes))
        if unknown:
            raise ValueError(f"{path}: languages {unknown} were not in the training data; "
                             f"the model knows {self.classes}")
        if self.config.get("dedupe"):
            names, labels = dedupe(names, labels)
        remap = np.array([self.classes.index(c) for c in classes])
        self.records["eval"] = [self.encode(n) for n in names]
        self.labels["eval"] = remap[labels]
        self.labels.setdefault("train", self.labels["eval"])

    def describe(self):
        counts = np.bincount(self.labels["train"], minlength=len(self.classes))
        top = ", ".join(f"{c} {n}" for c, n in sorted(zip(self.classes, counts),
                                                      key=lambda t: -t[1])[:4])
        dup = self.n_lines - sum(self.sizes.values())
        held = np.bincount(self.labels["test"], minlength=len(self.classes))
        missing = [c for c, n in zip(self.classes, held) if n == 0]
        warn = ([f"warning: no test names for {', '.join(missing)} (too few names to hold "
                 "any out); the test figures say nothing about them: add names"]
                if missing else [])
        return [f"names: {sum(self.sizes.values())} names, {len(self.classes)} languages, "
                f"{len(self.vocab) - 2} characters"
                + (f" ({dup} repeated (name, language) lines dropped)" if dup else ""),
                (f"split by distinct name: train {self.sizes['train']}, val "
                 f"{self.sizes['val']}, test {self.sizes['test']} (largest classes in train: "
                 f"{top})")] + warn

    def predict(self, model, inputs, top=3):
        """The base class's lines; a name with characters never seen in training adds a
        warning to ``self.notes`` (the CLI prints them on stderr)."""
        self.notes = []
        for x in inputs:
            name = str(x).strip()
            unknown = sorted({ch for ch in name if ch not in self.vocab._index})
            if unknown:
                n = sum(ch in unknown for ch in name)
                guess = "; the answer is a guess" if n == len(name) else ""
                self.notes.append(f"warning: {name!r}: {n} of {len(name)} characters were "
                                  f"never seen in training ({''.join(unknown)}){guess}")
        return super().predict(model, inputs, top)

    def encode(self, name):
        """A name as (n,) symbol ids (characters not seen in training -> <unk>), or as
        (n, V) one-hot rows when ``embed`` is 0."""
        name = str(name).strip()
        if not name:
            raise ValueError("an empty name cannot be classified; pass at least one character")
        unk = self.vocab.index(UNK)
        ids = np.array([self.vocab._index.get(ch, unk) for ch in name], dtype=np.int64)
        if self.config.get("embed", 0) == 0:
            return one_hot(ids, len(self.vocab))  # (n, V) float32
        return ids

    def state(self):
        return {"vocab": self.vocab.to_dict(), "classes": self.classes, "sizes": self.sizes}

    # -- model ------------------------------------------------------------------------
    def build_model(self):
        from .. import layers as L

        cfg = self.config
        seeds = np.random.SeedSequence([int(cfg["seed"]), 2]).generate_state(5)
        V, E, H = len(self.vocab), cfg["embed"], cfg["hidden"]
        p = cfg["dropout"]
        mods = [L.Embedding(V, E, seed=int(seeds[0]))] if E else []
        if p:
            mods.append(L.Dropout(p, seed=int(seeds[3])))
        rnn = recurrent_class(cfg["cell"])(E or V, H, num_layers=cfg["layers"],
                                           bidirectional=cfg["bidirectional"], dropout=p,
                                           return_sequences=False, seed=int(seeds[1]))
        mods.append(rnn)
        if p:
            mods.append(L.Dropout(p, seed=int(seeds[4])))
        mods.append(L.Dense(rnn.output_size, len(self.classes), seed=int(seeds[2])))
        return L.Sequential(mods)
