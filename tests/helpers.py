"""Shared test helpers: a hash-like scalar loss, central finite differences, tiny data."""
import numpy as np

from unrolled.data import bundled_path
from unrolled.tree import tree_flatten


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(a)), np.max(np.abs(b)), 1e-300))


class WeightedSum:
    """loss = sum(outputs * R): "a weighted sum is a nice hash" (Karpathy's lstm.py)."""

    def __init__(self, R):
        self.R = R

    def value_and_grad(self, outputs, targets=None, mask=None):
        return float(np.sum(outputs * self.R)), self.R.copy()


def run_loss(layer, X, R, mask=None, initial_state=None, Rs=None, teacher=None):
    kw = {} if teacher is None else {"teacher": teacher}
    out, state, cache = layer.forward(X, mask=mask, initial_state=initial_state, training=True,
                                      **kw)
    value = float(np.sum(out * R))
    if Rs is not None:
        value += sum(float(np.sum(state[k] * Rs[k])) for k in Rs)
    return value, out, state, cache


def numeric_grads(f, arrays, eps=1e-6):
    """Central differences of scalar f() w.r.t. every entry of each array (modified in place)."""
    out = []
    for a in arrays:
        g = np.zeros_like(a)
        it = np.nditer(a, flags=["multi_index"])
        for _ in it:
            i = it.multi_index
            old = a[i]
            a[i] = old + eps
            fp = f()
            a[i] = old - eps
            fm = f()
            a[i] = old
            g[i] = (fp - fm) / (2 * eps)
        out.append(g)
    return out


def check_layer_grads(layer, X, mask=None, initial_state=None, state_weights=True, teacher=None,
                      tol=1e-6, check_input=True, wrong=None):
    """Analytic (BPTT) vs numeric gradients for params, inputs and the initial state.

    Returns the largest relative error. ``wrong`` perturbs the analytic grads (negative control).
    """
    rng = np.random.default_rng(1)
    out, state, _ = layer.forward(X, mask=mask, initial_state=initial_state, training=True,
                                  **({} if teacher is None else {"teacher": teacher}))
    R = rng.standard_normal(out.shape)
    Rs = {k: rng.standard_normal(v.shape) for k, v in state.items()} if state_weights else None
    f = lambda: run_loss(layer, X, R, mask, initial_state, Rs, teacher)[0]  # noqa: E731
    _, _, _, cache = run_loss(layer, X, R, mask, initial_state, Rs, teacher)
    grads, dX, d0 = layer.backward(cache, R, Rs)
    if wrong is not None:
        wrong(grads)
    flat_p, flat_g = tree_flatten(layer.params), tree_flatten(grads)
    keys = sorted(flat_p)
    num = numeric_grads(f, [flat_p[k] for k in keys])
    worst = 0.0
    for k, n in zip(keys, num):
        e = rel_err(flat_g[k], n)
        assert e < tol, f"gradient of {k}: relative error {e:.2e}"
        worst = max(worst, e)
    if check_input:
        (nX,) = numeric_grads(f, [X])
        e = rel_err(dX, nX)
        assert e < tol, f"input gradient: relative error {e:.2e}"
        worst = max(worst, e)
    if initial_state is not None:
        for k, s in initial_state.items():
            (ns,) = numeric_grads(f, [s])
            e = rel_err(d0[k], ns)
            assert e < tol, f"initial state {k} gradient: relative error {e:.2e}"
    return worst


def tiny_names(d, n=15, langs=("Japanese", "Russian", "Italian")):
    d.mkdir()
    src = bundled_path("names")
    for lang in langs:
        names = list(dict.fromkeys((src / f"{lang}.txt").read_text("utf-8").split()))[:n]
        (d / f"{lang}.txt").write_text("\n".join(names) + "\n", encoding="utf-8")
    return d
