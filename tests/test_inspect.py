"""Seeing inside: traces, gradient flow, Jacobians, the training monitor and the report.

Traces must be the forward pass's own values; ‖∂L/∂h_t‖ must be the gradient BPTT
carries (read from the loop itself through a recording cell) and match central finite
differences; per-step shares must add up to the gradient; Jacobian singular values must
match a finite-difference Jacobian; every picture must be a real, non-blank image.
"""
import warnings

import numpy as np

from unrolled.kernels import backend
import pytest
from helpers import WeightedSum

from unrolled import unroll
from unrolled.inspect import callback as cb_mod
from unrolled.inspect.gradflow import (
    gradient_flow,
    plot_gradient_flow,
    plot_jacobians,
    plot_shares,
    state_jacobians,
)
from unrolled.inspect.traces import plot_saturation, plot_traces, saturation, traces
from unrolled.layers import GRU, LSTM, Dense, Elman, Embedding, Sequential
from unrolled.tree import tree_flatten


def _data(B=3, T=6, D=3, seed=0, pad=True):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((B, T, D))
    mask = np.ones((B, T), bool)
    if pad:
        mask[1, 4:] = False
        mask[2:, 2:] = False
    return X, mask, rng


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


# --------------------------------------------------------------------------- traces

@pytest.mark.parametrize("cls", [LSTM, GRU, Elman])
def test_traces_are_the_forward_values(cls):
    X, mask, _ = _data()
    layer = cls(3, 4, num_layers=2, bidirectional=True, dtype="float64", seed=1)
    out, state, _ = layer.forward(X, mask=mask)
    tr = traces(layer, X, mask)
    assert set(tr) == {"l0", "l0_reverse", "l1", "l1_reverse"}
    # the top layer's states, both directions in the input's order, are the output exactly
    h = np.concatenate([tr["l1"]["h"], tr["l1_reverse"]["h"]], -1)
    assert np.array_equal(h * mask[..., None], out)
    # every direction's state at each record's last valid step is the final state exactly
    last = mask.sum(1) - 1
    for i, key in enumerate(["l0", "l0_reverse", "l1", "l1_reverse"]):
        t_end = last if not key.endswith("reverse") else np.zeros_like(last)
        assert np.array_equal(tr[key]["h"][np.arange(3), t_end], state["h"][i])
        if cls is LSTM:
            assert np.array_equal(tr[key]["c"][np.arange(3), t_end], state["c"][i])


def _gates_by_hand(layer, X, tr, key="l0"):
    """Recompute one direction's gates from its inputs and its traced previous state."""
    p = layer.params[key]
    H = layer.hidden_size
    h_prev = np.concatenate([tr[key]["h0"][:, None], tr[key]["h"][:, :-1]], 1)
    xw = X @ p["weight_ih"].T + p["bias_ih"]
    hw = h_prev @ p["weight_hh"].T + p["bias_hh"]
    if isinstance(layer, LSTM):
        z = xw + hw
        return {"i": _sigmoid(z[..., :H]), "f": _sigmoid(z[..., H:2 * H]),
                "g": np.tanh(z[..., 2 * H:3 * H]), "o": _sigmoid(z[..., 3 * H:])}
    r = _sigmoid(xw[..., :H] + hw[..., :H])
    return {"r": r, "z": _sigmoid(xw[..., H:2 * H] + hw[..., H:2 * H]),
            "n": np.tanh(xw[..., 2 * H:] + r * hw[..., 2 * H:])}


@pytest.mark.parametrize("cls", [LSTM, GRU])
def test_gate_traces_match_the_cell_equations(cls):
    X, _, _ = _data(pad=False)
    layer = cls(3, 4, dtype="float64", seed=2)
    tr = traces(layer, X)
    for g, v in _gates_by_hand(layer, X, tr).items():
        np.testing.assert_allclose(tr["l0"][g], v, rtol=0, atol=1e-13)
    if cls is LSTM:  # h = o * tanh(c) and c = f c_prev + i g, from the traced values
        d = tr["l0"]
        c_prev = np.concatenate([d["c0"][:, None], d["c"][:, :-1]], 1)
        np.testing.assert_allclose(d["h"], d["o"] * np.tanh(d["c"]), atol=1e-14)
        np.testing.assert_allclose(d["c"], d["f"] * c_prev + d["i"] * d["g"], atol=1e-14)


