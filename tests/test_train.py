"""The trainer and the tasks names and digits: they learn, they are deterministic, and a
run killed with SIGKILL mid-epoch resumes to the same weights, bit for bit."""
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import helpers

from unrolled import io
from unrolled.config import resolve_config
from unrolled.data import bundled_path
from unrolled.tasks import get_task
from unrolled.train import Callback, Trainer
from unrolled.tree import tree_flatten

ROOT = Path(__file__).resolve().parents[1]


def tiny_names(tmp_path, langs=("Japanese", "Russian", "Italian", "Greek"), n=60):
    """A small names directory: the first ``n`` distinct names of a few languages."""
    return helpers.tiny_names(tmp_path / "names", n=n, langs=langs)


def names_task(path, **over):
    T = get_task("names")
    opts = {"epochs": 3, "hidden": 24, "embed": 12, "batch_size": 16, "progress": False,
            "checkpoint_every": 0, "lr": 0.01}
    opts.update(over)
    cfg = resolve_config(T, overrides={k: str(v) for k, v in opts.items()})
    task = T(cfg)
    task.load(path)
    return task


def quiet(msg):
    pass


def test_names_learns_beyond_majority_class(tmp_path):
    task = names_task(tiny_names(tmp_path))
    untrained = task.evaluate(task.build_model(), "val")
    trainer = Trainer(task, log=quiet)
    hist = trainer.fit()
    res = task.evaluate(trainer.model, "val")
    y = task.labels["val"]
    majority = np.mean(y == np.bincount(task.labels["train"]).argmax())
    assert res["loss"] < 0.6 * untrained["loss"]
    assert res["accuracy"] > majority + 0.2
    assert len(hist) == 3 and hist["loss"][-1] < hist["loss"][0]
    assert 0 <= res["macro_f1"] <= 1


def test_digits_learns_on_bundled_sample():
    T = get_task("digits")
    cfg = resolve_config(T, overrides={"epochs": "4", "progress": "false",
                                       "checkpoint_every": "0"})
    task = T(cfg)
    task.load(bundled_path("optdigits-train"))
    assert task.sizes["test"] == 400  # the bundled test file beside the training file
    untrained = task.evaluate(task.build_model(), "test")
    trainer = Trainer(task, log=quiet)
    trainer.fit()
    res = task.evaluate(trainer.model, "test")
    assert res["loss"] < 0.5 * untrained["loss"]
    assert res["accuracy"] > 0.6  # majority class is about 0.1


