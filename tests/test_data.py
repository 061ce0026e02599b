"""Tests of unrolled.data: batching, vocabulary, readers (on the real files where present)
and the bundled samples."""

import json
from pathlib import Path

import numpy as np
import pytest

from unrolled.data import (
    Vocab,
    bucket_batches,
    bundled_path,
    one_hot,
    pad,
    read_csv_series,
    read_names_dir,
    read_optdigits,
    read_text,
    sliding_windows,
    split_indices,
    stream_batches,
)

DATA = Path(__file__).parents[2] / "shared" / "data"


def shared(*parts):
    """Path of a file in the shared data folder; skips the test when it is absent."""
    p = DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"{p} not available")
    return p


# --- pad -------------------------------------------------------------------------------


@pytest.mark.parametrize("side", ["right", "left"])
def test_pad_places_records_and_mask(side):
    rng = np.random.default_rng(0)
    recs = [rng.normal(size=(n, 3, 2)) for n in (4, 1, 6)]
    X, mask = pad(recs, side=side, value=-7.0)
    assert X.shape == (3, 6, 3, 2) and mask.shape == (3, 6) and mask.dtype == bool
    assert mask.sum(1).tolist() == [4, 1, 6]
    for i, r in enumerate(recs):
        n = len(r)
        real = slice(0, n) if side == "right" else slice(6 - n, 6)
        np.testing.assert_array_equal(X[i, real], r)
        np.testing.assert_array_equal(X[i][~mask[i]], -7.0)
        assert mask[i, real].all() and mask[i].sum() == n
    if side == "left":  # every record ends at the last column
        assert mask[:, -1].all()
    else:
        assert mask[:, 0].all()


def test_pad_int_sequences_and_dtype():
    X, _ = pad([[3, 1], [2, 2, 5]])
    assert X.dtype == np.int64
    assert X.tolist() == [[3, 1, 0], [2, 2, 5]]
    X, _ = pad([[3, 1], [2]], dtype=np.float32, side="left")
    assert X.dtype == np.float32 and X.tolist() == [[3, 1], [0, 2]]


def test_pad_errors_name_the_record():
    with pytest.raises(ValueError, match="record 1 has length 0"):
        pad([[1, 2], [], [3]])
    with pytest.raises(ValueError, match="record 1 has step shape"):
        pad([np.zeros((2, 3)), np.zeros((2, 4))])
    with pytest.raises(ValueError, match="empty list"):
        pad([])
    with pytest.raises(ValueError, match="side"):
        pad([[1]], side="middle")


# --- bucket_batches --------------------------------------------------------------------


def test_buckets_cover_every_record_once_and_group_lengths():
    rng = np.random.default_rng(1)
    lengths = rng.integers(1, 200, size=1003)
    batches = bucket_batches(lengths, 16, rng=np.random.default_rng(5), bucket_width=10)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(1003))
    assert all(b.dtype == np.int64 and 1 <= len(b) <= 16 for b in batches)

    # grouped by length: far less padding than random batches of the same size
    def padding(bs):
        return sum(lengths[b].max() * len(b) - lengths[b].sum() for b in bs)

    random_batches = bucket_batches(lengths, 16, rng=np.random.default_rng(5), bucket_width=1)
    assert padding(batches) < 0.3 * padding(random_batches)


def test_buckets_deterministic_given_generator_and_vary_across_epochs():
    lengths = np.random.default_rng(2).integers(1, 50, size=300)
    a = bucket_batches(lengths, 8, rng=np.random.default_rng(42))
    b = bucket_batches(lengths, 8, rng=np.random.default_rng(42))
    assert all(np.array_equal(x, y) for x, y in zip(a, b)) and len(a) == len(b)
    g = np.random.default_rng(42)
    e1, e2 = bucket_batches(lengths, 8, rng=g), bucket_batches(lengths, 8, rng=g)
    assert not all(np.array_equal(x, y) for x, y in zip(e1, e2))  # next epoch differs


def test_buckets_without_shuffle_sort_by_length():
    lengths = np.array([5, 1, 4, 2, 4])
    batches = bucket_batches(lengths, 2, shuffle=False)
    assert [b.tolist() for b in batches] == [[1, 3], [2, 4], [0]]
    with pytest.raises(ValueError, match="batch_size"):
        bucket_batches(lengths, 0)


# --- stream_batches --------------------------------------------------------------------


