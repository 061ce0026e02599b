"""BPTT against central finite differences, float64, for every cell and loop option."""
import numpy as np
import pytest
from helpers import check_layer_grads

import unrolled as u

D, H, B, T = 3, 4, 3, 5


def make(kind, **kw):
    kw.setdefault("dtype", "float64")
    kw.setdefault("seed", 0)
    if kind == "elman_tanh":
        return u.Elman(D, H, **kw)
    if kind == "elman_relu":
        return u.Elman(D, H, nonlinearity="relu", **kw)
    if kind == "lstm":
        return u.LSTM(D, H, **kw)
    if kind == "gru":
        return u.GRU(D, H, **kw)
    if kind == "gru_before":
        return u.GRU(D, H, reset_after=False, **kw)
    if kind == "jordan":
        return u.Jordan(D, H, output_size=2, **kw)
    if kind == "jordan_tanh_out":
        return u.Jordan(D, H, output_size=3, output_activation="tanh", **kw)
    raise KeyError(kind)


KINDS = ["elman_tanh", "elman_relu", "lstm", "gru", "gru_before", "jordan", "jordan_tanh_out"]


def data(seed=0, b=B, t=T):
    return np.random.default_rng(seed).standard_normal((b, t, D))


def right_mask(lengths, t=T):
    return np.arange(t)[None, :] < np.asarray(lengths)[:, None]


def left_mask(lengths, t=T):
    return np.arange(t)[None, :] >= t - np.asarray(lengths)[:, None]


@pytest.mark.parametrize("kind", KINDS)
def test_single_layer(kind):
    check_layer_grads(make(kind), data())


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("side", ["right", "left"])
def test_masked_bidirectional_stacked(kind, side):
    mask = (right_mask if side == "right" else left_mask)([5, 2, 4])
    layer = make(kind, num_layers=2, bidirectional=True)
    check_layer_grads(layer, data(), mask=mask)


@pytest.mark.parametrize("kind", ["lstm", "gru", "elman_tanh"])
def test_fold_output(kind):
    layer = make(kind, num_layers=2, bidirectional=True, return_sequences=False)
    check_layer_grads(layer, data(), mask=right_mask([5, 1, 3]))


@pytest.mark.parametrize("kind", ["lstm", "gru", "elman_tanh", "jordan"])
def test_initial_states(kind):
    # learned
    check_layer_grads(make(kind, initial_state="learned", num_layers=2), data(),
                      mask=left_mask([5, 3, 1]))
    # constant
    check_layer_grads(make(kind, initial_state=0.3), data(), mask=right_mask([2, 5, 4]))
    # given per record, with its gradient
    layer = make(kind, num_layers=2, bidirectional=True)
    rng = np.random.default_rng(5)
    s0 = {k: rng.standard_normal((4, B, s)) for k, s in zip(("h", "c"), layer.state_sizes)}
    check_layer_grads(layer, data(), mask=right_mask([5, 3, 4]), initial_state=s0)


@pytest.mark.parametrize("kind", ["lstm", "gru", "elman_tanh", "gru_before"])
def test_truncate_at_least_T_is_full_bptt(kind):
    # truncated gradients are not the loss's gradient (see test_truncation.py); with k >= T
    # they must be exactly full BPTT
    check_layer_grads(make(kind, truncate=T), data(), mask=right_mask([5, 3, 1]))


def test_jordan_teacher_forcing():
    layer = make("jordan", dropout=0.0)
    teacher = np.random.default_rng(3).standard_normal((B, T, 2))
    check_layer_grads(layer, data(), teacher=teacher, check_input=True)
    check_layer_grads(layer, data(), teacher=teacher, mask=left_mask([5, 2, 3]))


def test_negative_control():
    """A deliberately wrong gradient must fail the check."""
    def wrong(grads):
        grads["l0"]["weight_hh"][0, 0] *= 1.001

    with pytest.raises(AssertionError, match="weight_hh"):
        check_layer_grads(make("lstm"), data(), wrong=wrong)


def test_dense_embedding_sequential():
    rng = np.random.default_rng(0)
    model = u.Sequential(u.Embedding(7, D, dtype="float64", seed=1),
                         u.GRU(D, H, dtype="float64", seed=2, bidirectional=True),
                         u.Dense(2 * H, 3, dtype="float64", seed=3))
    X = rng.integers(0, 7, (B, T))
    mask = right_mask([5, 2, 4])
    X[1, 3] = 99  # garbage at a padded step is ignored
    from helpers import numeric_grads, rel_err
    from unrolled.tree import tree_flatten
    R = rng.standard_normal((B, T, 3))
    f = lambda: float(np.sum(model.forward(X, mask=mask)[0] * R))  # noqa: E731
    out, _, cache = model.forward(X, mask=mask, training=True)
    assert np.all(out[1, 2:] == 0)
    grads, _, _ = model.backward(cache, R)
    fp, fg = tree_flatten(model.params), tree_flatten(grads)
    for k in sorted(fp):
        (n,) = numeric_grads(f, [fp[k]])
        assert rel_err(fg[k], n) < 1e-6, k