def test_same_seed_same_weights_other_seed_other_weights(tmp_path):
    path = tiny_names(tmp_path, n=30)
    runs = []
    for seed in (1, 1, 2):
        task = names_task(path, epochs=1, seed=seed, dropout=0.2)
        tr = Trainer(task, log=quiet)
        tr.fit()
        runs.append(tree_flatten(tr.model.params))
    assert all(np.array_equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert not all(np.array_equal(runs[0][k], runs[2][k]) for k in runs[0])


def test_early_stopping_and_callbacks(tmp_path):
    seen = []

    class Spy(Callback):
        def on_epoch_end(self, trainer, epoch, logs):
            seen.append(logs["epoch"])
            if epoch == 1:
                trainer.stop_training = True

    task = names_task(tiny_names(tmp_path, n=20), epochs=5)
    Trainer(task, callbacks=[Spy()], log=quiet).fit()
    assert seen == [1, 2]


def test_logs_written_every_epoch(tmp_path):
    task = names_task(tiny_names(tmp_path, n=20), epochs=2)
    Trainer(task, out_dir=tmp_path / "run", log=quiet).fit()
    csv = (tmp_path / "run" / "log.csv").read_text().splitlines()
    assert csv[0].startswith("epoch,loss,accuracy,val_loss,val_accuracy,val_macro_f1")
    assert [r.split(",")[0] for r in csv[1:]] == ["1", "2"]
    _, meta = io.load_arrays(tmp_path / "run" / "checkpoint.npz", io.CHECKPOINT_FORMAT)
    assert meta["epoch"] == 2 and len(meta["history"]) == 2


RUN = textwrap.dedent("""
    import os, signal, sys
    from unrolled.config import resolve_config
    from unrolled.tasks import get_task
    from unrolled.train import Callback, Trainer

    data, out, kill_at, resume = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"

    class Kill(Callback):  # SIGKILL: no handler, no cleanup, like kill -9
        def on_batch_end(self, trainer, step, logs):
            if step == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)

    T = get_task("names")
    cfg = resolve_config(T, overrides=dict(
        epochs="2", hidden="12", embed="6", layers="2", dropout="0.3", batch_size="8",
        checkpoint_every="3", progress="false", schedule="cosine", warmup="2"))
    task = T(cfg)
    task.load(data)
    cbs = [Kill()] if kill_at else []
    Trainer(task, cfg, out_dir=out, callbacks=cbs, log=lambda m: None).fit(resume=resume)
""")


def test_resume_after_sigkill_is_bit_exact(tmp_path):
    data = tiny_names(tmp_path, n=25)  # 100 names, about 10 batches per epoch
    script = tmp_path / "run.py"
    script.write_text(RUN)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def run(out, kill_at, resume):
        return subprocess.run([sys.executable, str(script), str(data), str(out), str(kill_at),
                               "1" if resume else "0"], env=env, check=False, capture_output=True, text=True,
                              timeout=120)

    full = run(tmp_path / "full", 0, False)
    assert full.returncode == 0, full.stderr
    # killed in the middle of epoch 2 (step 14 is not a multiple of checkpoint_every)
    killed = run(tmp_path / "cut", 14, False)
    assert killed.returncode == -signal.SIGKILL
    _, meta = io.load_arrays(tmp_path / "cut" / "checkpoint.npz", io.CHECKPOINT_FORMAT)
    assert meta["epoch"] == 1 and 0 < meta["batch_in_epoch"]  # mid-epoch checkpoint
    resumed = run(tmp_path / "cut", 0, True)
    assert resumed.returncode == 0, resumed.stderr
    a, ma = io.load_arrays(tmp_path / "full" / "checkpoint.npz", io.CHECKPOINT_FORMAT)
    b, mb = io.load_arrays(tmp_path / "cut" / "checkpoint.npz", io.CHECKPOINT_FORMAT)
    assert set(a) == set(b)
    for k in a:  # parameters, optimizer state, best weights: every bit
        assert a[k].tobytes() == b[k].tobytes(), k
    assert ma["layer_rng_states"] == mb["layer_rng_states"]
    assert [r["loss"] for r in ma["history"]] == [r["loss"] for r in mb["history"]]


def test_resume_from_a_different_run_is_not_silent(tmp_path):
    # a checkpoint made for another architecture is refused, not loaded half-way
    data = tiny_names(tmp_path, n=15)
    t1 = names_task(data, epochs=1, seed=1, checkpoint_every=2)
    Trainer(t1, out_dir=tmp_path / "r", log=quiet).fit()
    t2 = names_task(data, epochs=1, seed=1, hidden=8)
    with pytest.raises(ValueError, match="another model architecture"):
        Trainer(t2, out_dir=tmp_path / "r", log=quiet).fit(resume=True)


def test_metrics_by_hand():
    from unrolled import metrics as M

    y = np.array([0, 0, 0, 1, 1, 2])
    p = np.array([0, 0, 1, 1, 2, 2])
    assert M.accuracy(y, p) == pytest.approx(4 / 6)
    cm = M.confusion_matrix(y, p, 3)
    assert cm.tolist() == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    # F1 per class: 2TP / (2TP + FP + FN) = 4/5, 2/4, 2/3
    assert M.macro_f1(y, p) == pytest.approx((4 / 5 + 2 / 4 + 2 / 3) / 3)
    assert M.macro_f1(y, y) == 1.0 and M.macro_f1(y, np.zeros_like(y)) < 0.3
    assert M.bits_per_char(np.log(2) * 2.5) == pytest.approx(2.5)
    t, f = np.array([1.0, 2.0, np.nan]), np.array([2.0, 4.0, 100.0])
    ok = ~np.isnan(t)
    assert M.rmse(t, f, ok) == pytest.approx(np.sqrt((1 + 4) / 2))
    assert M.mae(t, f, ok) == pytest.approx(1.5)
    with pytest.raises(ValueError, match="no values"):
        M.rmse(t, f, np.zeros(3, bool))
    idx, probs = M.top_k(np.array([0.1, 0.6, 0.3]), 2)
    assert idx.tolist() == [1, 2] and probs.tolist() == [0.6, 0.3]
    text = M.format_confusion(cm, ["ant", "bee", "cat"])
    assert text.splitlines()[1].split() == ["ant", "2", "1", "0", "0.667", "0.800"]
    with pytest.raises(ValueError, match="n_classes"):
        M.confusion_matrix(y, p, 2)  # class 2 does not fit
    with pytest.raises(ValueError, match="empty"):
        M.macro_f1([], [], 3)


def test_stratified_split_keeps_groups_together_and_classes_in_proportion():
    from unrolled.tasks import stratified_split

    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], [500, 300, 200])
    groups = [f"n{i // 2}" for i in range(1000)]  # every name twice
    parts = stratified_split(labels, (0.1, 0.2), rng, groups=groups)
    assert sorted(np.concatenate(parts).tolist()) == list(range(1000))
    names = [{groups[i] for i in p} for p in parts]
    assert not (names[0] & names[1]) and not (names[0] & names[2]) and not (names[1] & names[2])
    for p, frac in zip(parts[1:], (0.1, 0.2)):
        counts = np.bincount(labels[p], minlength=3)
        np.testing.assert_allclose(counts / len(p), [0.5, 0.3, 0.2], atol=0.02)
        assert abs(len(p) / 1000 - frac) < 0.01


