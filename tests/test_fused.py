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
