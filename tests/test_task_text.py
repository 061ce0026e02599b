"""The ``text`` task: stateful streams, held-out loss with the state carried, learning,
generation (prime, temperature, top-k) and clear errors for bad input."""
import math

import numpy as np
import pytest

from unrolled import io
from unrolled.cli import main
from unrolled.config import resolve_config
from unrolled.data import Vocab
from unrolled.tasks import get_task
from unrolled.tasks.text import (
    TextTask,
    build_char_model,
    chunk_xy,
    sample,
    split_text,
    stream_loss,
)
from unrolled.train import Trainer

WORDS = ["the", "cat", "sat", "on", "mat", "dog", "ran", "to", "a", "red", "hat"]


def make_text(n_words=4000, seed=0):
    """Sentences of random words: learnable (spelling) but not memorisable."""
    rng = np.random.default_rng(seed)
    lines, line = [], []
    for w in rng.choice(WORDS, n_words):
        line.append(str(w))
        if len(line) == 6:
            lines.append(" ".join(line).capitalize() + ".")
            line = []
    return "\n".join(lines) + "\n"


def config(**over):
    base = {"progress": "false", "hidden": "32", "embed": "8", "batch_size": "8",
            "chunk": "32", "epochs": "3", "lr": "0.01", "patience": "0",
            "checkpoint_every": "0"}
    base.update({k: str(v) for k, v in over.items()})
    return resolve_config(TextTask, None, base)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("text")
    path = d / "words.txt"
    path.write_text(make_text(), encoding="utf-8")
    cfg = config()
    task = TextTask(cfg)
    task.load(path)
    untrained = task.evaluate(task.build_model(), "test")
    trainer = Trainer(task, cfg, out_dir=None, log=lambda *a: None)
    trainer.fit()
    return task, trainer.model, untrained, path


def test_registered():
    assert get_task("text") is TextTask


def test_split_is_contiguous_and_complete():
    a, b = split_text(1000, 0.05, 0.1)
    assert (a, b) == (50, 900)  # val = start, train = middle, test = the last 10 %
    with pytest.raises(ValueError, match="test-fraction"):
        split_text(100, 0.1, 1.5)


def test_batches_continue_the_streams(trained):
    task = trained[0]
    plan = task.epoch_batches(np.random.default_rng(3))
    assert plan == task.epoch_batches(np.random.default_rng(3))  # same rng, same plan
    prev = None
    for key in plan:
        b = task.get_batch("train", key)
        assert b.X.shape == b.Y.shape and b.X.shape[0] == task.config["batch_size"]
        np.testing.assert_array_equal(b.X[:, 1:], b.Y[:, :-1])  # targets: one step ahead
        if prev is not None:
            # row r of this chunk goes on where row r of the previous chunk stopped
            np.testing.assert_array_equal(b.X[:, 0], prev.Y[:, -1])
        prev = b


def test_stream_loss_carries_the_state_exactly():
    """Chunked evaluation with the state carried equals one pass over the whole text."""
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 7, 301)
    model = build_char_model(7, 4, 6, seed=1, dtype="float64")
    chunked = stream_loss(model, ids, streams=1, chunk=17)["loss"]
    logits = model(ids[None, :-1])[0]
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    full = -logp[np.arange(300), ids[1:]].mean()
    assert chunked == pytest.approx(full, rel=1e-10)
    # and a wrongly reset state would differ (the check can fail)
    reset = np.mean([stream_loss(model, ids[i:i + 18], streams=1, chunk=17)["loss"]
                     for i in range(0, 289, 17)])
    assert abs(reset - full) > 1e-6


def test_chunk_xy_last_chunk_is_shorter():
    from unrolled.data import stream_batches

    s = stream_batches(np.arange(23), batch_size=2, chunk=4)  # 11 steps per stream
    X, Y = chunk_xy(s, 2)
    assert X.shape == (2, 3)
    np.testing.assert_array_equal(Y, X + 1)
    with pytest.raises(ValueError, match="past the end"):
        chunk_xy(s, 3)


def test_learns(trained):
    task, model, untrained, _ = trained
    after = task.evaluate(model, "test")
    assert untrained["loss"] > 0.9 * math.log(len(task.vocab))
    assert after["loss"] < 0.6 * untrained["loss"]
    assert after["bits_per_char"] == pytest.approx(after["loss"] / math.log(2))
    assert 0 <= after["accuracy"] <= 1 and after["accuracy"] > 0.4


def test_generation_respects_prime_and_options(trained):
    task, model = trained[:2]
    out = task.generate(model, length=60, temperature=0.8, prime="The cat", seed=1)
    assert out.startswith("The cat") and len(out) == len("The cat") + 60
    assert set(out) <= set(task.vocab.symbols)
    assert out == task.generate(model, length=60, temperature=0.8, prime="The cat", seed=1)
    greedy = sample(model, task.vocab, 40, temperature=0, prime="The")
    assert greedy == sample(model, task.vocab, 40, temperature=0.5, prime="The", top_k=1,
                            rng=7)
    # a trained model writes the words it saw
    text = task.generate(model, length=300, temperature=0.5, seed=0)
    words = [w.strip(".").lower() for w in text.split()][1:-1]
    assert np.mean([w in WORDS for w in words]) > 0.7


def test_prime_with_unknown_characters(trained):
    task, model = trained[:2]
    with pytest.raises(ValueError, match=r"outside the model's vocabulary: 'Z', 'é'"):
        task.generate(model, length=5, prime="Zoé")
    with pytest.raises(ValueError, match="temperature"):
        sample(model, task.vocab, 5, temperature=-1)


def test_saved_model_generates(trained, tmp_path):
    task, model = trained[:2]
    io.save_model(model, tmp_path, config=task.config, task_state=task.state())
    loaded, meta = io.load_model(tmp_path)
    again = TextTask(meta["config"], meta["task_state"])
    assert again.vocab == task.vocab
    assert again.generate(loaded, 30, 0.7, "The", seed=2) == task.generate(model, 30, 0.7,
                                                                           "The", seed=2)
    assert again.predict(loaded, ["The ca"])[0].startswith("'The ca' -> next: 't'")


def test_cli_errors_are_one_line(trained, tmp_path, capsys):
    task, model = trained[:2]
    io.save_model(model, tmp_path / "m", config={**task.config, "task": "text"},
                  task_state=task.state())
    assert main(["generate", str(tmp_path / "m"), "--length", "5", "--prime", "Xyz"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "'X'" in err and "Traceback" not in err
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9 au lait\n".encode("latin-1") * 50)
    assert main(["train", "text", "--data", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "not valid UTF-8" in err and err.count("\n") == 0


def test_bad_text_inputs(tmp_path):
    t = TextTask(config())
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"abc\xff\xfe def\n" * 20)
    with pytest.raises(ValueError, match="UTF-8"):
        t.load(bad)
    short = tmp_path / "short.txt"
    short.write_text("tiny text\n", encoding="utf-8")
    with pytest.raises(ValueError, match="too few"):
        t.load(short)
    with pytest.raises(ValueError, match="no such file"):
        t.load(tmp_path / "missing.txt")
    # new text with characters the model never saw: named
    t.vocab = Vocab.from_text("abc ")
    other = tmp_path / "other.txt"
    other.write_text("abc xyz\n", encoding="utf-8")
    with pytest.raises(ValueError, match="'x'"):
        t.load_eval(other)
