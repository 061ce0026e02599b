"""RTRL's accumulated gradient equals BPTT's; UORO is an unbiased estimate of it."""
import numpy as np
import pytest
from helpers import rel_err

import unrolled as u
from unrolled.online import RTRL, UORO

CELLS = [(u.Elman, {}), (u.LSTM, {}), (u.GRU, {}), (u.GRU, {"reset_after": False}),
         (u.Jordan, {}), (u.Elman, {"nonlinearity": "relu"})]


def _bptt(layer, X, R):
    _, _, cache = layer.forward(X, training=True)
    grads, _, _ = layer.backward(cache, R)
    return grads["l0"]


@pytest.mark.parametrize("cls,kw", CELLS)
def test_rtrl_accumulated_gradient_equals_bptt(cls, kw):
    rng = np.random.default_rng(0)
    B, T = 2, 7
    layer = cls(3, 4, dtype="float64", seed=1, **kw)
    X = rng.standard_normal((B, T, 3))
    R = rng.standard_normal((B, T, layer.output_size))  # loss = sum(outputs * R)
    ref = _bptt(layer, X, R)
    rtrl = RTRL(layer, batch_size=B)
    total = None
    for t in range(T):
        h = rtrl.step(X[:, t])
        g = rtrl.grad(R[:, t])["l0"]
        total = g if total is None else {k: total[k] + g[k] for k in g}
    out = layer(X)
    assert rel_err(h, out[:, -1]) < 1e-14  # the same forward
    for k in ref:
        assert rel_err(total[k], ref[k]) < 1e-11, k


def test_rtrl_state_gradient_and_a_wrong_influence_fails():
    rng = np.random.default_rng(1)
    layer = u.LSTM(2, 3, dtype="float64", seed=0, return_sequences=False)
    X = rng.standard_normal((2, 6, 2))
    Rh, Rc = rng.standard_normal((2, 3)), rng.standard_normal((2, 3))
    _, _, cache = layer.forward(X, training=True)
    ref, _, _ = layer.backward(cache, Rh, {"c": Rc[None]})
    rtrl = RTRL(layer, 2)
    for t in range(6):
        rtrl.step(X[:, t])
    g = rtrl.grad(Rh, (np.zeros((2, 3)), Rc))["l0"]
    for k in ref["l0"]:
        assert rel_err(g[k], ref["l0"][k]) < 1e-11, k
    rtrl.M[:, :, :5] *= 1.01  # a perturbed influence matrix must not pass
    bad = rtrl.grad(Rh, (np.zeros((2, 3)), Rc))["l0"]
    assert rel_err(bad["weight_ih"], ref["l0"]["weight_ih"]) > 1e-4


def _uoro_estimate(layer, X, R, seed):
    uoro = UORO(layer, batch_size=X.shape[0], seed=seed)
    total = None
    for t in range(X.shape[1]):
        uoro.step(X[:, t])
        g = uoro.grad(R[:, t])["l0"]
        total = g if total is None else {k: total[k] + g[k] for k in g}
    return np.concatenate([total[k].ravel() for k in sorted(total)])


def test_uoro_is_unbiased():
    """The mean of many UORO estimates converges to BPTT's gradient; one alone is noisy."""
    rng = np.random.default_rng(2)
    layer = u.GRU(2, 3, dtype="float64", seed=0)
    X, R = rng.standard_normal((1, 6, 2)), rng.standard_normal((1, 6, 3))
    ref = _bptt(layer, X, R)
    g = np.concatenate([ref[k].ravel() for k in sorted(ref)])
    est = np.stack([_uoro_estimate(layer, X, R, s) for s in range(300)])
    single = np.mean(np.linalg.norm(est - g, axis=1)) / np.linalg.norm(g)
    mean = np.linalg.norm(est.mean(0) - g) / np.linalg.norm(g)
    assert single > 0.2        # a single estimate is far from exact ...
    assert mean < single / 6   # ... the average of 300 is close (1/sqrt(300) ~ 1/17)


def test_uoro_tangent_product_matches_the_jacobian():
    rng = np.random.default_rng(3)
    layer = u.LSTM(2, 3, dtype="float64", seed=0)
    rtrl, uoro = RTRL(layer, 2), UORO(layer, 2, seed=0)
    x = rng.standard_normal((2, 2))
    uoro.state = tuple(rng.standard_normal((2, 3)) for _ in range(2))
    rtrl.state = uoro.state
    p, prev, new, cache, x = rtrl._step(x)
    rows = np.repeat(np.arange(2), 6)
    J, _ = rtrl._vjp(p, prev, new, cache, x, np.tile(np.eye(6), (2, 1)), rows)
    v = rng.standard_normal((2, 6))
    Jv = np.einsum("bij,bj->bi", J.reshape(2, 6, 6), v)
    assert rel_err(uoro._tangent(p, x, prev, v), Jv) < 1e-8


def test_online_learners_refuse_stacks_and_bad_inputs():
    with pytest.raises(ValueError, match="num_layers=1"):
        RTRL(u.LSTM(2, 3, num_layers=2))
    with pytest.raises(TypeError, match="recurrent layer"):
        UORO(u.Dense(2, 3))
    rtrl = RTRL(u.Elman(2, 3), batch_size=2)
    with pytest.raises(ValueError, match=r"\(2, 2\)"):
        rtrl.step(np.zeros((1, 2)))


def test_example_learns_the_echo_online():
    """examples/online_stream.py: RTRL learns a delayed echo from one stream, 500 steps."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parents[1] / "examples"))
    try:
        import online_stream
    finally:
        sys.path.pop(0)
    loss, accuracy = online_stream.main(["--steps", "500"])
    assert loss < 0.3 and accuracy > 0.85  # chance: loss ln 2, accuracy 0.5
