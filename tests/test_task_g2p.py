"""The ``g2p`` task in the trainer: the teacher-forcing policy computes what
``Seq2Seq.loss_and_grad`` computes, training resumes bit for bit (scheduled sampling
included), and ``unrolled train g2p`` writes a model that predicts."""
from types import SimpleNamespace

import numpy as np
import pytest
from helpers import rel_err

from unrolled import io
from unrolled.cli import main
from unrolled.config import resolve_config
from unrolled.losses import get_loss
from unrolled.seq2seq import Seq2Seq, TeacherForcing, decoder_inputs, shift_targets
from unrolled.tasks import get_task
from unrolled.tasks.base import Batch
from unrolled.train import Callback, Trainer
from unrolled.tree import tree_flatten

# a made-up pronunciation rule: each letter one phoneme, "th" one phoneme
PHONES = dict(zip("abcdefghijklmnopqrstuvwxyz", "AA B K D EH F G HH IH JH K L M N OW P K R S "
                                               "T UW V W K Y Z".split()))


def fake_dictionary(path, n=400, seed=0):
    """A dictionary file in the CMUdict format with ``n`` random words."""
    rng = np.random.default_rng(seed)
    letters = list("abcdefghijklmnopqrstuvwxyz")
    lines, seen = [], set()
    while len(lines) < n:
        w = "".join(rng.choice(letters, rng.integers(2, 7)))
        if w in seen:
            continue
        seen.add(w)
        pron = ["TH" if w[i:i + 2] == "th" else PHONES[c] for i, c in enumerate(w)
                if not (i > 0 and w[i - 1:i + 1] == "th")]
        lines.append(w + " " + " ".join(f"{p}1" if p in ("AA", "EH") else p for p in pron))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def dictionary(tmp_path_factory):
    return fake_dictionary(tmp_path_factory.mktemp("g2p") / "words.dict")


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    src = rng.integers(0, 7, (3, 5))
    src_mask = np.arange(5)[None] < np.array([5, 3, 2])[:, None]
    tgt = rng.integers(3, 6, (3, 4))
    tgt_mask = np.arange(4)[None] < np.array([4, 2, 1])[:, None]
    return src, src_mask, tgt, tgt_mask


def test_decoder_inputs_are_those_of_shift_targets():
    _, _, tgt, tm = _batch()
    tgt_in, tgt_out, mask = shift_targets(tgt, tm, 1, 2)
    got = decoder_inputs(tgt_out, mask, 1)
    assert np.array_equal(got, tgt_in)
    assert not np.array_equal(decoder_inputs(tgt_out, mask, 0), tgt_in)  # bos matters


@pytest.mark.parametrize("sampling", [0.0, 0.5])
def test_teacher_forcing_policy_equals_loss_and_grad(sampling):
    src, sm, tgt, tm = _batch()
    m = Seq2Seq(7, 6, embed_size=3, hidden_size=4, attention="general", dtype="float64",
                seed=1)
    start = m.rng.bit_generator.state
    value, grads = m.loss_and_grad(src, sm, tgt, tm, sampling=sampling)
    m.rng.bit_generator.state = start  # the same coin flips
    _, tgt_out, mask = shift_targets(tgt, tm, m.bos, m.eos)
    batch = Batch(X=src, Y=tgt_out, mask=sm, loss_mask=mask)
    policy = TeacherForcing(lambda step: sampling if step == 7 else 1.0)
    trainer = SimpleNamespace(model=m, step=7)
    out, cache = policy.forward(trainer, batch)
    v, d = get_loss("cross_entropy").value_and_grad(out, batch.Y, batch.loss_mask)
    g = tree_flatten(policy.backward(trainer, cache, d))
    ref = tree_flatten(grads)
    assert abs(v - value) < 1e-12 * abs(value)
    assert sorted(g) == sorted(ref)
    for k in ref:
        assert rel_err(g[k], ref[k]) < 1e-12, k


def g2p_config(**over):
    T = get_task("g2p")
    opts = {"epochs": 2, "hidden": 12, "embed": 6, "batch_size": 16, "val_words": 40,
            "test_words": 40, "beam": 2, "progress": False, "checkpoint_every": 4,
            "ss_k": 20.0, "lr": 0.01}
    opts.update(over)
    return T, resolve_config(T, overrides={k: str(v) for k, v in opts.items()})


class Crash(Exception):
    pass


def test_g2p_trains_in_the_trainer_and_resumes_bit_exact(dictionary, tmp_path):
    """Scheduled sampling draws from the model's generator and depends on the step: a
    run cut mid-epoch and resumed ends with the same weights as one run, bit for bit."""
    T, cfg = g2p_config()

    def trainer(out, cbs=()):
        task = T(cfg)
        task.load(dictionary)
        return Trainer(task, cfg, out_dir=out, callbacks=list(cbs), log=lambda m: None)

    class CrashAt(Callback):
        def on_batch_end(self, trainer, step, logs):
            if step == 27:
                raise Crash

    full = trainer(tmp_path / "full")
    assert isinstance(full.policy, TeacherForcing) and callable(full.policy.sampling)
    history = full.fit()
    assert len(history) == 2 and history["loss"][1] < history["loss"][0]
    assert {"val_loss", "val_word_accuracy", "val_phoneme_error_rate"} <= set(history.history)
    with pytest.raises(Crash):
        trainer(tmp_path / "cut", [CrashAt()]).fit()
    _, meta = io.load_arrays(tmp_path / "cut" / "checkpoint.npz", io.CHECKPOINT_FORMAT)
    assert meta["epoch"] == 1 and meta["batch_in_epoch"] > 0  # cut in the second epoch
    resumed = trainer(tmp_path / "cut")
    resumed.fit(resume=True)
    a, b = tree_flatten(full.model.params), tree_flatten(resumed.model.params)
    assert all(a[k].tobytes() == b[k].tobytes() for k in a)
    assert resumed.history.rows[-1]["val_loss"] == full.history.rows[-1]["val_loss"]


def test_train_g2p_from_the_command_line(dictionary, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", "g2p", "--data", str(dictionary), "--out", str(out), "--epochs", "3",
               "--hidden", "24", "--embed", "8", "--val-words", "40", "--test-words", "40",
               "--beam", "2", "--lr", "0.01", "--quiet"])
    assert rc == 0
    for f in ("model.npz", "checkpoint.npz", "log.csv", "log.json", "report.txt",
              "predictions.txt"):
        assert (out / f).is_file(), f
    report = (out / "report.txt").read_text()
    assert "beam 2:" in report and "word_accuracy" in report
    model, meta = io.load_model(out / "model.npz")
    assert isinstance(model, Seq2Seq) and meta["config"]["task"] == "g2p"
    capsys.readouterr()
    assert main(["predict", str(out), "that", "Bed"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == ["that", "bed"]
    phones = set(meta["task_state"]["phones"])
    assert all(p in phones for line in lines for p in line.split(": ")[1].split())


def test_the_script_trains_with_the_trainer(dictionary):
    from unrolled.tasks.g2p import G2PData, load_cmudict, train

    data = G2PData(load_cmudict(dictionary), n_test=40, n_val=40, seed=0)
    model, rows = train(data, minutes=0, hidden=8, embed=4, batch_size=32, seed=0,
                        log=lambda m: None)
    assert isinstance(model, Seq2Seq) and len(rows) == 1  # the time was up after epoch 1
    assert rows[0]["epoch"] == 1 and np.isfinite(rows[0]["val_loss"])
