"""The ``unrolled`` command: train -> evaluate / predict / info, the config rules, and one-line
errors with a nonzero exit code for bad input."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

from unrolled.cli import main
from unrolled.data import bundled_path

ROOT = Path(__file__).resolve().parents[1]


FAST = ["--epochs", "2", "--hidden", "16", "--embed", "8", "--batch-size", "16", "--quiet",
        "--lr", "0.01"]


def tiny_names(d, n=40):
    d.mkdir()
    src = bundled_path("names")
    for lang in ("Japanese", "Russian", "Italian"):
        names = list(dict.fromkeys((src / f"{lang}.txt").read_text("utf-8").split()))[:n]
        (d / f"{lang}.txt").write_text("\n".join(names) + "\n", encoding="utf-8")
    return d


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A names model trained once through the CLI, shared by the tests below."""
    tmp = tmp_path_factory.mktemp("cli")
    data = tiny_names(tmp / "names")
    out = tmp / "run"
    rc = main(["train", "names", "--data", str(data), "--out", str(out), *FAST])
    assert rc == 0
    return data, out


def test_train_writes_model_log_report_and_prints_where(trained, capsys):
    _, out = trained
    for f in ("model.npz", "config.json", "log.csv", "log.json", "report.txt",
              "confusion.txt", "confusion.png", "checkpoint.npz"):
        assert (out / f).is_file(), f
    assert (out / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "report.txt").read_text()
    assert "majority-class baseline" in report and "confusion matrix" in report