def test_trace_of_one_record_and_of_a_sequential():
    model = Sequential(Embedding(10, 3, seed=0), LSTM(3, 5, seed=0), Dense(5, 2, seed=0))
    rec = np.array([1, 4, 2, 7])
    tr = traces(model, rec)
    assert list(tr) == ["1/l0"]
    assert tr["1/l0"]["h"].shape == (1, 4, 5) and tr["1/l0"]["f"].shape == (1, 4, 5)
    with pytest.raises(ValueError, match="no recurrent layer"):
        traces(Dense(3, 2), np.zeros((1, 3, 3), np.float32))


def test_saturation_counts_gates_at_their_rails():
    X, mask, _ = _data()
    layer = LSTM(3, 4, dtype="float64", seed=0)
    p = layer.params["l0"]
    H = 4
    b = np.zeros(16)
    b[H:2 * H] = 50.0          # forget gate pinned open
    b[:H] = -50.0              # input gate pinned shut
    layer.params = {"l0": {**p, "bias_ih": b}}
    s = saturation(layer, [(X, mask), (X[:1], None)])["l0"]
    assert s["f"]["high"] == 1.0 and s["f"]["low"] == 0.0
    assert s["i"]["low"] == 1.0 and s["i"]["saturated"] == 1.0
    assert s["f"]["count"] == (mask.sum() + 6) * H  # padded steps are left out
    assert 0 <= s["o"]["saturated"] < 1
    # negative control: no weights, all gates at 0.5, nothing saturated
    layer.params = {"l0": {k: np.zeros_like(v) for k, v in p.items()}}
    s0 = saturation(layer, X, mask)["l0"]
    assert all(v["saturated"] == 0.0 for v in s0.values())
    np.testing.assert_allclose(s0["f"]["mean"], 0.5)


# --------------------------------------------------------------------------- gradient flow

class _Recording:
    """A cell that records the state gradient the BPTT loop hands to each step."""

    def __init__(self, cell):
        self._inner, self.seen = cell, []

    def compiles(self):
        return False  # Python must see every step: the readable loop, not the compiled one

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def step_back(self, p, cache, prev, new, dnew, xp):
        self.seen.append(tuple(np.array(d) for d in dnew))
        return self._inner.step_back(p, cache, prev, new, dnew, xp)


def _loop_dstate(layer, X, mask, R):
    """Run the layer's own backward with a recording cell: the loop's dh_t per step."""
    rec = _Recording(layer._cell)
    layer._cell = rec
    try:
        _out, _, cache = layer.forward(X, mask=mask, training=True)
        rec.seen.clear()  # only what the backward hands to each step
        layer.backward(cache, R * mask[..., None] if mask is not None else R)
    finally:
        layer._cell = rec._inner
    T = X.shape[1]
    assert len(rec.seen) == T  # one step_back per step, last step first
    return [np.stack([rec.seen[T - 1 - t][k] for t in range(T)], 1)
            for k in range(len(rec.seen[0]))]


@pytest.mark.parametrize("cls,truncate", [(LSTM, None), (Elman, None), (GRU, 3)])
def test_dh_is_exactly_what_bptt_carries(cls, truncate):
    X, mask, rng = _data(T=7)
    layer = cls(3, 4, dtype="float64", seed=3, truncate=truncate)
    R = rng.standard_normal((3, 7, 4))
    with backend("reference"):  # the loop whose every step Python sees, bit for bit
        flow = gradient_flow(layer, X, None, WeightedSum(R), mask=mask)
    loop = _loop_dstate(layer, X, mask, R)
    for k, name in enumerate(["h", "c"][:len(loop)]):
        ours = flow.dstate["l0"][name] * mask[..., None]  # the loop hands masked dh to a step
        assert np.array_equal(ours, loop[k]), name
    np.testing.assert_array_equal(flow.norms["l0"], np.linalg.norm(flow.dstate["l0"]["h"],
                                                                   axis=-1))
    # d_state0 is the backward's gradient w.r.t. the initial state, bit for bit
    with backend("reference"):
        _, _, cache = layer.forward(X, mask=mask, training=True)
        _, _, d0 = layer.backward(cache, R * mask[..., None])
    assert np.array_equal(flow.d_state0["l0"][0], d0["h"][0])


