"""CNTK Text Format: reader, writer, minibatches, error positions, streaming memory."""

import re
import time
import tracemalloc
import types

import numpy as np
import pytest

from unrolled.data import ctf_minibatches, read_ctf, write_ctf  # the public contract

STREAMS = {"A": (3, "dense"), "B": (6, "sparse"), "C": (1, "dense")}


def write_text(tmp_path, text, name="data.ctf"):
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return path


def random_sequences(rng, n, streams, dtype=np.float32):
    """Random records: every stream has its own length (0 included), sparse rows have
    0 to 3 nonzeros; a sequence always has at least one row somewhere."""
    seqs = []
    for _ in range(n):
        seq = {}
        for name, (dim, kind) in streams.items():
            T = int(rng.integers(0, 7))
            if kind == "dense":
                x = rng.standard_normal((T, dim)).astype(dtype)
            else:
                x = np.zeros((T, dim), dtype=dtype)
                for t in range(T):
                    k = int(rng.integers(0, 4))
                    x[t, rng.choice(dim, size=k, replace=False)] = rng.standard_normal(k)
            if T or rng.random() < 0.5:  # a stream with no rows may also be left out
                seq[name] = x
        if not any(len(a) for a in seq.values()):
            seq[next(iter(streams))] = np.ones((1, streams[next(iter(streams))][0]), dtype)
        seqs.append(seq)
    return seqs


def assert_records_equal(got, want, streams):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert set(g) == set(streams)
        for name, (dim, _) in streams.items():
            expected = w.get(name, np.zeros((0, dim)))
            assert g[name].shape == expected.shape, name
            np.testing.assert_array_equal(g[name], expected)


# ----------------------------------------------------------------------------- round trip

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_round_trip_random_dense_and_sparse(tmp_path, dtype):
    rng = np.random.default_rng(0)
    streams = {"feat": (5, "dense"), "slot": (9, "sparse"), "intent": (4, "sparse"),
               "y": (1, "dense")}
    seqs = random_sequences(rng, 60, streams, dtype)
    path = tmp_path / "rt.ctf"
    assert write_ctf(path, iter(seqs), streams) == 60
    got = list(read_ctf(path, streams, dtype=dtype))
    assert all(a.dtype == dtype for g in got for a in g.values())
    assert_records_equal(got, seqs, streams)  # exact: the default format round-trips


def test_writer_is_all_or_nothing(tmp_path):
    # a bad sequence half-way leaves the old file untouched and no temporary file behind
    streams = {"x": (2, "dense")}
    path = tmp_path / "data.ctf"
    path.write_text("old\n")
    good = {"x": np.ones((3, 2))}
    with pytest.raises(ValueError, match="shape"):
        write_ctf(path, [good, {"x": np.ones((3, 5))}], streams)
    assert path.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.ctf"]
    assert write_ctf(path, [good], streams) == 1 and path.read_text().startswith("0\t|x 1 1")


def test_round_trip_without_ids_one_line_per_sequence(tmp_path):
    rng = np.random.default_rng(1)
    streams = {"x": (4, "dense"), "label": (3, "sparse")}
    seqs = [{"x": rng.standard_normal((1, 4)).astype(np.float32),
             "label": np.eye(3, dtype=np.float32)[[i % 3]]} for i in range(10)]
    write_ctf(tmp_path / "n.ctf", seqs, streams, ids=False)
    assert not (tmp_path / "n.ctf").read_text().startswith("0")
    assert_records_equal(list(read_ctf(tmp_path / "n.ctf", streams)), seqs, streams)


def test_round_trip_keeps_given_ids(tmp_path):
    streams = {"x": (2, "dense")}
    seqs = [{"x": np.full((t + 1, 2), t, np.float32)} for t in range(4)]
    write_ctf(tmp_path / "i.ctf", seqs, streams, ids=[10, 3, 3000, 4])
    got = list(read_ctf(tmp_path / "i.ctf", streams, return_ids=True))
    assert [i for i, _ in got] == [10, 3, 3000, 4]
    assert_records_equal([r for _, r in got], seqs, streams)


def test_writer_writes_zero_sparse_rows_as_empty_samples(tmp_path):
    streams = {"s": (4, "sparse")}
    seq = {"s": np.array([[0, 0, 2.5, 0], [0, 0, 0, 0], [1, 0, 0, -1]], np.float32)}
    write_ctf(tmp_path / "s.ctf", [seq], streams, fmt="%g")
    assert (tmp_path / "s.ctf").read_text() == "0\t|s 2:2.5\n0\t|s\n0\t|s 0:1 3:-1\n"
    assert_records_equal(list(read_ctf(tmp_path / "s.ctf", streams)), [seq], streams)


