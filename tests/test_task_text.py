"""The ``text`` task: stateful streams, held-out loss with the state carried, learning,
generation (prime, temperature, top-k) and clear errors for bad input."""
import itertools
import math

import numpy as np
import pytest

from unrolled import io
from unrolled.cli import main
from unrolled.config import resolve_config
from unrolled.data import Vocab
from unrolled.streams import TBPTT
from unrolled.tasks import get_task
from unrolled.tasks.text import (
    TextTask,
    build_char_model,
    chunk_xy,
    sample,
    split_text,
    stream_loss,
    tbptt_window,
)
from unrolled.train import Callback, Trainer, make_optimizer
from unrolled.tree import tree_flatten

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


# ------------------------------------------------------------------ TBPTT(k1, k2): --k1, --k2

@pytest.fixture(scope="module")
def words(tmp_path_factory):
    path = tmp_path_factory.mktemp("tbptt") / "words.txt"
    path.write_text(make_text(1500), encoding="utf-8")
    return path


def small(**over):
    """A small, fast TBPTT configuration: 8 streams, 1 epoch of a few chunks."""
    base = {"hidden": 12, "embed": 6, "chunk": 8, "epochs": 1, "max_batches": 6, "clip": 1.0}
    base.update(over)
    return config(**base)


def fit(path, cfg, dtype="float32", callbacks=()):
    """(trainer, task, per-batch losses) after training ``cfg`` on ``path``."""
    task = TextTask(cfg)
    task.load(path)
    model = build_char_model(len(task.vocab), cfg["embed"], cfg["hidden"], seed=cfg["seed"],
                             dtype=dtype)
    losses = []

    class Record(Callback):
        def on_batch_end(self, trainer, step, logs):
            losses.append(logs["loss"])

    trainer = Trainer(task, cfg, model=model, callbacks=[Record(), *callbacks],
                      log=lambda *a: None)
    trainer.fit()
    return trainer, task, losses


def streams_reference(path, cfg, k1, k2, dtype):
    """The same training as the trainer's, by :class:`unrolled.streams.TBPTT` on the
    chunks of the trainer's epoch plan; returns (params, losses)."""
    task = TextTask(cfg)
    task.load(path)
    model = build_char_model(len(task.vocab), cfg["embed"], cfg["hidden"], seed=cfg["seed"],
                             dtype=dtype)
    steps = Trainer(task, cfg, model=model, log=lambda *a: None).steps_per_epoch
    rng = np.random.default_rng(np.random.SeedSequence([int(cfg["seed"]), 1]))  # trainer's
    plan = task.epoch_batches(rng)[:cfg["max_batches"]]
    tb = TBPTT(model, "cross_entropy", make_optimizer(cfg, steps), k1, k2,
               clip_norm=cfg["clip"])
    losses = []
    for offset, i in plan:
        X, Y = chunk_xy(task._train_streams(offset), i)
        losses.append(tb.step(X, Y))
    return tree_flatten(model.params), losses


def test_k1_equal_k2_is_the_classic_truncated_bptt(words):
    """--k1 = --k2 = chunk changes nothing: same batches, same weights, bit for bit, and
    the same updates as streams.TBPTT(k1, k1)."""
    default, task, losses = fit(words, small())
    assert (task.k1, task.k2) == (8, 8)
    b = task.get_batch("train", task.epoch_batches(np.random.default_rng(0))[2])
    assert b.carry_at is None and b.loss_mask is None and b.X.shape == (8, 8)
    a = tree_flatten(default.model.params)
    for over in ({"k1": 8, "k2": 8}, {"chunk": 50, "k1": 8}, {"k2": 8}):
        other, _, other_losses = fit(words, small(**over))
        o = tree_flatten(other.model.params)
        assert other_losses == losses
        assert all(a[k].tobytes() == o[k].tobytes() for k in a), over
    ref, ref_losses = streams_reference(words, small(), 8, 8, "float32")
    assert ref_losses == losses
    assert all(a[k].tobytes() == ref[k].tobytes() for k in a)


def test_k2_longer_than_k1_matches_streams_tbptt(words):
    """The trainer's windows (repeated steps masked out, state carried at the window's
    next start) give the updates of streams.TBPTT(k1, k2), weights changing between
    updates; k2 > k1 really changes them."""
    cfg = small(chunk=4, k2=10, max_batches=7)
    trainer, _, losses = fit(words, cfg, "float64")
    ref, ref_losses = streams_reference(words, cfg, 4, 10, "float64")
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-12)
    got = tree_flatten(trainer.model.params)
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-10, atol=1e-13, err_msg=k)
    short, _, _ = fit(words, small(chunk=4, max_batches=7), "float64")
    s = tree_flatten(short.model.params)
    assert max(np.abs(s[k] - got[k]).max() for k in s) > 1e-6


