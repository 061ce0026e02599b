"""A character vocabulary: symbols <-> integer ids, saved as plain JSON.

Special symbols (for example ``"<pad>"`` or ``"<eos>"``) take the first ids, followed by
the characters of the training text in sorted order, so the same text always gives the
same ids. Encoding a character the vocabulary has never seen is an error that names it;
nothing is silently mapped to an "unknown" id.
"""

import numpy as np

__all__ = ["Vocab"]

_FORMAT = "unrolled.vocab"


class Vocab:
    """An ordered set of symbols; symbol ``i`` has id ``i``.

    Args:
        symbols: the symbols in id order (strings; characters are length-1 strings).
        specials: the leading symbols that are special tokens (a prefix of
            ``symbols``); multi-character specials are encoded from a list of
            symbols, since a string is read one character at a time.

    Use :meth:`from_text` to build one from data and :meth:`to_dict` / :meth:`from_dict`
    to store it with a model.

    >>> v = Vocab.from_text("hello", specials=["<pad>"])
    >>> v.symbols
    ('<pad>', 'e', 'h', 'l', 'o')
    >>> v.encode("hole").tolist()
    [2, 4, 3, 1]
    >>> v.decode([2, 1, 3, 3, 4])
    'hello'
    """

    def __init__(self, symbols, specials=()):
        symbols, specials = tuple(symbols), tuple(specials)
        for s in symbols:
            if not isinstance(s, str) or s == "":
                raise ValueError(f"vocabulary symbols must be non-empty strings, got {s!r}")
        seen = set()
        dups = [s for s in symbols if s in seen or seen.add(s)]
        if dups:
            raise ValueError(f"vocabulary symbols must be unique; repeated: {dups[:10]!r}")
        if symbols[: len(specials)] != specials:
            raise ValueError(
                f"specials {list(specials)!r} must be the first symbols of the vocabulary"
            )
        self.symbols = symbols
        self.specials = specials
        self._index = {s: i for i, s in enumerate(symbols)}
        # fast path for text: sorted code points of the one-character symbols and their ids
        chars = sorted((ord(s), i) for i, s in enumerate(symbols) if len(s) == 1)
        self._codes = np.array([c for c, _ in chars], dtype=np.uint32)
        self._code_ids = np.array([i for _, i in chars], dtype=np.int64)

    @classmethod
    def from_text(cls, text, specials=()):
        """Build a vocabulary from the characters of ``text``.

        Args:
            text: a string, or an iterable of strings (e.g. a list of names).
            specials: special symbols placed first, in the order given.

        Returns:
            A :class:`Vocab` with ``specials`` followed by the distinct characters of
            ``text`` in sorted (code point) order.
        """
        chars = set(text) if isinstance(text, str) else set().union(*map(set, text))
        specials = tuple(specials)
        clash = sorted(chars & set(specials))
        if clash:
            raise ValueError(
                f"special symbols {clash!r} also occur as characters of the text; "
                "choose specials that cannot occur in the text, such as '<pad>'"
            )
        return cls(specials + tuple(sorted(chars)), specials)

    def __len__(self):
        return len(self.symbols)

    def __contains__(self, symbol):
        return symbol in self._index

    def __eq__(self, other):
        return (
            isinstance(other, Vocab)
            and self.symbols == other.symbols
            and self.specials == other.specials
        )

    def __repr__(self):
        shown = "".join(s for s in self.symbols[len(self.specials) :][:40])
        more = "..." if len(self.symbols) - len(self.specials) > 40 else ""
        return (
            f"Vocab({len(self)} symbols, specials={list(self.specials)!r}, chars={shown + more!r})"
        )

    def index(self, symbol):
        """The id of one symbol (a character or a special); ValueError if unknown."""
        try:
            return self._index[symbol]
        except KeyError:
            self._unknown([symbol], repr(symbol))

    def encode(self, seq):
        """Map symbols to ids.

        Args:
            seq: a string (each character is one symbol) or a list of symbols (which
                may include specials, e.g. ``["<bos>", "a", "b"]``).

        Returns:
            ``(n,)`` int64 array of ids.

        Raises:
            ValueError: if any symbol is not in the vocabulary; the message lists the
                unknown symbols and where the first one occurs.
        """
        if isinstance(seq, str):
            # code points of the text, then a binary search among the known ones
            codes = np.frombuffer(seq.encode("utf-32-le"), dtype=np.uint32)
            pos = np.searchsorted(self._codes, codes)
            pos = np.minimum(pos, max(len(self._codes) - 1, 0))
            known = (self._codes[pos] == codes) if len(self._codes) else np.zeros(len(codes), bool)
            if not known.all():
                self._unknown(seq, _clip(seq))
            return self._code_ids[pos]
        ids = [self._index.get(s, -1) for s in seq]
        if -1 in ids:
            self._unknown(seq, _clip(repr(list(seq))))
        return np.array(ids, dtype=np.int64)

    def decode(self, ids):
        """Map ids back to a string (specials are written as their symbol text).

        Args:
            ids: a sequence or 1-D array of ints in ``0..len(self)-1``.
        """
        ids = np.asarray(ids)
        if ids.ndim != 1:
            raise ValueError(
                f"decode() takes one sequence of ids (1-D), got shape {ids.shape}; "
                "decode each row of a batch separately"
            )
        if ids.size and (ids.min() < 0 or ids.max() >= len(self.symbols)):
            bad = ids[(ids < 0) | (ids >= len(self.symbols))]
            raise ValueError(
                f"ids {sorted(set(bad.tolist()))[:10]} are outside the vocabulary of "
                f"{len(self)} symbols; were they made with a different vocabulary?"
            )
        return "".join(self.symbols[i] for i in ids.tolist())

    def to_dict(self):
        """A JSON-safe dict (lists of strings) that :meth:`from_dict` turns back into
        an equal vocabulary."""
        return {
            "format": _FORMAT,
            "version": 1,
            "symbols": list(self.symbols),
            "specials": list(self.specials),
        }

    @classmethod
    def from_dict(cls, d):
        """Rebuild a vocabulary saved with :meth:`to_dict`; checks the format."""
        if not isinstance(d, dict) or d.get("format") != _FORMAT:
            raise ValueError(
                "not a saved vocabulary (expected a dict with format "
                f"'{_FORMAT}'); pass the dict written by Vocab.to_dict()"
            )
        if d.get("version") != 1:
            raise ValueError(
                f"vocabulary format version {d.get('version')!r} is not supported "
                "(this version of unrolled reads version 1); upgrade unrolled"
            )
        return cls(d["symbols"], d.get("specials", ()))

    def _unknown(self, seq, shown):
        unknown = []
        for s in seq:
            if s not in self._index and s not in unknown:
                unknown.append(s)
        first = next(i for i, s in enumerate(seq) if s not in self._index)
        listed = ", ".join(repr(s) for s in unknown[:10])
        more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
        raise ValueError(
            f"cannot encode {shown}: {len(unknown)} symbol(s) not in the vocabulary: "
            f"{listed}{more} (first at position {first}); the vocabulary has "
            f"{len(self)} symbols from the training data; remove or replace these "
            "characters, or train on data that contains them"
        )


def _clip(s, n=40):
    """Shorten a long string for an error message."""
    return repr(s) if len(s) <= n else repr(s[:n]) + f"... ({len(s)} characters)"