# ----------------------------------------------------------------------------- grammar

# Every corner of the grammar in one file (streams A dense 3, B sparse 6, C dense 1).
GRAMMAR = (
    "0\t|A 1 2 3\t|B 0:1 4:2.5\t|C 7\n"        # id, tabs, several sparse entries
    "0 |A 4 5 6 |# a comment |B\n"             # comment between samples, empty sparse sample
    "|# comment with an escaped pipe |# still comment |A -1 -2e-1 .5\n"  # no id: continues 0
    "\n"                                       # blank line: ignored
    "   \t\n"                                  # whitespace only: ignored
    "|# a line with only a comment\n"          # ignored
    "1|B 5:1 5:2 1:-1\t\t|A\t7  8\t9\n"        # no space after the id; an index given twice
    "1 |C 0.25\n"                              # stream C only on this line
    "007 |A 0 0 0   \n"                        # id 7, trailing spaces
    "0 |A 1 1 1 |C 1e0\n"                      # id 0 again, not consecutive: new sequence
)


def test_hand_written_file_covers_the_grammar(tmp_path):
    path = write_text(tmp_path, GRAMMAR)
    got = list(read_ctf(path, STREAMS, return_ids=True))
    assert [i for i, _ in got] == [0, 1, 7, 0]
    s0, s1, s7, s0b = (r for _, r in got)

    np.testing.assert_allclose(s0["A"], [[1, 2, 3], [4, 5, 6], [-1, -0.2, 0.5]])
    np.testing.assert_array_equal(s0["B"], [[1, 0, 0, 0, 2.5, 0], [0, 0, 0, 0, 0, 0]])
    np.testing.assert_array_equal(s0["C"], [[7]])

    np.testing.assert_array_equal(s1["A"], [[7, 8, 9]])
    np.testing.assert_array_equal(s1["B"], [[0, -1, 0, 0, 0, 3]])  # 5:1 + 5:2
    np.testing.assert_array_equal(s1["C"], [[0.25]])

    np.testing.assert_array_equal(s7["A"], [[0, 0, 0]])
    assert s7["B"].shape == (0, 6) and s7["C"].shape == (0, 1)

    np.testing.assert_array_equal(s0b["A"], [[1, 1, 1]])
    np.testing.assert_array_equal(s0b["C"], [[1]])
    assert s0b["B"].shape == (0, 6)
    assert all(a.dtype == np.float32 for _, r in got for a in r.values())


def test_without_ids_every_line_is_a_sequence(tmp_path):
    path = write_text(tmp_path, "|A 1 2 3 |B 2:1\n"
                                "|# a comment line is not a sequence\n"
                                "\n"
                                "|B 0:1 |A 4 5 6\n"
                                "|C 3\n")
    got = list(read_ctf(path, STREAMS, return_ids=True))
    assert [i for i, _ in got] == [None, None, None]
    (_, a), (_, b), (_, c) = got
    np.testing.assert_array_equal(a["A"], [[1, 2, 3]])
    np.testing.assert_array_equal(a["B"], [[0, 0, 1, 0, 0, 0]])
    np.testing.assert_array_equal(b["A"], [[4, 5, 6]])
    np.testing.assert_array_equal(b["B"], [[1, 0, 0, 0, 0, 0]])
    assert c["A"].shape == (0, 3) and c["B"].shape == (0, 6)
    np.testing.assert_array_equal(c["C"], [[3]])


def test_cntk_documentation_example(tmp_path):
    # the example of the CNTK documentation: line 3 has no id and belongs to sequence 0
    text = ("0\t|A 1 2 3 4 5\t|B 100:3 123:4\t|C 8\n"
            "0\t|A 0 1 2 3 4\t|# a CTF comment\n"
            "|# another comment |A 0 1.1 22 0.3 54 |C 123917 |B 1134:1.911 13331:0.014\n"
            "1\t|# a comment with an escaped pipe: '|#' |A 3 2 1 0 1.1 |B 14:3 1222:7.1 "
            "|C 1234567\n")
    streams = {"A": (5, "dense"), "B": (1000000, "sparse"), "C": (1, "dense")}
    s0, s1 = read_ctf(write_text(tmp_path, text), streams, dtype=np.float64)
    assert s0["A"].shape == (3, 5) and s0["B"].shape == (2, 1000000)
    np.testing.assert_array_equal(s0["C"], [[8], [123917]])
    assert s0["B"][0, 100] == 3 and s0["B"][1, 13331] == 0.014 and s0["B"].sum() == 8.925
    np.testing.assert_array_equal(s1["A"], [[3, 2, 1, 0, 1.1]])
    assert s1["B"][0, 1222] == 7.1 and s1["C"][0, 0] == 1234567


