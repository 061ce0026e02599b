"""The parallel scan (unrolled.scan) against the step-by-step loop, for every registered
cell whose state is a linear recurrence of its input."""
import numpy as np
import pytest
from helpers import check_layer_grads, rel_err

import unrolled as u
from unrolled import cells
from unrolled.layers import Recurrent
from unrolled.scan import linear_scan, linear_scan_back

LINEAR = sorted(n for n, c in cells.REGISTRY.items() if callable(getattr(c, "linear", None)))


def test_linear_scan_equals_the_loop_with_signed_b_and_zero_a():
    rng = np.random.default_rng(0)
    T, B, H = 50, 3, 4
    a = rng.random((T, B, H))
    a[7, 0, 1] = 0.0                       # a state reset
    b = rng.standard_normal((T, B, H))
    h0 = rng.standard_normal((B, H))
    h = [h0]
    for t in range(T):
        h.append(a[t] * h[-1] + b[t])
    assert rel_err(linear_scan(a, b, h0, np), np.stack(h)) < 1e-12
    # the backward against the loop's chain rule
    d = rng.standard_normal((T, B, H))
    da, db, dh0 = linear_scan_back(a, np.stack(h), d, None, np)
    g = np.zeros((B, H))
    for t in reversed(range(T)):
        g = d[t] + g
        assert rel_err(da[t], g * h[t]) < 1e-12 and rel_err(db[t], g) < 1e-12
        g = a[t] * g
    assert rel_err(dh0, g) < 1e-12


def run(m, X, mask=None, scan="sequential"):
    rng = np.random.default_rng(1)
    with u.settings.override(scan=scan):
        out, st, cache = m.forward(X, mask=mask, training=True)
        d_out = rng.standard_normal(out.shape)
        d_st = {k: rng.standard_normal(v.shape) for k, v in st.items()}
        g, dX, ds = m.backward(cache, d_out, d_st)
    return [out, dX, *st.values(), *ds.values()] + [g[n][k] for n in g for k in sorted(g[n])]


@pytest.mark.parametrize("name", LINEAR)
@pytest.mark.parametrize("opts", [{}, {"num_layers": 2, "bidirectional": True},
                                  {"truncate": 3}, {"memory": "checkpoint"}],
                         ids=["plain", "stacked", "truncate", "checkpoint"])
def test_parallel_scan_equals_the_loop(name, opts):
    X = np.random.default_rng(0).standard_normal((3, 9, 3))
    M = np.arange(9)[None, :] < np.array([9, 4, 6])[:, None]
    m = Recurrent(cells.get(name)(), 3, 4, dtype="float64", seed=0, **opts)
    for mask in (None, M):
        ref = run(m, X, mask)
        got = run(m, X, mask, "parallel")
        for a, b in zip(got, ref):
            assert rel_err(a, b) < 1e-10


@pytest.mark.parametrize("name", LINEAR)
def test_parallel_scan_finite_differences(name):
    m = Recurrent(cells.get(name)(), 3, 4, dtype="float64", seed=0)
    with u.settings.override(scan="parallel"):
        assert "scan" in u.explain(m)
        check_layer_grads(m, np.random.default_rng(0).standard_normal((3, 6, 3)))


def test_long_sequence_float32():
    """T = 2000 in float32: the log-space scan stays finite and near the loop."""
    X = np.random.default_rng(0).standard_normal((2, 2000, 3)).astype("float32")
    m = u.MinGRU(3, 8, seed=0)
    ref = run(m, X)
    got = run(m, X, scan="parallel")
    assert np.all(np.isfinite(got[0]))
    assert rel_err(got[0], ref[0]) < 1e-3
