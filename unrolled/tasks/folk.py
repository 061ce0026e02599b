"""The ``folk`` task: a token-level LSTM language model of folk tunes in ABC notation.

The tunes are those shipped in music21's corpus (Ryan's Mammoth Collection, O'Neill's
1850, Aird's Airs, the Essen folk songs, the Nottingham sample; about 12,500 tunes once
normalised) or any .abc file or folder given with ``--data``. Each tune becomes a list of
tokens, one per ABC symbol (:mod:`unrolled.tasks.abc`), ended by ``<end>``; the tunes of
each split are joined into one stream and trained as the ``text`` task trains a text
(Embedding -> LSTM -> Dense, truncated BPTT over parallel streams, the state carried
from chunk to chunk): this class is a :class:`unrolled.tasks.text.TextTask` whose
symbols are ABC tokens instead of characters.

Splits are by tune (identical bodies always land in the same split). With ``--clean``
(the default) the training split keeps only the tunes whose bars all last what the meter
says (:func:`unrolled.tasks.abc.bars_ok`); validation and test keep every tune.

``unrolled generate MODEL --tunes N --out DIR [--check]`` samples whole tunes
(:meth:`FolkTask.sample_tunes`) and writes them with :func:`write_tunes`.
"""
import html
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import ClassVar

import numpy as np

from ..data import Vocab
from . import abc
from .text import TextTask

__all__ = ["FolkTask", "judge", "write_tunes"]


