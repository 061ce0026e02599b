"""ABC notation for the ``folk`` task: read, normalise and tokenise tunes, and judge them.

A tune is kept as a list of *tokens*, one per ABC symbol (as folk-rnn v2 did, Sturm et
al. 2016): the meter, unit length and key headers as one token each (``M:6/8``,
``L:1/8``, ``K:Dmix``), bar lines and repeat signs (``|``, ``|:``, ``:|``, ``||``,
``|]``, ``|1``, ``:|2``), pitches with their accidentals and octave marks (``^c``,
``=F``, ``a'``, ``B,``), rests (``z``), durations (``2``, ``/2``, ``3/2``), broken
rhythms (``>``, ``<``) and tuplets (``(3``). The title and index (``X:``, ``T:``) are
not modelled: they are written around each generated tune.

Normalisation (:func:`normalise_tune`) keeps the notes and bar lines and drops what a
melody does not need: comments, text in quotes (chord symbols, annotations,
fingerings), decorations (``!trill!``, ``~``, ``.``, bowings ``u``/``v``), slurs, ties,
grace notes, line continuations, lyrics and every header but M, L, K. Tunes it cannot
reduce to one melody in one meter and key (inline field changes, several voices,
chords, free meter, unparsed symbols) are left out, with the reason counted.

Judging tunes (:func:`check_tune`), as the folk-rnn authors did: does music21 parse
it; do its inner bars all last what the meter says (:func:`bar_lengths`); is it new
(:func:`nearest`: the normalised edit distance of its body to the nearest training
tune; 0 is a copy).
"""
import re
from fractions import Fraction
from pathlib import Path

import numpy as np

__all__ = ["FOLK_COLLECTIONS", "END", "bar_lengths", "bars_ok", "check_tune", "detokenize",
           "edit_distance", "music21_corpus", "nearest", "normalise_tune", "parse_ok",
           "read_tunes", "split_tunes", "tokenize_body", "tune_text"]

#: the folk collections of music21's corpus read by default (folders of .abc files)
FOLK_COLLECTIONS = ("airdsAirs", "essenFolksong", "miscFolk", "nottingham-dataset",
                    "oneills1850", "ryansMammoth")
#: the token that ends a tune (and starts the next)
END = "<end>"

_BAR = r"(?::*\|[\]|]?:*|:*\[\|:*|::)(?:[1-4](?![/\d]))?|\[[1-4]"
_TOKEN = re.compile(
    rf"(?P<bar>{_BAR})"
    r"|(?P<tuplet>\([2-9](?::\d?){0,2})"
    r"|(?P<pitch>[_^=]{0,2}[A-Ga-g][,']*)"
    r"|(?P<rest>z)"
    r"|(?P<len>\d*/+\d*|\d+)"
    r"|(?P<broken>[<>]{1,3})")
_KEY = re.compile(r"^([A-G][#b]?)(maj|major|ion|ionian|m|min|minor|aeo|aeolian|dor|dorian|"
                  r"mix|mixolydian|lyd|lydian|phr|phrygian|loc|locrian)?$", re.I)
_MODES = {"": "", "maj": "", "major": "", "ion": "", "ionian": "", "m": "m", "min": "m",
          "minor": "m", "aeo": "m", "aeolian": "m", "dor": "dor", "dorian": "dor",
          "mix": "mix", "mixolydian": "mix", "lyd": "lyd", "lydian": "lyd", "phr": "phr",
          "phrygian": "phr", "loc": "loc", "locrian": "loc"}


def music21_corpus():
    """The folder of music21's corpus (via importlib.resources); ValueError naming the
    fix when music21 is not installed."""
    try:
        from importlib.resources import files

        return Path(str(files("music21") / "corpus"))
    except ModuleNotFoundError:
        raise ValueError("the folk task reads the ABC tunes shipped with music21, which is "
                         "not installed; pip install 'unrolled[folk]' (or music21), or pass "
                         "--data FILE.abc") from None


# ------------------------------------------------------------------------------ reading

