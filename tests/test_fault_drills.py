"""Fault drills: a run killed (SIGKILL, also in the middle of a checkpoint write),
interrupted (SIGINT, SIGTERM), refused disk space (ENOSPC) or left with a corrupt
checkpoint goes on with ``--resume`` to the weights of an uninterrupted run, bit for
bit, with a one-line message at each stop and no temporary file left behind."""
import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from helpers import tiny_names

from unrolled import io
from unrolled.cli import main
from unrolled.train import Trainer

ROOT = Path(__file__).resolve().parents[1]
OPTS = ["--epochs", "3", "--hidden", "8", "--embed", "4", "--batch-size", "8", "--quiet",
        "--checkpoint-every", "2", "--dropout", "0.2", "--lr", "0.01", "--restore-best", "false"]

DRIVER = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    from unrolled.cli import main
    from unrolled.train import Trainer

    kind, at = os.environ["DRILL"].split(":")
    at = int(at)
    if kind == "step":  # kill -9 after update `at`
        orig = Trainer.train_step
        def train_step(self, batch):
            out = orig(self, batch)
            if self.step + 1 == at:
                os.kill(os.getpid(), signal.SIGKILL)
            return out
        Trainer.train_step = train_step
    elif kind == "ckpt":  # kill -9 half-way through the checkpoint written at step `at`
        orig_save, orig_savez = Trainer.save_checkpoint, np.savez
        def half(f, **arrays):
            f.write(b"PK\\x03\\x04 half a checkpoint")
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        def save_checkpoint(self, path=None):
            np.savez = half if self.step == at else orig_savez
            return orig_save(self, path)
        Trainer.save_checkpoint = save_checkpoint
    sys.exit(main(sys.argv[1:]))