class FolkTask(TextTask):
    name = "folk"
    summary = ("token-level LSTM on the ABC folk tunes of music21's corpus "
               "(then `unrolled generate MODEL --tunes N --out DIR`)")
    defaults: ClassVar[dict] = {
        **TextTask.defaults,
        "embed": 64,
        "hidden": 512,
        "chunk": 100,
        "val_fraction": 0.05,
        "test_fraction": 0.05,
        "clean": True,
        "unit": "",
        "batch_size": 32,
        "epochs": 7,
        "lr": 3e-3,
    }
    help: ClassVar[dict] = {
        **TextTask.help,
        "embed": "token embedding size",
        "val_fraction": "share of the tunes held out for validation",
        "test_fraction": "share of the tunes held out for the test",
        "clean": "train only on tunes whose inner bars all fit the meter",
        "unit": "write every tune with this unit length, e.g. 1/8 (empty: as written)",
    }
    default_data = "music21"

    def __init__(self, config, state=None):
        super().__init__(config, state)
        self.tunes = {}

    @classmethod
    def default_data_path(cls):
        return abc.music21_corpus()

    @classmethod
    def resolve_data(cls, path):
        if str(path) == "music21" and not Path(path).exists():
            return abc.music21_corpus()
        return Path(path).expanduser().resolve()

    def _read(self, path):
        path = Path(path)
        corpus = None
        try:
            corpus = abc.music21_corpus()
        except ValueError:
            pass
        if corpus is not None and path.resolve() == corpus.resolve():
            self.data_files = sorted(f for c in abc.FOLK_COLLECTIONS
                                     for f in (corpus / c).rglob("*.abc"))
            return abc.read_tunes(None)
        self.data_files = None
        return abc.read_tunes(path)

    def load(self, path):
        cfg = self.config
        self._check_tbptt()
        for key in ("val_fraction", "test_fraction"):
            if not 0 < cfg[key] < 0.5:
                raise ValueError(f"--{key.replace('_', '-')} must be in (0, 0.5), got "
                                 f"{cfg[key]}")
        tunes, dropped = self._read(path)
        if cfg.get("unit"):
            if not re.fullmatch(r"1/(1|2|4|8|16|32)", str(cfg["unit"])):
                raise ValueError(f"--unit must be a unit length such as 1/8 or 1/16, got "
                                 f"{cfg['unit']!r}")
            tunes = [(a, b, abc.rescale(t, cfg["unit"])) for a, b, t in tunes]
        if len(tunes) < 3:
            raise ValueError(f"{path}: {len(tunes)} usable tune(s); the folk task needs at "
                             "least 3 (train, validation, test); pass more ABC tunes")
        # identical bodies in one split: group by tokens, shuffle the groups
        groups = {}
        for k, (_, _, toks) in enumerate(tunes):
            groups.setdefault(tuple(toks[3:]), []).append(k)
        units = list(groups.values())
        rng = np.random.default_rng(cfg["seed"])
        order = rng.permutation(len(units))
        n_val = max(1, round(len(units) * cfg["val_fraction"]))
        n_test = max(1, round(len(units) * cfg["test_fraction"]))
        parts = {"val": order[:n_val], "test": order[n_val:n_val + n_test],
                 "train": order[n_val + n_test:]}
        self.tunes = {s: [tunes[k][2] for u in idx for k in units[u]]
                      for s, idx in parts.items()}
        self.titles = {s: [tunes[k][1] for u in idx for k in units[u]]
                       for s, idx in parts.items()}
        self.dropped = dropped
        self.unclean = 0
        if cfg["clean"]:
            keep = [abc.bars_ok(t)[0] for t in self.tunes["train"]]
            self.unclean = len(keep) - sum(keep)
            self.tunes["train"] = [t for t, k in zip(self.tunes["train"], keep) if k]
        if not self.tunes["train"]:
            raise ValueError(f"{path}: no training tune has bars that fit its meter; pass "
                             "--clean false or other tunes")
        symbols = sorted({t for s in self.tunes.values() for tune in s for t in tune})
        self.vocab = Vocab((abc.END, *symbols), specials=(abc.END,))
        self.splits = {s: self._stream(v) for s, v in self.tunes.items()}
        if len(self.splits["train"]) < 2 * cfg["batch_size"] + 1:
            raise ValueError(f"{path}: {len(self.splits['train'])} training tokens are too "
                             f"few for {cfg['batch_size']} streams; pass more tunes or a "
                             "smaller --batch-size")
        self.path = str(path)

    def _stream(self, tunes):
        ids = [self.vocab.index(abc.END)]
        for t in tunes:
            ids.extend(self.vocab.encode(list(t)).tolist())
            ids.append(self.vocab.index(abc.END))
        return np.array(ids, dtype=np.int64)

    def load_eval(self, path):
        tunes, _ = abc.read_tunes(None if Path(path) == abc.music21_corpus() else path)
        known = [t for _, _, t in tunes if all(s in self.vocab for s in t)]
        if not known:
            raise ValueError(f"{path}: no tune uses only the model's tokens; pass ABC tunes "
                             "like the training ones")
        self.tunes["eval"] = known
        self.splits["eval"] = self._stream(known)

    def describe(self):
        n = {k: len(v) for k, v in self.tunes.items()}
        tok = {k: len(v) for k, v in self.splits.items()}
        why = sorted(self.dropped.items(), key=lambda x: -x[1])[:4]
        lines = [f"tunes: {sum(n.values()) + self.unclean} read, "
                 f"{sum(self.dropped.values())} left out "
                 f"({', '.join(f'{r}: {c}' for r, c in why)})",
                 "split (tunes / tokens): " + ", ".join(f"{k} {n[k]} / {tok[k]}" for k in n),
                 f"vocabulary: {len(self.vocab)} tokens"]
        if self.config["clean"]:
            lines.append(f"--clean: {self.unclean} training tunes with bars that do not fit "
                         "their meter left out")
        return lines

    def state(self):
        return {"vocab": self.vocab.to_dict(),
                "sizes": {k: len(v) for k, v in self.tunes.items()}}

    def report(self, model, out_dir):
        """Test metrics and 3 tunes (temperature 1) in ``sample.abc``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        metrics = self.evaluate(model, "test")
        tunes = self.sample_tunes(model, 3, seed=self.config["seed"])
        text = "".join(abc.tune_text(t, i + 1, f"Sample {i + 1}") for i, t in enumerate(tunes))
        path = out / "sample.abc"
        path.write_text(text, encoding="utf-8")
        self.last_report = {"metrics": {**metrics, "bits_per_token": metrics["bits_per_char"]},
                            "text": "sampled tunes (temperature 1):\n" + text.strip()}
        del self.last_report["metrics"]["bits_per_char"]
        return {"sampled tunes": str(path)}

    def sample_tunes(self, model, n, temperature=1.0, seed=None, max_tokens=800,
                     burn_in=1):
        """``n`` tunes sampled from ``model``: lists of tokens (END left out), each from
        one ``<end>`` to the next (or ``max_tokens`` tokens).

        Training carries the state from one tune into the next, so a tune starts from the
        state the previous one left, never from zeros; each row therefore first samples
        ``burn_in`` tunes that are thrown away, and keeps the next one. The grammar of a
        tune is kept by masking: its first three tokens are drawn among the M:, L: and K:
        tokens respectively, and no header token is drawn in the body; within those sets
        the model's probabilities are used unchanged (renormalised)."""
        from ..generate import Generator

        emb, rnn, dense = model.layers
        gen = Generator(rnn, embedding=emb, output=dense, batch=n, seed=seed)
        syms = self.vocab.symbols
        end = self.vocab.index(abc.END)
        kind = np.array([s[:2] if re.match(r"^[MLK]:", s) else "" for s in syms])
        allowed = np.stack([kind == "M:", kind == "L:", kind == "K:", kind == ""])
        if not allowed[:3].any(axis=1).all():
            raise ValueError("the model's vocabulary has no M:, L: or K: token; it was not "
                             "trained on ABC tunes")
        x = np.full(n, end, np.int64)
        out = [[] for _ in range(n)]
        pos = np.zeros(n, np.int64)       # tokens of the current tune so far
        left = np.full(n, int(burn_in))   # tunes still to throw away
        done = np.zeros(n, bool)
        for _ in range((int(burn_in) + 1) * max_tokens):
            logits = gen.step(x)
            logits[~allowed[np.minimum(pos, 3)]] = -np.inf
            ids = gen.draw(logits, temperature).copy()
            for i in np.flatnonzero(~done):
                if ids[i] != end and pos[i] + 1 >= max_tokens and left[i]:
                    ids[i] = end  # a thrown-away tune that does not end: end it here
                if ids[i] == end:
                    if left[i]:
                        left[i] -= 1
                        out[i], pos[i] = [], 0
                    else:
                        done[i] = True
                    continue
                out[i].append(syms[ids[i]])
                pos[i] += 1
                if pos[i] >= max_tokens and not left[i]:
                    done[i] = True
            if done.all():
                break
            x = ids
        return out

    def predict(self, model, inputs, top=3):
        raise ValueError("the folk task has no predict; sample tunes with `unrolled generate "
                         "MODEL --tunes N --out DIR`")

    def generate(self, model, length=500, temperature=1.0, prime="", top_k=None, seed=None,
                 progress=False):
        if prime or top_k:
            raise ValueError("the folk task samples whole tunes: use `unrolled generate MODEL "
                             "--tunes N --out DIR` (no --prime or --top-k)")
        tunes = self.sample_tunes(model, 1, temperature, seed, max_tokens=length)
        return abc.tune_text(tunes[0], 1, "Generated")