def test_dh_matches_finite_differences():
    """∂L/∂h_t by perturbing the state after step t and running the rest of the record."""
    X, _, rng = _data(B=2, T=5, pad=False)
    layer = LSTM(3, 3, dtype="float64", seed=4)
    R = rng.standard_normal((2, 5, 3))
    flow = gradient_flow(layer, X, None, WeightedSum(R))
    _, _, cache = layer.forward(X)
    tp = cache["tapes"]["l0"]
    p, cell, Xt = layer._prepared("l0", np), layer._cell, tp.X

    def loss_from(t, h, c):  # L as a function of the state after step t (t = 0..T-1)
        L = float(np.sum(h * R[:, t]))
        if t + 1 < 5:
            rest = unroll.forward(cell, p, Xt[t + 1:], (h, c), np)
            L += float(np.sum(rest.states[0][1:].transpose(1, 0, 2) * R[:, t + 1:]))
        return L

    eps = 1e-6
    for t in range(5):
        h, c = tp.states[0][t + 1].copy(), tp.states[1][t + 1].copy()
        for name, s in (("h", h), ("c", c)):
            num = np.zeros_like(s)
            for idx in np.ndindex(*s.shape):
                old = s[idx]
                s[idx] = old + eps
                up = loss_from(t, h, c)
                s[idx] = old - eps
                down = loss_from(t, h, c)
                s[idx] = old
                num[idx] = (up - down) / (2 * eps)
            np.testing.assert_allclose(flow.dstate["l0"][name][:, t], num, atol=1e-8)


def test_shares_sum_to_the_full_gradient():
    from unrolled import value_and_grad

    X, mask, rng = _data(T=6)
    model = Sequential(LSTM(3, 4, num_layers=2, bidirectional=True, dtype="float64", seed=5),
                       Dense(8, 2, dtype="float64", seed=5))
    Y = rng.standard_normal((3, 6, 2))
    flow = gradient_flow(model, X, Y, "mse", mask=mask, keep_shares=True)
    value, grads = value_and_grad(model, "mse", X, Y, mask=mask)
    assert flow.loss == pytest.approx(value, rel=1e-14)
    for key, shares in flow.shares.items():
        name = key.split("/")[1]
        for pname, v in shares.items():
            full = grads["0"][name][pname]
            assert v.shape == (6,) + full.shape
            np.testing.assert_allclose(v.sum(0), full, rtol=1e-12, atol=1e-15)
            np.testing.assert_allclose(flow.share_norms[key][pname],
                                       np.linalg.norm(v.reshape(6, -1), axis=1))
    light = gradient_flow(model, X, Y, "mse", mask=mask)  # norms only, no T copies
    assert all(v is None for v in light.shares.values())
    for key, norms in light.share_norms.items():
        for pname, v in norms.items():
            np.testing.assert_allclose(v, flow.share_norms[key][pname], rtol=1e-12)
    # negative control: with truncation the steps outside the window get no share
    layer = Elman(3, 4, dtype="float64", seed=6, truncate=2)
    f2 = gradient_flow(layer, X[:1], None, WeightedSum(rng.standard_normal((1, 6, 4))),
                       keep_shares=True)
    w = f2.shares["l0"]["weight_hh"]
    assert np.all(w[:4] == 0) and np.all(np.abs(w[4:]).sum((1, 2)) > 0)