def split_tunes(text):
    """The tunes of an ABC file: a list of strings, each starting at an ``X:`` line."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    parts = re.split(r"(?m)^(?=X:)", text)
    return [p for p in parts if p.startswith("X:")]


def _meter(value):
    v = value.strip()
    if v in ("C", "c"):
        return "4/4"
    if v in ("C|", "c|"):
        return "2/2"
    m = re.fullmatch(r"(\d+)\s*/\s*(\d+)", v)
    return f"{int(m[1])}/{int(m[2])}" if m else None


def _key(value):
    v = value.split("%")[0].strip().replace(" ", "")
    m = _KEY.match(v)
    if not m:
        return None
    return "K:" + m[1] + _MODES[(m[2] or "").lower()]


def normalise_tune(text):
    """One tune's ABC text reduced to ``(tokens, reason)``.

    ``tokens``: ``[M, L, K, body tokens...]`` (see the module doc), or None when the
    tune is left out; ``reason``: None, or a few words saying why it was left out.
    """
    fields, body = {}, []
    in_body = False
    for raw in text.split("\n"):
        if not raw.strip():
            if in_body:
                break  # a blank line ends the tune
            continue
        line = raw.split("%", 1)[0].rstrip()
        if not line.strip():
            continue  # a comment
        m = re.match(r"^([A-Za-z]):(.*)$", line)
        if m and not (in_body and (m[1] in "ABCDEFGabcdefgz" or m[2].startswith("|"))):
            key, value = m[1], m[2].strip()
            if in_body and key in "MLKV":
                return None, f"{key}: changes inside the tune"
            if key == "K":
                fields.setdefault("K", value)
                in_body = True
            elif key in "ML" and not in_body:
                fields.setdefault(key, value)
            elif key == "V":
                return None, "several voices"
            continue
        if in_body:
            body.append(line)
    if "K" not in fields:
        return None, "no K: field"
    meter = _meter(fields.get("M", "none"))
    if meter is None:
        return None, f"meter {fields.get('M', '(none)')!r}"
    key = _key(fields["K"])
    if key is None:
        return None, f"key {fields['K']!r}"
    unit = fields.get("L")
    if unit is None:  # ABC's default unit: 1/16 below a meter of 3/4, else 1/8
        unit = "1/16" if Fraction(meter) < Fraction(3, 4) else "1/8"
    um = re.fullmatch(r"(\d+)\s*/\s*(\d+)", unit.strip())
    if not um:
        return None, f"unit length {unit!r}"
    s = " ".join(body)
    if re.search(r"\[[A-Za-z]:", s):
        return None, "inline field"
    if "&" in s:
        return None, "several voices"
    s = re.sub(r'"[^"]*"', " ", s)              # chord symbols, annotations, fingerings
    s = re.sub(r"![^!]*!|\+[^+\s]*\+", " ", s)  # decorations !trill! +fermata+
    s = re.sub(r"\{[^}]*\}", " ", s)            # grace notes
    s = re.sub(r"\((?![2-9])", " ", s)          # slurs (not tuplets)
    s = s.replace(")", " ").replace("-", " ").replace("\\", " ").replace("`", " ")
    s = re.sub(r"[.~HIJKLMNOPQRSTUVWYhijklmnopqrstuvwy$*#@;?]", " ", s)  # decorations, spacers
    s = s.replace("x", "z")  # invisible rests
    if "[" in re.sub(_BAR, "", s) or "Z" in s:
        return None, "chords or multi-bar rests"
    s = re.sub(r"\s+", "", s)
    tokens = tokenize_body(s)
    if tokens is None:
        return None, "unknown symbols"
    if not any(t[0] in "_^=ABCDEFGabcdefgz" for t in tokens):
        return None, "no notes"
    return [f"M:{meter}", f"L:{int(um[1])}/{int(um[2])}", key] + tokens, None


def tokenize_body(s):
    """The tokens of a normalised body string (no spaces), or None if a symbol is not
    one of the token kinds of the module doc."""
    out, i = [], 0
    while i < len(s):
        m = _TOKEN.match(s, i)
        if not m:
            return None
        out.append(m[0])
        i = m.end()
    return out


def read_tunes(path=None, collections=FOLK_COLLECTIONS):
    """Tunes under ``path`` (an .abc file or a folder searched for .abc files; None: the
    folk collections of music21's corpus).

    Returns ``(tunes, dropped)``: ``tunes`` a list of ``(source, title, tokens)`` in file
    order; ``dropped`` a dict ``{reason: count}`` of the tunes left out.
    """
    if path is None:
        root = music21_corpus()
        files = sorted(f for c in collections for f in (root / c).rglob("*.abc"))
    else:
        path = Path(path)
        if not path.exists():
            raise ValueError(f"{path}: no such file or folder; pass --data FILE.abc or a "
                             "folder of .abc files")
        files = [path] if path.is_file() else sorted(path.rglob("*.abc"))
        if not files:
            raise ValueError(f"{path}: no .abc files in this folder; pass --data FILE.abc or "
                             "a folder of .abc files")
    tunes, dropped = [], {}
    for f in files:
        text = f.read_text(encoding="utf-8", errors="replace")
        for t in split_tunes(text):
            toks, reason = normalise_tune(t)
            if toks is None:
                dropped[reason] = dropped.get(reason, 0) + 1
                continue
            m = re.search(r"(?m)^T:(.*)$", t)
            tunes.append((f.name, m[1].strip() if m else "", toks))
    return tunes, dropped


def _length_token(d):
    """The ABC length token of a duration ``d`` (a Fraction of the unit): "" for 1, "3",
    "/2", "3/2", ..."""
    if d == 1:
        return ""
    if d.denominator == 1:
        return str(d.numerator)
    return ("" if d.numerator == 1 else str(d.numerator)) + f"/{d.denominator}"


def rescale(tokens, unit="1/8"):
    """The tune ``tokens`` written with the unit length ``unit`` (``L:`` replaced, every
    note's and rest's length multiplied by old unit / new unit and written in one way:
    ``/2`` never ``/``). Broken rhythms and tuplets are relative and stay as they are; the
    music (every duration in whole notes) is unchanged."""
    new = Fraction(unit)
    out, factor = [], Fraction(1)
    for t in tokens:
        if t.startswith("L:"):
            factor = Fraction(t[2:]) / new
            out.append(f"L:{new.numerator}/{new.denominator}")
    i, body = 0, [t for t in tokens if not t.startswith("L:")]
    head = [t for t in body if re.match(r"^[MK]:", t)]
    out = head[:1] + out + head[1:]
    body = [t for t in body if t not in head]
    while i < len(body):
        t = body[i]
        out.append(t)
        if re.fullmatch(r"[_^=]{0,2}[A-Ga-g][,']*|z", t):
            d = Fraction(1)
            if i + 1 < len(body) and re.fullmatch(r"\d*/+\d*|\d+", body[i + 1]):
                d = _length(body[i + 1])
                i += 1
            tok = _length_token(d * factor)
            if tok:
                out.append(tok)
        i += 1
    return out


# ------------------------------------------------------------------------------ writing

def detokenize(tokens, bars_per_line=4):
    """``(header lines, body text)`` of a tune's tokens (END tokens ignored): the body
    broken after every ``bars_per_line`` bar lines."""
    head = [t for t in tokens if re.match(r"^[MLK]:", t)]
    body = [t for t in tokens if t != END and not re.match(r"^[MLK]:", t)]
    lines, cur, bars = [], [], 0
    for t in body:
        cur.append(t)
        if _is_bar(t):
            bars += 1
            if bars % bars_per_line == 0:
                lines.append("".join(cur))
                cur = []
    if cur:
        lines.append("".join(cur))
    return head, "\n".join(lines)


def tune_text(tokens, index=1, title="Untitled"):
    """A whole ABC tune (X, T, M, L, K headers, body, a blank line) from its tokens."""
    head, body = detokenize(tokens)
    order = {"M": 0, "L": 1, "K": 2}
    head = sorted(head, key=lambda h: order[h[0]])
    return "\n".join([f"X:{index}", f"T:{title}", *head, body]) + "\n\n"


# ------------------------------------------------------------------------------ judging

def _is_bar(t):
    return bool(re.fullmatch(_BAR, t))


def _section(t):
    """A bar line that starts or ends a section (repeat, double bar, ending)."""
    return _is_bar(t) and t != "|"


def _length(tok):
    if not tok:
        return Fraction(1)
    if "/" in tok:
        num, _, den = tok.partition("/")
        slashes = tok.count("/")
        num = int(num) if num else 1
        den = int(den.lstrip("/")) if den.lstrip("/") else 2 ** slashes
        return Fraction(num, den)
    return Fraction(int(tok))


def bar_lengths(tokens):
    """The bars of a tune: a list of ``(length, before, after)``, the length in units of
    L as a Fraction, ``before``/``after`` the bar lines around it (None at the start or
    end). Empty bars (two bar lines in a row) are left out.

    Durations follow the ABC standard: a number after a note multiplies the unit, ``/n``
    divides it (``/`` alone halves it), ``a>b`` makes the first note 3/2 and the second
    1/2 (``>>``: 7/4 and 1/4), ``(p`` plays the next p notes in the time of q
    (q = 3 for p in 2, 4, 8, else 2).
    """
    head = [t for t in tokens if re.match(r"^[MLK]:", t)]
    body = [t for t in tokens if t != END and t not in head]
    notes = []  # (index into bars, duration)
    bars, cur, before = [], Fraction(0), None
    has_note = False
    tuplet_left, tuplet_factor = 0, Fraction(1)
    pending_broken = None  # multiplier for the next note
    i = 0
    while i < len(body):
        t = body[i]
        if _is_bar(t):
            if has_note:
                bars.append([cur, before, t])
            elif bars and before is not None:
                pass
            before, cur, has_note = t, Fraction(0), False
            i += 1
            continue
        if t.startswith("("):
            parts = t[1:].split(":")
            p = int(parts[0])
            q = int(parts[1]) if len(parts) > 1 and parts[1] else {2: 3, 4: 3, 8: 3}.get(p, 2)
            r = int(parts[2]) if len(parts) > 2 and parts[2] else p
            tuplet_left, tuplet_factor = r, Fraction(q, p)
            i += 1
            continue
        if t[0] in "<>":
            i += 1  # stray broken rhythm (handled with its notes)
            continue
        if re.fullmatch(r"[_^=]{0,2}[A-Ga-g][,']*|z", t):
            d = Fraction(1)
            if i + 1 < len(body) and re.fullmatch(r"\d*/+\d*|\d+", body[i + 1]):
                d = _length(body[i + 1])
                i += 1
            if pending_broken is not None:
                d *= pending_broken
                pending_broken = None
            if i + 1 < len(body) and body[i + 1][0] in "<>":
                b = body[i + 1]
                n = len(b)
                short = Fraction(1, 2 ** n)
                long_ = 2 - short
                if b[0] == ">":
                    d *= long_
                    pending_broken = short
                else:
                    d *= short
                    pending_broken = long_
                i += 1
            if tuplet_left:
                d *= tuplet_factor
                tuplet_left -= 1
            notes.append(d)
            cur += d
            has_note = True
            i += 1
            continue
        i += 1  # a lone duration: no note to lengthen
    if has_note:
        bars.append([cur, before, None])
    return [tuple(b) for b in bars]


def bar_length(tokens):
    """The length a full bar should have, in units of L (Fraction), from M and L."""
    m = next(t for t in tokens if t.startswith("M:"))
    u = next(t for t in tokens if t.startswith("L:"))
    return Fraction(m[2:]) / Fraction(u[2:])


def bars_ok(tokens):
    """``(ok, message)``: whether every inner bar lasts exactly what M and L say.

    The first and last bars may be pickups (shorter); a bar next to a section boundary
    (a repeat sign, a double bar or an ending) may be shorter too, since tunes start each
    part with a pickup that the bar before the boundary completes. No bar may be longer,
    and a tune needs at least two bars.
    """
    try:
        full = bar_length(tokens)
    except (StopIteration, ValueError, ZeroDivisionError):
        return False, "no valid M: or L: header"
    bars = bar_lengths(tokens)
    if len(bars) < 2:
        return False, f"{len(bars)} bar(s)"
    for k, (n, before, after) in enumerate(bars):
        if n > full:
            return False, f"bar {k + 1} lasts {n} units, more than the meter's {full}"
        if n < full:
            edge = k == 0 or k == len(bars) - 1
            section = (before is not None and _section(before)) or \
                      (after is not None and _section(after))
            if not (edge or section):
                return False, f"bar {k + 1} lasts {n} units, less than the meter's {full}"
    return True, ""


class _Timeout:
    """Raise TimeoutError in the block after ``seconds`` (SIGALRM; in the main thread of
    a Unix process only, elsewhere the block runs to its end)."""

    def __init__(self, seconds):
        self.seconds = seconds

    def __enter__(self):
        import signal
        import threading

        self.on = (hasattr(signal, "setitimer")
                   and threading.current_thread() is threading.main_thread())
        if self.on:
            def stop(signum, frame):
                raise TimeoutError(f"did not finish in {self.seconds:g} s")

            self.old = signal.signal(signal.SIGALRM, stop)
            signal.setitimer(signal.ITIMER_REAL, self.seconds)
        return self

    def __exit__(self, *exc):
        import signal

        if self.on:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self.old)
        return False


#: seconds music21 may spend on one tune (its ABC reader can take minutes re-barring a
#: bar whose overflow has an odd length)
MUSIC21_SECONDS = 10


def parse_ok(text, seconds=None):
    """``(ok, message)``: whether music21 parses the ABC tune ``text`` into at least one
    note within ``seconds`` (default :data:`MUSIC21_SECONDS`; needs music21)."""
    import warnings

    try:
        from music21 import converter
    except ModuleNotFoundError:
        raise ValueError("checking tunes needs music21's ABC parser; pip install "
                         "'unrolled[folk]' (or music21)") from None
    try:
        with warnings.catch_warnings(), _Timeout(seconds or MUSIC21_SECONDS):
            warnings.simplefilter("ignore")
            score = converter.parse(text, format="abc")
            n = len(score.flatten().notes)
    except TimeoutError as e:
        return False, f"music21 {e}"
    except Exception as e:  # music21 raises many kinds of errors on bad ABC
        return False, f"{type(e).__name__}: {str(e)[:80]}"
    return (n > 0), ("" if n else "no notes")


def edit_distance(a, b, limit=None):
    """Levenshtein distance between two int sequences (insert, delete, substitute: 1);
    stops early and returns a value > ``limit`` once every cell of a row exceeds it."""
    return int(_edit(np.asarray(a, np.int64), np.asarray(b, np.int64),
                     -1 if limit is None else int(limit)))


def _edit_py(a, b, limit):
    n, m = len(a), len(b)
    prev = np.arange(m + 1, dtype=np.int64)
    cur = np.empty(m + 1, dtype=np.int64)
    for i in range(1, n + 1):
        cur[0] = i
        best = i
        for j in range(1, m + 1):
            c = prev[j - 1] + (a[i - 1] != b[j - 1])
            d = prev[j] + 1
            if d < c:
                c = d
            d = cur[j - 1] + 1
            if d < c:
                c = d
            cur[j] = c
            if c < best:
                best = c
        if limit >= 0 and best > limit:
            return best
        prev, cur = cur, prev
    return prev[m]


try:
    import numba

    _edit = numba.njit(cache=True, nogil=True)(_edit_py)
except ImportError:  # pragma: no cover - numba is a dependency
    _edit = _edit_py


def _body_ids(tokens, index):
    return np.array([index.setdefault(t, len(index)) for t in tokens
                     if t != END and not re.match(r"^[MLK]:", t)], dtype=np.int64)


class Nearest:
    """The training tunes, ready for :meth:`find` (nearest tune by edit distance of the
    bodies, normalised by the longer body)."""

    def __init__(self, corpus_tokens):
        self.index = {}
        self.bodies = [_body_ids(t, self.index) for t in corpus_tokens]
        self.lengths = np.array([len(b) for b in self.bodies])
        self.exact = {b.tobytes(): k for k, b in enumerate(self.bodies)}

    def find(self, tokens):
        """``(distance, k)``: the smallest normalised edit distance to a training tune
        and that tune's position (0.0: an exact copy of its body)."""
        index = dict(self.index)
        q = _body_ids(tokens, index)
        k = self.exact.get(q.tobytes())
        if k is not None:
            return 0.0, k
        n = len(q)
        longer = np.maximum(self.lengths, n)
        # |len(a) - len(b)| bounds the distance from below: look at the likeliest first
        bound = np.abs(self.lengths - n) / np.maximum(longer, 1)
        best, arg = 1.0, -1
        for k in np.argsort(bound, kind="stable"):
            if bound[k] >= best:
                break
            limit = int(best * longer[k])
            d = edit_distance(q, self.bodies[k], limit) / max(longer[k], 1)
            if d < best:
                best, arg = d, int(k)
        return best, arg


def nearest(tokens, corpus_tokens):
    """``(distance, k)`` of :meth:`Nearest.find` for one tune (build a :class:`Nearest`
    once to judge many)."""
    return Nearest(corpus_tokens).find(tokens)


def check_tune(tokens, index=1, title="Untitled", near=None):
    """Every check of one tune: a dict with ``parses``, ``bars_ok`` (bool), ``valid``
    (both), the messages, and with ``near`` (a :class:`Nearest`) ``distance`` and
    ``copied`` (distance 0)."""
    p, pmsg = parse_ok(tune_text(tokens, index, title))
    b, bmsg = bars_ok(tokens)
    out = {"parses": p, "parse_message": pmsg, "bars_ok": b, "bars_message": bmsg,
           "valid": p and b}
    if near is not None:
        d, k = near.find(tokens)
        out.update(distance=d, nearest=k, copied=d == 0.0)
    return out
