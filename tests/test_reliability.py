"""Reliability: a resumed run continues its own configuration, no run is overwritten,
evaluation says what it scores, degenerate input is named, and every failure is one
line that names the fix (never a traceback), including under faults (kill, ENOSPC,
corrupt files)."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import tiny_names

from unrolled import io
from unrolled.cli import main
from unrolled.data import bundled_path
from unrolled.train import Trainer

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--hidden", "8", "--embed", "4", "--batch-size", "16", "--quiet", "--lr", "0.01"]


def params(run):
    arrays, _ = io.load_arrays(Path(run) / "model.npz", io.MODEL_FORMAT)
    return arrays


def interrupt_at(monkeypatch, step):
    """Ctrl-C as the trainer sees it (its signal handler's flag) after update ``step``."""
    orig = Trainer.train_step

    def train_step(self, batch):
        out = orig(self, batch)
        if self.step + 1 == step:
            self._interrupted = True
        return out

    monkeypatch.setattr(Trainer, "train_step", train_step)
    return orig


def one_line_error(capsys, rc, *words):
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for w in words:
        assert w in err, (w, err)
    return err


# ------------------------------------------------------------------ 1. resume

def test_resume_continues_the_runs_own_configuration(tmp_path, monkeypatch, capsys):
    data = tiny_names(tmp_path / "names")
    opts = ["--data", str(data), "--epochs", "2", "--schedule", "constant", *TINY]
    assert main(["train", "names", "--out", str(tmp_path / "full"), *opts]) == 0
    orig = interrupt_at(monkeypatch, 4)  # 3 batches per epoch: in epoch 2
    assert main(["train", "names", "--out", str(tmp_path / "cut"), *opts]) == 130
    assert "--resume" in capsys.readouterr().err
    monkeypatch.setattr(Trainer, "train_step", orig)
    # the command the message prints: no options, the run's own ones are used
    assert main(["train", "names", "--out", str(tmp_path / "cut"), "--resume", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "epoch 2/2" in out and "epoch 3/" not in out
    a, b = params(tmp_path / "full"), params(tmp_path / "cut")
    assert set(a) == set(b)
    for k in a:
        assert a[k].tobytes() == b[k].tobytes(), k


def test_resume_refuses_options_that_change_the_run(tmp_path, capsys):
    data = tiny_names(tmp_path / "names")
    out = str(tmp_path / "run")
    assert main(["train", "names", "--data", str(data), "--out", out, "--epochs", "1",
                 *TINY]) == 0
    capsys.readouterr()
    rc = main(["train", "names", "--out", out, "--resume", "--lr", "0.5"])
    one_line_error(capsys, rc, "--lr 0.5", "keeps its own options")
    # the default schedule of names is cosine, laid out over the run's epochs
    rc = main(["train", "names", "--out", out, "--resume", "--epochs", "3"])
    one_line_error(capsys, rc, "cosine", "drop --epochs")
    other = tiny_names(tmp_path / "other", n=12)
    rc = main(["train", "names", "--out", out, "--resume", "--data", str(other)])
    one_line_error(capsys, rc, "is not the data of the run")
    # giving the run's own values is no change
    assert main(["train", "names", "--out", out, "--resume", "--hidden", "8", "--quiet"]) == 0


def test_resume_from_another_directory_with_relative_or_absolute_data(tmp_path, monkeypatch,
                                                                       capsys):
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir()
    elsewhere.mkdir()
    tiny_names(work / "names")
    monkeypatch.chdir(work)
    opts = ["--data", "names", "--schedule", "constant", "--epochs", "1", *TINY]
    assert main(["train", "names", "--out", "run", *opts]) == 0
    monkeypatch.chdir(elsewhere)
    run = str(work / "run")
    assert main(["train", "names", "--out", run, "--resume", "--epochs", "2"]) == 0
    assert main(["train", "names", "--out", run, "--resume", "--epochs", "3",
                 "--data", str(work / "names")]) == 0
    assert "epoch 3/3" in capsys.readouterr().out


def test_resume_refuses_data_changed_since_the_start(tmp_path, capsys):
    data = tiny_names(tmp_path / "names")
    out = str(tmp_path / "run")
    assert main(["train", "names", "--data", str(data), "--out", out, "--epochs", "1",
                 "--schedule", "constant", *TINY]) == 0
    with open(data / "Russian.txt", "a", encoding="utf-8") as f:
        f.write("Zzzyzzkin\n")
    capsys.readouterr()
    rc = main(["train", "names", "--out", out, "--resume", "--epochs", "2"])
    one_line_error(capsys, rc, "changed since the run started")


# ------------------------------------------------------------------ 2. nothing overwritten

def test_a_finished_run_is_not_overwritten_without_force(tmp_path, capsys):
    data = tiny_names(tmp_path / "names")
    out = tmp_path / "run"
    args = ["train", "names", "--data", str(data), "--out", str(out), "--epochs", "1", *TINY]
    assert main(args) == 0
    (out / "checkpoint.npz").unlink()  # a finished run without its checkpoint
    before = (out / "model.npz").read_bytes()
    capsys.readouterr()
    one_line_error(capsys, main(args + ["--seed", "1"]), "holds a run already", "--force")
    assert (out / "model.npz").read_bytes() == before
    assert main(args + ["--seed", "1", "--force"]) == 0
    assert (out / "model.npz").read_bytes() != before


def test_default_run_directories_are_unique_within_a_second(tmp_path, monkeypatch):
    import time

    data = tiny_names(tmp_path / "names")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(time, "strftime", lambda fmt, *a: "20260101-000000")
    args = ["train", "names", "--data", str(data), "--epochs", "1", *TINY]
    assert main(args) == 0
    assert main(args + ["--seed", "1"]) == 0
    runs = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert runs == ["names-20260101-000000", "names-20260101-000000-2"]
    a, b = (params(tmp_path / "runs" / r) for r in runs)
    assert any(a[k].tobytes() != b[k].tobytes() for k in a)  # two models, none lost


# ------------------------------------------------------------------ 5. work lost late

def test_a_bad_model_option_writes_nothing(tmp_path, capsys):
    data = tiny_names(tmp_path / "names")
    out = tmp_path / "run"
    rc = main(["train", "names", "--data", str(data), "--out", str(out), "--hidden", "-5",
               "--quiet"])
    one_line_error(capsys, rc, "-5")
    assert not out.exists()


# ------------------------------------------------------------------ 3. honest evaluation

def test_evaluate_scores_only_records_the_model_was_not_trained_on(tmp_path, capsys):
    import json
    import shutil

    data = tiny_names(tmp_path / "names")
    out = tmp_path / "run"
    assert main(["train", "names", "--data", str(data), "--out", str(out), "--epochs", "1",
                 *TINY]) == 0
    n_train = json.loads((out / "config.json").read_text())["extra"]["sizes"]["train"]
    # the training files plus new names: other bytes, so not recognised as the data itself
    mixed = tmp_path / "mixed"
    shutil.copytree(data, mixed)
    new = {"Japanese": ["Zzkawa", "Zzmoto"], "Russian": ["Zzovich"], "Italian": ["Zzini"]}
    for lang, extra in new.items():
        with open(mixed / f"{lang}.txt", "a", encoding="utf-8") as f:
            f.write("\n".join(extra) + "\n")
    n_all = sum(len((mixed / f).read_text().split()) for f in os.listdir(mixed))
    capsys.readouterr()
    assert main(["evaluate", str(out), "--data", str(mixed)]) == 0
    err = capsys.readouterr().err
    assert f"{n_train} of its {n_all} records were in this model's training split" in err
    assert f"metrics on the other {n_all - n_train} only" in err
    # data made only of training records leaves nothing to score
    from unrolled.tasks.base import load_trained

    _, meta, task = load_trained(out)
    task = type(task)(meta["config"])
    task.load(str(data))
    lang = task.classes[int(task.labels["train"][0])]
    only = tmp_path / "only"
    only.mkdir()
    (only / f"{lang}.txt").write_text(task.vocab.decode(task.records["train"][0]) + "\n")
    one_line_error(capsys, main(["evaluate", str(out), "--data", str(only)]),
                   "all 1 records were in this model's training split")


# ------------------------------------------------------------------ 4. degenerate input

def test_names_degenerate_data_is_named(tmp_path, capsys):
    one = tiny_names(tmp_path / "one", langs=("Japanese",))
    rc = main(["train", "names", "--data", str(one), "--out", str(tmp_path / "a"), *TINY])
    one_line_error(capsys, rc, "one language (Japanese)", "at least one more language")
    few = tiny_names(tmp_path / "few")
    (few / "Korean.txt").write_text("Kim\n", encoding="utf-8")
    out = tmp_path / "b"
    assert main(["train", "names", "--data", str(few), "--out", str(out), "--epochs", "1",
                 *TINY]) == 0
    assert "warning: no test names for Korean" in capsys.readouterr().out
    # a name of characters never seen in training is answered with a note
    assert main(["predict", str(out), "山田", "ana"]) == 0
    cap = capsys.readouterr()
    notes = cap.err.splitlines()
    assert len(notes) == 1 and "'山田': 2 of 2 characters" in notes[0] and "guess" in notes[0]
    assert cap.out.splitlines()[0] == "山田" and "ana" in cap.out.splitlines()


@pytest.mark.parametrize("encoding,name", [("utf-16", "UTF-16LE"), ("utf-16-be", "UTF-16BE"),
                                           ("utf-32", "UTF-32LE")])
def test_utf16_and_utf32_files_are_named_as_such(tmp_path, capsys, encoding, name):
    d = tiny_names(tmp_path / "names")
    (d / "German.txt").write_bytes("Müller\nSchmidt\n".encode(encoding))
    rc = main(["train", "names", "--data", str(d), "--out", str(tmp_path / "o"), *TINY])
    one_line_error(capsys, rc, "German.txt", name, f"iconv -f {name}")


def series_csv(path, values):
    path.write_text("x,y\n" + "".join(f"{i % 5},{'' if v is None else repr(v)}\n"
                                      for i, v in enumerate(values)))
    return path


SERIES = ["--epochs", "1", "--window", "3", "--hidden", "4", "--season", "0", "--quiet"]


def test_series_degenerate_values_fail_before_training(tmp_path, capsys):
    vals = [float(i % 7) for i in range(40)]
    huge = series_csv(tmp_path / "huge.csv", vals[:20] + [1e300] + vals[21:])
    out = tmp_path / "h"
    rc = main(["train", "series", "--data", str(huge), "--out", str(out), *SERIES])
    one_line_error(capsys, rc, "too large", "rescale")
    assert not out.exists()
    # the test part (the last 20 % of the windows) has no target at all
    gap = series_csv(tmp_path / "gap.csv", vals[:33] + [None] * 7)
    out = tmp_path / "g"
    rc = main(["train", "series", "--data", str(gap), "--out", str(out), *SERIES])
    one_line_error(capsys, rc, "every target of the test part", "is missing")
    assert not out.exists()  # refused before anything was written: the rerun is not blocked
    none = series_csv(tmp_path / "none.csv", [None] * 40)
    rc = main(["train", "series", "--data", str(none), "--target", "y",
               "--out", str(tmp_path / "n"), *SERIES])
    err = one_line_error(capsys, rc, "'y'")
    assert "--features" not in err


def test_a_model_with_nan_weights_is_refused(tmp_path, capsys):
    data = tiny_names(tmp_path / "names")
    out = tmp_path / "run"
    assert main(["train", "names", "--data", str(data), "--out", str(out), "--epochs", "1",
                 *TINY]) == 0
    arrays, meta = io.load_arrays(out / "model.npz", io.MODEL_FORMAT)
    key = sorted(k for k in arrays if k.startswith("params/"))[0]
    arrays[key] = np.full_like(arrays[key], np.nan)
    io.save_arrays(out / "model.npz", arrays, meta)
    capsys.readouterr()
    one_line_error(capsys, main(["predict", str(out), "Tanaka"]), "NaN", "train again")


def test_predict_top_must_be_positive(tmp_path, capsys):
    data = tiny_names(tmp_path / "names")
    out = tmp_path / "run"
    assert main(["train", "names", "--data", str(data), "--out", str(out), "--epochs", "1",
                 *TINY]) == 0
    capsys.readouterr()
    for top in ("0", "-1"):
        one_line_error(capsys, main(["predict", str(out), "ana", "--top", top]),
                       "--top must be at least 1")
    assert main(["predict", str(out), "ana", "--top", "99"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1 + 3  # every class, no more


# ------------------------------------------------------------------ one-line errors

@pytest.fixture(scope="module")
def names_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    data = tiny_names(tmp / "names")
    out = tmp / "run"
    assert main(["train", "names", "--data", str(data), "--out", str(out), "--epochs", "1",
                 *TINY]) == 0
    return out


def test_files_that_are_not_models_are_named(tmp_path, capsys):
    rnd = tmp_path / "random.npz"
    rnd.write_bytes(np.random.default_rng(0).bytes(4096))
    one_line_error(capsys, main(["info", str(rnd)]), "not a .npz archive")
    npy = tmp_path / "a.npy"
    np.save(npy, np.arange(3))
    one_line_error(capsys, main(["info", str(npy)]), "single NumPy array (.npy)")
    assert "pickled" not in capsys.readouterr().err


def test_edited_metadata_is_named(names_run, tmp_path, capsys):
    arrays, meta = io.load_arrays(names_run / "model.npz", io.MODEL_FORMAT)
    cut = tmp_path / "cut.npz"
    state = {**meta["task_state"], "classes": meta["task_state"]["classes"][:1]}
    io.save_arrays(cut, arrays, {**meta, "task_state": state})
    one_line_error(capsys, main(["predict", str(cut), "ana"]), "gives 1 outputs", "corrupt")
    other = tmp_path / "other.npz"
    io.save_arrays(other, arrays, {**meta, "config": {**meta["config"], "task": "text"}})
    one_line_error(capsys, main(["predict", str(other), "ana"]), "for task 'text'", "corrupt")
    gone = tmp_path / "gone.npz"
    io.save_arrays(gone, arrays, {**meta, "config": {**meta["config"], "task": "tagging"}})
    one_line_error(capsys, main(["predict", str(gone), "ana"]), "does not fit task 'tagging'")


def test_inspect_on_a_task_without_text_records_is_one_line(tmp_path, capsys, monkeypatch):
    from unrolled.inspect.report import record_from_input
    from unrolled.tasks.base import SequenceClassification

    class NoText(SequenceClassification):
        name = "notext"

    class Model:
        layers = ()

    monkeypatch.setattr("unrolled.inspect.report._input_size", lambda model: 1)
    rec, *_ = record_from_input(NoText({}), "1;2;3", Model())
    assert rec.shape == (3, 1)


def test_disk_full_names_the_path_and_keeps_the_previous_file(tmp_path, monkeypatch, capsys):
    import errno

    target = tmp_path / "model.npz"
    io.atomic_write_bytes(target, b"old")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError) as e:
        io.atomic_write_bytes(target, b"new")
    assert str(target) in e.value.strerror and "free some space" in e.value.strerror
    assert "previous file is intact" in e.value.strerror
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.npz"]  # no temporary file left


def test_an_unexpected_exception_is_one_line(monkeypatch, capsys):
    import unrolled.cli as cli

    def boom(args):
        raise IndexError("list index out of range")

    monkeypatch.setitem(cli.COMMANDS, "info", (cli.COMMANDS["info"][0], boom))
    rc = main(["info", "x"])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and "UNROLLED_DEBUG=1" in err
    assert "IndexError" in err


def test_tagging_help_gives_its_default_data(capsys):
    assert main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    block = out[out.index("task tagging:"):]
    block = block[:block.index("\n\n")] if "\n\n" in block else block
    assert "data default: 'hironsancorpus'" in block and "--data is required" not in block


def test_text_predict_on_empty_input_names_the_fix():
    from unrolled.data import Vocab
    from unrolled.tasks.text import TextTask

    task = TextTask({}, {"vocab": Vocab.from_text("ab ").to_dict()})

    def model(ids):  # never reached: the empty text is refused first
        raise AssertionError("the model was called on an empty text")

    with pytest.raises(ValueError, match="at least one character"):
        task.predict(model, [""])


# ------------------------------------------------------------------ ctf and tagging test sets

def word_seqs(n, vocab, seed):
    """Sequences of word ids (a sparse one-hot stream) labelled by the parity of the first."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        w = rng.integers(0, vocab, int(rng.integers(2, 6)))
        out.append({"w": np.eye(vocab, dtype=np.float32)[w],
                    "y": np.eye(2, dtype=np.float32)[[int(w[0]) % 2]]})
    return out


CTF_OPTS = ["--features", "w", "--labels", "y", "--epochs", "1", "--hidden", "4", "--quiet"]


def test_ctf_sparse_width_read_off_the_file_is_named_with_the_fix(tmp_path, capsys):
    from unrolled.data.ctf import write_ctf

    seqs = word_seqs(60, 12, 0)
    for s in seqs:  # the training file never uses the last words of the vocabulary
        s["w"] = s["w"][:, :9]
        s["w"][:, 0] += 1 - s["w"].sum(1)  # rows with a dropped word become word 0
    streams = {"w": (9, "sparse"), "y": (2, "sparse")}
    write_ctf(tmp_path / "train.ctf", seqs, streams)
    write_ctf(tmp_path / "new.ctf", word_seqs(20, 12, 1), {"w": (12, "sparse"),
                                                            "y": (2, "sparse")})
    out = tmp_path / "run"
    assert main(["train", "ctf", "--data", str(tmp_path / "train.ctf"), "--out", str(out),
                 *CTF_OPTS]) == 0
    assert "--streams w:9:sparse,y:2:sparse with the full dims" in capsys.readouterr().out
    rc = main(["evaluate", str(out), "--data", str(tmp_path / "new.ctf")])
    one_line_error(capsys, rc, "out of range", "--streams w:12:sparse,y:2:sparse")


def test_ctf_and_tagging_take_their_own_test_file(tmp_path, capsys):
    from unrolled.data.ctf import write_ctf

    streams = {"w": (6, "sparse"), "y": (2, "sparse")}
    write_ctf(tmp_path / "train.ctf", word_seqs(80, 6, 0), streams)
    write_ctf(tmp_path / "test.ctf", word_seqs(40, 6, 1), streams)
    rc = main(["train", "ctf", "--data", str(tmp_path / "train.ctf"), "--out",
               str(tmp_path / "a"), "--test-fraction", "0", *CTF_OPTS])
    one_line_error(capsys, rc, "--test-fraction 0 leaves no test set", "--test FILE")
    assert main(["train", "ctf", "--data", str(tmp_path / "train.ctf"), "--out",
                 str(tmp_path / "b"), "--test", str(tmp_path / "test.ctf"), *CTF_OPTS]) == 0
    out = capsys.readouterr().out
    assert f"test 40 (from {tmp_path / 'test.ctf'})" in out and "train 72, val 8" in out
    col = "\n\n".join("\n".join(f"w{(i + j) % 7}\t{'B-X' if j == 0 else 'O'}"
                                for j in range(3)) for i in range(40)) + "\n"
    (tmp_path / "tr.txt").write_text(col)
    (tmp_path / "te.txt").write_text(col[: len(col) // 2])
    opts = ["--epochs", "1", "--hidden", "4", "--embed", "4", "--quiet", "--val-fraction", "0.2"]
    assert main(["train", "tagging", "--data", str(tmp_path / "tr.txt"), "--out",
                 str(tmp_path / "t"), "--test", str(tmp_path / "te.txt"), *opts]) == 0
    out = capsys.readouterr().out
    assert f"from {tmp_path / 'te.txt'}" in out and "train 32" in out
    assert "warning: the test set has 20 sentences" in out


def test_ctf_errors_name_the_sequence_id(tmp_path, capsys):
    (tmp_path / "bad.ctf").write_text("7 |x 1 |y 0:1\n7 |x 2\n42 |x 3\n")
    rc = main(["train", "ctf", "--data", str(tmp_path / "bad.ctf"), "--features", "x",
               "--labels", "y", "--out", str(tmp_path / "o"), "--quiet"])
    one_line_error(capsys, rc, "sequence 1 (id 42, line 3)")


def test_a_text_too_short_for_any_stream_does_not_suggest_a_smaller_batch(tmp_path, capsys):
    (tmp_path / "one.txt").write_text("a")
    rc = main(["train", "text", "--data", str(tmp_path / "one.txt"), "--batch-size", "1",
               "--out", str(tmp_path / "o")])
    err = one_line_error(capsys, rc, "use a longer text")
    assert "--batch-size" not in err


def test_example_without_its_data_says_to_pass_data(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "jordan_vs_elman.py"),
                        "--data", str(tmp_path / "nope.csv"), "--epochs", "1"],
                       capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    assert "nope.csv: no such file; pass --data" in r.stderr
    assert not (tmp_path / "runs").exists()


def test_pictures_say_what_they_show_and_are_readable(tmp_path, monkeypatch):
    import matplotlib
    from matplotlib.axes import Axes

    from unrolled.metrics import plot_confusion
    from unrolled.tasks.series import SeriesTask

    matplotlib.use("Agg")
    titles, sizes = [], []
    monkeypatch.setattr(Axes, "set_title", lambda self, t, *a, **k: titles.append(t))
    orig_text = Axes.text

    def text(self, x, y, s, *a, **k):
        sizes.append(k.get("fontsize"))
        return orig_text(self, x, y, s, *a, **k)

    monkeypatch.setattr(Axes, "text", text)
    plot_confusion(np.array([[120, 3], [4, 95]]), ["a", "b"], tmp_path / "c.png")
    assert min(sizes) >= 8
    task = SeriesTask({"plot_points": 5, "season": 0}, {"target": "y"})
    task.saved = {"target": "y"}
    n = 12
    f = {"at": np.arange(n), "true": np.ones(n), "pred": np.ones(n), "seasonal": np.ones(n)}
    task.plot(f, tmp_path / "f.png", title="y: test forecasts, 1 ahead")
    assert "the last 5 of 12" in titles[-1]


# ------------------------------------------------------------------ checkpoints and progress

def names_trainer(tmp_path, out=None, **over):
    from unrolled.config import resolve_config
    from unrolled.tasks import get_task

    data = tiny_names(tmp_path / "names")
    T = get_task("names")
    opts = {"epochs": 2, "hidden": 8, "embed": 4, "batch_size": 8, "progress": False,
            "lr": 0.01}
    opts.update(over)
    cfg = resolve_config(T, overrides={k: str(v) for k, v in opts.items()})
    task = T(cfg)
    task.load(data)
    return Trainer(task, cfg, out_dir=out, log=lambda m: None)


def test_checkpoints_keep_the_best_weights_once_and_can_go_by_time(tmp_path, monkeypatch):
    tr = names_trainer(tmp_path, tmp_path / "run", checkpoint_every=0,
                       checkpoint_seconds=1e-9, schedule="constant")
    saves = []
    orig = Trainer.save_checkpoint

    def save(self, path=None):
        saves.append((self.epoch, self.batch_in_epoch))
        return orig(self, path)

    monkeypatch.setattr(Trainer, "save_checkpoint", save)
    tr.fit()
    # by time: after every batch but the last of an epoch, and at each epoch end
    assert len(saves) == 2 * tr.steps_per_epoch
    arrays, meta = io.load_arrays(tmp_path / "run" / "checkpoint.npz", io.CHECKPOINT_FORMAT)
    assert meta["best_is_params"] == (meta["best"]["epoch"] == 2)
    n_params = sum(k.startswith("params/") for k in arrays)
    assert sum(k.startswith("best/") for k in arrays) == (0 if meta["best_is_params"]
                                                          else n_params)
    (tmp_path / "b").mkdir()
    again = names_trainer(tmp_path / "b", tmp_path / "run", checkpoint_every=0,
                          checkpoint_seconds=1e-9, schedule="constant")
    again.load_checkpoint()
    assert again.best["params"].keys() == tr.best["params"].keys()
    for k, v in tr.best["params"].items():
        assert again.best["params"][k].tobytes() == v.tobytes()


def test_the_first_update_says_kernels_may_be_compiling(tmp_path, monkeypatch):
    import unrolled.train as train_mod

    calls = []

    class Bar:
        def set_postfix(self, *a, **k):
            pass

        def set_postfix_str(self, s, **k):
            calls.append(s)

        def unpause(self):
            calls.append("unpause")

        def update(self, n=1):
            pass

        def close(self):
            pass

    monkeypatch.setattr(train_mod, "_progress", lambda *a, **k: Bar())
    monkeypatch.setattr(Trainer, "_warm", False)
    names_trainer(tmp_path, epochs=1).fit()
    assert calls == ["compiling kernels (first run only)", "unpause"]


def test_long_generation_shows_progress(monkeypatch):
    import tqdm as tqdm_mod

    from unrolled.data import Vocab
    from unrolled.tasks.text import sample

    vocab = Vocab.from_text("ab\n")
    bars = []

    class Bar:
        def __init__(self, it, **kw):
            bars.append(kw)
            self.it = it

        def __iter__(self):
            return iter(self.it)

    monkeypatch.setattr(tqdm_mod, "tqdm", Bar)

    def model(ids, initial_state=None, return_state=False):
        return np.zeros((1, ids.shape[1], len(vocab)), np.float32), None

    text = sample(model, vocab, length=1200, rng=0, progress=True)
    assert len(text) == 1200 and bars and bars[0]["desc"] == "generating"
    sample(model, vocab, length=10, rng=0, progress=True)
    assert len(bars) == 1  # short texts: no bar


def test_evaluate_recognises_a_named_corpus_as_the_training_data(tmp_path, monkeypatch,
                                                                 capsys):
    import unrolled.tasks.tagging as tagging

    corpus = tmp_path / "iob_sents.txt"
    corpus.write_text("\n\n".join("\n".join(f"w{(i + j) % 7}\t{'B-X' if j == 0 else 'O'}"
                                            for j in range(3)) for i in range(60)) + "\n")
    monkeypatch.setattr(tagging, "hironsan_path", lambda: corpus)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    assert main(["train", "tagging", "--data", "hironsancorpus", "--out", str(out),
                 "--epochs", "1", "--hidden", "4", "--embed", "4", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(out), "--data", "hironsancorpus"]) == 0
    err = capsys.readouterr().err
    assert "hironsancorpus is this model's training data" in err and "test split" in err


def test_cjk_labels_use_an_installed_cjk_font_or_say_there_is_none(monkeypatch):
    from matplotlib import font_manager

    from unrolled.inspect.report import CJK_FONTS, label_fonts

    assert label_fonts(list("Tanaka")) == (None, None)
    plain = [f for f in font_manager.fontManager.ttflist if f.name not in CJK_FONTS]
    monkeypatch.setattr(font_manager.fontManager, "ttflist", plain)
    families, note = label_fonts(list("山田"))
    assert families is None and "boxes" in note and "fonts-noto-cjk" in note
    fake = font_manager.FontEntry(name="IPAexGothic")
    monkeypatch.setattr(font_manager.fontManager, "ttflist", [*plain, fake])
    families, note = label_fonts(list("山田"))
    assert note is None and families[-1] == "IPAexGothic" and len(families) >= 2


def test_labels_pick_a_font_by_its_glyphs_and_name_the_characters_none_has(monkeypatch):
    from matplotlib import font_manager

    from unrolled.inspect.report import CJK_FONTS, label_fonts

    plain = [f for f in font_manager.fontManager.ttflist if f.name not in CJK_FONTS]
    monkeypatch.setattr(font_manager.fontManager, "ttflist", plain)
    # a Japanese name with no CJK font installed: the note names its characters
    families, note = label_fonts(["山", "田", " ", "花", "子"])
    assert families is None and "4 character(s)" in note and "(山田花子)" in note
    # a glyph the default font lacks but another installed font has (DejaVu Sans Mono's
    # U+2312 ARC): that font is added after the default family, found by its glyphs
    if any(f.name == "DejaVu Sans Mono" for f in plain):
        families, note = label_fonts(list("a\u2312"))
        assert note is None and families[-1] == "DejaVu Sans Mono"
        families, note = label_fonts(list("\u2312山"))
        assert families[-1] == "DejaVu Sans Mono" and "(山)" in note
        mono = [f for f in plain if f.name != "DejaVu Sans Mono"]  # negative control
        monkeypatch.setattr(font_manager.fontManager, "ttflist", mono)
        families, note = label_fonts(list("a\u2312"))
        assert "DejaVu Sans Mono" not in (families or [])
        assert families is not None or "(\u2312)" in note  # another font, or named


def test_non_finite_metrics_are_an_error_not_a_figure(tmp_path, monkeypatch, capsys):
    from unrolled.tasks.base import SequenceClassification

    data = tiny_names(tmp_path / "names")
    out = tmp_path / "run"
    orig = SequenceClassification._scores

    def scores(self, logits, y):  # as a model whose outputs overflow would score
        return {**orig(self, logits, y), "loss": float("inf")}

    monkeypatch.setattr(SequenceClassification, "_scores", scores)
    rc = main(["train", "names", "--data", str(data), "--out", str(out), "--epochs", "1",
               *TINY])
    one_line_error(capsys, rc, "not finite (loss inf)", "model is saved")
    assert (out / "model.npz").exists()


def test_evaluate_on_the_test_file_of_the_training_data_is_not_called_training_data(
        tmp_path, capsys):
    import shutil

    data = tmp_path / "digits"
    data.mkdir()
    for name in ("optdigits-train.csv", "optdigits-test.csv"):
        shutil.copy(bundled_path("names").parent / name, data / name)
    out = tmp_path / "run"
    assert main(["train", "digits", "--data", str(data), "--out", str(out), "--epochs", "1",
                 "--hidden", "4", "--quiet"]) == 0
    test = data / "optdigits-test.csv"
    n = sum(1 for line in test.read_text().splitlines() if line.strip())
    capsys.readouterr()
    assert main(["evaluate", str(out), "--data", str(test)]) == 0
    err = capsys.readouterr().err
    assert "warning" not in err and f"metrics on all its {n} records" in err


def test_checkpoints_by_time_only_skip_epoch_ends_until_due(tmp_path, monkeypatch):
    tr = names_trainer(tmp_path, tmp_path / "run", epochs=3, checkpoint_every=0,
                       checkpoint_seconds=3600, schedule="constant")
    saves = []
    orig = Trainer.save_checkpoint

    def save(self, path=None):
        saves.append(self.epoch)
        return orig(self, path)

    monkeypatch.setattr(Trainer, "save_checkpoint", save)
    tr.fit()
    assert saves == [3]  # an hour never passed: only the end of training is saved


def test_resume_accepts_the_runs_own_test_file_given_relatively(tmp_path, monkeypatch, capsys):
    from unrolled.data.ctf import write_ctf

    streams = {"w": (6, "sparse"), "y": (2, "sparse")}
    write_ctf(tmp_path / "train.ctf", word_seqs(80, 6, 0), streams)
    write_ctf(tmp_path / "test.ctf", word_seqs(40, 6, 1), streams)
    monkeypatch.chdir(tmp_path)
    args = ["train", "ctf", "--data", "train.ctf", "--out", "run", "--test", "test.ctf",
            "--features", "w", "--labels", "y", "--hidden", "4", "--quiet"]
    assert main(args + ["--epochs", "1", "--schedule", "constant"]) == 0
    assert main(args + ["--epochs", "2", "--resume"]) == 0
    assert "epoch 2/2" in capsys.readouterr().out