@pytest.mark.parametrize("N,B,k,offset", [(1000, 4, 25, 0), (103, 3, 10, 5), (11, 2, 3, 0)])
def test_stream_batches_reconstruct_the_sequence(N, B, k, offset):
    seq = np.arange(N) * 7 % 101  # ints with repeats, order matters
    sb = stream_batches(seq, B, k, offset=offset)
    chunks = list(sb)
    assert len(chunks) == len(sb)
    L = (N - offset - 1) // B
    X = np.concatenate([x for x, _ in chunks], axis=1)  # (B, L)
    Y = np.concatenate([y for _, y in chunks], axis=1)
    assert X.shape == (B, L) and all(x.shape[1] <= k for x, _ in chunks)
    # stream b continues where stream b-1 ended: reading rows in order gives the text back
    np.testing.assert_array_equal(X.reshape(-1), seq[offset : offset + B * L])
    np.testing.assert_array_equal(Y.reshape(-1), seq[offset + 1 : offset + B * L + 1])
    # iterating again gives the same chunks (one pass per epoch)
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(chunks, sb))


def test_stream_batches_feature_vectors_and_errors():
    seq = np.random.default_rng(3).normal(size=(50, 3))
    (X, Y), *_ = stream_batches(seq, 4, 5)
    assert X.shape == Y.shape == (4, 5, 3)
    np.testing.assert_array_equal(Y[:, :-1], X[:, 1:])
    with pytest.raises(ValueError, match="too short"):
        stream_batches(np.arange(4), 4, 2)
    with pytest.raises(ValueError, match="chunk"):
        stream_batches(np.arange(40), 4, 0)


# --- sliding_windows -------------------------------------------------------------------


def test_sliding_windows_match_a_loop():
    series = np.random.default_rng(4).normal(size=(40, 3))
    for window, horizon, stride in [(5, 1, 1), (7, 3, 2), (1, 1, 3)]:
        X, y = sliding_windows(series, window, horizon, stride)
        starts = range(0, 40 - window - horizon + 1, stride)
        np.testing.assert_array_equal(X, np.stack([series[s : s + window] for s in starts]))
        np.testing.assert_array_equal(
            y, np.stack([series[s + window - 1 + horizon] for s in starts])
        )
    X, y = sliding_windows(series, 5, 2, target=1, copy=False)
    assert X.shape == (34, 5, 3) and y.shape == (34,)
    np.testing.assert_array_equal(y, series[6:, 1])
    assert not X.flags.writeable


def test_sliding_windows_1d_and_errors():
    X, y = sliding_windows(np.arange(10.0), 4, 2)
    assert X.shape == (5, 4, 1) and y[:, 0].tolist() == [5, 6, 7, 8, 9]
    with pytest.raises(ValueError, match="too short"):
        sliding_windows(np.arange(5.0), 4, 2)


def test_one_hot():
    Y = one_hot(np.array([[0, 2], [1, 1]]), 3)
    assert Y.shape == (2, 2, 3) and Y.dtype == np.float32
    np.testing.assert_array_equal(Y.argmax(-1), [[0, 2], [1, 1]])
    assert Y.sum() == 4
    with pytest.raises(ValueError, match="depth"):
        one_hot([3], 3)


# --- Vocab -----------------------------------------------------------------------------


def test_vocab_round_trip_and_json():
    text = "Zoë and Łukasz say: hello, world!\n"
    v = Vocab.from_text(text, specials=["<pad>", "<eos>"])
    assert v.symbols[:2] == ("<pad>", "<eos>") and len(v) == 2 + len(set(text))
    assert list(v.symbols[2:]) == sorted(set(text))
    ids = v.encode(text)
    assert ids.dtype == np.int64 and ids.min() >= 2
    assert v.decode(ids) == text
    assert v.encode(["<eos>", "a"]).tolist() == [1, v.index("a")]
    d = json.loads(json.dumps(v.to_dict()))
    w = Vocab.from_dict(d)
    assert w == v and w.encode(text).tolist() == ids.tolist()


def test_vocab_from_list_of_names():
    v = Vocab.from_text(["Abe", "Zed"])
    assert v.symbols == ("A", "Z", "b", "d", "e")
    assert v.encode("Zebe").tolist() == [1, 4, 2, 4]


