"""CNTK Text Format (CTF): a streaming reader, a writer, and padded minibatches.

The format is the one read by CNTK's ``CNTKTextFormatReader`` (CNTK docs,
"BrainScript CNTKTextFormat Reader"). One line holds one sample (time step) of one or
more named streams::

    [sequence_id] |name value value ... |other index:value ... |# comment

- A line may start with a sequence id (decimal digits). Consecutive lines with the same
  id form one sequence. A line without an id continues the current sequence when that
  sequence has an id (as in CNTK's own example), and is a sequence of its own otherwise,
  so a file without any ids holds one sequence per line.
- ``|name`` starts a sample of stream ``name``; its values follow, separated by spaces
  or tabs. A dense sample has exactly ``dim`` numbers; a sparse sample has zero or more
  ``index:value`` entries with ``0 <= index < dim`` (no entry: an all-zero row; an index
  given twice: the values add up, as in a sparse matrix).
- ``|#`` starts a comment that runs to the next ``|`` or the end of the line; a ``|``
  inside a comment is written ``|#`` (which simply starts another comment).
- A stream may be absent from a line, so streams of one sequence may have different
  numbers of rows (one intent label for a whole utterance beside one slot label per
  word). A stream may appear at most once per line.
- Blank lines and lines holding only comments are ignored.

Public functions: :func:`read_ctf` (lazy, line by line), :func:`write_ctf` (its inverse),
:func:`ctf_minibatches` (padded, masked minibatches) and :func:`infer_ctf_streams` (the
stream table of a file, guessed by reading it once). See ``docs/ctf.md``.
"""

import os
import random
import re
import warnings
from collections import namedtuple

import numpy as np

from ..io import atomic_open
from .batching import pad

__all__ = ["CTFBatch", "ctf_minibatches", "infer_ctf_streams", "read_ctf", "write_ctf"]

_KINDS = ("dense", "sparse")
_TOKEN = re.compile(r"\S+")


# ----------------------------------------------------------------------------- streams

def _check_streams(streams):
    """Validate a stream table ``{name: (dim, "dense" | "sparse")}``; return it as a dict."""
    if not isinstance(streams, dict) or not streams:
        raise TypeError(
            "streams must be a non-empty dict {name: (dim, 'dense' | 'sparse')}, "
            f"got {streams!r}")
    out = {}
    for name, spec in streams.items():
        if not isinstance(name, str) or not name or name[0] == "#" or "|" in name \
                or any(c.isspace() for c in name):
            raise ValueError(
                f"stream name {name!r} is not valid in CTF: use a non-empty name without "
                "spaces or '|' that does not start with '#'")
        try:
            dim, kind = spec
        except (TypeError, ValueError):
            raise TypeError(
                f"streams[{name!r}] must be a pair (dim, 'dense' | 'sparse'), got {spec!r}"
            ) from None
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
            raise ValueError(f"streams[{name!r}]: dim must be a positive integer, got {dim!r}")
        if kind not in _KINDS:
            raise ValueError(
                f"streams[{name!r}]: kind must be 'dense' or 'sparse', got {kind!r}")
        out[name] = (int(dim), kind)
    return out


def _check_dtype(dtype):
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        raise TypeError(f"dtype must be a floating type such as float32, got {dtype}")
    return dtype


# ----------------------------------------------------------------------------- reader

# byte -> is it a separator (space, tab, newline, ...)
_SPACE = np.zeros(256, dtype=bool)
_SPACE[[9, 10, 11, 12, 13, 32]] = True


