"""Tagging: BIO spans and span F1, the column reader, the task, and learning on real data."""
import numpy as np
import pytest
from helpers import numeric_grads, rel_err

from unrolled.tasks.tagging import TaggingTask, bio_spans, char_class, read_tagged, span_prf


def test_bio_spans_follow_conlleval():
    tags = ["B-PER", "I-PER", "O", "I-LOC", "I-LOC", "B-LOC", "I-ORG", "O", "B-DAT"]
    assert bio_spans(tags) == {("PER", 0, 2), ("LOC", 3, 5), ("LOC", 5, 6), ("ORG", 6, 7),
                               ("DAT", 8, 9)}
    assert bio_spans(["O", "O"]) == set()


def test_span_f1_needs_type_and_both_ends():
    gold = [["B-PER", "I-PER", "O", "B-LOC"]]
    pred = [["B-PER", "O", "O", "B-LOC"]]            # PER cut short: wrong span
    r = span_prf(gold, pred)
    assert r["span_precision"] == 0.5 and r["span_recall"] == 0.5 and r["span_f1"] == 0.5
    r = span_prf(gold, [["B-PER", "I-PER", "O", "B-ORG"]])   # wrong type
    assert r["span_f1"] == 0.5
    assert span_prf(gold, gold)["span_f1"] == 1.0
    assert span_prf(gold, [["O"] * 4])["span_f1"] == 0.0


def test_char_classes():
    assert [char_class(w) for w in ("2005", "ダーバン", "で", "開催", "Tokyo", "、")] == \
        ["digit", "katakana", "hiragana", "kanji", "latin", "other"]


def _write(tmp_path, n=30):
    rng = np.random.default_rng(0)
    lines = []
    for _ in range(n):
        for _ in range(rng.integers(2, 7)):
            w = ["Paris", "in", "Anna", "met", "Rome", "the"][rng.integers(6)]
            tag = {"Paris": "B-LOC", "Rome": "B-LOC", "Anna": "B-PER"}.get(w, "O")
            lines.append(f"{w}\tX\t{tag}")
        lines.append("")
    p = tmp_path / "tiny.tsv"
    p.write_text("\n".join(lines), encoding="utf-8")
    return p


def test_reader_and_errors(tmp_path):
    p = _write(tmp_path)
    sents = read_tagged(p)
    assert len(sents) == 30 and all(len(t) == len(g) for t, g in sents)
    assert read_tagged(p, tag_column=1)[0][1][0] == "X"
    with pytest.raises(ValueError, match="column 5"):
        read_tagged(p, tag_column=5)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(ValueError, match="no sentences"):
        read_tagged(empty)


def _task(tmp_path, **over):
    from unrolled.config import resolve_config

    cfg = resolve_config(TaggingTask, None, {"hidden": 8, "embed": 6, "min_count": 1, **over})
    task = TaggingTask(cfg)
    task.load(_write(tmp_path))
    return task


def test_task_batches_state_and_unknown_words(tmp_path):
    task = _task(tmp_path)
    assert task.bio and task.monitor == "span_f1"
    b = task.get_batch("train", np.arange(4))
    assert b.X.shape == b.Y.shape == b.mask.shape and b.X.dtype.kind == "i"
    assert (b.Y[b.mask] > 0).all()                     # no <pad> label on a real token
    again = TaggingTask(task.config, task.state())     # a saved task knows its alphabet
    assert again.encode(["Paris", "Zürich", "東京"]).tolist() == [
        task.w_id["Paris"], task.w_id["<unk:latin>"], task.w_id["<unk:kanji>"]]
    res = task.evaluate(task.build_model(), "val")
    assert set(res) >= {"loss", "accuracy", "span_f1"}


def test_tagger_gradients_match_finite_differences(tmp_path):
    from unrolled import value_and_grad
    from unrolled.layers import LSTM, Dense, Embedding, Sequential

    model = Sequential(Embedding(9, 3, dtype="float64", seed=0),
                       LSTM(3, 4, bidirectional=True, dtype="float64", seed=1),
                       Dense(8, 5, dtype="float64", seed=2))
    rng = np.random.default_rng(3)
    X, Y = rng.integers(0, 9, (3, 6)), rng.integers(1, 5, (3, 6))
    mask = np.arange(6)[None] < np.array([6, 4, 2])[:, None]
    _, g = value_and_grad(model, "cross_entropy", X, Y, mask)
    f = lambda: value_and_grad(model, "cross_entropy", X, Y, mask)[0]
    for path in (("1", "l0_reverse", "weight_hh"), ("1", "l0", "bias_ih"), ("0", "weight")):
        a, ga = model.params, g
        for k in path:
            a, ga = a[k], ga[k]
        (num,) = numeric_grads(f, [a])
        assert rel_err(ga, num) < 1e-6, path


def test_bilstm_learns_entities_on_real_data():
    pytest.importorskip("hironsan", reason="pip install hironsancorpus for the real corpus")
    from unrolled.config import resolve_config
    from unrolled.train import Trainer

    cfg = resolve_config(TaggingTask, None, {"epochs": 5, "progress": False, "hidden": 32,
                                             "embed": 32, "patience": 0, "lr": 1e-2,
                                             "dropout": 0.1})
    task = TaggingTask(cfg)
    task.load("hironsancorpus")
    trainer = Trainer(task, cfg, log=lambda m: None)
    trainer.fit()
    res = task.evaluate(trainer.model, "test")
    gold = np.concatenate(task.labels["test"])
    majority = np.bincount(gold).max() / len(gold)      # tagging everything "O"
    assert res["accuracy"] > majority + 0.03
    assert res["span_f1"] > 0.25


def test_missing_corpus_names_the_fix(monkeypatch):
    import importlib.util

    from unrolled.tasks.tagging import hironsan_path

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match="pip install hironsancorpus"):
        hironsan_path()