@pytest.mark.parametrize("cls", [Elman, LSTM, GRU])
def test_jacobian_singular_values_match_finite_differences(cls):
    X, mask, _ = _data(B=2, T=5)
    layer = cls(3, 3, dtype="float64", seed=7)
    rec = 1  # padded after step 4: the Jacobian across a padded step is the identity
    jac = state_jacobians(layer, X, mask=mask, record=rec)
    _, _, cache = layer.forward(X, mask=mask)
    tp = cache["tapes"]["l0"]
    p, cell = layer._prepared("l0", np), layer._cell
    T, nS = 5, len(tp.states)
    sizes = [s.shape[-1] for s in tp.states]

    def final(t, s_flat):  # the state after step T as a function of the state after step t
        parts = np.split(s_flat, np.cumsum(sizes)[:-1])
        state = tuple(a[None].copy() for a in parts)
        if t == T:
            return np.concatenate([s[0] for s in state])
        m = None if tp.mask is None else tp.mask[t:, rec:rec + 1]
        run = unroll.forward(cell, p, tp.X[t:, rec:rec + 1], state, np, m)
        return np.concatenate([s[-1, 0] for s in run.states])

    eps = 1e-6
    for t in range(T + 1):
        s = np.concatenate([tp.states[k][t, rec] for k in range(nS)])
        J = np.stack([(final(t, s + eps * e) - final(t, s - eps * e)) / (2 * eps)
                      for e in np.eye(s.size)], 1)
        np.testing.assert_allclose(jac["jacobians"][t], J, atol=1e-8)
        np.testing.assert_allclose(jac["singular_values"][t], np.linalg.svd(J, compute_uv=False),
                                   atol=1e-8)
    np.testing.assert_allclose(jac["singular_values"][-1], 1.0)  # ∂s_T/∂s_T = I
    np.testing.assert_allclose(jac["jacobians"][4], np.eye(sum(sizes)), atol=1e-15)  # padded
    if cls is LSTM:
        jh = state_jacobians(layer, X, mask=mask, record=rec, part="h")
        np.testing.assert_allclose(jh["jacobians"], jac["jacobians"][:, :3, :3])


# --------------------------------------------------------------------------- monitor