def test_vocab_unknown_symbols_are_named():
    v = Vocab.from_text("abc")
    with pytest.raises(ValueError) as e:
        v.encode("abxcyx")
    msg = str(e.value)
    assert "'x'" in msg and "'y'" in msg and "2 symbol(s)" in msg and "position 2" in msg
    assert "train on data that contains them" in msg
    with pytest.raises(ValueError, match="'<bos>'"):
        v.encode(["a", "<bos>"])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        v.decode([0, 3])
    with pytest.raises(ValueError, match="1-D"):
        v.decode([[0, 1]])
    with pytest.raises(ValueError, match="format"):
        Vocab.from_dict({"symbols": ["a"]})
    with pytest.raises(ValueError, match="unique"):
        Vocab(["a", "a"])


def test_vocab_encode_is_fast_on_a_megabyte():
    text = read_text(bundled_path("tinyshakespeare")) * 5  # 1 MB
    v = Vocab.from_text(text)
    ids = v.encode(text)
    assert len(ids) == len(text) and v.decode(ids[:1000]) == text[:1000]


# --- readers on real files -------------------------------------------------------------


def test_read_names_dir_real():
    names, labels, classes = read_names_dir(shared("names"))
    assert len(classes) == 18 and classes == sorted(classes)
    assert len(names) == 17117 and labels.shape == (17117,)
    assert classes[0] == "Arabic" and names[0] == "Khoury" and labels[0] == 0
    counts = dict(zip(classes, np.bincount(labels).tolist()))
    assert counts["Korean"] == 75 and counts["Russian"] == 8052
    assert all(n == n.strip() and n for n in names)


def test_read_text_real():
    text = read_text(shared("tinyshakespeare", "input.txt"))
    assert len(text) == 1115394 and len(set(text)) == 65
    assert text.startswith("First Citizen:\n")


def test_read_csv_airline():
    s = read_csv_series(
        shared("airline-passengers", "airline-passengers.csv"), target="Passengers", index="Month"
    )
    assert s.columns == ["Passengers"] and s.values.shape == (144, 1)
    assert s.values[:3, 0].tolist() == [112, 118, 132] and s.values[-1, 0] == 432
    assert s.index[0] == "1949-01" and s.target_index == 0
    assert s.missing_counts == {"Passengers": 0}
    # by default the text column (dates) is left out and reported
    s = read_csv_series(shared("airline-passengers", "airline-passengers.csv"))
    assert s.columns == ["Passengers"] and s.dropped == ["Month"]


def test_read_csv_beijing_missing_and_categorical():
    path = shared("beijing-pm25", "pollution.csv")
    s = read_csv_series(
        path, columns=["DEWP", "TEMP", "cbwd"], target="pm2.5", categorical=["cbwd"]
    )
    assert s.values.shape == (43824, 7) and s.values.dtype == np.float64
    assert s.columns == ["DEWP", "TEMP", "cbwd=NE", "cbwd=NW", "cbwd=SE", "cbwd=cv", "pm2.5"]
    assert s.target_index == 6
    assert s.missing_counts["pm2.5"] == 2067 and s.missing_counts["TEMP"] == 0
    y = s.values[:, s.target_index]
    assert np.isnan(y).sum() == 2067 and np.array_equal(np.isnan(y), s.missing[:, 6])
    assert np.isnan(y[:24]).all()  # the first day has no PM2.5 readings
    onehot = s.values[:, 2:6]
    assert (onehot.sum(1) == 1).all()
    assert onehot.sum(0).tolist() == [4997, 14150, 15290, 9387]  # NE, NW, SE, cv
    assert "pm2.5: 2067 of 43824 (4.7%)" in s.describe_missing()
    assert s.categories == {"cbwd": ["NE", "NW", "SE", "cv"]}


def test_read_csv_text_column_refused_without_categorical():
    path = shared("beijing-pm25", "pollution.csv")
    with pytest.raises(ValueError, match=r"pollution.csv: line 2, column 'cbwd'.*categorical"):
        read_csv_series(path, columns=["cbwd", "TEMP"])


def test_read_optdigits_real():
    X, y = read_optdigits(shared("optdigits", "optdigits.tes"))
    assert X.shape == (1797, 8, 8) and y.shape == (1797,)
    assert X.min() == 0 and X.max() == 16 and sorted(set(y.tolist())) == list(range(10))
    assert X[0, 0].tolist() == [0, 0, 5, 13, 9, 1, 0, 0] and y[0] == 0  # row by row
    X, y = read_optdigits(shared("optdigits", "optdigits.tra"))
    assert X.shape == (3823, 8, 8)


# --- readers on small made-up files: every bad input names the file --------------------