def test_crlf_line_ends_and_byte_order_mark(tmp_path):
    path = write_text(tmp_path, b"\xef\xbb\xbf0 |A 1 2 3\r\n0 |A 4 5 6 |C 1\r\n1 |A 7 8\r\n")
    with pytest.raises(ValueError, match=re.escape(f"{path}:3:3: stream 'A' has 2 values")):
        list(read_ctf(path, STREAMS))
    path.write_bytes(b"\xef\xbb\xbf0 |A 1 2 3\r\n0 |A 4 5 6 |C 1\r\n")
    (seq,) = read_ctf(path, STREAMS)
    np.testing.assert_array_equal(seq["A"], [[1, 2, 3], [4, 5, 6]])


def test_bytes_that_are_not_utf8_are_located(tmp_path):
    path = write_text(tmp_path, b"0 |A 1 2 3\n0 |A 1 \xff 3\n")
    with pytest.raises(ValueError, match=re.escape(f"{path}:2:8: the file is not valid UTF-8")):
        list(read_ctf(path, STREAMS))


def test_one_label_per_sequence_beside_one_per_step(tmp_path):
    # slot filling with intents: streams of one sequence have different lengths
    streams = {"word": (10, "sparse"), "slot": (4, "sparse"), "intent": (3, "sparse")}
    text = ("0 |word 3:1 |slot 0:1 |intent 2:1\n"
            "0 |word 7:1 |slot 1:1\n"
            "0 |word 1:1 |slot 0:1\n"
            "1 |word 2:1 |slot 3:1 |intent 0:1\n")
    s0, s1 = read_ctf(write_text(tmp_path, text), streams)
    assert (s0["word"].shape, s0["slot"].shape, s0["intent"].shape) == ((3, 10), (3, 4), (1, 3))
    np.testing.assert_array_equal(s0["word"].argmax(1), [3, 7, 1])
    np.testing.assert_array_equal(s1["intent"], [[1, 0, 0]])


def test_unknown_streams_error_or_skip(tmp_path):
    path = write_text(tmp_path, "0 |A 1 2 3 |extra 1 2 |B 1:1\n")
    with pytest.raises(ValueError, match=r":1:13: unknown stream 'extra'; "
                                         r"known streams: 'A', 'B', 'C'"):
        list(read_ctf(path, STREAMS))
    (seq,) = read_ctf(path, STREAMS, skip_unknown=True)
    np.testing.assert_array_equal(seq["A"], [[1, 2, 3]])
    np.testing.assert_array_equal(seq["B"], [[0, 1, 0, 0, 0, 0]])


def test_reader_is_a_lazy_generator(tmp_path):
    # the error on line 4 is only met after the first sequence was handed out
    path = write_text(tmp_path, "0 |A 1 2 3\n0 |A 1 2 3\n1 |A 1 2 3\n1 |A 1 2\n")
    gen = read_ctf(path, STREAMS)
    assert isinstance(gen, types.GeneratorType)
    first = next(gen)
    assert first["A"].shape == (2, 3)
    with pytest.raises(ValueError, match=r":4:3: "):
        next(gen)
    # nothing is opened before the first next(): a missing file fails there
    gen = read_ctf(tmp_path / "missing.ctf", STREAMS)
    with pytest.raises(FileNotFoundError):
        next(gen)


# ----------------------------------------------------------------------------- errors

