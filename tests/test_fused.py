"""The compiled parts of a training step outside the recurrent loop (unrolled.fused):
the embedding's scatter, Dense over a sequence in its memory order, the fused softmax
cross-entropy, gradient-norm clipping; each against the readable code, finite
differences or PyTorch."""
import numpy as np
import pytest

import unrolled as u
from helpers import numeric_grads, rel_err
from unrolled import fused
from unrolled.settings import settings

needs_numba = pytest.mark.skipif(not fused.use_compiled(np), reason="numba is not installed")


def both_backends(fn):
    """fn() under the readable code and under the compiled loops."""
    with settings.override(backend="reference"):
        ref = fn()
    return ref, fn()


@needs_numba
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_embedding_gradient_equals_add_at_bit_for_bit(dtype):
    rng = np.random.default_rng(0)
    emb = u.Embedding(5, 3, dtype=dtype, seed=0)
    X = rng.integers(0, 5, (4, 9))  # many repeats of each symbol
    X[0, :] = 2
    mask = np.ones((4, 9), bool)
    mask[1, 6:] = False
    X[1, 7] = 77  # garbage at a padded step
    d = rng.standard_normal((4, 9, 3)).astype(dtype) * 10.0 ** rng.integers(-4, 4, (4, 9, 1))

    def grad():
        _, _, cache = emb.forward(X, mask=mask, training=True)
        return emb.backward(cache, d)[0]["weight"]

    ref, fast = both_backends(grad)
    np.testing.assert_array_equal(fast, ref)
    assert fast.dtype == dtype
    assert np.any(ref[2] != 0) and np.all(ref[4] == 0) == (not np.any((X == 4) & mask))


def time_major(a):
    """The same values as ``a`` (B, T, F), laid out time-major: a transposed (T, B, F)."""
    return np.ascontiguousarray(a.transpose(1, 0, 2)).transpose(1, 0, 2)