def test_csv_with_missing_values_and_fixed_categories(tmp_path):
    p = tmp_path / "s.csv"
    p.write_text("t,a,c\n1,2.5,x\n2,NA,y\n\n3, ,x\n4,nan,\n,,\n")
    s = read_csv_series(p, categorical={"c": ["y", "x", "z"]})
    assert s.columns == ["t", "a", "c=y", "c=x", "c=z"]
    assert s.missing_counts == {"t": 1, "a": 4, "c=y": 2, "c=x": 2, "c=z": 2}
    assert s.values.shape == (5, 5)
    assert s.values[0].tolist() == [1, 2.5, 0, 1, 0]
    assert s.values[1, 2:].tolist() == [1, 0, 0] and s.values[2, 2:].tolist() == [0, 1, 0]
    assert np.isnan(s.values[3, 2:]).all() and np.isnan(s.values[4]).all()
    np.testing.assert_array_equal(s.missing, np.isnan(s.values))
    with pytest.raises(ValueError, match=r"line 3, column 'c': category 'y'"):
        read_csv_series(p, categorical={"c": ["x"]})


BAD_CSV = [
    ("a,b\n1,2\n3,x\n5,6\n", {"columns": ["a", "b"]}, r"line 3, column 'b': 'x' is not a number"),
    ("a,b\n1,2\n3,x\n5,6\n", {}, r"line 3, column 'b': 'x' is not a number"),
    ("a,b\n1,2\n", {"target": "c"}, r"no column 'c'.*the columns are: a, b"),
    ("a,b\n1,2\n", {"columns": ["a", "zz"]}, r"no column 'zz'"),
    ("a,b\n1,2\n3\n", {}, r"line 3 has 1 fields"),
    ("1,2\n3,4\n", {}, r"line 1 looks like data, not a header"),
    ("a,b\n", {}, r"no data rows"),
    ("a,b\n1,inf\n", {}, r"line 2, column 'b': 'inf' is not a finite"),
]


@pytest.mark.parametrize("content,kwargs,pattern", BAD_CSV)
def test_bad_csv_gives_one_line_error_naming_the_file(tmp_path, content, kwargs, pattern):
    p = tmp_path / "bad.csv"
    p.write_text(content)
    with pytest.raises(ValueError, match=pattern) as e:
        read_csv_series(p, **kwargs)
    assert str(e.value).startswith(str(p)) and "\n" not in str(e.value)


def test_csv_error_becomes_value_error(tmp_path):
    import csv

    p = tmp_path / "wide.csv"
    p.write_text("a,b\n1," + "9" * 300 + "\n")
    old = csv.field_size_limit(100)
    try:
        with pytest.raises(ValueError, match=r"wide.csv: line 2: not readable as CSV"):
            read_csv_series(p)
    finally:
        csv.field_size_limit(old)


READERS = [read_text, read_csv_series, read_optdigits]


@pytest.mark.parametrize("reader", READERS)
def test_missing_file(tmp_path, reader):
    p = tmp_path / "nope.txt"
    with pytest.raises(ValueError, match="no such file") as e:
        reader(p)
    assert str(p) in str(e.value)


@pytest.mark.parametrize("reader", READERS)
def test_empty_file(tmp_path, reader):
    p = tmp_path / "empty.txt"
    p.write_bytes(b"\n  \n")
    with pytest.raises(ValueError, match="empty") as e:
        reader(p)
    assert str(p) in str(e.value)