@pytest.mark.parametrize("text, where, message", [
    ("0 |A 1 2\n", "1:3", "stream 'A' has 2 values, expected 3"),
    ("0 |A 1 2 3 4\n", "1:3", "stream 'A' has 4 values, expected 3"),
    ("0 |C\n", "1:3", "stream 'C' has 0 values, expected 1"),
    ("0 |A 1 x 3\n", "1:8", "stream 'A': expected a number, got 'x'"),
    ("0 |A 1 2 3:4\n", "1:10", "stream 'A': expected a number, got '3:4' (is the stream sparse?)"),
    ("0 |A 1-2 3 4\n", "1:6", "stream 'A': expected a number, got '1-2'"),
    ("0 |B 6:1\n", "1:6", "stream 'B': index 6 out of range, expected 0 <= index < 6"),
    ("0 |B 1:1 3\n", "1:10", "stream 'B': expected index:value, got '3'"),
    ("0 |B -1:2\n", "1:6", "stream 'B': expected index:value, got '-1:2'"),
    ("0 |B 1:abc\n", "1:6", "stream 'B': expected index:value, got '1:abc'"),
    ("0 |B\t2:1\t\t1.5:1\n", "1:11", "stream 'B': expected index:value, got '1.5:1'"),
    ("x1 |A 1 2 3\n", "1:1", "expected a sequence id (digits) or '|' here, got 'x1'"),
    ("  4a |A 1 2 3\n", "1:3", "expected a sequence id (digits) or '|' here, got '4a'"),
    ("0 | A 1 2 3\n", "1:3", "expected a stream name right after '|'"),
    ("0 |A 1 2 3 |\n", "1:12", "expected a stream name right after '|'"),
    ("0 |A 1 2 3 |A 4 5 6\n", "1:13", "stream 'A' appears twice on one line"),
    ("0 |A 1 2 3\n\n|# c\n0 |A 1 2\n", "4:3", "stream 'A' has 2 values, expected 3"),
    ("0 |A 1 2 3\n1\t|C 1\t|A 1 2 3 |B 2:1 9:1\n", "2:24", "stream 'B': index 9 out of range"),
    # the first error of the file wins, even if the dense one is found later
    ("0 |A 1 2\n0 |A 1 2 3 |Z 1\n", "1:3", "stream 'A' has 2 values, expected 3"),
    ("0 |C 1 |A 1 y 3 |Z 1\n", "1:13", "stream 'A': expected a number, got 'y'"),
])
def test_malformed_lines_name_file_line_and_column(tmp_path, text, where, message):
    path = write_text(tmp_path, text)
    with pytest.raises(ValueError) as err:
        list(read_ctf(path, STREAMS))
    assert str(err.value).startswith(f"{path}:{where}: {message}"), str(err.value)


@pytest.mark.parametrize("streams, error", [
    ({}, TypeError),
    ({"A": 3}, TypeError),
    ({"A": (0, "dense")}, ValueError),
    ({"A": (3.0, "dense")}, ValueError),
    ({"A": (3, "Dense")}, ValueError),
    ({"A B": (3, "dense")}, ValueError),
    ({"#A": (3, "dense")}, ValueError),
])
def test_bad_stream_definitions_are_refused(tmp_path, streams, error):
    with pytest.raises(error):
        read_ctf(tmp_path / "x.ctf", streams)


def test_writer_refuses_what_ctf_cannot_hold(tmp_path):
    streams = {"x": (2, "dense")}
    with pytest.raises(ValueError, match=r"expected an array of shape \(n, 2\), got \(3,\)"):
        write_ctf(tmp_path / "w.ctf", [{"x": np.zeros(3)}], streams)
    with pytest.raises(ValueError, match="no rows in any stream"):
        write_ctf(tmp_path / "w.ctf", [{"x": np.zeros((0, 2))}], streams)
    with pytest.raises(ValueError, match="ids=False writes one line per sequence"):
        write_ctf(tmp_path / "w.ctf", [{"x": np.zeros((2, 2))}], streams, ids=False)
    with pytest.raises(ValueError, match=r"streams \['y'\] that are not in streams"):
        write_ctf(tmp_path / "w.ctf", [{"y": np.zeros((2, 2))}], streams)
    with pytest.raises(ValueError, match="the same id 3"):
        write_ctf(tmp_path / "w.ctf", [{"x": np.ones((1, 2))}] * 2, streams, ids=[3, 3])
    assert not (tmp_path / "w.ctf").exists()       # nothing half-written
    assert not (tmp_path / "w.ctf.tmp").exists()


# ----------------------------------------------------------------------------- minibatches

