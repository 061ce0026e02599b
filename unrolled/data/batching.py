"""From records to minibatches: padding with masks, length buckets, TBPTT streams, windows.

A *record* is one sequence: an array of shape ``(n_i, ...)`` (``n_i`` time steps, any
feature shape) or a list of symbol ids. A minibatch holds whole records; records of
different lengths are padded to the longest one and a boolean mask marks the real steps
(SPEC §4). Everything here is batch-first, ``(B, T, ...)``, like the public model API; the
time loop transposes to time-major itself.

Four ways to cut data into batches:

- :func:`pad` turns a list of records into ``(X, mask)``;
- :func:`bucket_batches` chooses which records go together, grouping similar lengths so
  that little padding is needed, in a shuffled but seed-determined order;
- :func:`stream_batches` cuts one long sequence (a text) into ``B`` parallel streams and
  walks them in chunks of ``k`` steps for truncated BPTT, as min-char-rnn and CNTK do;
- :func:`sliding_windows` cuts a time series into (window, target) pairs for forecasting.

:func:`split_indices` makes train / validation / test splits (stratified, and keeping
duplicate records together), and :func:`one_hot` encodes symbol ids.
"""

import numpy as np

__all__ = [
    "bucket_batches",
    "one_hot",
    "pad",
    "sliding_windows",
    "split_indices",
    "stream_batches",
]


def pad(records, side="right", dtype=None, value=0):
    """Pad records of different lengths into one array and a mask.

    Args:
        records: a non-empty list of ``B`` records, each an array of shape ``(n_i, ...)``
            or a sequence of ints (symbol ids). The trailing shape ``...`` must be the
            same for all records; every ``n_i`` must be at least 1.
        side: ``"right"`` puts the padding after each record (step ``t`` of every record
            sits at column ``t``); ``"left"`` puts it before, so every record ends at the
            last column (its final state is then the state after step ``T_max - 1``).
        dtype: dtype of ``X``; default: the common dtype of the records (``int64`` for
            lists of ints).
        value: the value written into padded positions (default 0).

    Returns:
        ``(X, mask)``: ``X`` of shape ``(B, T_max, ...)`` and ``mask`` of shape
        ``(B, T_max)``, bool, True at real steps. ``mask.sum(1)`` gives the lengths.

    Raises:
        ValueError: empty list, a record of length 0 (its index is named), mismatched
            trailing shapes, or an unknown ``side``.

    >>> X, mask = pad([[1, 2, 3], [4]], side="left")
    >>> X.tolist(), mask.tolist()
    ([[1, 2, 3], [0, 0, 4]], [[True, True, True], [False, False, True]])
    """
    if side not in ("right", "left"):
        raise ValueError(f"side must be 'right' or 'left', got {side!r}")
    if len(records) == 0:
        raise ValueError("pad() got an empty list of records; pass at least one record")
    arrays = [np.asarray(r) for r in records]
    for i, a in enumerate(arrays):
        if a.ndim == 0:
            raise ValueError(
                f"record {i} is a scalar; each record must be a sequence of shape (n_i, ...)"
            )
        if a.shape[0] == 0:
            raise ValueError(
                f"record {i} has length 0; drop empty records before batching "
                "(an empty sequence has no final state)"
            )
        if a.shape[1:] != arrays[0].shape[1:]:
            raise ValueError(
                f"record {i} has step shape {a.shape[1:]}, but record 0 has "
                f"{arrays[0].shape[1:]}; all records need the same feature shape"
            )
    if dtype is None:
        dtype = np.result_type(*arrays)
    lengths = np.array([a.shape[0] for a in arrays])
    B, T = len(arrays), int(lengths.max())
    X = np.full((B, T) + arrays[0].shape[1:], value, dtype=dtype)  # (B, T, ...)
    mask = np.zeros((B, T), dtype=bool)  # (B, T)
    for i, (a, n) in enumerate(zip(arrays, lengths)):
        sl = slice(0, n) if side == "right" else slice(T - n, T)
        X[i, sl] = a
        mask[i, sl] = True
    return X, mask


