"""The ``ctf`` task: CNTK text format files through `unrolled train / evaluate / predict`,
stream tables inferred from the file, and one-line errors for bad stream names."""
import json
import re

import numpy as np
import pytest

from unrolled.cli import main
from unrolled.config import resolve_config
from unrolled.data.ctf import infer_ctf_streams, write_ctf
from unrolled.tasks import get_task
from unrolled.tasks.ctf import parse_streams

FAST = ["--epochs", "8", "--hidden", "16", "--batch-size", "16", "--lr", "0.01", "--quiet"]


def sum_sign(n, seed, per_step=False):
    """Sequences of 3..11 numbers; label: is the sum positive (per sequence), or is the
    running sum positive (per step). One-hot labels in a sparse stream, as in CNTK."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        x = rng.standard_normal((int(rng.integers(3, 12)), 1)).astype(np.float32)
        c = (np.cumsum(x[:, 0]) > 0).astype(int) if per_step else [int(x.sum() > 0)]
        y = np.eye(2, dtype=np.float32)[c]
        out.append({"x": x, "y": y})
    return out


STREAMS = {"x": (1, "dense"), "y": (2, "sparse")}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("ctf")
    write_ctf(d / "train.ctf", sum_sign(500, 0), STREAMS)
    write_ctf(d / "new.ctf", sum_sign(200, 1), STREAMS)
    write_ctf(d / "tags.ctf", sum_sign(300, 2, per_step=True), STREAMS)
    return d


@pytest.fixture(scope="module")
def trained(data):
    out = data / "run"
    rc = main(["train", "ctf", "--data", str(data / "train.ctf"), "--features", "x",
               "--labels", "y", "--out", str(out), *FAST])
    assert rc == 0
    return out


def metrics(text):
    return {k: float(v) for k, v in re.findall(r"^(\w+): ([-\d.]+)$", text, re.MULTILINE)}


def test_sequence_classification_learns_through_the_cli(trained):
    meta = json.loads((trained / "config.json").read_text())["config"]
    assert meta["task"] == "ctf" and meta["features"] == "x"
    report = (trained / "report.txt").read_text()
    assert "majority-class baseline" in report
    m = metrics(report.split("test metrics:")[1])
    # the sign of a sum of up to 11 numbers: chance is 0.5
    assert m["accuracy"] > 0.85, report


def test_evaluate_on_new_data_prints_metrics(trained, data, capsys):
    capsys.readouterr()
    assert main(["evaluate", str(trained), "--data", str(data / "new.ctf")]) == 0
    m = metrics(capsys.readouterr().out)
    assert set(m) == {"loss", "accuracy", "macro_f1"}
    assert m["accuracy"] > 0.85 and m["loss"] < 0.4


def test_predict_gives_classes_per_sequence(trained, data, capsys):
    capsys.readouterr()
    assert main(["predict", str(trained), str(data / "new.ctf"), "--top", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 201
    seqs = sum_sign(200, 1)
    got = [int(re.match(r"  sequence \d+ \(id \d+\): (\d)", s).group(1)) for s in lines[1:]]
    truth = [int(s["y"][0].argmax()) for s in seqs]
    assert np.mean(np.array(got) == truth) > 0.85


def test_tagging_one_label_per_step(data, capsys):
    out = data / "tags-run"
    rc = main(["train", "ctf", "--data", str(data / "tags.ctf"), "--features", "x",
               "--labels", "y", "--out", str(out), *FAST])
    assert rc == 0
    assert "tagging (one label per step)" in capsys.readouterr().out
    report = (out / "report.txt").read_text()
    assert "steps" in report and "confusion matrix over steps" in report
    # the sign of the running sum at every step
    assert metrics(report.split("test metrics:")[1])["accuracy"] > 0.85, report
    # a tagger refuses a file with one label per sequence
    assert main(["evaluate", str(out), "--data", str(data / "new.ctf")]) == 2
    assert "one label per step" in capsys.readouterr().err


def test_dim1_labels_are_class_ids_and_explicit_streams(tmp_path):
    seqs = [{"f": s["x"], "c": s["y"].argmax(1)[:, None].astype(np.float32) * 2}
            for s in sum_sign(60, 3)]
    write_ctf(tmp_path / "d.ctf", seqs, {"f": (1, "dense"), "c": (1, "dense")})
    cfg = resolve_config(get_task("ctf"), overrides={
        "features": "f", "labels": "c", "streams": "f:1:dense,c:1:dense",
        "val_fraction": "0.2", "test_fraction": "0.2"})
    task = get_task("ctf")(cfg)
    task.load(tmp_path / "d.ctf")
    assert task.classes == ["0", "1", "2"] and not task.per_step
    assert sorted(set(np.concatenate([task.labels[s] for s in task.labels]))) == [0, 2]
    assert sum(task.sizes.values()) == 60


def test_bad_stream_names_give_one_line_errors(data, capsys):
    f = str(data / "train.ctf")
    cases = [(["--features", "z", "--labels", "y"], "--features 'z' is not a stream"),
             (["--features", "x", "--labels", "q"], "--labels 'q' is not a stream"),
             ([], "needs --features NAME and --labels NAME"),
             (["--features", "x", "--labels", "x"], "must be another stream"),
             (["--features", "x", "--labels", "y", "--streams", "x:1"], "name:dim:kind"),
             (["--features", "x", "--labels", "y", "--cell", "foo"], "--cell must be one of"),
             (["--features", "x", "--labels", "y", "--streams", "x:2:dense,y:2:sparse"],
              "train.ctf:1:3: stream 'x' has 1 values, expected 2")]
    for args, msg in cases:
        capsys.readouterr()
        assert main(["train", "ctf", "--data", f, "--out", str(data / "bad"), *args]) == 2
        out, err = capsys.readouterr()
        assert msg in err and err.count("\n") == 1, err
        assert not out and not (data / "bad").exists()  # nothing printed or written
    capsys.readouterr()
    main(["train", "ctf", "--data", f, "--features", "z", "--labels", "y"])
    assert "its streams are: x (1, dense), y (2, sparse)" in capsys.readouterr().err


def test_label_rows_must_be_per_sequence_or_per_step(tmp_path):
    seqs = [{"x": np.ones((4, 1), np.float32), "y": np.eye(2, dtype=np.float32)[[0, 1]]}]
    write_ctf(tmp_path / "m.ctf", seqs * 10, STREAMS)
    task = get_task("ctf")(resolve_config(get_task("ctf"),
                                          overrides={"features": "x", "labels": "y"}))
    with pytest.raises(ValueError, match="2 rows of 'y' and 4 of 'x'"):
        task.load(tmp_path / "m.ctf")


def test_infer_streams_reads_dims_and_kinds(tmp_path):
    p = tmp_path / "a.ctf"
    p.write_text("0\t|A 1 2 3\t|B 0:1 4:2.5\t|C 7\n"
                 "0 |A 4 5 6 |# a comment |B\n"
                 "|# an escaped pipe |# in a comment |A -1 -2e-1 .5\n"
                 "1|B 5:1 1:-1\t\t|A\t7  8\t9\n"
                 "1 |C 0.25\n")
    assert infer_ctf_streams(p) == {"A": (3, "dense"), "B": (6, "sparse"), "C": (1, "dense")}
    for text, msg in [("|A 1 2\n|A 1 2 3\n", ":2: stream 'A' has 3 values here but 2 on line 1"),
                      ("|A 1 2\n|A 0:1\n", ":2: stream 'A' is sparse here but dense before"),
                      ("|A 1\n|B\n", ":2: every sample of stream 'B' is empty"),
                      ("|# only a comment\n", "no stream found")]:
        p.write_text(text)
        with pytest.raises(ValueError, match=re.escape(msg)):
            infer_ctf_streams(p)


def test_parse_streams():
    assert parse_streams("x:8:dense, y:2:sparse") == {"x": (8, "dense"), "y": (2, "sparse")}
    for bad in ("x:0:dense", "x:8:dens", "x:8"):
        with pytest.raises(ValueError, match="name:dim:kind"):
            parse_streams(bad)


def test_sparse_one_hot_features_and_dense_labels(tmp_path):
    """Word ids written as sparse one-hot rows (as CNTK's ATIS files), labels dense."""
    rng = np.random.default_rng(4)
    seqs = []
    for _ in range(40):
        w = rng.integers(0, 7, int(rng.integers(2, 6)))
        seqs.append({"w": np.eye(7, dtype=np.float32)[w],
                     "c": np.eye(3, dtype=np.float32)[[int(w.max()) % 3]]})
    write_ctf(tmp_path / "w.ctf", seqs, {"w": (7, "sparse"), "c": (3, "dense")})
    task = get_task("ctf")(resolve_config(get_task("ctf"),
                                          overrides={"features": "w", "labels": "c"}))
    task.load(tmp_path / "w.ctf")
    assert task.streams == {"w": (7, "sparse"), "c": (3, "dense")}
    assert task.classes == ["0", "1", "2"] and sum(task.sizes.values()) == 40
    b = task.get_batch("train", np.arange(4))
    assert b.X.shape[0] == 4 and b.X.shape[2] == 7 and b.X.dtype == np.float32
    assert task.build_model()(b.X, mask=b.mask).shape == (4, 3)


# ------------------------------------------------------------- CNTK's ATIS recipe
TAGS = ["O", "B-city", "I-city", "B-date", "I-date"]
WORDS = [f"w{i}" for i in range(20)]


def slot_sentences(n, seed):
    """Sentences of word ids with BIO slot tags (one per word, as ATIS's slots) and one
    intent per sentence: words 10..14 start a city, 15..17 right after a city continue
    it, 18 and 19 are dates; the intent is whether the sentence names a city."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        w = rng.integers(0, 20, int(rng.integers(4, 10)))
        tags, prev = [], "O"
        for x in w:
            t = ("B-city" if 10 <= x <= 14 else
                 "I-city" if 15 <= x <= 17 and prev.endswith("city") else
                 "B-date" if x >= 18 else "O")
            tags.append(t)
            prev = t
        out.append({"w": np.eye(20, dtype=np.float32)[w],
                    "s": np.eye(5, dtype=np.float32)[[TAGS.index(t) for t in tags]],
                    "i": np.eye(2, dtype=np.float32)[[int("B-city" in tags)]]})
    return out


@pytest.fixture(scope="module")
def slots(tmp_path_factory):
    d = tmp_path_factory.mktemp("atis")
    streams = {"w": (20, "sparse"), "s": (5, "sparse"), "i": (2, "sparse")}
    write_ctf(d / "train.ctf", slot_sentences(400, 0), streams)
    write_ctf(d / "new.ctf", slot_sentences(60, 1), streams)
    (d / "slots.wl").write_text("\n".join(TAGS) + "\n")
    (d / "words.wl").write_text("\n".join(WORDS) + "\n")
    return d


def test_atis_recipe_embedding_dropout_names_and_span_f1(slots, capsys):
    out = slots / "run"
    rc = main(["train", "ctf", "--data", str(slots / "train.ctf"), "--features", "w",
               "--labels", "s", "--embedding", "8", "--dropout", "0.1", "--cell", "lstm",
               "--bidirectional", "true", "--label-names", str(slots / "slots.wl"),
               "--feature-names", str(slots / "words.wl"), "--out", str(out), *FAST])
    assert rc == 0
    from unrolled.tasks.base import load_trained

    model, meta, task = load_trained(out, "")
    kinds = [type(ly).__name__ for ly in model.layers]
    assert kinds == ["Embedding", "Dropout", "LSTM", "Dropout", "Dense"]
    assert model.layers[0].num_embeddings == 20 and model.layers[0].embedding_dim == 8
    assert task.classes == TAGS
    report = (out / "report.txt").read_text()
    m = metrics(report.split("test metrics:")[1])
    assert {"span_precision", "span_recall", "span_f1"} <= set(m)
    assert m["span_f1"] > 0.8, report
    capsys.readouterr()
    assert main(["evaluate", str(out), "--data", str(slots / "new.ctf")]) == 0
    ev = metrics(capsys.readouterr().out)
    assert ev["span_f1"] > 0.8
    # predict names the words and the tags
    assert main(["predict", str(out), str(slots / "new.ctf")]) == 0
    lines = capsys.readouterr().out.splitlines()[1:]
    first = slot_sentences(60, 1)[0]
    words = [WORDS[i] for i in first["w"].argmax(1)]
    assert lines[0].startswith("  sequence 0 (id 0) " + " ".join(words) + ": ")
    pairs = lines[0].split(": ", 1)[1].split()
    assert [p.split("/")[0] for p in pairs] == words
    assert {p.split("/")[1] for p in pairs} <= set(TAGS)


def test_span_f1_counts_whole_spans():
    from unrolled.tasks.tagging import span_prf

    true = [["B-city", "I-city", "O", "B-date"]]
    assert span_prf(true, true)["span_f1"] == 1.0
    half = span_prf(true, [["B-city", "O", "O", "B-date"]])   # one end wrong: not counted
    assert half["span_precision"] == 0.5 and half["span_recall"] == 0.5


def test_compound_intents_are_named_or_keep_the_first(slots, tmp_path):
    seqs = slot_sentences(40, 3)
    seqs[7]["i"] = np.eye(2, dtype=np.float32)[[1, 0]]           # two intents
    streams = {"w": (20, "sparse"), "i": (2, "sparse")}
    write_ctf(tmp_path / "c.ctf", [{"w": s["w"], "i": s["i"]} for s in seqs], streams)
    cfg = {"features": "w", "labels": "i", "embedding": 4}
    task = get_task("ctf")(resolve_config(get_task("ctf"), overrides=cfg))
    with pytest.raises(ValueError, match=r"sequence 7 \(id 7.*2 rows of 'i'.*--first-label"):
        task.load(tmp_path / "c.ctf")
    task = get_task("ctf")(resolve_config(get_task("ctf"),
                                          overrides={**cfg, "first_label": True}))
    task.load(tmp_path / "c.ctf")
    assert not task.per_step and sum(task.sizes.values()) == 40
    b = task.get_batch("train", np.arange(3))
    assert b.X.dtype == np.int64 and b.X.ndim == 2           # word ids into the embedding
    assert task.build_model()(b.X, mask=b.mask).shape == (3, 2)


def test_recipe_options_refuse_what_they_cannot_read(slots, tmp_path):
    bad = tmp_path / "short.wl"
    bad.write_text("O\nB-city\n")
    task = get_task("ctf")(resolve_config(get_task("ctf"), overrides={
        "features": "w", "labels": "s", "label_names": str(bad)}))
    with pytest.raises(ValueError, match="2 names, but the label stream 's' has 4"):
        task.load(slots / "train.ctf")
    two = [{"w": np.ones((3, 20), np.float32), "s": np.eye(5, dtype=np.float32)[[0, 1, 0]]}]
    write_ctf(tmp_path / "two.ctf", two * 20, {"w": (20, "dense"), "s": (5, "sparse")})
    task = get_task("ctf")(resolve_config(get_task("ctf"), overrides={
        "features": "w", "labels": "s", "embedding": 4}))
    with pytest.raises(ValueError, match="one word per step"):
        task.load(tmp_path / "two.ctf")
