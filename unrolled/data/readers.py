"""Readers for the input formats of SPEC §4: plain text, a directory of names per
language, CSV time series, the UCI optdigits files, and the samples bundled with the package.

Every problem with an input file (missing, empty, not UTF-8, a missing column, a value
that is not a number, ...) raises ``ValueError`` with one line that names the file, the
place in it and the fix, so a command-line tool can print the message and exit.
Missing values in CSV files are kept as NaN and counted; they are never dropped or
replaced by zeros here.
"""

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "CSVSeries",
    "bundled_path",
    "read_csv_series",
    "read_names_dir",
    "read_optdigits",
    "read_text",
]

# strings read as a missing value in CSV files (compared after stripping spaces)
NA_VALUES = ("", "NA", "N/A", "NaN", "nan", "null", "NULL", "?")

_BUNDLED_DIR = Path(__file__).parent / "bundled"
_BUNDLED = {
    "names": "names",
    "tinyshakespeare": "tinyshakespeare.txt",
    "airline-passengers": "airline-passengers.csv",
    "optdigits-train": "optdigits-train.csv",
    "optdigits-test": "optdigits-test.csv",
}


# --- helpers ---------------------------------------------------------------------------


def _read_bytes(path):
    """The bytes of a file, or a one-line ValueError naming the file."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ValueError(f"{path}: no such file; check the path")
    if path.is_dir():
        raise ValueError(f"{path}: is a directory, not a file; pass a file inside it")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ValueError(f"{path}: cannot read it ({e.strerror}); check its permissions") from None
    if not data.strip():
        raise ValueError(f"{path}: the file is empty; pass a file with data in it")
    return data


_BOMS = ((b"\xff\xfe\x00\x00", "UTF-32LE"), (b"\x00\x00\xfe\xff", "UTF-32BE"),
         (b"\xff\xfe", "UTF-16LE"), (b"\xfe\xff", "UTF-16BE"))


def _decode(data, path):
    """UTF-8 text of ``data`` (a leading byte-order mark is dropped). A UTF-16 or UTF-32
    file (byte-order mark, or NUL bytes between characters) is named as such."""
    for bom, enc in _BOMS:
        if data.startswith(bom):
            raise ValueError(f"{path}: the file is {enc} (it starts with a byte-order mark), "
                             f"not UTF-8; convert it, e.g. `iconv -f {enc} -t UTF-8 IN > OUT`")
    if b"\x00" in data:
        zeros = data.count(b"\x00")
        enc = ("UTF-16LE" if data[1:2] == b"\x00" else "UTF-16BE"
               if data[:1] == b"\x00" else None) if zeros * 3 >= len(data) >= 4 else None
        how = (f"it looks like {enc}; convert it, e.g. `iconv -f {enc} -t UTF-8 IN > OUT`"
               if enc else "a text file has none; pass a UTF-8 text file")
        raise ValueError(f"{path}: the file holds NUL bytes ({zeros}); {how}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{path}: not valid UTF-8 at byte offset {e.start} (byte 0x{data[e.start]:02x}); "
            "convert the file to UTF-8, e.g. `iconv -f LATIN1 -t UTF-8 IN > OUT`"
        ) from None
    return text.removeprefix("\ufeff")


# --- plain text ------------------------------------------------------------------------


def read_text(path, normalize_newlines=True):
    """Read a UTF-8 text file.

    Args:
        path: the file.
        normalize_newlines: turn ``\\r\\n`` and ``\\r`` line ends into ``\\n`` (default),
            as Python's text mode does, so Windows files give the same characters.

    Returns:
        The text as ``str`` (a leading byte-order mark is dropped).

    Raises:
        ValueError: the file is missing, a directory, empty (or only whitespace), or not
            valid UTF-8 (the message gives the byte offset of the first bad byte).
    """
    path = Path(path).expanduser()
    text = _decode(_read_bytes(path), path)
    if normalize_newlines:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text


# --- names per language ----------------------------------------------------------------


def read_names_dir(path):
    """Read a directory of ``<Language>.txt`` files, one name per line, UTF-8.

    This is the layout of the PyTorch tutorial "Classifying names with a character-level
    RNN". Lines are stripped of surrounding whitespace and blank lines are skipped; other
    files (``SOURCE.md``, ...) are ignored.

    Args:
        path: the directory.

    Returns:
        ``(names, labels, classes)``: ``names`` a list of ``N`` strings in file order
        (files in class order), ``labels`` an ``(N,)`` int64 array of class ids, and
        ``classes`` the sorted list of language names (file names without ``.txt``), so
        ``classes[labels[i]]`` is the language of ``names[i]``.

    Raises:
        ValueError: the directory is missing or has no ``.txt`` files, or a file is
            empty or not UTF-8.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise ValueError(f"{path}: no such directory; check the path")
    if not path.is_dir():
        raise ValueError(
            f"{path}: is a file; pass the directory that holds the <Language>.txt files"
        )
    try:
        files = sorted(p for p in path.iterdir() if p.suffix == ".txt" and p.is_file())
    except OSError as e:
        raise ValueError(f"{path}: cannot list it ({e.strerror}); check its permissions") from None
    if not files:
        raise ValueError(
            f"{path}: no .txt files in this directory; expected one <Language>.txt file "
            "per class with one name per line"
        )
    names, labels, classes = [], [], []
    for label, f in enumerate(files):
        lines = [s.strip() for s in _decode(_read_bytes(f), f).splitlines()]
        lines = [s for s in lines if s]
        if not lines:
            raise ValueError(f"{f}: the file has no names; add names or remove the file")
        names.extend(lines)
        labels.extend([label] * len(lines))
        classes.append(f.stem)
    return names, np.array(labels, dtype=np.int64), classes