def bucket_batches(lengths, batch_size, rng=None, shuffle=True, bucket_width=None):
    """Split records into minibatches of similar length.

    With ``shuffle=True`` (training): the records are shuffled, cut into chunks of
    ``bucket_width * batch_size`` records, each chunk is sorted by length and cut into
    batches, and finally the order of all batches is shuffled. Batches therefore hold
    records of similar length (little padding) while every epoch sees a different
    grouping and order. The result depends only on ``lengths`` and the state of ``rng``.

    With ``shuffle=False`` (evaluation): no randomness; the records are sorted by length
    (stable, ties keep their input order) and cut into batches in that order.

    Args:
        lengths: ``(N,)`` ints, the length of each record.
        batch_size: records per batch (the last batch of a chunk may be smaller).
        rng: a ``numpy.random.Generator`` (or a seed for one); it is advanced, so
            successive calls with the same generator give successive epochs. Required
            for determinism; ``None`` draws fresh entropy.
        shuffle: see above.
        bucket_width: how many batches' worth of records are sorted together (default
            50). 1 gives plain random batches (no length grouping); a value of at least
            ``ceil(N / batch_size)`` sorts the whole set before shuffling the batches.

    Returns:
        A list of ``int64`` index arrays, one per batch; together they hold every index
        ``0..N-1`` exactly once.

    >>> [b.tolist() for b in bucket_batches([5, 1, 4, 2], 2, shuffle=False)]
    [[1, 3], [2, 0]]
    """
    lengths = np.asarray(lengths)
    if lengths.ndim != 1:
        raise ValueError(f"lengths must be 1-D (one length per record), got shape {lengths.shape}")
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if bucket_width is None:
        bucket_width = 50
    if not isinstance(bucket_width, (int, np.integer)) or bucket_width < 1:
        raise ValueError(
            f"bucket_width must be a positive int (batches per chunk), got {bucket_width!r}"
        )
    N = len(lengths)
    if not shuffle:
        order = np.argsort(lengths, kind="stable")
        return [order[i : i + batch_size] for i in range(0, N, batch_size)]

    rng = np.random.default_rng(rng)
    order = rng.permutation(N)
    chunk = bucket_width * batch_size
    batches = []
    for c in range(0, N, chunk):
        idx = order[c : c + chunk]
        # stable sort: ties keep the random order, so equal lengths are still mixed
        idx = idx[np.argsort(lengths[idx], kind="stable")]
        batches.extend(idx[i : i + batch_size] for i in range(0, len(idx), batch_size))
    perm = rng.permutation(len(batches))
    return [batches[i].astype(np.int64) for i in perm]


class StreamBatches:
    """Iterable of ``(X_chunk, Y_chunk)`` pairs made by :func:`stream_batches`.

    Can be iterated more than once (one pass per epoch); ``len()`` is the number of
    chunks per pass. Attributes: ``streams`` ``(B, L + 1, ...)`` (stream ``b`` holds
    ``seq[offset + b*L : offset + (b+1)*L + 1]``), ``batch_size``, ``chunk``,
    ``steps`` (``L``, input steps per stream).
    """

    def __init__(self, streams, chunk):
        self.streams = streams
        self.batch_size = streams.shape[0]
        self.steps = streams.shape[1] - 1
        self.chunk = chunk

    def __len__(self):
        return (self.steps + self.chunk - 1) // self.chunk  # ceil

    def __iter__(self):
        for t in range(0, self.steps, self.chunk):
            k = min(self.chunk, self.steps - t)
            # inputs are steps t..t+k-1, targets the symbols one step later
            yield self.streams[:, t : t + k], self.streams[:, t + 1 : t + k + 1]

    def __repr__(self):
        return (
            f"StreamBatches(batch_size={self.batch_size}, steps={self.steps}, "
            f"chunk={self.chunk}, chunks={len(self)})"
        )


