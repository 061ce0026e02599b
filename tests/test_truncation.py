"""truncate=k: the backward pass reaches back over each record's last k valid steps only."""
import numpy as np
import pytest
from helpers import rel_err

import unrolled as u


def manual_elman_truncated(params, X, R, Rh, k):
    """min-char-rnn style BPTT, written out by hand, stopping k steps back from the end."""
    Wih, Whh, bih, bhh = (params[n] for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
    B, T, _ = X.shape
    hs = {-1: np.zeros((B, Whh.shape[0]))}
    for t in range(T):
        hs[t] = np.tanh(X[:, t] @ Wih.T + bih + hs[t - 1] @ Whh.T + bhh)
    g = {n: np.zeros_like(params[n]) for n in params}
    dX = np.zeros_like(X)
    dhnext = Rh.copy()  # gradient from the final state
    for t in reversed(range(T - k, T)):
        dh = R[:, t] + dhnext
        da = (1 - hs[t] ** 2) * dh  # backprop through tanh
        g["weight_ih"] += da.T @ X[:, t]
        g["weight_hh"] += da.T @ hs[t - 1]
        g["bias_ih"] += da.sum(0)
        g["bias_hh"] += da.sum(0)
        dX[:, t] = da @ Wih
        dhnext = da @ Whh
    return g, dX


@pytest.mark.parametrize("k", [1, 2, 4])
def test_elman_truncation_equals_hand_written_reference(k):
    rng = np.random.default_rng(0)
    layer = u.Elman(3, 5, truncate=k, dtype="float64", seed=1)
    X = rng.standard_normal((2, 6, 3))
    R, Rh = rng.standard_normal((2, 6, 5)), rng.standard_normal((2, 5))
    _, _, cache = layer.forward(X, training=True)
    grads, dX, _ = layer.backward(cache, R, {"h": Rh[None]})
    ref, ref_dX = manual_elman_truncated(layer.params["l0"], X, R, Rh, k)
    for n in ref:
        assert rel_err(grads["l0"][n], ref[n]) < 1e-12, n
    assert rel_err(dX, ref_dX) < 1e-12
    assert np.all(dX[:, : 6 - k] == 0)


@pytest.mark.parametrize("cls", [u.LSTM, u.GRU, u.Elman, u.Jordan])
def test_truncation_equals_a_detached_chunk(cls):
    """Truncated BPTT over a record == full BPTT over its last k steps started from the
    (constant) state reached before them; per record, so masks with different lengths hold."""
    rng = np.random.default_rng(2)
    k, T = 3, 7
    lengths = [7, 5, 4]
    layer = cls(3, 4, truncate=k, dtype="float64", seed=3)
    full = cls(3, 4, dtype="float64", seed=3)
    X = rng.standard_normal((3, T, 3))
    mask = np.arange(T)[None] < np.array(lengths)[:, None]
    out, _, cache = layer.forward(X, mask=mask, training=True)
    R = rng.standard_normal(out.shape)
    grads, dX, _ = layer.backward(cache, R)
    total = {n: np.zeros_like(v) for n, v in layer.params["l0"].items()}
    for b, n in enumerate(lengths):
        # state after step n-k-1, reached by the full recurrence
        _, st = full(X[b:b + 1, : n - k], return_state=True)
        s0 = {key: v for key, v in st.items()}
        o, _, c = full.forward(X[b:b + 1, n - k:n], initial_state=s0, training=True)
        g, dXb, _ = full.backward(c, R[b:b + 1, n - k:n])
        for name in total:
            total[name] += g["l0"][name]
        assert rel_err(dX[b, n - k:n], dXb[0]) < 1e-12
        assert np.all(dX[b, : n - k] == 0)
    for name in total:
        assert rel_err(grads["l0"][name], total[name]) < 1e-12, name