# --- CSV time series -------------------------------------------------------------------


@dataclass
class CSVSeries:
    """A time series read by :func:`read_csv_series`.

    Attributes:
        values: ``(N, F)`` float64, one row per time step, NaN where a value is missing.
        columns: the ``F`` column names; a one-hot column is named ``"col=category"``.
        missing: ``(N, F)`` bool, True where ``values`` is missing.
        target: name of the target column, or None.
        index: the labels of the index column (e.g. dates) as strings, or None.
        categories: for each one-hot encoded column, its categories in column order.
        dropped: text columns left out because ``columns`` was not given.
        path: the file it was read from.
    """

    values: np.ndarray
    columns: list
    missing: np.ndarray
    target: str | None = None
    index: list | None = None
    categories: dict = field(default_factory=dict)
    dropped: list = field(default_factory=list)
    path: str = ""

    @property
    def target_index(self):
        """Position of the target column in ``columns`` (None without a target)."""
        return None if self.target is None else self.columns.index(self.target)

    @property
    def missing_counts(self):
        """Number of missing values per column, as ``{name: count}``."""
        return dict(zip(self.columns, self.missing.sum(axis=0).tolist()))

    def describe_missing(self):
        """One line reporting the missing values, e.g. ``"pm2.5: 2067 of 43824 (4.7%)"``."""
        N = self.values.shape[0]
        parts = [
            f"{name}: {n} of {N} ({100 * n / N:.1f}%)"
            for name, n in self.missing_counts.items()
            if n
        ]
        return "missing values: " + ("; ".join(parts) if parts else "none")


def _is_number(s):
    try:
        float(s)
        return True
    except ValueError:
        return False


def _csv_rows(reader, path, delimiter):
    """The header (stripped names), the data rows and their line numbers."""
    # --- header
    header = None
    for fields in reader:
        if any(f.strip() for f in fields):
            header = [f.strip() for f in fields]
            header_line = reader.line_num
            break
    if header is None:  # pragma: no cover - _read_bytes already refuses blank files
        raise ValueError(f"{path}: the file is empty; pass a file with data in it")
    if all(_is_number(f) for f in header if f):
        raise ValueError(
            f"{path}: line {header_line} looks like data, not a header; add a first line "
            "with the column names"
        )
    dups = sorted({h for h in header if header.count(h) > 1})
    if dups:
        raise ValueError(f"{path}: column names repeated in the header: {dups}; rename them")
    # --- rows (blank lines are skipped)
    rows, lines = [], []
    for fields in reader:
        if not fields or (len(fields) == 1 and not fields[0].strip()):
            continue  # a blank line
        if len(fields) != len(header):
            raise ValueError(
                f"{path}: line {reader.line_num} has {len(fields)} fields, the header has "
                f"{len(header)}; fix that line (is the delimiter {delimiter!r} right?)"
            )
        rows.append(fields)
        lines.append(reader.line_num)
    if not rows:
        raise ValueError(f"{path}: only a header, no data rows; pass a file with data")
    return header, rows, lines


