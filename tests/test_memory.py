"""memory=: checkpointed BPTT equals full BPTT; the planner predicts the measured peak."""
import tracemalloc

import numpy as np
import pytest
from helpers import rel_err

import unrolled as u
from unrolled import memory as mem

CELLS = [(u.LSTM, {}), (u.GRU, {}), (u.GRU, {"reset_after": False}), (u.Elman, {}),
         (u.Jordan, {})]


def _update(layer, X, R, mask=None, s0=None, Rs=None):
    out, state, cache = layer.forward(X, mask=mask, initial_state=s0, training=True)
    grads, dX, d0 = layer.backward(cache, R, Rs)
    return out, state, grads, dX, d0


def _pair(cls, kw, **more):
    full = cls(3, 5, dtype="float64", seed=4, **kw, **more)
    ckpt = cls(3, 5, dtype="float64", seed=4, memory="checkpoint", **kw, **more)
    return full, ckpt


@pytest.mark.parametrize("cls,kw", CELLS)
@pytest.mark.parametrize("rs", [True, False])
def test_checkpointed_gradients_equal_full_bptt(cls, kw, rs):
    rng = np.random.default_rng(0)
    B, T = 3, 23  # 23 steps: segments of unequal length
    full, ckpt = _pair(cls, kw, return_sequences=rs, num_layers=2, bidirectional=True)
    X = rng.standard_normal((B, T, 3))
    mask = np.arange(T)[None] < np.array([23, 17, 9])[:, None]
    S = full.state_sizes
    s0 = {k: rng.standard_normal((4, B, s)) for k, s in zip(("h", "c"), S)}
    Rs = {k: rng.standard_normal((4, B, s)) for k, s in zip(("h", "c"), S)}
    out_f = full.forward(X, mask=mask, initial_state=s0)[0]
    R = rng.standard_normal(out_f.shape)
    a = _update(full, X, R, mask, s0, Rs)
    b = _update(ckpt, X, R, mask, s0, Rs)
    assert rel_err(a[0], b[0]) < 1e-14  # outputs
    for k in a[1]:
        assert rel_err(a[1][k], b[1][k]) < 1e-14  # final states
    for n in a[2]:
        for key in a[2][n]:
            assert rel_err(a[2][n][key], b[2][n][key]) < 1e-12, (n, key)
    assert rel_err(a[3], b[3]) < 1e-12  # dX
    for k in a[4]:
        assert rel_err(a[4][k], b[4][k]) < 1e-12  # d initial state