def stream_batches(seq, batch_size, chunk, offset=0):
    """Cut one long sequence into parallel streams for truncated BPTT.

    The sequence (after dropping ``offset`` leading steps) is split into ``batch_size``
    contiguous streams of ``L = (N - offset - 1) // batch_size`` input steps each; row
    ``b`` of every batch continues stream ``b`` where the previous chunk stopped. Each
    chunk is ``(X, Y)`` with ``Y`` the input shifted one step ahead (next-symbol
    targets). Carry the final hidden state of one chunk into the next (and reset it at
    the start of each pass): that is stateful training with truncation ``k = chunk``.

    Up to ``batch_size - 1`` steps at the end do not fit a stream and are left out; a
    different ``offset`` each epoch (e.g. ``rng.integers(chunk)``) varies the cut points.

    Args:
        seq: ``(N,)`` symbol ids or ``(N, ...)`` feature vectors.
        batch_size: number of parallel streams ``B``.
        chunk: steps per chunk ``k``; the last chunk of a pass may be shorter.
        offset: steps skipped at the start (default 0).

    Returns:
        A re-iterable :class:`StreamBatches` with ``len()`` chunks; iterating yields
        ``(X_chunk, Y_chunk)``, both of shape ``(B, k, ...)`` (views, do not write).

    >>> for X, Y in stream_batches([0, 1, 2, 3, 4, 5, 6], batch_size=2, chunk=2):
    ...     print(X.tolist(), Y.tolist())
    [[0, 1], [3, 4]] [[1, 2], [4, 5]]
    [[2], [5]] [[3], [6]]
    """
    seq = np.asarray(seq)
    if seq.ndim == 0:
        raise ValueError("seq must be a sequence of shape (N,) or (N, ...), got a scalar")
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if not isinstance(chunk, (int, np.integer)) or chunk < 1:
        raise ValueError(f"chunk must be a positive int (steps per chunk), got {chunk!r}")
    if not isinstance(offset, (int, np.integer)) or offset < 0:
        raise ValueError(f"offset must be a non-negative int, got {offset!r}")
    N = seq.shape[0] - offset
    L = (N - 1) // batch_size  # input steps per stream; each needs one more for its target
    if L < 1:
        raise ValueError(
            f"a sequence of {seq.shape[0]} steps (offset {offset}) is too short for "
            f"{batch_size} streams; use a smaller batch_size or a longer sequence"
        )
    # stream b = seq[offset + b*L : offset + (b+1)*L + 1]: consecutive streams share one
    # step (the last target of b is the first input of b+1)
    starts = offset + np.arange(batch_size) * L
    streams = seq[starts[:, None] + np.arange(L + 1)]  # (B, L+1, ...)
    return StreamBatches(streams, chunk)


def sliding_windows(series, window, horizon, stride=1, target=None, copy=True):
    """Cut a time series into input windows and the value ``horizon`` steps later.

    Window ``m`` covers steps ``s .. s+window-1`` with ``s = m * stride``; its target is
    step ``s + window - 1 + horizon`` (``horizon=1``: the next step).

    Args:
        series: ``(N, F)`` array (a 1-D ``(N,)`` series is treated as ``(N, 1)``).
        window: input steps per window (>= 1).
        horizon: steps from the last input step to the target (>= 1).
        stride: steps between the starts of consecutive windows (>= 1).
        target: which columns the target holds: ``None`` all ``F`` columns, an int one
            column (``y`` is then 1-D), or a list of ints.
        copy: return independent arrays (default). ``False`` returns read-only views
            into ``series``, which saves memory for long windows.

    Returns:
        ``(X, y)``: ``X`` of shape ``(M, window, F)``; ``y`` of shape ``(M, F)``,
        ``(M,)`` or ``(M, len(target))``, with ``M = (N - window - horizon) // stride + 1``.
        NaNs (missing values) are passed through unchanged.

    >>> X, y = sliding_windows(np.arange(6.0), window=3, horizon=1)
    >>> X[:, :, 0].tolist(), y[:, 0].tolist()
    ([[0.0, 1.0, 2.0], [1.0, 2.0, 3.0], [2.0, 3.0, 4.0]], [3.0, 4.0, 5.0])
    """
    series = np.asarray(series)
    if series.ndim == 1:
        series = series[:, None]
    if series.ndim != 2:
        raise ValueError(f"series must be (N, F) or (N,), got shape {series.shape}")
    for name, v in (("window", window), ("horizon", horizon), ("stride", stride)):
        if not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    N = series.shape[0]
    M = (N - window - horizon) // stride + 1
    if M < 1:
        raise ValueError(
            f"a series of {N} steps is too short for window={window} + horizon={horizon}; "
            "use a shorter window or horizon"
        )
    # (N-window+1, F, window) view -> keep every stride-th start -> (M, window, F)
    X = np.lib.stride_tricks.sliding_window_view(series, window, axis=0)
    X = X[: (M - 1) * stride + 1 : stride].transpose(0, 2, 1)
    t = np.arange(M) * stride + window - 1 + horizon  # (M,) target steps
    y = series[t] if target is None else series[t][:, target]
    if copy:
        X = np.ascontiguousarray(X)
    return X, y