def read_csv_series(
    path,
    columns=None,
    target=None,
    categorical=(),
    index=None,
    na_values=NA_VALUES,
    delimiter=",",
):
    """Read a CSV time series with a header line (one row per time step).

    Blank lines are skipped; a row whose fields are all empty is a time step with every
    value missing. Fields are stripped of surrounding spaces.

    Args:
        path: the CSV file (UTF-8; CRLF or LF line ends; quoted fields allowed).
        columns: names of the columns to read, in the order wanted. Default: every
            column except ``index``; text columns that are not ``categorical`` are then
            left out and listed in ``dropped``.
        target: name of the column to forecast; it must be numeric and is appended to
            ``columns`` if not already there.
        categorical: text columns to one-hot encode: a list of names (categories are
            the sorted distinct values) or a dict ``{name: [categories]}`` to fix them
            (e.g. those saved with a model; an unseen value is then an error). Each
            becomes one 0/1 column per category, named ``"name=category"``.
        index: name of a label column (e.g. the date) returned as strings in ``index``
            instead of in ``values``.
        na_values: strings that mark a missing value (default: empty, NA, N/A, NaN,
            nan, null, NULL, ?). Missing values become NaN and are flagged in
            ``missing``; in a one-hot column a missing value is NaN in every category.
        delimiter: field separator (default ``","``).

    Returns:
        A :class:`CSVSeries` with ``values`` ``(N, F)`` float64, ``columns``, ``missing``
        ``(N, F)`` bool and ``missing_counts`` per column.

    Raises:
        ValueError: the file is missing, empty or not UTF-8; it has no header; a row has
            the wrong number of fields; a requested column does not exist; a numeric
            column holds a value that is not a number (line number and column are
            named); a text column was requested without ``categorical``.
    """
    path = Path(path).expanduser()
    text = _decode(_read_bytes(path), path)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header, rows, lines = _csv_rows(reader, path, delimiter)
    except csv.Error as e:
        raise ValueError(
            f"{path}: line {reader.line_num}: not readable as CSV ({e}); fix that line"
        ) from None

    # --- which columns
    if isinstance(categorical, str):
        categorical = [categorical]
    fixed_categories = dict(categorical) if isinstance(categorical, dict) else {}
    categorical = list(categorical)

    def check(name, what):
        if name not in header:
            raise ValueError(
                f"{path}: no column {name!r} (asked for as {what}); the columns are: "
                + ", ".join(header)
            )

    explicit = columns is not None
    if isinstance(columns, str):
        columns = [columns]
    columns = list(header if columns is None else columns)
    for name in columns:
        check(name, "a column")
    if index is not None:
        check(index, "index")
        columns = [c for c in columns if c != index]
    if target is not None:
        check(target, "target")
        if target in categorical:
            raise ValueError(f"{path}: target {target!r} must be numeric, not categorical")
        if target not in columns:
            columns.append(target)
    for name in categorical:
        check(name, "categorical")
        if name not in columns:
            raise ValueError(
                f"{path}: categorical column {name!r} is not among the columns read; "
                "add it to columns"
            )

    # --- parse column by column, vectorised over the rows
    na = list(na_values)
    raw_columns = list(zip(*rows))
    out_values, out_missing, out_names, categories, dropped = [], [], [], {}, []
    for name in columns:
        raw = np.strings.strip(np.array(raw_columns[header.index(name)], dtype=str))  # (N,)
        miss = np.isin(raw, na)  # (N,) bool
        present = ~miss
        if name in categorical:
            # distinct values (sorted) and, for every present row, which one it holds
            uniq, inv = np.unique(raw[present], return_inverse=True)
            cats = uniq.tolist() if name not in fixed_categories else list(fixed_categories[name])
            unseen = [u for u in uniq.tolist() if u not in cats]
            if unseen:
                i = int(np.flatnonzero(np.isin(raw, unseen))[0])
                raise ValueError(
                    f"{path}: line {lines[i]}, column {name!r}: category {str(raw[i])!r} "
                    f"is not among the known categories {cats}; use data with the same "
                    "categories as the training data"
                )
            col = np.array([cats.index(u) for u in uniq.tolist()], dtype=np.int64)
            onehot = np.zeros((len(raw), len(cats)))  # (N, categories)
            onehot[np.flatnonzero(present), col[inv]] = 1.0
            onehot[miss] = np.nan
            categories[name] = cats
            out_values.extend(onehot.T)
            out_missing.extend([miss] * len(cats))
            out_names.extend(f"{name}={c}" for c in cats)
            continue
        vals = np.full(len(raw), np.nan)
        bad = None
        try:
            vals[present] = raw[present].astype(np.float64)
        except ValueError:
            bad = [int(i) for i in np.flatnonzero(present) if not _is_number(raw[i])]
            if not bad:  # NumPy refused what Python's float() accepts
                vals[present] = [float(v) for v in raw[present].tolist()]
        if bad:
            n_present = int(present.sum())
            if len(bad) * 2 > n_present and not explicit and name != target:
                dropped.append(name)  # a text column (dates, labels): leave it out
                continue
            i = bad[0]
            if len(bad) * 2 > n_present:
                fix = (
                    f"this column holds text; pass categorical=[{name!r}] to one-hot "
                    "encode it, or leave it out of columns"
                )
            else:
                fix = "fix the value, or add it to na_values if it marks a missing value"
            raise ValueError(
                f"{path}: line {lines[i]}, column {name!r}: {str(raw[i])!r} is not a number; {fix}"
            )
        inf = np.flatnonzero(np.isinf(vals))
        if inf.size:
            i = inf[0]
            raise ValueError(
                f"{path}: line {lines[i]}, column {name!r}: {str(raw[i])!r} is not a finite "
                "number; fix the value or mark it as missing"
            )
        miss = miss | np.isnan(vals)  # a literal "nan" not in na_values is missing too
        out_values.append(vals)
        out_missing.append(miss)
        out_names.append(name)

    if not out_names:
        raise ValueError(
            f"{path}: no numeric columns to read (text columns: {', '.join(dropped)}); "
            "pass categorical=[...] for text columns to encode"
        )
    N = len(rows)
    return CSVSeries(
        values=np.stack(out_values, axis=1) if out_values else np.zeros((N, 0)),
        columns=out_names,
        missing=np.stack(out_missing, axis=1),
        target=target,
        index=None if index is None else [v.strip() for v in raw_columns[header.index(index)]],
        categories=categories,
        dropped=dropped,
        path=str(path),
    )


