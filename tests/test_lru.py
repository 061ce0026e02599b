"""The LRU layer (Orvieto et al. 2023): the complex recurrence it computes, its ring
initialisation, gradients of every parameter (ν, θ, γ, B, C, D) by finite differences and
against PyTorch's complex autograd, the derived state, and its use in models.
(The generated contract tests in test_cells_contract.py cover it as well.)"""
import numpy as np
import pytest
from helpers import check_layer_grads, rel_err

import unrolled as u
from unrolled import kernels


def reference(m, X, name="l0", h0=None):
    """y_t = Re(C h_t) + D x_t, h_t = λ h_(t−1) + γ B x_t, in complex NumPy."""
    p = m.params[name]
    N = p["nu_log"].shape[0]
    lam = np.exp(-np.exp(p["nu_log"]) + 1j * np.exp(p["theta_log"]))
    g = (np.exp(p["gamma_log"]) if "gamma_log" in p else np.sqrt(1 - np.abs(lam) ** 2))
    Bc = p["weight_ih"][:N] + 1j * p["weight_ih"][N:]
    C = p["C_re"] + 1j * p["C_im"]
    h = np.zeros((X.shape[0], N), complex) if h0 is None else h0
    ys = []
    for t in range(X.shape[1]):
        h = lam * h + g * (X[:, t] @ Bc.T)
        D = p["D"]
        ys.append((h @ C.T).real + (X[:, t] * D if D.ndim == 1 else X[:, t] @ D.T))
    return np.stack(ys, 1), h


def data(b=3, t=6, d=3, seed=0):
    return np.random.default_rng(seed).standard_normal((b, t, d))


@pytest.mark.parametrize("gamma", ["learned", "tied"])
@pytest.mark.parametrize("d, h, n", [(3, 4, 0), (4, 4, 3)])
def test_forward_is_the_complex_recurrence(gamma, d, h, n):
    m = u.LRU(d, h, state_size=n, gamma=gamma, dtype="float64", seed=1)
    X = data(d=d)
    out, st, _ = m.forward(X)
    want, hT = reference(m, X)
    assert rel_err(out, want) < 1e-13
    N = hT.shape[1]
    assert rel_err(st["h"][0], np.concatenate([hT.real, hT.imag], 1)) < 1e-13
    assert rel_err(st["h_rot"][0], np.concatenate([hT.imag, -hT.real], 1)) < 1e-13
    assert m.params["l0"]["D"].shape == ((h,) if d == h else (h, d))
    assert st["h"].shape[-1] == 2 * N


def test_ring_initialisation():
    m = u.LRU(8, 64, state_size=400, r_min=0.5, r_max=0.9, max_phase=1.0, seed=0,
              dtype="float64")
    p = m.params["l0"]
    mod = np.exp(-np.exp(p["nu_log"]))
    phase = np.exp(p["theta_log"])
    assert mod.min() >= 0.5 - 1e-12 and mod.max() <= 0.9 + 1e-12
    assert phase.min() >= 0 and phase.max() <= 1.0 + 1e-12
    # |λ|² uniform on [r_min², r_max²]: its mean is the interval's middle
    assert abs(np.mean(mod ** 2) - (0.25 + 0.81) / 2) < 0.03
    assert np.allclose(np.exp(p["gamma_log"]), np.sqrt(1 - mod ** 2))
    with pytest.raises(ValueError, match="r_min <= r_max"):
        u.LRU(2, 4, r_min=0.9, r_max=0.5)
    with pytest.raises(ValueError, match="gamma must be"):
        u.LRU(2, 4, gamma="fixed")


@pytest.mark.parametrize("gamma", ["learned", "tied"])
def test_finite_differences_every_parameter(gamma):
    """ν, θ, γ_log (or γ through ν), B, C and D (a vector: input width = output width)."""
    m = u.LRU(4, 4, state_size=3, gamma=gamma, dtype="float64", seed=2, r_min=0.4)
    check_layer_grads(m, data(d=4))


def test_finite_differences_bidirectional_folded_masked():
    m = u.LRU(3, 4, num_layers=2, bidirectional=True, return_sequences=False,
              dtype="float64", seed=3, initial_state="learned")
    mask = np.arange(6)[None, :] < np.array([6, 2, 4])[:, None]
    check_layer_grads(m, data(), mask=mask)


@pytest.mark.parametrize("key", ["nu_log", "theta_log", "gamma_log", "C_im", "D"])
def test_finite_differences_negative_control(key):
    def wrong(grads):
        g = grads["l0"][key]
        g.flat[0] += 1e-3 * (1 + abs(g.flat[0]))
    m = u.LRU(3, 4, dtype="float64", seed=4)
    with pytest.raises(AssertionError, match=key):
        check_layer_grads(m, data(), wrong=wrong, check_input=False)