def test_minibatches_are_padded_and_masked(tmp_path):
    rng = np.random.default_rng(2)
    streams = {"x": (3, "dense"), "tag": (5, "sparse"), "intent": (2, "sparse")}
    seqs = []
    for i in range(7):
        T = int(rng.integers(1, 6))
        seqs.append({"x": rng.standard_normal((T, 3)).astype(np.float32),
                     "tag": np.eye(5, dtype=np.float32)[rng.integers(0, 5, T)],
                     "intent": np.eye(2, dtype=np.float32)[[i % 2]]})
    path = tmp_path / "b.ctf"
    write_ctf(path, seqs, streams)

    batches = list(ctf_minibatches(path, streams, 3, "x", "tag"))
    assert [len(b.x) for b in batches] == [3, 3, 1]
    for k, b in enumerate(batches):
        group = seqs[3 * k: 3 * k + 3]
        T = max(len(s["x"]) for s in group)
        assert b.x.shape == (len(group), T, 3) and b.x_mask.shape == (len(group), T)
        assert b.y.shape == (len(group), T, 5) and b.x.dtype == np.float32
        for r, s in enumerate(group):
            n = len(s["x"])
            np.testing.assert_array_equal(b.x[r, :n], s["x"])
            np.testing.assert_array_equal(b.y[r, :n], s["tag"])
            assert b.x_mask[r].tolist() == [True] * n + [False] * (T - n)
            assert not b.x[r, n:].any()  # padded steps hold zeros

    # one label per sequence beside one feature per step; left padding; drop_last
    batches = list(ctf_minibatches(path, streams, 3, "x", "intent", side="left",
                                   drop_last=True))
    assert len(batches) == 2
    b = batches[0]
    assert b.y.shape == (3, 1, 2) and b.y_mask.all()
    n = len(seqs[0]["x"])
    np.testing.assert_array_equal(b.x[0, b.x.shape[1] - n:], seqs[0]["x"])
    assert b.x_mask[0, b.x.shape[1] - n:].all() and not b.x_mask[0, :b.x.shape[1] - n].any()


def test_minibatch_shuffle_buffer_is_a_seeded_permutation(tmp_path):
    streams = {"x": (1, "dense")}
    path = tmp_path / "p.ctf"
    write_ctf(path, [{"x": np.full((1, 1), i, np.float32)} for i in range(50)], streams)

    def order(**kw):
        return [int(v) for b in ctf_minibatches(path, streams, 4, "x", "x", **kw)
                for v in b.x[:, 0, 0]]

    assert order() == list(range(50))
    shuffled = order(shuffle_buffer=16, seed=0)
    assert sorted(shuffled) == list(range(50)) and shuffled != list(range(50))
    assert order(shuffle_buffer=16, seed=0) == shuffled
    assert order(shuffle_buffer=16, seed=1) != shuffled


def test_minibatches_refuse_a_sequence_without_the_stream(tmp_path):
    path = write_text(tmp_path, "0 |A 1 2 3 |C 1\n1 |A 1 2 3\n")
    gen = ctf_minibatches(path, STREAMS, 1, "A", "C")
    assert next(gen).y.shape == (1, 1, 1)
    with pytest.raises(ValueError, match=r"sequence 1 \(id 1\) has no sample of stream 'C'"):
        next(gen)


def test_minibatch_arguments_are_checked(tmp_path):
    with pytest.raises(ValueError, match="features='w' is not a stream"):
        ctf_minibatches(tmp_path / "x.ctf", STREAMS, 2, "w", "A")
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        ctf_minibatches(tmp_path / "x.ctf", STREAMS, 0, "A", "B")


# ----------------------------------------------------------------------------- memory

def test_streams_a_30mb_file_in_bounded_memory(tmp_path):
    # ~30 MB: 100-dim dense features and a sparse label on each line, 20 lines a sequence
    rng = np.random.default_rng(3)
    pool = [" ".join(f"{v:.6f}" for v in rng.standard_normal(100)) for _ in range(97)]
    lines, size, n_seq = [], 0, 0
    while size < 30 * 2**20:
        for t in range(20):
            line = f"{n_seq}\t|x {pool[(7 * n_seq + t) % 97]}\t|y {(n_seq + t) % 10}:1\n"
            lines.append(line)
            size += len(line)
        n_seq += 1
    path = tmp_path / "big.ctf"
    path.write_text("".join(lines))
    del lines

    streams = {"x": (100, "dense"), "y": (10, "sparse")}
    t0 = time.perf_counter()
    tracemalloc.start()
    try:
        count = rows = 0
        for seq in read_ctf(path, streams):
            count += 1
            rows += len(seq["x"])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (count, rows) == (n_seq, 20 * n_seq)
    # one sequence is ~20 KB of text; the file is 30 MB. Allow 1/30 of the file.
    assert peak < size / 30, f"peak {peak / 2**20:.2f} MiB for a {size / 2**20:.0f} MiB file"
    assert time.perf_counter() - t0 < 60
