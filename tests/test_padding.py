"""A padded, masked batch gives exactly the per-record results, padded left or right."""
import numpy as np
import pytest
from helpers import rel_err

import unrolled as u

LENGTHS = [6, 2, 4, 1]


def build(cls, **kw):
    extra = {"output_size": 3} if cls is u.Jordan else {}
    return cls(3, 4, dtype="float64", seed=7, **extra, **kw)


@pytest.mark.parametrize("cls", [u.Elman, u.LSTM, u.GRU, u.Jordan])
@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_padded_batch_equals_per_record(cls, side, bidirectional):
    rng = np.random.default_rng(0)
    layer = build(cls, num_layers=2, bidirectional=bidirectional)
    T = max(LENGTHS)
    records = [rng.standard_normal((n, 3)) for n in LENGTHS]
    X = rng.standard_normal((len(records), T, 3)) * 100  # garbage in the pads
    mask = np.zeros((len(records), T), bool)
    for b, r in enumerate(records):
        sl = slice(0, len(r)) if side == "right" else slice(T - len(r), T)
        X[b, sl], mask[b, sl] = r, True
    out, state, cache = layer.forward(X, mask=mask, training=True)
    R = rng.standard_normal(out.shape)
    Rh = {k: rng.standard_normal(v.shape) for k, v in state.items()}
    grads, dX, _ = layer.backward(cache, R, Rh)
    assert np.all(out[~mask] == 0) and np.all(dX[~mask] == 0)
    total = None
    for b, r in enumerate(records):
        sl = slice(0, len(r)) if side == "right" else slice(T - len(r), T)
        o, st, c = layer.forward(r[None], training=True)
        assert rel_err(out[b, sl], o[0]) < 1e-12
        for k in st:
            assert rel_err(state[k][:, b], st[k][:, 0]) < 1e-12
        g, dXb, _ = layer.backward(c, R[b:b + 1, sl], {k: v[:, b:b + 1] for k, v in Rh.items()})
        assert rel_err(dX[b, sl], dXb[0]) < 1e-12
        total = g if total is None else {n: {k: total[n][k] + g[n][k] for k in g[n]} for n in g}
    for n in total:
        for k in total[n]:
            assert rel_err(grads[n][k], total[n][k]) < 1e-12, (n, k)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_fold_equals_last_valid_step(bidirectional):
    rng = np.random.default_rng(1)
    seq = build(u.GRU, bidirectional=bidirectional)
    fold = build(u.GRU, bidirectional=bidirectional, return_sequences=False)
    X = rng.standard_normal((4, 6, 3))
    mask = np.arange(6)[None] < np.array(LENGTHS)[:, None]
    ys, st = seq(X, mask=mask, return_state=True)
    yf = fold(X, mask=mask)
    H = 4
    for b, n in enumerate(LENGTHS):
        assert np.allclose(yf[b, :H], ys[b, n - 1, :H])
        if bidirectional:  # the backward direction ends at the record's first step
            assert np.allclose(yf[b, H:], ys[b, 0, H:])
    assert np.allclose(yf, np.concatenate(list(st["h"][-1 - bidirectional:]), -1))