def _fromstring_raises():
    """Whether np.fromstring raises on text it cannot parse (recent NumPy) rather than
    warning and returning what it read so far (older NumPy 2.x)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            np.fromstring("1 x", sep=" ")
        except ValueError:
            return True
    return False


_FROMSTRING_RAISES = _fromstring_raises()


class _Rows:
    """The samples of one stream in the sequence being read.

    Dense samples keep their text and are parsed once per sequence (one C-level parse
    instead of one Python float per value); sparse samples are parsed as they come.
    """

    __slots__ = ("bodies", "cols", "cols1", "dim", "lines", "n", "name", "offs", "rows",
                 "sparse", "values")

    def __init__(self, name, dim, sparse):
        self.name, self.dim, self.sparse = name, dim, sparse
        self.clear()

    def clear(self):
        self.n = 0         # samples (rows) so far
        self.bodies = []   # dense: the text of each sample's values
        self.lines = []    # dense: line number of each sample
        self.cols1 = []    # dense: column (1-based) of the '|' that starts each sample
        self.offs = []     # dense: 0-based offset of each sample's values in its line
        self.values = []   # sparse: value of each entry
        self.rows = []     # sparse: row of each entry
        self.cols = []     # sparse: column (index) of each entry

    def add(self, data, lineno, col1, off):
        """Append one sample: the values' text (dense) or (indices, values) (sparse)."""
        if self.sparse:
            idx, val = data
            self.rows.extend([self.n] * len(idx))
            self.cols.extend(idx)
            self.values.extend(val)
        else:
            self.bodies.append(data)
            self.lines.append(lineno)
            self.cols1.append(col1)
            self.offs.append(off)
        self.n += 1

    def to_array(self, dtype):
        """The rows as an (n, dim) array; raises _LineError for malformed dense text."""
        x = np.zeros((self.n, self.dim), dtype=dtype)  # (n, dim)
        if self.sparse:
            if self.values:
                # add, not assign: an index repeated in one sample sums like a sparse matrix
                np.add.at(x, (np.asarray(self.rows), np.asarray(self.cols)),
                          np.asarray(self.values, dtype=dtype))
            return x
        if self.n:
            x[:] = _parse_dense(self, dtype).reshape(self.n, self.dim)
        return x


def _parse_dense(buf, dtype):
    """Parse the dense samples of ``buf`` into a flat array of n * dim values.

    Fast path: join the texts, count the tokens of each sample with NumPy, parse them all
    with one ``np.fromstring``. Any doubt sends the sequence to the slow path, which
    parses token by token and names the first bad line and column.
    """
    text = " ".join(buf.bodies)
    try:
        b = np.frombuffer(text.encode("ascii"), dtype=np.uint8)
    except UnicodeEncodeError:
        return _dense_slow(buf, dtype)
    space = _SPACE[b]
    # a token starts at a non-space byte that follows a space (or the start)
    starts = ~space
    starts[1:] &= space[:-1]
    cs = np.concatenate(([0], np.cumsum(starts)))                   # tokens before byte i
    lens = np.fromiter(map(len, buf.bodies), dtype=np.intp, count=buf.n)
    begin = np.concatenate(([0], np.cumsum(lens + 1)[:-1]))         # sample k starts here
    if np.any(cs[begin + lens] - cs[begin] != buf.dim):
        return _dense_slow(buf, dtype)
    try:
        if _FROMSTRING_RAISES:
            flat = np.fromstring(text, dtype=dtype, sep=" ")
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # make the warning on bad text an error
                flat = np.fromstring(text, dtype=dtype, sep=" ")
    except (ValueError, DeprecationWarning):
        return _dense_slow(buf, dtype)
    if flat.size != buf.n * buf.dim:  # e.g. "1-2" read as two numbers
        return _dense_slow(buf, dtype)
    return flat


def _dense_slow(buf, dtype):
    err = _dense_error(buf.name, buf.dim, buf.bodies, buf.lines, buf.cols1, buf.offs)
    if err:
        raise _LineError(*err)
    flat = [float(v) for body in buf.bodies for v in body.split()]
    return np.array(flat, dtype=dtype)


def _dense_error(name, dim, bodies, lines, cols1, offs):
    """The first malformed dense sample as (lineno, col, msg), or None."""
    for body, lineno, col1, off in zip(bodies, lines, cols1, offs):
        vals = body.split()
        if len(vals) != dim:
            return lineno, col1, f"stream {name!r} has {len(vals)} values, expected {dim}"
        for i, v in enumerate(vals):
            try:
                float(v)
            except ValueError:
                hint = " (is the stream sparse?)" if ":" in v else ""
                return (lineno, _token_column(body, off, i),
                        f"stream {name!r}: expected a number, got {v!r}{hint}")
    return None