# ------------------------------------------------------------------------------ output

def _midi(text, path):
    """Write the tune ``text`` as MIDI with music21; when music21 cannot write the score
    as parsed (repeats that do not expand, a meter it cannot place), its notes and rests
    are written in order, played once through. Returns None or the reason it failed."""
    import warnings

    try:
        from music21 import converter
    except ModuleNotFoundError:
        return "music21 is not installed; pip install 'unrolled[folk]'"
    try:
        with warnings.catch_warnings(), abc._Timeout(abc.MUSIC21_SECONDS):
            warnings.simplefilter("ignore")
            score = converter.parse(text, format="abc")
            try:
                score.write("midi", fp=str(path))
            except Exception:  # noqa: BLE001 - music21 raises many kinds of errors
                score.flatten().notesAndRests.stream().write("midi", fp=str(path))
        return None
    except TimeoutError as e:
        return f"music21 {e}"
    except Exception as e:  # noqa: BLE001
        return f"{type(e).__name__}: {str(e)[:80]}"


def _renderer():
    return shutil.which("abcm2ps")


def judge(tunes, train=None, corpus=None):
    """The checks of :func:`unrolled.tasks.abc.check_tune` for a list of token lists;
    ``train``: the training tunes for the distance; ``corpus``: every tune, for
    ``copied`` (an exact body of any of them)."""
    near = abc.Nearest(train) if train else None
    every = {tuple(t[3:]) for t in corpus} if corpus else set()
    out = []
    for i, t in enumerate(tunes):
        r = abc.check_tune(t, i + 1, near=near)
        if corpus is not None:
            r["copied"] = tuple(t[3:]) in every or r.get("copied", False)
        out.append(r)
    return out


def summary(results):
    """Counts of a :func:`judge` result: n, parses, bars_ok, valid, copied, distances."""
    n = len(results)
    s = {"n": n, **{k: sum(bool(r[k]) for r in results) for k in ("parses", "bars_ok", "valid")}}
    if results and "distance" in results[0]:
        d = np.array([r["distance"] for r in results])
        s.update(copied=sum(bool(r["copied"]) for r in results), distance_min=float(d.min()),
                 distance_median=float(np.median(d)), distance_mean=float(d.mean()))
    return s


def _summary_line(what, s):
    line = (f"{what}: {s['n']} tunes, {s['parses']} parse ({s['parses'] / s['n']:.0%}), "
            f"{s['bars_ok']} with inner bars that fit the meter, {s['valid']} valid "
            f"({s['valid'] / s['n']:.0%})")
    if "copied" in s:
        line += (f"; {s['copied']} copied; normalised edit distance to the nearest training "
                 f"tune: min {s['distance_min']:.3f}, median {s['distance_median']:.3f}")
    return line