""")


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """The uninterrupted run: its data, its directory and its weights (the last ones, not
    the best epoch's, so that every update counts)."""
    tmp = tmp_path_factory.mktemp("drill")
    data = tiny_names(tmp / "names")
    out = tmp / "full"
    assert main(["train", "names", "--data", str(data), "--out", str(out), *OPTS]) == 0
    _, meta = io.load_arrays(out / "checkpoint.npz", io.CHECKPOINT_FORMAT)
    return data, out, meta["step"], weights(out)


def weights(out):
    """The model's weights, and the run's history of losses (the same epochs, no more)."""
    arrays, _ = io.load_arrays(Path(out) / "model.npz", io.MODEL_FORMAT)
    rows = json.loads((Path(out) / "log.json").read_text())
    return ({k: v.tobytes() for k, v in arrays.items()},
            [(r["epoch"], r["loss"], r["val_loss"]) for r in rows])


def no_temporary_files(out):
    left = [p.name for p in Path(out).iterdir() if p.name.endswith(".tmp")]
    assert not left, left


def checkpoint_steps(total, steps_per_epoch, every=2):
    """The steps after which a checkpoint is written (every N, and at each epoch end)."""
    return sorted({s for s in range(1, total + 1) if s % every == 0 or s % steps_per_epoch == 0})


def test_kill_9_at_random_moments_then_resume_is_bit_exact(full, tmp_path):
    data, ref, total, ref_w = full
    _, meta = io.load_arrays(ref / "checkpoint.npz", io.CHECKPOINT_FORMAT)
    per_epoch = total // 3
    rng = np.random.default_rng(2026)
    # 10 moments in order: 7 after a random update, 3 inside a checkpoint write
    ckpt = sorted(rng.choice(checkpoint_steps(total - 1, per_epoch), 3, replace=False))
    steps = sorted(rng.choice(sorted(set(range(1, total)) - set(ckpt)), 7, replace=False))
    moments = sorted([("ckpt", int(s)) for s in ckpt] + [("step", int(s)) for s in steps],
                     key=lambda m: m[1])
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    out = tmp_path / "cut"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    first = ["train", "names", "--data", str(data), "--out", str(out), *OPTS]
    resume = ["train", "names", "--out", str(out), "--resume", "--quiet"]
    for i, (kind, at) in enumerate(moments):
        r = subprocess.run([sys.executable, str(driver), *(resume if i else first)],
                           env={**env, "DRILL": f"{kind}:{at}"}, capture_output=True,
                           text=True, timeout=120, check=False)
        assert r.returncode == -signal.SIGKILL, (kind, at, r.stderr)
    r = subprocess.run([sys.executable, "-m", "unrolled.cli", *resume], env=env,
                       capture_output=True, text=True, timeout=120, check=False, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert weights(out) == ref_w
    no_temporary_files(out)


def signal_at(monkeypatch, at, signum):
    orig = Trainer.train_step

    def train_step(self, batch):
        out = orig(self, batch)
        if self.step + 1 == at:
            os.kill(os.getpid(), signum)
        return out

    monkeypatch.setattr(Trainer, "train_step", train_step)


def test_sigint_and_sigterm_then_resume_is_bit_exact(full, tmp_path, monkeypatch, capsys):
    data, _, total, ref_w = full
    out = tmp_path / "cut"
    rng = np.random.default_rng(7)
    moments = sorted(int(s) for s in rng.choice(np.arange(1, total), 4, replace=False))
    args = ["train", "names", "--data", str(data), "--out", str(out), *OPTS]
    for i, at in enumerate(moments):
        with monkeypatch.context() as m:
            signal_at(m, at, (signal.SIGINT, signal.SIGTERM)[i % 2])
            rc = main(["train", "names", "--out", str(out), "--resume", "--quiet"] if i
                      else args)
        assert rc == 130
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"--out {out} --resume" in err
        _, meta = io.load_arrays(out / "checkpoint.npz", io.CHECKPOINT_FORMAT)
        assert meta["step"] == at  # stopped at the end of the batch it was in
    assert main(["train", "names", "--out", str(out), "--resume", "--quiet"]) == 0
    assert weights(out) == ref_w
    no_temporary_files(out)


def test_disk_full_keeps_the_checkpoint_and_resume_works_after(full, tmp_path, monkeypatch,
                                                                capsys):
    data, _, total, ref_w = full
    out = tmp_path / "cut"
    real_fsync = os.fsync

    def full_disk(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    orig_save = Trainer.save_checkpoint

    def save_checkpoint(self, path=None):  # the disk fills up after update 5
        if self.step >= 5:
            monkeypatch.setattr(os, "fsync", full_disk)
        return orig_save(self, path)

    with monkeypatch.context() as m:
        m.setattr(Trainer, "save_checkpoint", save_checkpoint)
        rc = main(["train", "names", "--data", str(data), "--out", str(out), *OPTS])
    monkeypatch.setattr(os, "fsync", real_fsync)
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1, err
    assert f"{out / 'checkpoint.npz'}: no space left" in err and "intact" in err
    _, meta = io.load_arrays(out / "checkpoint.npz", io.CHECKPOINT_FORMAT)
    assert 0 < meta["step"] < 5 + 2  # the checkpoint before the failed one
    no_temporary_files(out)
    # space freed: the run goes on; then the model file's own write fails, and again
    orig_model = io.save_model

    def save_model(*a, **k):
        monkeypatch.setattr(os, "fsync", full_disk)
        try:
            return orig_model(*a, **k)
        finally:
            monkeypatch.setattr(os, "fsync", real_fsync)

    with monkeypatch.context() as m:
        m.setattr(io, "save_model", save_model)
        rc = main(["train", "names", "--out", str(out), "--resume", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and f"{out / 'model.npz'}: no space left" in err, err
    assert not (out / "model.npz").exists()
    assert main(["train", "names", "--out", str(out), "--resume", "--quiet"]) == 0
    assert weights(out) == ref_w
    no_temporary_files(out)


def test_a_corrupt_checkpoint_is_named_and_the_previous_one_continues(full, tmp_path,
                                                                      monkeypatch, capsys):
    data, _, total, ref_w = full
    out = tmp_path / "cut"
    with monkeypatch.context() as m:
        signal_at(m, total // 2, signal.SIGINT)
        assert main(["train", "names", "--data", str(data), "--out", str(out), *OPTS]) == 130
    ckpt, prev = out / "checkpoint.npz", out / "checkpoint.prev.npz"
    assert prev.exists()
    blob = ckpt.read_bytes()
    ckpt.write_bytes(blob[: len(blob) // 3])  # a torn copy
    capsys.readouterr()
    rc = main(["train", "names", "--out", str(out), "--resume", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1, err
    assert str(ckpt) in err and f"mv {prev} {ckpt}" in err
    os.replace(prev, ckpt)
    assert main(["train", "names", "--out", str(out), "--resume", "--quiet"]) == 0
    assert weights(out) == ref_w


def test_killed_before_the_first_checkpoint_resume_starts_it_again(full, tmp_path, capsys):
    data, _, _, ref_w = full
    out = tmp_path / "cut"
    out.mkdir()
    # what a run killed before its first checkpoint leaves: its config only
    assert main(["train", "names", "--data", str(data), "--out", str(tmp_path / "x"),
                 *OPTS]) == 0
    import json

    cfg = json.loads((tmp_path / "x" / "config.json").read_text())["config"]
    (out / "config.json").write_text(json.dumps({"config": cfg}))
    (out / ".checkpoint.npz.123.tmp").write_bytes(b"PK\x03\x04 half")
    capsys.readouterr()
    assert main(["train", "names", "--out", str(out), "--resume", "--quiet"]) == 0
    assert "no checkpoint yet" in capsys.readouterr().out
    assert weights(out) == ref_w
    no_temporary_files(out)