class _LineError(Exception):
    """Internal: a parse error at (lineno, col) that ``_read`` turns into a ValueError."""


def _token_column(text, start, i):
    """1-based column of the i-th whitespace-separated token of ``text``, which begins
    at 0-based offset ``start`` in its line."""
    for k, m in enumerate(_TOKEN.finditer(text)):
        if k == i:
            return start + m.start() + 1
    return start + len(text.rstrip("\r\n")) + 1


def read_ctf(path, streams, *, dtype=np.float32, skip_unknown=False, return_ids=False,
             return_lines=False):
    """Read a CTF file lazily, one sequence at a time, in file order.

    The file is read line by line; only the sequence being assembled is held in memory,
    so files far larger than memory stream through.

    Args:
        path: the CTF file (str or path-like), UTF-8 (a byte-order mark is skipped).
        streams: ``{name: (dim, "dense" | "sparse")}``, the streams to read.
        dtype: float type of the arrays (default float32).
        skip_unknown: if True, samples of streams not in ``streams`` are ignored;
            by default they are an error that lists the known names.
        return_ids: if True, yield ``(sequence_id, record)`` pairs; the id is the int
            written in the file, or None for a sequence without one.
        return_lines: if True (with ``return_ids``), yield ``(sequence_id, line,
            record)``, ``line`` the number of the sequence's first line in the file.

    Yields:
        dict: ``{name: array of shape (n, dim)}`` for every stream in ``streams``, where
        n is the number of samples of that stream in the sequence (may differ between
        streams, and may be 0). A sequence without any sample is not yielded.

    Raises:
        ValueError: a malformed line, as ``"file:line:column: what was expected"``.
            Dense values are parsed when their sequence is complete, so an error is
            raised after the sequences before it were yielded, not before.

    >>> streams = {"x": (3, "dense"), "y": (5, "sparse")}
    >>> for seq in read_ctf("train.ctf", streams):  # doctest: +SKIP
    ...     seq["x"].shape, seq["y"].shape             # ((T, 3), (1, 5))
    """
    specs = _check_streams(streams)
    dtype = _check_dtype(dtype)
    # the checks above run at call time; the file is opened on the first next()
    return _read(os.fspath(path), specs, dtype, skip_unknown, return_ids, return_lines)


def _read(fname, specs, dtype, skip_unknown, return_ids, return_lines=False):
    # The work per line lives in small functions: besides being readable, this keeps
    # tracemalloc usable, as its cost per allocation grows with the function's length.
    bufs = {s: _Rows(s, dim, kind == "sparse") for s, (dim, kind) in specs.items()}
    known = ", ".join(repr(s) for s in specs)
    cur_id = None     # id of the sequence being assembled (None: it has none)
    cur_rows = 0      # samples in it so far, all streams together
    cur_open = False  # whether a sequence is being assembled
    cur_line = 0      # its first line

    with open(fname, encoding="utf-8-sig") as f:
        try:
            for lineno, line in enumerate(f, 1):
                try:
                    sid, pending = _parse_line(line, lineno, bufs, skip_unknown, known)
                except _LineError as e:
                    raise _first_error(fname, bufs, *e.args) from None
                if sid is None and not pending:
                    continue  # blank or comment-only line: no effect on sequences

                # which sequence the line belongs to
                if sid is not None:
                    same = cur_open and cur_id == sid
                else:
                    same = cur_open and cur_id is not None
                if not same:
                    if cur_rows:
                        yield _record(fname, bufs, dtype, cur_id, return_ids,
                                      cur_line if return_lines else None)
                    cur_id, cur_rows, cur_open, cur_line = sid, 0, True, lineno

                for buf, data, col1, off in pending:
                    buf.add(data, lineno, col1, off)
                cur_rows += len(pending)
        except UnicodeDecodeError:
            # text is decoded a block at a time: find the line of the bad bytes afresh
            raise _utf8_error(fname) from None

    if cur_rows:
        yield _record(fname, bufs, dtype, cur_id, return_ids,
                      cur_line if return_lines else None)