def test_monitor_warns_when_the_gradient_vanishes_or_explodes():
    rng = np.random.default_rng(0)
    layer = Elman(2, 8, dtype="float64", seed=0, return_sequences=False)
    model = Sequential(layer, Dense(8, 1, dtype="float64", seed=0))
    X, Y = rng.standard_normal((4, 40, 2)), rng.standard_normal((4, 1))
    mon = cb_mod.GradientMonitor(vanish=1e-4, explode=1e3)
    p = layer.params["l0"]
    layer.params = {"l0": {**p, "weight_hh": p["weight_hh"] * 0.2}}
    with pytest.warns(cb_mod.GradientWarning, match=r"vanishing gradient in layer 0/l0 .*time step"):
        ev = mon.record(model, X, Y, loss="mse", step=7)
    assert ev and ev[0][:3] == (7, "0/l0", "vanish")
    # a relu network whose recurrent matrix is 1.5 I: the gradient grows 1.5x per step back
    relu = Elman(2, 8, nonlinearity="relu", dtype="float64", seed=0, return_sequences=False)
    q = relu.params["l0"]
    relu.params = {"l0": {**q, "weight_hh": 1.5 * np.eye(8), "weight_ih": np.abs(q["weight_ih"])}}
    boom = Sequential(relu, Dense(8, 1, dtype="float64", seed=0))
    with pytest.warns(cb_mod.GradientWarning, match="exploding gradient in layer 0/l0"):
        ev = mon.record(boom, np.abs(X), Y, loss="mse", step=8)
    assert [e[2] for e in ev] == ["explode"]
    # negative control: a short record of a healthy LSTM warns of nothing
    ok = Sequential(LSTM(2, 8, dtype="float64", seed=0, return_sequences=False),
                    Dense(8, 1, dtype="float64", seed=0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert mon.record(ok, X[:, :5], Y, loss="mse", step=9) == []
    steps, curves = mon.norms("0/l0")
    assert list(steps) == [7, 8, 9] and curves[0].shape == (40,) and curves[2].shape == (5,)


def _tiny_names_task(path):
    from unrolled.config import TRAIN_DEFAULTS
    from unrolled.tasks.names import NamesTask

    rng = np.random.default_rng(0)
    path.mkdir()
    for lang, letters in (("Aa", "aeiou"), ("Bb", "bcdfg"), ("Cc", "klmnp")):
        names = {"".join(rng.choice(list(letters), rng.integers(3, 8))).title()
                 for _ in range(40)}
        (path / f"{lang}.txt").write_text("\n".join(sorted(names)) + "\n")
    cfg = {**TRAIN_DEFAULTS, **NamesTask.defaults, "task": "names", "embed": 4, "hidden": 6,
           "cell": "elman", "layers": 1, "bidirectional": True, "dropout": 0.2, "epochs": 2,
           "batch_size": 16, "progress": False, "seed": 0}
    task = NamesTask(cfg)
    task.load(str(path))
    return task, cfg


def test_monitor_in_the_trainer_records_without_changing_training(tmp_path):
    train = pytest.importorskip("unrolled.train")
    task, cfg = _tiny_names_task(tmp_path / "names")
    mon = cb_mod.GradientMonitor(every=3)
    assert isinstance(mon, train.Callback)
    watched = train.Trainer(task, cfg, callbacks=[mon], log=lambda m: None)
    watched.fit()
    plain = train.Trainer(task, cfg, log=lambda m: None)
    plain.fit()
    mine = tree_flatten(watched.model.params)
    for k, v in tree_flatten(plain.model.params).items():
        assert np.array_equal(v, mine[k])  # measuring does not touch training
    keys = list(traces(watched.model, mon.probe.X, mon.probe.mask))  # 2/l0, 2/l0_reverse
    assert len(keys) == 2
    for key in keys:  # one record per layer and direction every 3 steps (dropout is on)
        assert mon.norms(key)[0].tolist() == list(range(3, watched.step + 1, 3))
    T = mon.probe.X.shape[1]
    assert all(h["norms"].shape == (T,) and np.isfinite(h["weight_norm"]) for h in mon.history)
    epoch_end = cb_mod.GradientMonitor()  # every=0: once per epoch, at its end
    train.Trainer(task, cfg, callbacks=[epoch_end], log=lambda m: None).fit()
    assert [h["step"] for h in epoch_end.history] == [watched.step // 2] * 2 + [watched.step] * 2


# --------------------------------------------------------------------------- pictures

def _check_png(path, min_px=150):
    import matplotlib.image as mpimg

    img = mpimg.imread(str(path))
    assert img.ndim == 3 and min(img.shape[:2]) >= min_px, img.shape
    flat = img[..., :3].reshape(-1, 3)
    assert flat.std(0).max() > 0.05                         # not a uniform image
    rgb = (flat * 255).astype(np.int64) @ np.array([1 << 16, 1 << 8, 1])
    assert len(np.unique(rgb)) > 20  # more than a few colours


def test_every_picture_is_a_real_image(tmp_path):
    X, mask, rng = _data()
    model = Sequential(LSTM(3, 4, bidirectional=True, seed=0), Dense(8, 2, seed=0))
    X = X.astype("float32")
    tr = traces(model, X, mask)
    flow = gradient_flow(model, X, rng.standard_normal((3, 6, 2)).astype("float32"), "mse",
                         mask=mask)
    jac = state_jacobians(model, X, mask=mask)
    mon = cb_mod.GradientMonitor()
    for s in range(3):
        mon.record(model, X, None, mask, step=s)
    pics = {"trace.png": lambda p: plot_traces(tr, p, labels=list("abcdef")),
            "trace.svg": lambda p: plot_traces(tr, p, keys=["0/l0"]),
            "sat.png": lambda p: plot_saturation(saturation(model, X, mask), p),
            "flow.png": lambda p: plot_gradient_flow({"a": flow, "b": flow}, p),
            "shares.png": lambda p: plot_shares(flow, p),
            "jac.png": lambda p: plot_jacobians(jac, p),
            "monitor.png": lambda p: mon.plot(p)}
    for name, draw in pics.items():
        draw(tmp_path / name)
        if name.endswith(".png"):
            _check_png(tmp_path / name)
        else:
            text = (tmp_path / name).read_text()
            assert "<svg" in text and text.count("<path") + text.count("<image") > 5
    # a picture of one layer of several says which
    assert "(1 of 2 layers and directions" in mon.plot().axes[0].get_title()
    with pytest.raises(ValueError, match=r"\.png or \.svg"):
        plot_traces(tr, tmp_path / "x.jpg")


# --------------------------------------------------------------------------- the report

def _saved_names_model(path):
    from unrolled import io
    from unrolled.config import TRAIN_DEFAULTS
    from unrolled.data import Vocab
    from unrolled.tasks.names import PAD, UNK, NamesTask

    cfg = {**TRAIN_DEFAULTS, **NamesTask.defaults, "task": "names", "embed": 4, "hidden": 5,
           "cell": "lstm", "layers": 1, "bidirectional": False, "dropout": 0.0, "seed": 0}
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + ["K", "D"]
    state = {"vocab": Vocab([PAD, UNK] + letters, specials=[PAD, UNK]).to_dict(),
             "classes": ["Greek", "Irish", "Russian"], "sizes": {}}
    task = NamesTask(cfg, state)
    model = task.build_model()
    io.save_model(model, path, config=cfg, task_state=task.state())
    return model, task


def test_cli_inspect_writes_the_report(tmp_path):
    from unrolled.cli import main

    model, task = _saved_names_model(tmp_path / "model")
    out = tmp_path / "report"
    assert main(["inspect", str(tmp_path / "model"), "--input", "Kozak", "--out", str(out)]) == 0
    page = (out / "index.html").read_text()
    pngs = sorted(out.glob("*.png"))
    names = {p.stem for p in pngs}
    assert {"traces", "saturation", "gradflow", "jacobians", "shares_1_l0"} <= names
    from unrolled.inspect.page import data_uri

    for p in pngs:  # every picture is inside the page, has its SVG, and is not blank
        assert f'src="{data_uri(p)}"' in page and (out / f"{p.stem}.svg").exists()
        _check_png(p, min_px=100)
    assert "Kozak" in page and "predicted" in page
    # the raw arrays are the forward pass's own values
    arrays = np.load(out / "arrays.npz")
    rec = task.encode("Kozak")
    tr = traces(model, rec)
    assert np.array_equal(arrays["trace/1/l0/h"], tr["1/l0"]["h"])
    assert np.array_equal(arrays["record"][0], rec)
    assert arrays["gradflow/1/l0/norms"].shape == (1, 5)
    assert arrays["jacobian/1/l0/singular_values"].shape == (6, 10)
    assert "the 3 largest of the 10 singular values" in page  # the part drawn, named
    # bad input names the fix
    assert main(["inspect", str(tmp_path / "model"), "--input", " ", "--out", str(out)]) == 2


def test_input_of_numbers_becomes_a_window():
    from unrolled.inspect.report import record_from_input

    class NoEncode:
        name = "series"

    model = Sequential(LSTM(2, 3, return_sequences=False, seed=0), Dense(3, 1, seed=0))
    rec, target, _, notes = record_from_input(NoEncode(), "1,2; 3,4;5, 6", model)
    assert rec.dtype == np.float32 and target is None and "3 steps" in notes[0]
    np.testing.assert_array_equal(rec, [[1, 2], [3, 4], [5, 6]])
    np.testing.assert_array_equal(record_from_input(NoEncode(), "1 2 3 4", model)[0],
                                  [[1, 2], [3, 4]])
    with pytest.raises(ValueError, match="reads 2 per step"):
        record_from_input(NoEncode(), "1,2,3;4,5,6", model)
    with pytest.raises(ValueError, match="window of numbers"):
        record_from_input(NoEncode(), "Dostoevsky", model)