class Recorder:
    """An optimizer that keeps the gradients and leaves the weights alone."""

    lr = 0.0

    def __init__(self):
        self.grads = []

    def step(self, params, grads):
        self.grads.append(tree_flatten(grads))


def recorded_window(path, k1, k2, i, clip=0.0):
    """The trainer's gradient of update ``i`` with weights held fixed, and what a hand-built
    reference needs: (grads, model, streams (B, N) ids, window start, chunk start)."""
    cfg = small(chunk=k1, k2=k2, max_batches=i + 1, clip=clip)
    task = TextTask(cfg)
    task.load(path)
    model = build_char_model(len(task.vocab), 4, 6, seed=3, dtype="float64")
    trainer = Trainer(task, cfg, model=model, log=lambda *a: None)
    trainer.optimizer = Recorder()
    trainer.fit()
    rng = np.random.default_rng(np.random.SeedSequence([int(cfg["seed"]), 1]))
    offset, j = task.epoch_batches(rng)[i]
    assert j == i
    t = i * k1
    return trainer.optimizer.grads[i], model, task._train_streams(offset).streams, \
        t - min(t, k2 - k1), t


def test_k2_gradient_equals_a_hand_built_window_and_finite_differences(words):
    """Update i backpropagates the loss of its k1 new steps only, through the window of the
    last k2 steps, from the state the streams reached at the window's start."""
    k1, k2, i = 4, 10, 3
    grads, model, S, w0, t = recorded_window(words, k1, k2, i)
    assert (w0, t) == (6, 12)  # a full window: 6 repeated steps, then 4 new ones
    _, s0 = model(S[:, :w0], return_state=True)  # weights fixed: the streams' state

    def window_loss(m):
        logits = m(S[:, w0:t + k1], initial_state=s0)[:, t - w0:]  # new steps only
        logp = logits - logits.max(-1, keepdims=True)
        logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
        return -np.take_along_axis(logp, S[:, t + 1:t + k1 + 1, None], -1).mean()

    from unrolled.grad import value_and_grad

    class NewStepsOnly:  # cross-entropy of the last k1 outputs; zero gradient before
        def value_and_grad(self, out, Y, mask=None):
            from unrolled.losses import CrossEntropy
            v, d = CrossEntropy().value_and_grad(out[:, -k1:], Y[:, -k1:])
            full = np.zeros_like(out)
            full[:, -k1:] = d
            return v, full

    v, ref = value_and_grad(model, NewStepsOnly(), S[:, w0:t + k1], S[:, w0 + 1:t + k1 + 1],
                            initial_state=s0)
    assert v == pytest.approx(window_loss(model), rel=1e-12)
    ref = tree_flatten(ref)
    for k in ref:
        np.testing.assert_allclose(grads[k], ref[k], rtol=1e-9, atol=1e-12, err_msg=k)
    # central differences on a few weights of the LSTM and the readout
    eps = 1e-6
    for name, idx in (("1/l0/weight_hh", (3, 2)), ("1/l0/bias_ih", (5,)), ("2/weight", (1, 4)),
                      ("0/weight", (int(S[0, t]), 1))):
        layer, *key = name.split("/")
        p = model.layers[int(layer)].params
        leaf = p[key[0]] if len(key) == 1 else p[key[0]][key[1]]
        old = leaf[idx]
        leaf[idx] = old + eps
        up = window_loss(model)
        leaf[idx] = old - eps
        down = window_loss(model)
        leaf[idx] = old
        assert grads[name][idx] == pytest.approx((up - down) / (2 * eps), rel=1e-5, abs=1e-9)
    # the truncation matters: letting the gradient reach one chunk back only differs
    short, *_ = recorded_window(words, k1, k1, i)
    assert np.abs(short["1/l0/weight_hh"] - grads["1/l0/weight_hh"]).max() > 1e-8