@pytest.mark.parametrize("reader", READERS)
def test_non_utf8_file_gives_byte_offset(tmp_path, reader):
    p = tmp_path / "latin1.txt"
    p.write_bytes("name\nJosé\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"not valid UTF-8 at byte offset 8 \(byte 0xe9\)") as e:
        reader(p)
    assert str(e.value).startswith(str(p)) and e.value.__suppress_context__


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(ValueError, match="is a directory"):
        read_text(tmp_path)


def test_read_text_newlines_and_bom(tmp_path):
    p = tmp_path / "t.txt"
    p.write_bytes(b"\xef\xbb\xbfa\r\nb\rc\n")
    assert read_text(p) == "a\nb\nc\n"
    assert read_text(p, normalize_newlines=False) == "a\r\nb\rc\n"


def test_names_dir_strips_and_errors(tmp_path):
    d = tmp_path / "names"
    d.mkdir()
    with pytest.raises(ValueError, match="no .txt files") as e:
        read_names_dir(d)
    assert str(d) in str(e.value)
    (d / "SOURCE.md").write_text("not names")
    (d / "b.txt").write_text("Zed \n\n  Amy\n")
    (d / "a.txt").write_text("Ola\r\n")
    names, labels, classes = read_names_dir(d)
    assert (names, labels.tolist(), classes) == (["Ola", "Zed", "Amy"], [0, 1, 1], ["a", "b"])
    (d / "c.txt").write_bytes(b"Jos\xe9\n")
    with pytest.raises(ValueError, match=r"c.txt: not valid UTF-8 at byte offset 3"):
        read_names_dir(d)
    (d / "c.txt").write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        read_names_dir(d)
    with pytest.raises(ValueError, match="no such directory"):
        read_names_dir(tmp_path / "nope")
    with pytest.raises(ValueError, match="is a file"):
        read_names_dir(d / "a.txt")


def test_optdigits_bad_lines(tmp_path):
    p = tmp_path / "d.tra"
    row = ",".join(["0"] * 64)
    p.write_text(f"{row},3\n{row}\n")
    with pytest.raises(ValueError, match=r"d.tra: line 2 has 64 values, expected 65"):
        read_optdigits(p)
    p.write_text(f"{row},3\n{row},x\n")
    with pytest.raises(ValueError, match=r"line 2, field 65: 'x'"):
        read_optdigits(p)
    p.write_text(f"{row},3\n{row},12\n")
    with pytest.raises(ValueError, match=r"line 2 has a pixel outside"):
        read_optdigits(p)


# --- bundled samples -------------------------------------------------------------------


def test_bundled_samples_read_and_stay_small():
    names, _, classes = read_names_dir(bundled_path("names"))
    assert len(classes) == 18 and len(names) == 17117
    text = read_text(bundled_path("tinyshakespeare.txt"))
    assert 150_000 < len(text) < 250_000 and text.startswith("First Citizen:")
    s = read_csv_series(bundled_path("airline-passengers"), target="Passengers", index="Month")
    assert s.values.shape == (144, 1)
    Xtr, ytr = read_optdigits(bundled_path("optdigits-train"))
    Xte, yte = read_optdigits(bundled_path("optdigits-test"))
    assert Xtr.shape == (800, 8, 8) and Xte.shape == (400, 8, 8)
    assert set(ytr.tolist()) == set(yte.tolist()) == set(range(10))
    root = bundled_path("names").parent
    assert (root / "SOURCE.md").exists()
    total = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
    assert total < 1_500_000
    with pytest.raises(ValueError, match="choose one of: names"):
        bundled_path("mnist")


def test_bundled_names_equal_shared_copy():
    a = read_names_dir(shared("names"))
    b = read_names_dir(bundled_path("names"))
    assert a[0] == b[0] and a[2] == b[2] and np.array_equal(a[1], b[1])


# --- split_indices ---------------------------------------------------------------------


def test_split_covers_all_is_stratified_and_deterministic():
    labels = np.repeat(np.arange(4), [500, 60, 7, 33])
    parts = split_indices(
        len(labels), (0.8, 0.1, 0.1), rng=np.random.default_rng(0), stratify=labels
    )
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(labels)))
    for c, n in enumerate([500, 60, 7, 33]):
        got = [int((labels[p] == c).sum()) for p in parts]
        want = np.diff(np.round(np.cumsum([0, 0.8, 0.1, 0.1]) * n))
        assert got == want.tolist()  # every class split in the given fractions
    again = split_indices(
        len(labels), (0.8, 0.1, 0.1), rng=np.random.default_rng(0), stratify=labels
    )
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    other = split_indices(
        len(labels), (0.8, 0.1, 0.1), rng=np.random.default_rng(1), stratify=labels
    )
    assert not np.array_equal(parts[1], other[1])
    with pytest.raises(ValueError, match="sum to 1"):
        split_indices(10, (0.8, 0.1))


def test_split_keeps_duplicate_names_together():
    names, labels, _ = read_names_dir(bundled_path("names"))
    train, valid = split_indices(len(names), (0.9, 0.1), rng=7, stratify=labels, groups=names)
    assert len(train) + len(valid) == len(names)
    assert not {names[i] for i in train} & {names[i] for i in valid}
    # plain record-wise splitting would leak duplicates (Arabic.txt: 90 names, 1663 lines)
    train, valid = split_indices(len(names), (0.9, 0.1), rng=7, stratify=labels)
    assert {names[i] for i in train} & {names[i] for i in valid}
