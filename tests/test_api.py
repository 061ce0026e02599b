"""The public contract: value_and_grad with named losses, params assignment, bad input."""
import os

import numpy as np
import pytest
from helpers import rel_err

import unrolled as u
from unrolled.interop import from_torch, to_torch_state_dict


def test_value_and_grad_cross_entropy_matches_torch():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    tm = torch.nn.LSTM(4, 5, num_layers=2, batch_first=True).double()
    layer = from_torch(tm)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((3, 6, 4))
    lengths = [6, 2, 4]
    mask = np.arange(6)[None] < np.array(lengths)[:, None]
    Y = rng.integers(0, 5, (3, 6))
    Y[~mask] = -7  # targets at padded steps are ignored whatever they hold
    value, grads = u.value_and_grad(layer, "cross_entropy", X, Y, mask=mask)
    out, _ = tm(torch.from_numpy(X))
    m = torch.from_numpy(mask)
    loss = torch.nn.functional.cross_entropy(out[m], torch.from_numpy(Y)[m])
    loss.backward()
    assert abs(value - loss.item()) < 1e-12
    ours = to_torch_state_dict(layer, grads)
    for k, p in tm.named_parameters():
        assert rel_err(ours[k], p.grad.numpy()) < 1e-10, k


def test_value_and_grad_mse_fold_and_learners_train():
    rng = np.random.default_rng(0)
    model = u.Sequential(u.GRU(1, 8, return_sequences=False, seed=0), u.Dense(8, 1, seed=1))
    X = rng.standard_normal((64, 10, 1)).astype("float32")
    Y = X.sum(1)  # (B, 1): the sum of the record
    from unrolled.optim import Adam
    opt = Adam(lr=0.02)
    first, _ = u.value_and_grad(model, "mse", X, Y)
    for _ in range(150):
        value, grads = u.value_and_grad(model, "mse", X, Y)
        opt.step(model.params, grads)
    assert value < 0.1 * first


def test_params_assignment():
    layer = u.LSTM(3, 4, seed=0)
    tree = {n: {k: np.ones_like(v) for k, v in p.items()} for n, p in layer.params.items()}
    layer.params = tree
    assert np.all(layer.params["l0"]["weight_hh"] == 1)
    tree["l0"]["weight_hh"] = np.ones((4, 4))
    with pytest.raises(ValueError, match="shape"):
        layer.params = tree
    with pytest.raises(ValueError, match="structure"):
        layer.params = {"l0": {}}


def test_params_assignment_nested_sequential():
    inner = u.Sequential(u.Dense(3, 4, seed=0), u.Dense(4, 2, seed=1))
    model = u.Sequential(inner, u.Dense(2, 1, seed=2))
    tree = {"0": {"0": {"weight": np.full((4, 3), 2.0), "bias": np.zeros(4)},
                  "1": {"weight": np.ones((2, 4)), "bias": np.zeros(2)}},
            "1": {"weight": np.ones((1, 2)), "bias": np.zeros(1)}}
    model.params = tree
    assert np.all(inner.layers[0].params["weight"] == 2)
    assert inner.layers[0].params["weight"].dtype == np.float32
    assert model(np.ones((1, 3), np.float32)).item() == 48.0  # 2*3 -> *4 -> *2 summed


def test_value_and_grad_step_mask_never_masks_a_folded_output():
    # a many-to-one model whose output width equals T: the (B, T) step mask must not be
    # taken for an element mask of the (B, O) outputs; an element mask goes in loss_mask
    rng = np.random.default_rng(0)
    model = u.Sequential(u.GRU(1, 4, return_sequences=False, dtype="float64", seed=0),
                         u.Dense(4, 3, dtype="float64", seed=1))
    X, Y = rng.standard_normal((4, 3, 1)), rng.standard_normal((4, 3))
    mask = np.ones((4, 3), bool)
    mask[0, 2] = False
    out = model(X, mask=mask)
    value, _ = u.value_and_grad(model, "mse", X, Y, mask=mask)
    assert value == pytest.approx(np.mean((out - Y) ** 2), rel=1e-12)
    missing = np.ones((4, 3), bool)
    missing[1, 0] = False
    value, _ = u.value_and_grad(model, "mse", X, Y, mask=mask, loss_mask=missing)
    assert value == pytest.approx(np.mean((out - Y)[missing] ** 2), rel=1e-12)


def test_seeded_initialisation_is_reproducible():
    a, b = u.GRU(3, 4, seed=5), u.GRU(3, 4, seed=5)
    assert all(np.array_equal(a.params["l0"][k], b.params["l0"][k]) for k in a.params["l0"])
    c = u.GRU(3, 4, seed=6)
    assert not np.array_equal(a.params["l0"]["weight_hh"], c.params["l0"]["weight_hh"])
    o = u.LSTM(3, 8, recurrent_init="orthogonal", input_init="glorot", forget_bias=1.0, seed=0)
    W = o.params["l0"]["weight_hh"][:8].astype(np.float64)
    assert np.allclose(W @ W.T, np.eye(8), atol=1e-5)
    assert np.all(o.params["l0"]["bias_ih"][8:16] == 1)