def one_hot(ids, depth, dtype=np.float32):
    """One-hot encode symbol ids.

    Args:
        ids: int array of any shape ``S`` with values in ``0..depth-1``.
        depth: number of symbols (the vocabulary size).
        dtype: dtype of the result (default float32).

    Returns:
        Array of shape ``S + (depth,)`` with a single 1 along the last axis.

    >>> one_hot([2, 0], 3).tolist()
    [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]
    """
    ids = np.asarray(ids)
    if ids.size and (ids.min() < 0 or ids.max() >= depth):
        raise ValueError(
            f"ids must lie in 0..{depth - 1} (depth={depth}), got values "
            f"{ids.min()}..{ids.max()}; is depth the vocabulary size?"
        )
    return np.eye(depth, dtype=dtype)[ids]


def split_indices(n, fractions, rng=None, stratify=None, groups=None):
    """Split records ``0..n-1`` at random into parts (train / validation / test).

    Args:
        n: number of records.
        fractions: the share of each part, e.g. ``(0.8, 0.1, 0.1)``; must sum to 1.
        rng: a ``numpy.random.Generator`` or a seed; the split depends only on it.
        stratify: optional ``(n,)`` class labels; each class is split in the given
            fractions (up to rounding), so a rare class appears in every part.
        groups: optional ``(n,)`` keys (e.g. the name strings); records with the same
            key always land in the same part, so a duplicate cannot sit in both the
            training and the test part. The fractions then count groups, not records;
            with ``stratify``, a group counts under the label of its first record.

    Returns:
        A list of sorted int64 index arrays, one per part, together holding every
        record exactly once.

    >>> train, test = split_indices(4, (0.5, 0.5), rng=3, groups=["a", "b", "a", "c"])
    >>> train.tolist(), test.tolist()  # both "a" records on the same side
    ([1, 3], [0, 2])
    """
    fractions = np.asarray(fractions, dtype=np.float64)
    if fractions.ndim != 1 or (fractions < 0).any() or abs(fractions.sum() - 1) > 1e-9:
        raise ValueError(f"fractions must be non-negative and sum to 1, got {fractions.tolist()}")
    rng = np.random.default_rng(rng)
    # units: the groups (records sharing a key), else the records themselves
    if groups is None:
        unit_of = np.arange(n)
    else:
        if len(groups) != n:
            raise ValueError(f"groups must have one key per record ({n}), got {len(groups)}")
        _, first, unit_of = np.unique(np.asarray(groups), return_index=True, return_inverse=True)
    n_units = unit_of.max() + 1 if n else 0
    if stratify is None:
        strata = [np.arange(n_units)]
    else:
        labels = np.asarray(stratify)
        if len(labels) != n:
            raise ValueError(f"stratify must have one label per record ({n}), got {len(labels)}")
        unit_label = labels if groups is None else labels[first]  # label of each unit
        strata = [np.flatnonzero(unit_label == c) for c in np.unique(unit_label)]
    part_of_unit = np.empty(n_units, dtype=np.int64)
    for units in strata:
        units = rng.permutation(units)
        bounds = np.round(np.cumsum(fractions) * len(units)).astype(int)  # ends of parts
        for p, (lo, hi) in enumerate(zip(np.r_[0, bounds[:-1]], bounds)):
            part_of_unit[units[lo:hi]] = p
    part = part_of_unit[unit_of]  # (n,) part of each record
    return [np.flatnonzero(part == p) for p in range(len(fractions))]