def write_tunes(task, model, n, out_dir, temperature=1.0, seed=None, check=False, log=print):
    """Sample ``n`` tunes into ``out_dir``: ``tune_NNN.abc`` and ``tune_NNN.mid`` each,
    ``tunes.abc`` (all of them), ``index.html``; with ``check``, ``checks.json`` and
    ``checks.txt`` judging the tunes and 30 held-out real tunes the same way."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tunes = task.sample_tunes(model, n, temperature, seed)
    rows = []
    for i, toks in enumerate(tunes, 1):
        text = abc.tune_text(toks, i, f"Generated tune {i}")
        (out / f"tune_{i:03d}.abc").write_text(text, encoding="utf-8")
        err = _midi(text, out / f"tune_{i:03d}.mid")
        rows.append({"index": i, "text": text, "midi": None if err else f"tune_{i:03d}.mid",
                     "midi_error": err})
    (out / "tunes.abc").write_text("".join(r["text"] for r in rows), encoding="utf-8")
    lines = []
    if check:
        data = task.config.get("data")
        log(f"checking against the training tunes of {data} ...")
        vocab = task.vocab
        try:
            task.load(data)
        finally:
            task.vocab = vocab  # the model's own tokens
        train, corpus = task.tunes["train"], [t for v in task.tunes.values() for t in v]
        gen = judge(tunes, train, corpus)
        rng = np.random.default_rng(0)
        test = task.tunes["test"]
        pick = rng.choice(len(test), size=min(30, len(test)), replace=False)
        real = judge([test[k] for k in pick], train)
        for r, g in zip(rows, gen):
            r["check"] = g
        sg, sr = summary(gen), summary(real)
        lines = [_summary_line("generated", sg), _summary_line("real (held-out test tunes)", sr)]
        lines += ["", "tune  parses  bars  distance  note"]
        lines += [f"{k + 1:4d}  {'yes' if g['parses'] else 'no':6s}  "
                  f"{'ok' if g['bars_ok'] else 'bad':4s}  {g['distance']:.3f}     "
                  f"{'COPIED ' if g['copied'] else ''}{g['parse_message'] or g['bars_message']}"
                  for k, g in enumerate(gen)]
        (out / "checks.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        (out / "checks.json").write_text(json.dumps(
            {"generated": sg, "real": sr, "tunes": gen, "real_tunes": real},
            indent=1, default=float) + "\n", encoding="utf-8")
    _index(out, rows, lines)
    return rows, lines


def _index(out, rows, lines):
    renderer = _renderer()
    parts = ["<!doctype html><meta charset='utf-8'><title>Generated folk tunes</title>",
             "<style>body{font-family:sans-serif;max-width:60em;margin:auto}"
             "pre{background:#f6f6f6;padding:.5em}</style>",
             f"<h1>{len(rows)} generated folk tunes</h1>"]
    if lines:
        parts.append("<pre>" + html.escape("\n".join(lines[:2])) + "</pre>")
    if renderer is None:
        parts.append("<p>No ABC renderer was found (install <code>abcm2ps</code> to see "
                     "sheet music); the tunes are shown as ABC text.</p>")
    for r in rows:
        i = r["index"]
        parts.append(f"<h2>Tune {i}</h2>")
        svg = None
        if renderer is not None:
            try:
                subprocess.run([renderer, "-q", "-g", "-O", str(out / f"tune_{i:03d}.svg"),
                                str(out / f"tune_{i:03d}.abc")], check=True, timeout=30,
                               capture_output=True)
                svg = sorted(out.glob(f"tune_{i:03d}*.svg"))
            except (OSError, subprocess.SubprocessError):
                svg = None
        if svg:
            parts += [f"<img src='{p.name}' alt='tune {i}'>" for p in svg]
        parts.append("<pre>" + html.escape(r["text"]) + "</pre>")
        links = [f"<a href='tune_{i:03d}.abc'>ABC</a>"]
        links.append(f"<a href='{r['midi']}'>MIDI</a>" if r["midi"]
                     else f"no MIDI ({html.escape(r['midi_error'] or '')})")
        if "check" in r:
            c = r["check"]
            links.append(f"parses: {'yes' if c['parses'] else 'no'}, bars: "
                         f"{'ok' if c['bars_ok'] else html.escape(c['bars_message'])}, "
                         f"distance to nearest training tune {c['distance']:.3f}")
        parts.append("<p>" + " · ".join(links) + "</p>")
    (out / "index.html").write_text("\n".join(parts) + "\n", encoding="utf-8")