def test_evaluate_prints_name_value_fractions(trained, capsys):
    data, out = trained
    assert main(["evaluate", str(out), "--data", str(data)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    values = dict(line.split(": ") for line in lines)
    assert set(values) == {"loss", "accuracy", "macro_f1"}
    assert all(re.fullmatch(r"\d+\.\d+", v) for v in values.values())
    assert 1 / 3 < float(values["accuracy"]) <= 1  # better than chance over 3 languages


def test_evaluate_on_the_training_data_uses_the_test_split(trained, tmp_path, capsys):
    data, out = trained
    main(["evaluate", str(out), "--data", str(data)])
    held_out = capsys.readouterr()
    assert "held-out test split" in held_out.err
    copy = tmp_path / "other"
    copy.mkdir()
    for f in data.iterdir():  # other data: one language, every name scored
        if f.name == "Japanese.txt":
            (copy / f.name).write_bytes(f.read_bytes())
    assert main(["evaluate", str(out), "--data", str(copy)]) == 0
    res = capsys.readouterr()
    assert "held-out" not in res.err
    acc = float(dict(line.split(": ") for line in res.out.splitlines())["accuracy"])
    assert acc > 0.5  # Japanese names, mostly seen in training


def test_predict_prints_top_three_with_probabilities(trained, capsys):
    _, out = trained
    assert main(["predict", str(out), "Dostoevsky", "Nakamura"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "Dostoevsky" and lines[4] == "Nakamura"
    probs = [float(line.split()[-1]) for line in lines[1:4]]
    assert probs == sorted(probs, reverse=True) and 0.99 < sum(probs) <= 1.0001
    assert lines[5].split()[0] == "Japanese"


def test_info_describes_the_model(trained, capsys):
    _, out = trained
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "task: names" in text and "classes (3): Italian, Japanese, Russian" in text
    from unrolled import load_model

    model, _ = load_model(out)
    assert "GRU(8, 16" in text and all(f"({i}): {ly!r}" in text
                                       for i, ly in enumerate(model.layers))
    assert "Tape bytes/step" in text and f"Total params: {model.num_params():,}" in text


def test_generate_on_a_classifier_is_a_clear_error(trained, capsys):
    _, out = trained
    assert main(["generate", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("unrolled generate: error:") and "text" in err and "\n" not in err


def test_config_file_and_precedence(tmp_path, capsys):
    data = tiny_names(tmp_path / "names", n=15)
    toml = tmp_path / "c.toml"
    toml.write_text("[train]\nhidden = 10\nepochs = 5\ncell = 'lstm'\n")
    rc = main(["train", "names", "--data", str(data), "--out", str(tmp_path / "o"), "--config",
               str(toml), "--epochs", "1", "--embed", "4", "--quiet"])
    assert rc == 0
    text = capsys.readouterr().out
    # the command line beats the file, the file beats the defaults; all printed
    assert re.search(r"^epochs\s+= 1$", text, re.MULTILINE) and re.search(r"^hidden\s+= 10$", text, re.MULTILINE)
    assert re.search(r'^cell\s+= "lstm"$', text, re.MULTILINE)
    toml.write_text("hiden = 10\n")
    assert main(["train", "names", "--data", str(data), "--config", str(toml)]) == 2
    assert "unknown option 'hiden' in the config file" in capsys.readouterr().err


def test_resume_continues_a_run_and_refuses_changed_options(tmp_path, capsys):
    data = tiny_names(tmp_path / "names", n=15)
    out = str(tmp_path / "o")
    args = ["train", "names", "--data", str(data), "--out", out, "--quiet", "--schedule",
            "constant", "--hidden", "8"]
    assert main(args + ["--epochs", "1"]) == 0
    assert main(args + ["--epochs", "1"]) == 2  # a second run into the same --out
    assert "--resume" in capsys.readouterr().err
    assert main(args + ["--epochs", "2", "--resume"]) == 0
    assert "resumed from" in capsys.readouterr().out
    assert main(args[:-1] + ["9", "--resume"]) == 2
    assert "a resumed run keeps its own options" in capsys.readouterr().err


def bad_inputs(tmp_path):
    empty_dir = tmp_path / "nodata"
    empty_dir.mkdir()
    latin = tmp_path / "latin"
    latin.mkdir()
    (latin / "German.txt").write_bytes("M\xfcller\n".encode("latin-1"))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "Czech.txt").write_text("\n\n")
    digits = tmp_path / "bad.tra"
    digits.write_text("1,2,3\n")
    return [
        (["train", "names", "--data", str(tmp_path / "missing")], "no such directory"),
        (["train", "names", "--data", str(empty_dir)], "no .txt files"),
        (["train", "names", "--data", str(latin)], "not valid UTF-8"),
        (["train", "names", "--data", str(empty)], "empty"),
        (["train", "digits", "--data", str(digits)], "65"),
        (["train", "names", "--hidden-size", "3"], "unknown option 'hidden_size'"),
        (["train", "names", "--epochs", "two"], "takes an integer"),
        (["train", "names", "--schedule", "linear"], "constant, cosine or step"),
        (["train", "nosuchtask"], "unknown task"),
        (["evaluate", str(tmp_path / "nomodel"), "--data", "x"], "no such model file"),
        (["predict"], "required"),
    ]


def test_bad_inputs_give_one_line_errors(tmp_path, capsys):
    for argv, expected in bad_inputs(tmp_path):
        rc = main(argv)
        err = capsys.readouterr().err
        assert rc != 0, argv
        assert expected in err, (argv, err)
        assert err.count("\n") == 1 and "Traceback" not in err, (argv, err)


def test_the_installed_command_exits_nonzero_without_traceback(tmp_path):
    env_cmd = [sys.executable, "-m", "unrolled.cli"]
    bad = subprocess.run(env_cmd + ["train", "names", "--data", str(tmp_path / "nope")],
                         check=False, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.startswith("unrolled train: error:") and bad.stderr.count("\n") == 1
    helps = subprocess.run(env_cmd + ["train", "--help"], check=False, capture_output=True, text=True,
                           cwd=ROOT, timeout=60)
    assert helps.returncode == 0 and "task names:" in helps.stdout and "--hidden" in helps.stdout


@pytest.mark.parametrize("cmd", ["train", "evaluate", "predict", "generate", "info", "import", None])
def test_every_command_has_help(cmd, capsys):
    argv = ([cmd] if cmd else []) + ["--help"]
    assert main(argv) == 0
    assert "usage: unrolled" in capsys.readouterr().out