def test_gradients_equal_torch_complex_autograd():
    torch = pytest.importorskip("torch")
    m = u.LRU(3, 5, state_size=4, dtype="float64", seed=5)
    X = data(d=3, t=7)
    out, st, cache = m.forward(X, training=True)
    R = np.random.default_rng(6).standard_normal(out.shape)
    g, dX, _ = m.backward(cache, R)
    tp = {k: torch.tensor(v, requires_grad=True) for k, v in m.params["l0"].items()}
    tX = torch.tensor(X, requires_grad=True)
    N = 4
    lam = torch.exp(-torch.exp(tp["nu_log"]) + 1j * torch.exp(tp["theta_log"]))
    Bn = (tp["weight_ih"][:N] + 1j * tp["weight_ih"][N:]) * torch.exp(tp["gamma_log"])[:, None]
    C = tp["C_re"] + 1j * tp["C_im"]
    h = torch.zeros((3, N), dtype=torch.complex128)
    ys = []
    for t in range(7):
        h = lam * h + tX[:, t].to(torch.complex128) @ Bn.T
        ys.append((h @ C.T).real + tX[:, t] @ tp["D"].T)
    loss = (torch.stack(ys, 1) * torch.tensor(R)).sum()
    loss.backward()
    assert rel_err(out, torch.stack(ys, 1).detach().numpy()) < 1e-13
    for k, v in tp.items():
        assert rel_err(g["l0"][k], v.grad.numpy()) < 1e-11, k
    assert rel_err(dX, tX.grad.numpy()) < 1e-11


@pytest.mark.skipif(not kernels.numba_available(), reason="no numba")
@pytest.mark.parametrize("dtype, tol", [("float64", 1e-12), ("float32", 1e-5)])
def test_compiled_equals_readable_other_sizes(dtype, tol):
    m = u.LRU(5, 5, state_size=3, gamma="tied", dtype=dtype, seed=7, num_layers=2)
    X = data(d=5).astype(dtype)
    mask = np.arange(6)[None, :] >= 6 - np.array([6, 3, 1])[:, None]
    res = {}
    for be in ("reference", "numba"):
        with kernels.backend(be):
            out, st, c = m.forward(X, mask=mask, training=True)
            g, dX, _ = m.backward(c, np.ones_like(out))
        res[be] = [out, dX] + [g[n][k] for n in g for k in sorted(g[n])]
    for a, b in zip(res["numba"], res["reference"]):
        assert rel_err(a, b) < tol


def test_initial_state_h_rot_is_derived():
    m = u.LRU(3, 4, dtype="float64", seed=8)
    X = data()
    h0 = np.random.default_rng(9).standard_normal((1, 3, 4))
    a, st, _ = m.forward(X, initial_state={"h": h0})
    b, _, _ = m.forward(X, initial_state={"h": h0, "h_rot": np.zeros_like(h0)})
    assert np.array_equal(a, b)
    want, _ = reference(m, X, h0=h0[0, :, :2] + 1j * h0[0, :, 2:])
    assert rel_err(a, want) < 1e-13
    # the initial state's gradient through both of the loop's copies
    check_layer_grads(m, X, initial_state={"h": h0})


def test_in_a_model_saved_and_loaded(tmp_path):
    from unrolled.tasks.text import build_char_model

    model = build_char_model(11, 8, 6, num_layers=2, cell="lru", seed=0)
    ids = np.random.default_rng(0).integers(0, 11, (2, 9))
    u.save_model(model, tmp_path / "m.npz")
    m2, _ = u.load_model(tmp_path / "m.npz")
    assert np.array_equal(model(ids), m2(ids))
    assert "lru" in u.explain(model.layers[1], batch=2, steps=9)


def test_inspect_traces_and_gradient_flow():
    """unrolled.inspect reads the loop's state: h = [Re h, Im h] at every step."""
    from unrolled import inspect as ins

    lru = u.LRU(3, 6, seed=0, dtype="float64")
    model = u.Sequential(lru, u.Dense(6, 2, seed=1, dtype="float64"))
    X = data()
    tr = ins.traces(model, X)["0/l0"]
    for t in range(1, X.shape[1] + 1):
        _, ht = reference(lru, X[:, :t])
        assert rel_err(tr["h"][:, t - 1], np.concatenate([ht.real, ht.imag], 1)) < 1e-13
    assert ins.describe(model).cell == "lru"
    gf = ins.gradient_flow(model, X, np.ones((3, 6, 2)), loss="mse")
    d = gf.dstate["0/l0"]["h"]
    assert d.shape == (3, 6, 6) and np.isfinite(d).all() and np.abs(d).max() > 0