def test_k2_gradient_against_torch_autograd(words):
    torch = pytest.importorskip("torch")
    k1, k2, i = 4, 10, 4
    grads, model, S, w0, t = recorded_window(words, k1, k2, i)
    V, E, H = model.layers[0].params["weight"].shape + (6,)
    emb, lstm, lin = (torch.nn.Embedding(V, E).double(),
                      torch.nn.LSTM(E, H, batch_first=True).double(),
                      torch.nn.Linear(H, V).double())
    emb.weight.data = torch.from_numpy(model.layers[0].params["weight"].copy())
    for k, v in model.layers[1].params["l0"].items():
        getattr(lstm, f"{k}_l0").data = torch.from_numpy(v.copy())
    lin.weight.data = torch.from_numpy(model.layers[2].params["weight"].copy())
    lin.bias.data = torch.from_numpy(model.layers[2].params["bias"].copy())
    x = torch.from_numpy(S[:, :t + k1])
    _, state = lstm(emb(x[:, :w0]))  # the streams up to the window: no gradient
    state = tuple(s.detach() for s in state)
    out, _ = lstm(emb(x[:, w0:]), state)
    logits = lin(out[:, -k1:])
    y = torch.from_numpy(S[:, t + 1:t + k1 + 1])
    torch.nn.functional.cross_entropy(logits.reshape(-1, V), y.reshape(-1)).backward()
    pairs = {"0/weight": emb.weight, "2/weight": lin.weight, "2/bias": lin.bias,
             **{f"1/l0/{k}": getattr(lstm, f"{k}_l0") for k in
                ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}}
    for name, p in pairs.items():
        np.testing.assert_allclose(grads[name], p.grad.numpy(), rtol=1e-9, atol=1e-12,
                                   err_msg=name)


def test_tbptt_window_layout():
    from unrolled.data import stream_batches

    s = stream_batches(np.arange(2 * 23 + 1), batch_size=2, chunk=4)  # 23 steps per stream
    seen = []
    for i in range(len(s)):
        X, Y, lm, at = tbptt_window(s, i, 10)
        t = i * 4
        h = min(t, 6)
        np.testing.assert_array_equal(X, s.streams[:, t - h:t + X.shape[1] - h])
        np.testing.assert_array_equal(Y, X + 1)
        assert (lm is None) == (h == 0)
        if lm is not None:
            assert not lm[:, :h].any() and lm[:, h:].all()
        seen.append((t - h, at, X.shape[1]))
    # each window starts where the previous one said to carry the state from
    for (w0, at, _), (w1, _, _) in itertools.pairwise(seen):
        assert w0 + at == w1
    assert seen[0] == (0, 0, 4) and seen[-1][2] == 6 + 3  # last chunk: 3 new steps
    with pytest.raises(ValueError, match="k2 >= k1"):
        tbptt_window(s, 1, 3)


def test_k2_run_resumes_bit_exact(words, tmp_path):
    cfg = small(chunk=4, k2=12, epochs=2, max_batches=8, checkpoint_every=3)

    class Crash(Exception):
        pass

    class CrashAt(Callback):
        def on_batch_end(self, trainer, step, logs):
            if step == 11:
                raise Crash

    def trainer(out, cbs=()):
        task = TextTask(cfg)
        task.load(words)
        return Trainer(task, cfg, out_dir=out, callbacks=list(cbs), log=lambda *a: None)

    full = trainer(tmp_path / "full")
    full.fit()
    with pytest.raises(Crash):
        trainer(tmp_path / "cut", [CrashAt()]).fit()
    _, meta = io.load_arrays(tmp_path / "cut" / "checkpoint.npz", io.CHECKPOINT_FORMAT)
    assert (meta["epoch"], meta["batch_in_epoch"]) == (1, 1)  # mid-epoch, state carried
    resumed = trainer(tmp_path / "cut")
    resumed.fit(resume=True)
    a, b = tree_flatten(full.model.params), tree_flatten(resumed.model.params)
    assert all(a[k].tobytes() == b[k].tobytes() for k in a)


def test_k2_longer_than_k1_learns(words):
    cfg = config(hidden=32, embed=8, chunk=8, k2=24, epochs=2)
    task = TextTask(cfg)
    task.load(words)
    before = task.evaluate(task.build_model(), "test")["loss"]
    trainer = Trainer(task, cfg, log=lambda *a: None)
    trainer.fit()
    after = task.evaluate(trainer.model, "test")
    assert "k2=24" in task.describe()[-1]
    assert after["loss"] < 0.7 * before and after["accuracy"] > 0.35


def test_bad_k1_k2(words):
    for over, match in (({"chunk": 8, "k2": 4}, "k2 >= k1"), ({"k1": 16, "k2": 8}, "k2 >= k1"),
                        ({"k1": -1}, "--k1")):
        with pytest.raises(ValueError, match=match):
            TextTask(small(**over)).load(words)