class Crash(Exception):
    pass


def test_stateful_task_resumes_bit_exact_with_its_carried_state(tmp_path):
    # the text task carries the LSTM state from batch to batch; the checkpoint keeps it
    T = get_task("text")  # a broken text task must fail here, not skip
    text = tmp_path / "t.txt"
    text.write_text(bundled_path("tinyshakespeare").read_text("utf-8")[:6000], "utf-8")
    cfg = resolve_config(T, overrides={"epochs": "2", "hidden": "12", "embed": "6",
                                       "batch_size": "4", "chunk": "16", "max_batches": "8",
                                       "checkpoint_every": "3", "progress": "false"})

    class CrashAt(Callback):
        def on_batch_end(self, trainer, step, logs):
            if step == 11:
                raise Crash

    def trainer(out, cbs=()):
        task = T(cfg)
        task.load(text)
        return Trainer(task, cfg, out_dir=out, callbacks=list(cbs), log=quiet)

    full = trainer(tmp_path / "full")
    full.fit()
    with pytest.raises(Crash):
        trainer(tmp_path / "cut", [CrashAt()]).fit()
    _, meta = io.load_arrays(tmp_path / "cut" / "checkpoint.npz", io.CHECKPOINT_FORMAT)
    assert (meta["epoch"], meta["batch_in_epoch"]) == (1, 1)  # step 9: mid-epoch, state carried
    resumed = trainer(tmp_path / "cut")
    resumed.fit(resume=True)
    a, b = tree_flatten(full.model.params), tree_flatten(resumed.model.params)
    assert all(a[k].tobytes() == b[k].tobytes() for k in a)
    assert full.carry is not None and all(
        np.array_equal(full.carry[k], resumed.carry[k]) for k in full.carry)


def test_weighted_cross_entropy_gradient_and_torch_oracle():
    from unrolled.tasks.base import WeightedCrossEntropy, balanced_weights

    rng = np.random.default_rng(0)
    o, y = rng.standard_normal((6, 4)), rng.integers(0, 4, 6)
    w = balanced_weights(np.array([0, 0, 0, 1, 2, 2]), 4)
    np.testing.assert_allclose(w, [6 / 12, 6 / 4, 6 / 8, 1.0])
    loss = WeightedCrossEntropy(w)
    value, d = loss.value_and_grad(o, y)
    num, eps = np.zeros_like(o), 1e-6
    for i in range(6):
        for j in range(4):
            a, b = o.copy(), o.copy()
            a[i, j] += eps
            b[i, j] -= eps
            num[i, j] = (loss.value_and_grad(a, y)[0] - loss.value_and_grad(b, y)[0]) / (2 * eps)
    np.testing.assert_allclose(d, num, atol=1e-8)
    d_wrong = loss.value_and_grad(o, (y + 1) % 4)[1]  # negative control
    assert np.abs(d_wrong - num).max() > 1e-2
    torch = pytest.importorskip("torch")
    t = torch.tensor(o, requires_grad=True)
    ref = torch.nn.functional.cross_entropy(t, torch.tensor(y), weight=torch.tensor(w))
    ref.backward()
    assert value == pytest.approx(ref.item(), abs=1e-12)
    np.testing.assert_allclose(d, t.grad.numpy(), atol=1e-12)


def test_config_types_and_data_paths():
    names = get_task("names")
    cfg = resolve_config(names, overrides={"epochs": "3", "lr": "0.01", "progress": "off",
                                           "data": "2024"})
    assert (cfg["epochs"], cfg["lr"], cfg["progress"]) == (3, 0.01, False)
    assert cfg["data"] == "2024"  # a directory named 2024 stays a path, not a number
    with pytest.raises(ValueError, match="integer"):
        resolve_config(names, overrides={"epochs": "three"})
    with pytest.raises(ValueError, match="unknown option"):
        resolve_config(names, overrides={"epoch": "3"})


def test_cosine_schedule_ends_at_zero_after_a_warmup():
    from unrolled.config import TRAIN_DEFAULTS
    from unrolled.train import make_schedule

    cfg = {**TRAIN_DEFAULTS, "lr": 0.1, "epochs": 2, "schedule": "cosine", "warmup": 10}
    lr = make_schedule(cfg, steps_per_epoch=50)  # 100 updates: 10 warm-up, 90 of cosine
    assert lr(0) == 0 and lr(10) == pytest.approx(0.1)
    assert lr(99) == pytest.approx(0.1 * (1 + np.cos(np.pi * 89 / 90)) / 2)
    assert lr(100) == 0  # the last update has been made at the bottom of the cosine