# --- optdigits -------------------------------------------------------------------------


def read_optdigits(path, dtype=np.float64):
    """Read a UCI optdigits file (``optdigits.tra`` / ``optdigits.tes``).

    Each line holds 64 integers 0..16 (an 8x8 image of block counts, row by row) and
    then the class 0..9. Read row by row, an image is a sequence of 8 steps of 8 values.
    Blank lines are skipped. Values are returned as they are (divide by 16 for 0..1).

    Args:
        path: the file.
        dtype: dtype of ``X`` (default float64).

    Returns:
        ``(X, y)``: ``X`` of shape ``(N, 8, 8)`` (record, step = image row, value) and
        ``y`` of shape ``(N,)``, int64 classes.

    Raises:
        ValueError: missing, empty or non-UTF-8 file, or a line that is not 65 integers
            in range (its line number is named).
    """
    path = Path(path).expanduser()
    text = _decode(_read_bytes(path), path)
    rows, lines = [], []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split(",")
        if len(fields) != 65:
            raise ValueError(
                f"{path}: line {n} has {len(fields)} values, expected 65 (64 pixels and "
                "the class); is this an optdigits file?"
            )
        rows.append(fields)
        lines.append(n)
    try:
        data = np.array(rows, dtype=np.int64)  # (N, 65)
    except ValueError:
        for fields, n in zip(rows, lines):
            for j, f in enumerate(fields):
                if not f.strip().isdigit():
                    raise ValueError(
                        f"{path}: line {n}, field {j + 1}: {f!r} is not a non-negative "
                        "integer; is this an optdigits file?"
                    ) from None
        raise  # pragma: no cover - every failing value is caught above
    bad = np.flatnonzero((data[:, :64] > 16).any(1) | (data[:, :64] < 0).any(1) | (data[:, 64] > 9))
    if bad.size:
        raise ValueError(
            f"{path}: line {lines[bad[0]]} has a pixel outside 0..16 or a class outside 0..9; "
            "is this an optdigits file?"
        )
    X = data[:, :64].reshape(-1, 8, 8).astype(dtype)  # (N, 8 rows = steps, 8 values)
    return X, data[:, 64].copy()


# --- bundled samples -------------------------------------------------------------------


def bundled_path(name):
    """Path of a data sample shipped inside the package (see ``bundled/SOURCE.md``).

    Args:
        name: one of ``"names"`` (directory of 18 ``<Language>.txt`` files, the default
            training task), ``"tinyshakespeare"`` (a 200 kB slice, ``.txt``),
            ``"airline-passengers"`` (``.csv``, 144 months), ``"optdigits-train"`` and
            ``"optdigits-test"`` (``.csv`` samples of the optdigits files). The file name
            with its extension is accepted too.

    Returns:
        A ``pathlib.Path`` to the file or directory.

    >>> bundled_path("airline-passengers").name
    'airline-passengers.csv'
    """
    key = {v: k for k, v in _BUNDLED.items()}.get(name, name)
    if key not in _BUNDLED:
        raise ValueError(f"no bundled data set {name!r}; choose one of: {', '.join(_BUNDLED)}")
    path = _BUNDLED_DIR / _BUNDLED[key]
    if not path.exists():
        raise ValueError(
            f"{path}: bundled data set {key!r} is missing from this installation; "
            "reinstall unrolled"
        )
    return path