@pytest.mark.parametrize("segment", [1, 4, 7, 40])
def test_every_segment_length_gives_the_same_gradient(segment):
    rng = np.random.default_rng(1)
    layer = u.LSTM(2, 4, dtype="float64", seed=0, return_sequences=False)
    X = rng.standard_normal((2, 40, 2))
    R = rng.standard_normal((2, 4))
    _, _, g_full, dX_full, _ = _update(layer, X, R)
    p = layer._prepared("l0", np)
    Xt = X.transpose(1, 0, 2).copy()
    s0 = (np.zeros((2, 4)), np.zeros((2, 4)))
    loop = mem.Checkpointed(segment, keep_outputs=False)
    tp = loop.forward(layer._cell, p, Xt, s0, np)
    assert len(tp.checkpoints) == -(-40 // segment)
    g, dX, _ = loop.backward(layer._cell, p, tp, np, None, (R, None))
    for key in g_full["l0"]:
        assert rel_err(g[key], g_full["l0"][key]) < 1e-12, key
    assert rel_err(dX.transpose(1, 0, 2), dX_full) < 1e-12
    # a wrong checkpoint must change the gradient (the test can fail)
    tp.checkpoints[-1] = tuple(c + 0.1 for c in tp.checkpoints[-1])
    g_bad, _, _ = loop.backward(layer._cell, p, tp, np, None, (R, None))
    assert rel_err(g_bad["weight_hh"], g_full["l0"]["weight_hh"]) > 1e-9


@pytest.mark.parametrize("cls,kw", CELLS[:2])
def test_checkpointed_truncation_equals_full_truncation(cls, kw):
    rng = np.random.default_rng(2)
    full, ckpt = _pair(cls, kw, truncate=4)
    X = rng.standard_normal((3, 30, 3))
    mask = np.arange(30)[None] < np.array([30, 20, 12])[:, None]
    R = rng.standard_normal((3, 30, 5))
    a, b = _update(full, X, R, mask), _update(ckpt, X, R, mask)
    for key in a[2]["l0"]:
        assert rel_err(a[2]["l0"][key], b[2]["l0"][key]) < 1e-12, key
    assert rel_err(a[3], b[3]) < 1e-12
    assert np.all(b[3][0, :26] == 0)  # nothing reaches before the window


def _measured_peak(layer, B, T, D):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((B, T, D)).astype(layer.dtype)
    # compile / warm up first, on the same paths (a contiguous batch, as X is)
    out, _, cache = layer.forward(np.ascontiguousarray(X[:, :3]), training=True)
    layer.backward(cache, np.ones_like(out))
    d_out = np.ones((B, T, layer.output_size) if layer.return_sequences
                    else (B, layer.output_size), layer.dtype)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        out, _, cache = layer.forward(X, training=True)
        layer.backward(cache, d_out)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return peak - base


@pytest.mark.parametrize("cls", [u.LSTM, u.GRU])
@pytest.mark.parametrize("memory", ["full", "checkpoint"])
@pytest.mark.parametrize("rs", [False, True])
def test_planner_predicts_the_measured_peak(cls, memory, rs):
    layer = cls(8, 32, return_sequences=rs, memory=memory, seed=0)
    B, T = 16, 1000
    measured = _measured_peak(layer, B, T, 8)
    planned = mem.plan_memory(layer, B, T).bytes
    assert 0.8 < planned / measured < 1.2, (planned, measured)


def test_checkpointed_peak_is_a_small_fraction_of_full():
    B, T = 8, 1200
    full = _measured_peak(u.LSTM(4, 32, return_sequences=False, seed=0), B, T, 4)
    ckpt = _measured_peak(u.LSTM(4, 32, return_sequences=False, seed=0, memory="checkpoint"),
                          B, T, 4)
    assert ckpt < 0.1 * full, (ckpt, full)


def test_full_bptt_is_refused_when_it_would_not_fit():
    layer = u.LSTM(4, 16, return_sequences=False, seed=0)
    X = np.zeros((4, 500, 4), np.float32)
    plan = mem.plan_memory(layer, 4, 500)
    mem.set_max_bytes(plan.bytes // 2)
    try:
        with pytest.raises(mem.MemoryPlanError, match="memory='checkpoint'") as e:
            layer.forward(X, training=True)
        assert "MiB" in str(e.value) or "KiB" in str(e.value)
        layer(X)  # inference keeps no tape: allowed
        ok = u.LSTM(4, 16, return_sequences=False, seed=0, memory="checkpoint")
        out, _, cache = ok.forward(X, training=True)
        ok.backward(cache, np.ones_like(out))
    finally:
        mem.set_max_bytes(None)
    layer.forward(X, training=True)  # the ceiling is lifted again


def test_byte_budget_picks_full_or_checkpoints():
    layer = u.LSTM(3, 8, return_sequences=False)
    full = mem.plan_memory(layer, 4, 400, "full").bytes
    assert mem.plan_memory(layer, 4, 400, 2 * full).mode == "full"
    tight = mem.plan_memory(layer, 4, 400, "checkpoint").bytes
    plan = mem.plan_memory(layer, 4, 400, (tight + full) // 2)
    assert plan.mode == "checkpoint" and plan.bytes <= (tight + full) // 2
    assert plan.segment > mem.plan_memory(layer, 4, 400, "checkpoint").segment
    small = u.LSTM(3, 8, return_sequences=False, memory=tight // 2)
    with pytest.raises(mem.MemoryPlanError, match="budget"):
        small.forward(np.zeros((4, 400, 3), np.float32), training=True)


def test_planner_accepts_configs_and_sequentials():
    cfg = {"cell": "lstm", "input_size": 32, "hidden_size": 256, "return_sequences": False}
    plan = mem.plan_memory(cfg, 32, 10_000)
    ck = mem.plan_memory(cfg, 32, 10_000, "checkpoint")
    assert ck.bytes < 0.05 * plan.bytes and "checkpoint every" in str(ck)
    model = u.Sequential(u.LSTM(3, 8), u.Dense(8, 2))
    assert mem.plan_memory(model, 2, 50).bytes == mem.plan_memory(model.layers[0], 2, 50).bytes


@pytest.mark.parametrize("bad", ["half", 0, -5, 1.5, True])
def test_bad_memory_option_is_rejected(bad):
    with pytest.raises(ValueError, match="memory must be"):
        u.LSTM(3, 4, memory=bad)


def test_checkpointed_inference_equals_full():
    rng = np.random.default_rng(4)
    X = rng.standard_normal((2, 30, 3))
    a = u.GRU(3, 4, dtype="float64", seed=0)
    b = u.GRU(3, 4, dtype="float64", seed=0, memory="checkpoint")
    assert np.array_equal(a(X), b(X))
