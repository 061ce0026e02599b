"""The inspection report as a page: one self-contained file, opened in a real browser.

The browser tests run Debian's ``chromium`` in its own headless mode (no driver): the
page is loaded with a view named in its address, its DOM is dumped after the scripts ran,
and a screenshot is taken. They skip where no chromium is installed.
"""
import html
import json
import re
import shutil
import subprocess

import numpy as np
import pytest

pytest.importorskip("matplotlib")
from test_inspect import _saved_names_model

from unrolled.inspect import write_report
from unrolled.inspect.traces import traces
from unrolled.layers import Dense, Elman, Sequential

BROWSER = next((b for b in ("chromium", "chromium-browser", "google-chrome") if
                shutil.which(b)), None)
needs_browser = pytest.mark.skipif(BROWSER is None, reason="no chromium installed")
U_BLUE = np.array([0x1f, 0x5f, 0xbf]) / 255     # drawings: the input matrix U
W_RED = np.array([0xd6, 0x27, 0x28]) / 255      # drawings: the recurrence W


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    from unrolled.cli import main

    tmp = tmp_path_factory.mktemp("page")
    model, task = _saved_names_model(tmp / "model")
    out = tmp / "report"
    assert main(["inspect", str(tmp / "model"), "--input", "Kozak", "--out", str(out)]) == 0
    return model, task, out


def _embedded_data(page):
    m = re.search(r"<script type='application/json' id='explore-data'>(.*?)</script>", page,
                  re.S)
    return json.loads(m.group(1))


def test_page_is_self_contained_and_carries_the_forward_values(report):
    model, task, out = report
    page = (out / "index.html").read_text()
    # nothing to fetch: every picture and script is inside the file
    assert not re.search(r"""<(img|script)[^>]*\ssrc=["'](?!data:)""", page)
    assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", page)
    assert html.escape(repr(model)) in page and "Tape bytes/step" in page
    data = _embedded_data(page)
    rec = task.encode("Kozak")
    tr = traces(model, rec)
    assert data["T"] == len(rec) and data["labels"] == list("Kozak")
    for key, d in tr.items():
        for name in ("h", "c", "i", "f", "g", "o"):
            np.testing.assert_allclose(data["layers"][key]["data"][name], d[name][0],
                                       rtol=1e-4, atol=1e-7)
    arrays = np.load(out / "arrays.npz")
    np.testing.assert_allclose(data["grad"]["1/l0"], arrays["gradflow/1/l0/norms"][0],
                               rtol=1e-4)


def test_a_picture_of_part_of_the_data_says_which_part(tmp_path, monkeypatch):
    from unrolled.inspect import report as report_mod

    monkeypatch.setattr(report_mod, "_MAX_PANELS", 1)   # draw one of the two directions
    rng = np.random.default_rng(0)
    model = Sequential(Elman(2, 3, bidirectional=True, seed=0), Dense(6, 2, seed=1))
    write_report(model, rng.standard_normal((2, 2)).astype("float32"), tmp_path, T_draw=1)
    page = (tmp_path / "index.html").read_text()
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", page)
    part = [c for c in captions if "the first 1 of the 2 layers and directions" in c]
    assert len(part) == 2                                # the traces and the Jacobians
    assert "Shares of the first 1 of the 2 layers and directions" in page
    assert len(_embedded_data(page)["layers"]) == 2     # the step-by-step view has both


def test_a_long_record_is_cut_in_the_view_and_the_page_says_so():
    from unrolled.inspect.page import explorer_html

    h = np.random.default_rng(0).standard_normal((1, 30, 2))
    page = explorer_html({"l0": {"h": h, "h0": h[:, 0]}}, labels=list("abcdefghij") * 3,
                         max_steps=12)
    data = _embedded_data(page)
    assert (data["T"], data["of"]) == (12, 30) and data["labels"] == list("abcdefghijab")
    np.testing.assert_allclose(data["layers"]["l0"]["data"]["h"], h[0, :12], rtol=1e-4)
    assert html.escape("the first 12 of the record's 30 steps") in page
    assert "h0" not in data["layers"]["l0"]["names"]       # initial states: not per step


def _browse(url, *args, timeout=60):
    cmd = [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           "--enable-logging=stderr", "--v=0", *args, url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


@needs_browser
def test_page_runs_in_a_browser_with_no_script_errors(report):
    model, task, out = report
    url = (out / "index.html").as_uri() + "#step=3&name=f&unit=2"
    run = _browse(url, "--dump-dom")
    dom = run.stdout
    body = re.search(r"<body[^>]*>", dom).group(0)
    assert 'data-ready="1"' in body, (body, run.stderr[-2000:])
    assert "data-errors" not in body, body
    assert "Uncaught" not in run.stderr
    # the view named in the address: the forget gate of unit 2 at step 3 ("z")
    tr = traces(model, task.encode("Kozak"))
    value = re.search(r'id="ex-value" data-value="([^"]+)"', dom).group(1)
    assert float(value) == pytest.approx(tr["1/l0"]["f"][0, 2, 2], rel=1e-4)
    assert 'data-view="1/l0|3|f|2"' in body
    # one coloured cell per unit and per state or gate of the layer
    cells = re.findall(r'class="ex-cell[^"]*" data-name="(\w+)"', dom)
    assert len(cells) == sum(v.shape[-1] for k, v in tr["1/l0"].items()
                             if k in ("h", "c", "i", "f", "g", "o", "tanh_c"))


@needs_browser
def test_screenshot_shows_the_drawings(report, tmp_path):
    import matplotlib.image as mpimg

    _, _, out = report
    shot = tmp_path / "page.png"
    _browse((out / "index.html").as_uri(), f"--screenshot={shot}", "--window-size=1300,2600")
    rgb = mpimg.imread(shot)[..., :3]
    assert rgb.shape[:2] == (2600, 1300)
    for colour in (U_BLUE, W_RED):   # the arrows of the drawings, as the browser shows them
        assert int((np.abs(rgb - colour).max(axis=2) < 0.08).sum()) > 50
