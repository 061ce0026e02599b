"""The inspection page of an encoder–decoder: its numbers are the model's own (the
teacher-forced run reproduces the greedy decode, the saliency is the gradient central
differences give), and ``unrolled inspect`` writes it for a g2p model."""
import re
import shutil
import subprocess

import numpy as np
import pytest
from helpers import rel_err
from test_task_g2p import fake_dictionary

from unrolled.cli import main
from unrolled.inspect.encdec import encoder_decoder_views
from unrolled.seq2seq import Seq2Seq, shift_targets

BROWSER = next((b for b in ("chromium", "chromium-browser", "google-chrome")
                if shutil.which(b)), None)


def _model(attention="general", cell="lstm"):
    return Seq2Seq(9, 8, embed_size=5, hidden_size=6, cell=cell, attention=attention,
                   dtype="float64", seed=3)


@pytest.mark.parametrize("attention,cell", [("general", "lstm"), ("additive", "gru"),
                                            (None, "lstm")])
def test_the_views_are_the_models_own_numbers(attention, cell):
    model = _model(attention, cell)
    src = np.array([4, 1, 7, 2, 8])
    v = encoder_decoder_views(model, src, max_len=6)
    # the teacher-forced run on its own output reproduces the greedy decode step by step
    assert v["output"] == model.greedy(src[None], max_len=6)[0]
    n = len(v["output"])
    assert np.array_equal(v["logp"][:n].argmax(-1), v["output"])
    if n < 6:
        assert v["steps"][-1] == model.eos and v["logp"][-1].argmax() == model.eos
    assert np.allclose(np.exp(v["logp"]).sum(-1), 1)
    if attention is None:
        assert v["attention"] is None
    else:
        assert v["attention"].shape == (len(v["steps"]), len(src))
        assert np.allclose(v["attention"].sum(-1), 1)
    assert v["enc_traces"]["l0"]["h"].shape == (1, len(src), 6)
    assert v["dec_traces"]["l0"]["h"].shape == (1, len(v["steps"]), 6)


def test_saliency_is_the_gradient_central_differences_give():
    model = _model()
    src = np.array([4, 1, 7, 2, 8])  # distinct symbols: each table row feeds one step
    v = encoder_decoder_views(model, src, max_len=6)
    steps = v["steps"]
    tgt_in = np.concatenate([[model.bos], steps[:-1]])[None]
    W = model.src_embed.params["weight"]
    eps = 1e-6

    def logp(t):
        logits, _ = model.forward(src[None], None, tgt_in, None, training=False)
        z = logits[0, t].astype(np.float64)
        return z[steps[t]] - z.max() - np.log(np.exp(z - z.max()).sum())

    worst, control = 0.0, 0.0
    for t in range(len(steps)):
        for j, s in enumerate(src):
            g = np.zeros(W.shape[1])
            for k in range(W.shape[1]):
                keep = W[s, k]
                W[s, k] = keep + eps
                up = logp(t)
                W[s, k] = keep - eps
                down = logp(t)
                W[s, k] = keep
                g[k] = (up - down) / (2 * eps)
            worst = max(worst, abs(np.linalg.norm(g) - v["saliency"][t, j])
                        / max(np.linalg.norm(g), 1e-12))
            other = v["saliency"][t, (j + 1) % len(src)]
            control = max(control, abs(np.linalg.norm(g) - other) / max(np.linalg.norm(g),
                                                                         1e-12))
    assert worst < 1e-6
    assert control > 1e-2  # the next step's saliency is not this one's: the check can fail


def test_a_source_outside_the_alphabet_is_named():
    with pytest.raises(ValueError, match=r"source symbols must be in \[0, 9\)"):
        encoder_decoder_views(_model(), np.array([3, 9]))


def test_shift_targets_of_an_empty_output():
    tgt_in, tgt_out, mask = shift_targets(np.zeros((1, 0), np.int64), np.zeros((1, 0), bool),
                                          1, 2)
    assert tgt_in.tolist() == [[1]] and tgt_out.tolist() == [[2]] and mask.all()


@pytest.fixture(scope="module")
def g2p_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("encdec")
    words = fake_dictionary(d / "words.dict")
    out = d / "run"
    assert main(["train", "g2p", "--data", str(words), "--out", str(out), "--epochs", "12",
                 "--hidden", "16", "--embed", "8", "--val-words", "40", "--test-words", "40",
                 "--beam", "1", "--lr", "0.02", "--monitor", "loss", "--batch-size", "16",
                 "--quiet"]) == 0
    return out


def test_inspect_writes_the_encoder_decoder_page(g2p_run, tmp_path, capsys):
    rep = tmp_path / "rep"
    assert main(["inspect", str(g2p_run), "--input", "Thebat", "--out", str(rep)]) == 0
    page = (rep / "index.html").read_text(encoding="utf-8")
    for stem in ("net_rolled", "net_unrolled", "net_backward", "attention", "saliency", "encoder_traces",
                 "decoder_traces"):
        assert (rep / f"{stem}.svg").is_file(), stem
    assert 'src="data:image/png;base64,' in page and 'src="attention.png"' not in page
    arrays = np.load(rep / "arrays.npz")
    assert arrays["saliency"].shape[1] == 6 and arrays["attention"].shape[1] == 6
    out = capsys.readouterr().out
    assert "report:" in out
    # the greedy output on the page is the model's (predict with beam 1 is greedy)
    shown = re.search(r"Greedy output: <b>([^<]*)</b>", page).group(1)
    assert main(["predict", str(g2p_run), "thebat"]) == 0
    assert shown and capsys.readouterr().out.strip() == f"thebat: {shown}"


def test_inspect_of_an_empty_word_is_one_line(g2p_run, tmp_path, capsys):
    assert main(["inspect", str(g2p_run), "--input", " ", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "empty" in err[0]


@pytest.mark.skipif(BROWSER is None, reason="no chromium installed")
def test_the_page_loads_in_a_browser_with_no_script_errors(g2p_run, tmp_path):
    rep = tmp_path / "rep"
    assert main(["inspect", str(g2p_run), "--input", "cat", "--out", str(rep)]) == 0
    run = subprocess.run([BROWSER, "--headless", "--no-sandbox", "--disable-gpu",
                          "--enable-logging=stderr", "--v=0", "--dump-dom",
                          (rep / "index.html").as_uri()], capture_output=True, text=True,
                         timeout=60)
    body = re.search(r"<body[^>]*>", run.stdout).group(0)
    assert "data-errors" not in body and "Uncaught" not in run.stderr
    assert run.stdout.count("<img") == 7