@pytest.mark.parametrize("masked", [False, True])
def test_dense_keeps_a_time_major_layout_and_its_results(masked):
    rng = np.random.default_rng(1)
    dense = u.Dense(6, 4, dtype="float64", seed=0)
    X = rng.standard_normal((3, 5, 6))
    mask = np.arange(5)[None, :] < np.array([5, 2, 4])[:, None] if masked else None
    R = rng.standard_normal((3, 5, 4))
    out, _, cache = dense.forward(X, mask=mask, training=True)
    g, dX, _ = dense.backward(cache, R)
    Xt = time_major(X)
    out_t, _, cache_t = dense.forward(Xt, mask=mask, training=True)
    g_t, dX_t, _ = dense.backward(cache_t, R)
    assert out_t.transpose(1, 0, 2).flags.c_contiguous  # no copy to batch-major
    assert dX_t.transpose(1, 0, 2).flags.c_contiguous
    assert out.flags.c_contiguous and dX.flags.c_contiguous
    np.testing.assert_allclose(out_t, out, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(dX_t, dX, rtol=1e-13, atol=1e-13)
    for k in g:
        np.testing.assert_allclose(g_t[k], g[k], rtol=1e-13, atol=1e-13)
    if masked:
        assert np.all(out_t[1, 2:] == 0) and np.all(dX_t[1, 2:] == 0)
    # finite differences, time-major input and a batch-major gradient of the outputs
    f = lambda: float(np.sum(dense.forward(Xt, mask=mask)[0] * R))  # noqa: E731
    num = numeric_grads(f, [dense.params["weight"], dense.params["bias"]])
    assert rel_err(g_t["weight"], num[0]) < 1e-7
    assert rel_err(g_t["bias"], num[1]) < 1e-7
    # a time-major gradient of the outputs with a batch-major input gives the same
    g2, dX2, _ = dense.backward(cache, time_major(R))
    np.testing.assert_allclose(dX2, dX, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(g2["weight"], g["weight"], rtol=1e-13, atol=1e-13)


# ------------------------------------------------------------------ cross-entropy

def ce_case(rng, dtype, shape=(4, 7, 5)):
    logits = (rng.standard_normal(shape) * 3).astype(dtype)
    targets = rng.integers(0, shape[-1], shape[:-1])
    return logits, targets


CE_CASES = [
    dict(),
    dict(masked=True),
    dict(reduction="sum", masked=True),
    dict(weight=[0.5, 2.0, 1.0, 0.0, 3.0]),
    dict(weight=[0.5, 2.0, 1.0, 0.0, 3.0], reduction="sum", masked=True),
    dict(last_step=True),
    dict(time_major=True, masked=True),
    dict(targets="uint8"),
    dict(targets="float", masked=True),
]


@needs_numba
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", CE_CASES, ids=lambda c: "-".join(map(str, c)) or "plain")
def test_fused_cross_entropy_equals_the_readable_code(case, dtype):
    rng = np.random.default_rng(3)
    logits, targets = ce_case(rng, dtype, (4, 5) if case.get("last_step") else (4, 7, 5))
    mask = None
    if case.get("masked"):
        mask = np.arange(7)[None, :] < np.array([7, 2, 5, 1])[:, None]
        logits[1, 3] = np.nan  # garbage at padded steps is never read
        targets[1, 4] = -1
    if case.get("time_major"):
        logits = np.ascontiguousarray(logits.transpose(1, 0, 2)).transpose(1, 0, 2)
    if case.get("targets") == "uint8":
        targets = targets.astype(np.uint8)
    if case.get("targets") == "float":
        targets = np.where(mask, targets, np.nan)
    loss = u.CrossEntropy(reduction=case.get("reduction", "mean"), weight=case.get("weight"))
    fused._JIT.pop("ce_shift", None)
    (v_ref, d_ref), (v, d) = both_backends(lambda: loss.value_and_grad(logits, targets, mask))
    assert "ce_shift" in fused._JIT  # the compiled passes ran
    tol = 1e-13 if dtype == "float64" else 2e-6
    np.testing.assert_allclose(v, v_ref, rtol=tol)
    assert d.dtype == dtype and d.shape == logits.shape
    np.testing.assert_allclose(d, d_ref, rtol=tol, atol=tol * np.abs(d_ref).max())
    if mask is not None:
        assert np.all(d[~mask] == 0)
    if case.get("time_major"):
        assert d.transpose(1, 0, 2).flags.c_contiguous  # the layout of the logits


@needs_numba
def test_fused_cross_entropy_matches_torch_and_finite_differences():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    logits, targets = ce_case(rng, "float64")
    mask = np.arange(7)[None, :] < np.array([7, 2, 5, 1])[:, None]
    v, d = u.CrossEntropy().value_and_grad(logits, targets, mask)
    o = torch.tensor(logits, requires_grad=True)
    ref = torch.nn.functional.cross_entropy(o[torch.tensor(mask)],
                                            torch.tensor(targets[mask]))
    ref.backward()
    np.testing.assert_allclose(v, ref.item(), rtol=1e-12)
    np.testing.assert_allclose(d, o.grad.numpy(), rtol=1e-10, atol=1e-15)
    f = lambda: u.CrossEntropy().value_and_grad(logits, targets, mask)[0]  # noqa: E731
    (num,) = numeric_grads(f, [logits])
    assert rel_err(d, num) < 1e-7


@needs_numba
def test_fused_cross_entropy_reports_bad_input_as_the_readable_code():
    rng = np.random.default_rng(5)
    logits, targets = ce_case(rng, "float32")
    bad = targets.copy()
    bad[2, 3] = 5
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 5\)"):
        u.CrossEntropy().value_and_grad(logits, bad)
    inf = logits.copy()
    inf[0, 1, 2] = -np.inf
    with pytest.raises(ValueError, match="NaN or inf at 1 valid"):
        u.CrossEntropy().value_and_grad(inf, targets)
    with pytest.raises(ValueError, match="mask is False everywhere"):
        u.CrossEntropy().value_and_grad(logits, targets, np.zeros((4, 7), bool))