def _utf8_error(fname):
    """The ValueError naming the first line and column that are not valid UTF-8."""
    with open(fname, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as e:
                col = len(raw[:e.start].decode("utf-8", "replace")) + 1
                return ValueError(f"{fname}:{lineno}:{col}: the file is not valid UTF-8 "
                                  f"({e.reason}); save it as UTF-8")
    return ValueError(f"{fname}: the file is not valid UTF-8; save it as UTF-8")


def _record(fname, bufs, dtype, sid, return_ids, line=None):
    """The finished sequence as {name: (n, dim) array}; empties the buffers."""
    try:
        out = {s: b.to_array(dtype) for s, b in bufs.items()}
    except _LineError as e:
        lineno, col, msg = e.args[:3]
        raise ValueError(f"{fname}:{lineno}:{col}: {msg}") from None
    for b in bufs.values():
        b.clear()
    if line is not None:
        return sid, line, out
    return (sid, out) if return_ids else out


def _first_error(fname, bufs, lineno, col, msg, pending):
    """The ValueError for an error at (lineno, col), unless a dense sample before it in
    the same sequence (not parsed yet) is malformed: then the error of that one."""
    errs = [(lineno, col, msg)]
    for b in bufs.values():
        if not b.sparse:
            errs.append(_dense_error(b.name, b.dim, b.bodies, b.lines, b.cols1, b.offs))
    for b, body, col1, off in pending:
        if not b.sparse:
            errs.append(_dense_error(b.name, b.dim, [body], [lineno], [col1], [off]))
    lineno, col, msg = min(e for e in errs if e)
    return ValueError(f"{fname}:{lineno}:{col}: {msg}")


def _parse_line(line, lineno, bufs, skip_unknown, known):
    """Split one line into its sequence id (int or None) and its samples, a list of
    ``(buffer, data, column of '|', offset of the values)``: data is the values' text
    for a dense stream, ``(indices, values)`` for a sparse one. Raises _LineError."""
    parts = line.split("|")
    head = parts[0]
    pending = []
    sid = None
    if head and not head.isspace():
        h = head.strip()
        if not (h.isascii() and h.isdigit()):
            col = len(head) - len(head.lstrip()) + 1
            raise _LineError(lineno, col, "expected a sequence id (digits) or '|' here, "
                             f"got {h[:20]!r}", pending)
        sid = int(h)

    pos = len(head) + 1  # 0-based offset of the character after the next '|'
    for part in parts[1:]:
        start, pos = pos, pos + len(part) + 1
        if part[:1] == "#":
            continue  # a comment: '|#' up to the next '|'
        if not part or part[0].isspace():
            raise _LineError(lineno, start, "expected a stream name right after '|' "
                             "(write '|#' to start a comment)", pending)
        name_body = part.split(None, 1)
        s = name_body[0]
        body = name_body[1] if len(name_body) == 2 else ""
        off = start + len(part) - len(body)  # 0-based offset of the values in the line
        buf = bufs.get(s)
        if buf is None:
            if skip_unknown:
                continue
            raise _LineError(lineno, start + 1, f"unknown stream {s!r}; known streams: "
                             f"{known} (pass skip_unknown=True to ignore it)", pending)
        for p in pending:
            if p[0] is buf:
                raise _LineError(lineno, start + 1, f"stream {s!r} appears twice on one "
                                 "line; a line holds at most one sample per stream", pending)
        if buf.sparse:
            pending.append((buf, _parse_sparse(body, buf, lineno, off, pending), start, off))
        else:
            # dense text is parsed with its whole sequence (see _parse_dense)
            pending.append((buf, body, start, off))
    return sid, pending


def _parse_sparse(body, buf, lineno, off, pending):
    """``index:value`` entries of one sparse sample -> (indices, values)."""
    idx, val = [], []
    for v in body.split():
        k, colon, x = v.partition(":")
        try:
            if not (colon and k.isascii() and k.isdigit()):
                raise ValueError
            j = int(k)
            val.append(float(x))
        except ValueError:
            i = len(idx)
            raise _LineError(lineno, _token_column(body, off, i), f"stream {buf.name!r}: "
                             f"expected index:value, got {v!r}", pending) from None
        if j >= buf.dim:
            raise _LineError(lineno, _token_column(body, off, len(idx)),
                             f"stream {buf.name!r}: index {j} out of range, "
                             f"expected 0 <= index < {buf.dim}", pending)
        idx.append(j)
    return idx, val


# ----------------------------------------------------------------------------- writer

def write_ctf(path, sequences, streams, ids=True, *, fmt=None):
    """Write sequences to a CTF file, the inverse of :func:`read_ctf`.

    Line t of a sequence holds row t of every stream that has more than t rows. Dense
    streams write all ``dim`` values; sparse streams write ``index:value`` for the
    nonzeros of the row (an all-zero row is written as an empty sample ``|name``).
    The file is written to a temporary name and renamed, so it is never half-written.

    Args:
        path: the file to write.
        sequences: iterable of dicts ``{name: array (n, dim)}``; a stream missing from a
            dict has no rows in that sequence. Consumed lazily.
        streams: ``{name: (dim, "dense" | "sparse")}``, in the order to write them.
        ids: True to number sequences 0, 1, 2, ...; an iterable of non-negative ints to
            use as ids; False for no ids (then each sequence must be a single line).
        fmt: printf-style format of one value; default ``"%.9g"`` for float32 and
            narrower, ``"%.17g"`` otherwise, which read back exactly.

    Returns:
        int: the number of sequences written.
    """
    specs = _check_streams(streams)
    fname = os.fspath(path)
    if ids is True:
        id_iter = None
    elif ids is False or ids is None:
        id_iter = False
    else:
        id_iter = iter(ids)
    count, prev_id = 0, None  # count: sequences written so far
    with atomic_open(fname, text=True) as f:  # all or nothing
        for seq in sequences:
            if not isinstance(seq, dict):
                raise TypeError(
                    f"sequence {count} must be a dict {{name: array (n, dim)}}, "
                    f"got {type(seq).__name__}")
            unknown = set(seq) - set(specs)
            if unknown:
                raise ValueError(
                    f"sequence {count} has streams {sorted(unknown)} that are not in "
                    f"streams ({list(specs)}); add them to streams")
            arrays = {}
            for s, (dim, kind) in specs.items():
                if s not in seq:
                    continue
                a = np.asarray(seq[s])
                if a.ndim != 2 or a.shape[1] != dim:
                    raise ValueError(
                        f"sequence {count}, stream {s!r}: expected an array of shape "
                        f"(n, {dim}), got {a.shape}")
                arrays[s] = a
            T = max((len(a) for a in arrays.values()), default=0)
            if T == 0:
                raise ValueError(
                    f"sequence {count} has no rows in any stream; CTF cannot "
                    "represent an empty sequence: drop it")

            # the id written in front of each line of this sequence
            if id_iter is None:
                sid = count
            elif id_iter is False:
                if T > 1:
                    raise ValueError(
                        f"sequence {count} has {T} rows but ids=False writes one line "
                        "per sequence; use ids=True")
                sid = None
            else:
                sid = next(id_iter, None)
                if isinstance(sid, bool) or not isinstance(sid, (int, np.integer)) \
                        or sid < 0:
                    raise ValueError(
                        f"ids must give a non-negative int for sequence {count}, "
                        f"got {sid!r}")
                if sid == prev_id:
                    raise ValueError(
                        f"sequences {count - 1} and {count} have the same id {sid}; "
                        "consecutive sequences need different ids")
                prev_id = sid
            prefix = "" if sid is None else f"{int(sid)}\t"

            lines = [[] for _ in range(T)]
            for s, a in arrays.items():
                dim, kind = specs[s]
                f1 = fmt or ("%.9g" if a.dtype.itemsize <= 4 else "%.17g")
                if kind == "dense":
                    row_fmt = f"|{s} " + " ".join([f1] * dim)
                    for t, row in enumerate(a.tolist()):
                        lines[t].append(row_fmt % tuple(row))
                else:
                    entry = "%d:" + f1
                    for t, row in enumerate(a):
                        nz = np.flatnonzero(row)
                        body = " ".join(entry % (j, v) for j, v in
                                        zip(nz.tolist(), row[nz].tolist()))
                        lines[t].append(f"|{s} {body}" if body else f"|{s}")
            f.write("".join(prefix + "\t".join(cells) + "\n" for cells in lines))
            count += 1
    return count


# ----------------------------------------------------------------------------- batches

CTFBatch = namedtuple("CTFBatch", ["x", "x_mask", "y", "y_mask"])
CTFBatch.__doc__ = """A padded minibatch: ``x`` (B, T_x, dim_x) with ``x_mask`` (B, T_x),
``y`` (B, T_y, dim_y) with ``y_mask`` (B, T_y); masks are True on real steps."""


def ctf_minibatches(path, streams, batch_size, features, labels, *, dtype=np.float32,
                    side="right", drop_last=False, shuffle_buffer=0, seed=None,
                    skip_unknown=False):
    """Stream padded, masked minibatches of sequences from a CTF file.

    Sequences are read lazily with :func:`read_ctf` and grouped ``batch_size`` at a time,
    in file order, or shuffled within a buffer of ``shuffle_buffer`` sequences (memory
    stays bounded by that buffer).

    Args:
        path: the CTF file.
        streams: ``{name: (dim, "dense" | "sparse")}``.
        batch_size: sequences per minibatch.
        features: name of the input stream (becomes ``x``).
        labels: name of the target stream (becomes ``y``); may have a different number
            of rows than ``features`` (e.g. one label per sequence).
        dtype: float type of the arrays (default float32).
        side: ``"right"`` pads after the data, ``"left"`` before it.
        drop_last: drop a final minibatch smaller than ``batch_size``.
        shuffle_buffer: 0 keeps file order; n > 0 draws each sequence at random from a
            buffer of n sequences.
        seed: seed of the shuffle.
        skip_unknown: passed to :func:`read_ctf`.

    Yields:
        CTFBatch: ``(x, x_mask, y, y_mask)`` with ``x`` (B, T_x, dim_x), ``x_mask``
        (B, T_x), ``y`` (B, T_y, dim_y), ``y_mask`` (B, T_y); padded steps hold zeros.

    Raises:
        ValueError: a sequence without any sample of ``features`` or ``labels``.
    """
    specs = _check_streams(streams)
    for arg, s in (("features", features), ("labels", labels)):
        if s not in specs:
            raise ValueError(f"{arg}={s!r} is not a stream; known streams: {list(specs)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
            or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if side not in ("right", "left"):
        raise ValueError(f"side must be 'right' or 'left', got {side!r}")
    seqs = read_ctf(path, specs, dtype=dtype, skip_unknown=skip_unknown, return_ids=True)
    return _batches(os.fspath(path), seqs, batch_size, features, labels, side, drop_last,
                    shuffle_buffer, seed)


def _shuffled(seqs, size, seed):
    """Draw each item at random from a buffer of ``size`` items (bounded memory)."""
    rng = random.Random(seed)
    buf = []
    for s in seqs:
        if len(buf) < size:
            buf.append(s)
            continue
        i = rng.randrange(size)
        yield buf[i]
        buf[i] = s
    rng.shuffle(buf)
    yield from buf


def _batches(fname, seqs, batch_size, features, labels, side, drop_last, shuffle_buffer,
             seed):
    def checked(seqs):
        for k, (sid, seq) in enumerate(seqs):
            for s in (features, labels):
                if len(seq[s]) == 0:
                    where = f"sequence {k}" + ("" if sid is None else f" (id {sid})")
                    raise ValueError(
                        f"{fname}: {where} has no sample of stream {s!r}, so it cannot "
                        "be batched; remove it from the file or choose other streams")
            yield seq

    seqs = checked(seqs)
    if shuffle_buffer:
        seqs = _shuffled(seqs, shuffle_buffer, seed)
    batch = []
    for seq in seqs:
        batch.append(seq)
        if len(batch) == batch_size:
            yield _collate(batch, features, labels, side)
            batch = []
    if batch and not drop_last:
        yield _collate(batch, features, labels, side)


def _collate(batch, features, labels, side):
    x, x_mask = pad([s[features] for s in batch], side=side)  # (B, T_x, D_x), (B, T_x)
    y, y_mask = pad([s[labels] for s in batch], side=side)    # (B, T_y, D_y), (B, T_y)
    return CTFBatch(x, x_mask, y, y_mask)


# ----------------------------------------------------------------------------- inference

def infer_ctf_streams(path):
    """Guess the stream table of a CTF file by reading it once.

    A stream with an ``index:value`` entry anywhere is sparse, with dim one more than the
    largest index seen (a one-hot label whose last classes never occur is therefore
    narrower than its true dim: give the table explicitly then). Any other stream is
    dense, with dim the number of values of its samples, which must all agree.

    Args:
        path: the CTF file.

    Returns:
        dict: ``{name: (dim, "dense" | "sparse")}`` in order of first appearance, ready
        for :func:`read_ctf`.

    Raises:
        ValueError: a file with no stream, a stream that is dense on one line and sparse
        on another, dense samples of different sizes, or a stream whose samples are all
        empty (its dim cannot be known), as ``"file:line: ..."``.
    """
    fname = os.fspath(path)
    seen = {}  # name -> [kind or None (only empty samples so far), dim, first line]
    try:
        with open(fname, encoding="utf-8-sig") as f:
            for lineno, line in enumerate(f, 1):
                # '|' starts every sample and every comment ('|#'), so the pieces between
                # bars are exactly the samples and the comments of the line
                for piece in line.split("|")[1:]:
                    if not piece or piece[0] == "#" or piece[0].isspace():
                        continue  # comments; a malformed sample is left to read_ctf
                    name, *values = piece.split()
                    info = seen.setdefault(name, [None, 0, lineno])
                    if not values:
                        continue  # an empty sample: only a sparse stream may have one
                    sparse = ":" in values[0]
                    kind = "sparse" if sparse else "dense"
                    if info[0] not in (None, kind):
                        raise ValueError(f"{fname}:{lineno}: stream {name!r} is {kind} here "
                                         f"but {info[0]} before; fix the file or give the "
                                         "streams explicitly")
                    if sparse:
                        try:
                            top = max(int(v.split(":", 1)[0]) for v in values)
                        except ValueError:
                            raise ValueError(f"{fname}:{lineno}: stream {name!r}: expected "
                                             "index:value entries") from None
                        info[0], info[1] = kind, max(info[1], top + 1)
                    elif info[0] is None:
                        info[0], info[1], info[2] = kind, len(values), lineno
                    elif len(values) != info[1]:
                        raise ValueError(f"{fname}:{lineno}: stream {name!r} has {len(values)} "
                                         f"values here but {info[1]} on line {info[2]}")
    except UnicodeDecodeError:
        raise _utf8_error(fname) from None
    if not seen:
        raise ValueError(f"{fname}: no stream found; a CTF line looks like "
                         "'0 |features 1 2 3 |labels 0:1'")
    for name, (kind, dim, lineno) in seen.items():
        if kind is None:
            raise ValueError(f"{fname}:{lineno}: every sample of stream {name!r} is empty, so "
                             "its dim cannot be inferred; give the streams explicitly")
    return {name: (dim, kind) for name, (kind, dim, _) in seen.items()}