def test_float64_end_to_end():
    layer = u.Elman(2, 3, dtype="float64", seed=0)
    out = layer(np.zeros((1, 4, 2)))
    assert out.dtype == np.float64


@pytest.mark.parametrize("bad,err,match", [
    (np.zeros((4, 2)), ValueError, "shape \\(batch, time, 2\\)"),
    (np.zeros((1, 4, 3), "float32"), ValueError, "input_size=2"),
    (np.zeros((1, 4, 2), "float64"), TypeError, "astype"),
    (np.full((1, 4, 2), np.nan, "float32"), ValueError, "non-finite"),
    ([[1.0, 2.0]], TypeError, "np.asarray"),
    (np.zeros((1, 0, 2), "float32"), ValueError, "at least one step"),
])
def test_bad_input_messages(bad, err, match):
    with pytest.raises(err, match=match):
        u.Elman(2, 3)(bad)


def test_bad_mask_messages():
    layer = u.GRU(2, 3)
    X = np.zeros((2, 4, 2), "float32")
    with pytest.raises(ValueError, match="mask must have shape"):
        layer(X, mask=np.ones((4, 2), bool))
    with pytest.raises(ValueError, match="record 1 has no valid step"):
        layer(X, mask=np.array([[1, 1, 0, 0], [0, 0, 0, 0]], bool))
    with pytest.raises(TypeError, match="boolean"):
        layer(X, mask=np.ones((2, 4)) * 0.5)
    # NaN at a padded step is fine: it is never read
    X[0, 3] = np.nan
    layer(X, mask=np.array([[1, 1, 1, 0], [1, 1, 1, 1]], bool))


def test_bad_targets_and_state():
    layer = u.Elman(2, 3, num_layers=2)
    X = np.zeros((2, 4, 2), "float32")
    with pytest.raises(ValueError, match="initial_state"):
        layer(X, initial_state={"h": np.zeros((1, 2, 3), "float32")})
    with pytest.raises(ValueError):
        u.value_and_grad(layer, "cross_entropy", X, np.full((2, 4), 3))  # 3 classes: 0..2
    with pytest.raises(ValueError, match="valid names|unknown|Unknown"):
        u.value_and_grad(layer, "hinge", X, np.zeros((2, 4)))
    with pytest.raises(ValueError, match="nonlinearity"):
        u.Elman(2, 3, nonlinearity="sigmoid")
    with pytest.raises(TypeError, match="float32"):
        u.LSTM(2, 3, dtype="int32")


@pytest.mark.parametrize("memory", ["full", "checkpoint"])
def test_skipping_the_input_gradient_changes_no_parameter_gradient(memory):
    rng = np.random.default_rng(3)
    layer = u.LSTM(3, 4, num_layers=2, bidirectional=True, dtype="float64", seed=0,
                   memory=memory)
    X = rng.standard_normal((3, 7, 3))
    mask = np.arange(7)[None] < np.array([7, 4, 2])[:, None]
    out, _, cache = layer.forward(X, mask=mask, training=True)
    R = rng.standard_normal(out.shape)
    g1, dX, _ = layer.backward(cache, R)
    g2, dX2, _ = layer.backward(cache, R, need_input_grad=False)
    assert dX is not None and dX2 is None
    for n in g1:
        for k in g1[n]:
            assert np.array_equal(g1[n][k], g2[n][k]), (n, k)
    # value_and_grad skips it through a Sequential too, with the same gradients
    model = u.Sequential(u.GRU(3, 4, dtype="float64", seed=1), u.Dense(4, 2, dtype="float64"))
    Y = rng.standard_normal((3, 7, 2))
    _, grads = u.value_and_grad(model, "mse", X, Y, mask=mask)
    out, _, c = model.forward(X, mask=mask, training=True)
    _, d_out = u.MSE().value_and_grad(out, Y, mask)
    full, dX, _ = model.backward(c, d_out)
    assert dX is not None
    assert np.array_equal(grads["0"]["l0"]["weight_ih"], full["0"]["l0"]["weight_ih"])
    assert np.array_equal(grads["1"]["weight"], full["1"]["weight"])


def test_importing_unrolled_first_shortens_openblas_spinning_unless_set():
    import subprocess
    import sys

    code = "import os, unrolled; print(os.environ['OPENBLAS_THREAD_TIMEOUT'])"
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    got = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True).stdout.strip()
    assert got == "16"
    env["OPENBLAS_THREAD_TIMEOUT"] = "25"   # the user's own setting wins
    got = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True).stdout.strip()
    assert got == "25"
