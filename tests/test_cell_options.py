"""Options on the built-in cells: DropConnect on W_hh (weight_drop), peepholes."""
import numpy as np
import pytest
from helpers import check_layer_grads, rel_err

import unrolled as u


def data(b=3, t=5, d=3, seed=0):
    return np.random.default_rng(seed).standard_normal((b, t, d))


@pytest.mark.parametrize("cls", [u.LSTM, u.GRU, u.Elman])
def test_weight_drop_gradients_with_fixed_masks(cls):
    m = cls(3, 4, dtype="float64", seed=0, weight_drop=0.4)
    rng = np.random.default_rng(1)
    shape = m.params["l0"]["weight_hh"].shape
    m.fixed_weight_masks = {"l0": (rng.random(shape) >= 0.4) / 0.6}
    check_layer_grads(m, data())

    def wrong(grads):  # a gradient that forgot the mask is caught
        grads["l0"]["weight_hh"] /= np.where(m.fixed_weight_masks["l0"] == 0, 1.0, 0.6)
    with pytest.raises(AssertionError, match="weight_hh"):
        check_layer_grads(m, data(), wrong=wrong, check_input=False)


def test_weight_drop_masks_the_recurrent_weight_in_training_only():
    X = data()
    m = u.LSTM(3, 4, dtype="float64", seed=0, weight_drop=0.5)
    plain = u.LSTM(3, 4, dtype="float64", seed=0)
    ev = m.forward(X, training=False)[0]
    assert np.array_equal(ev, plain.forward(X)[0])  # evaluation: W_hh itself
    a = m.forward(X, training=True)[0]
    b = m.forward(X, training=True)[0]
    assert rel_err(a, ev) > 1e-3 and rel_err(a, b) > 1e-3  # a new mask per forward
    # the same seed draws the same masks
    m2 = u.LSTM(3, 4, dtype="float64", seed=0, weight_drop=0.5)
    assert np.array_equal(m2.forward(X, training=True)[0], a)
    _, _, cache = m.forward(X, training=True)
    wm = cache["weight_masks"]["l0"]
    assert set(np.unique(wm)) <= {0.0, 2.0} and 0.3 < (wm == 0).mean() < 0.7


def test_weight_drop_refused_where_there_is_no_recurrent_weight():
    with pytest.raises(ValueError, match="weight_drop needs a recurrent weight"):
        u.MinGRU(3, 4, weight_drop=0.2)
    with pytest.raises(ValueError, match="weight_drop must be in"):
        u.LSTM(3, 4, weight_drop=1.0)


def test_lstm_peepholes_option_is_the_peephole_cell(tmp_path):
    m = u.LSTM(3, 4, peepholes=True, dtype="float64", seed=0)
    assert m.cell == "peephole_lstm"
    assert {"peephole_i", "peephole_f", "peephole_o"} <= set(m.params["l0"])
    check_layer_grads(m, data())
    u.save_model(m, tmp_path / "m.npz")
    m2, _ = u.load_model(tmp_path / "m.npz")
    assert m2.cell == "peephole_lstm"
    assert np.array_equal(m2.forward(data())[0], m.forward(data())[0])


def _fix_masks(m, B, p_rec=0.0, p_in=0.0, seed=2):
    rng = np.random.default_rng(seed)
    if p_rec:
        m.fixed_recurrent_masks = {n: (rng.random((B, m.hidden_size)) >= p_rec) / (1 - p_rec)
                                   for n in m.names}
    if p_in:
        m.fixed_input_masks = {k: (rng.random((B, m._layer_input_size(k))) >= p_in) / (1 - p_in)
                               for k in range(m.num_layers)}


@pytest.mark.parametrize("cls", [u.LSTM, u.GRU, u.Elman, u.PeepholeLSTM])
def test_recurrent_and_input_dropout_gradients_with_fixed_masks(cls):
    m = cls(3, 4, dtype="float64", seed=0, recurrent_dropout=0.3, input_dropout=0.3,
            num_layers=2, bidirectional=True)
    _fix_masks(m, 3, 0.3, 0.3)
    check_layer_grads(m, data())


@pytest.mark.parametrize("cls", [u.LSTM, u.GRU, u.Elman])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_recurrent_dropout_compiled_equals_readable(cls, dtype):
    X = data().astype(dtype)
    res = {}
    for be in ("reference", "numba"):
        m = cls(3, 4, dtype=dtype, seed=0, recurrent_dropout=0.4)
        with u.backend(be):
            out, _, cache = m.forward(X, training=True)  # the same seed: the same mask
            g, dX, _ = m.backward(cache, np.ones_like(out))
        res[be] = [out, dX] + [g["l0"][k] for k in sorted(g["l0"])]
    for a, b in zip(res["numba"], res["reference"]):
        assert rel_err(a, b) < (1e-12 if dtype == "float64" else 1e-5)


def test_dropout_masks_are_per_sequence_and_training_only():
    X = data(b=2, t=6)
    m = u.LSTM(3, 4, dtype="float64", seed=0, input_dropout=0.5, recurrent_dropout=0.5)
    plain = u.LSTM(3, 4, dtype="float64", seed=0)
    assert np.array_equal(m.forward(X)[0], plain.forward(X)[0])  # evaluation: no masks
    out, _, cache = m.forward(X, training=True)
    im = cache["input_masks"][0]
    assert im.shape == (2, 3)  # one mask per record and feature, the same at every step
    _, dX, _ = m.backward(cache, np.ones_like(out))
    dropped = im == 0
    assert dropped.any()
    assert np.all(dX[:, :, :][np.broadcast_to(dropped[:, None, :], dX.shape)] == 0)
    hm = cache["prepared"]["l0"]["h_mask"]
    assert hm.shape == (2, 4) and set(np.unique(hm)) <= {0.0, 2.0}


def test_recurrent_dropout_refused_where_the_step_does_not_read_the_mask():
    with pytest.raises(ValueError, match="recurrent_dropout needs a cell"):
        u.GRU(3, 4, reset_after=False, recurrent_dropout=0.2)
    with pytest.raises(ValueError, match="recurrent_dropout needs a cell"):
        u.MinGRU(3, 4, recurrent_dropout=0.2)


def test_proj_size_equals_torch_lstm_with_projection():
    torch = pytest.importorskip("torch")
    B, T, D, H, P = 3, 6, 4, 5, 3
    m = u.LSTM(D, H, proj_size=P, dtype="float64", seed=3, num_layers=2, bidirectional=True)
    tm = torch.nn.LSTM(D, H, proj_size=P, num_layers=2, bidirectional=True,
                       batch_first=True).double()
    with torch.no_grad():
        for name, q in m.params.items():
            for k, v in q.items():
                getattr(tm, f"{k}_{name}").copy_(torch.from_numpy(v))
    X = data(B, T, D, seed=4)
    out, st, cache = m.forward(X, training=True)
    R = np.random.default_rng(5).standard_normal(out.shape)
    g, dX, _ = m.backward(cache, R)
    tX = torch.from_numpy(X).requires_grad_()
    tout, (th, tc) = tm(tX)
    (tout * torch.from_numpy(R)).sum().backward()
    assert out.shape == (B, T, 2 * P)
    assert rel_err(out, tout.detach().numpy()) < 1e-12
    assert rel_err(st["h"], th.detach().numpy()) < 1e-12
    assert rel_err(st["c"], tc.detach().numpy()) < 1e-12
    assert rel_err(dX, tX.grad.numpy()) < 1e-12
    for name, q in g.items():
        for k, v in q.items():
            assert rel_err(v, getattr(tm, f"{k}_{name}").grad.numpy()) < 1e-12, (name, k)


def test_proj_size_through_interop_both_ways():
    torch = pytest.importorskip("torch")
    from unrolled.interop.torch import from_torch, to_torch_state_dict

    tm = torch.nn.LSTM(4, 5, proj_size=2, batch_first=True).double()
    m = from_torch(tm)
    assert m.cell == "proj_lstm" and m.params["l0"]["weight_hr"].shape == (2, 5)
    X = data(2, 3, 4)
    assert rel_err(m.forward(X)[0], tm(torch.from_numpy(X))[0].detach().numpy()) < 1e-12
    sd = to_torch_state_dict(m)
    tm2 = torch.nn.LSTM(4, 5, proj_size=2, batch_first=True).double()
    tm2.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})
    assert rel_err(tm2(torch.from_numpy(X))[0].detach().numpy(), m.forward(X)[0]) < 1e-12


@pytest.mark.parametrize("layers, bidi", [(1, False), (2, True)])
def test_zoneout_gradients_with_fixed_masks(layers, bidi):
    B, T = 3, 5
    m = u.LSTM(3, 4, dtype="float64", seed=0, zoneout=0.3, num_layers=layers,
               bidirectional=bidi)
    rng = np.random.default_rng(7)
    m.fixed_noise = {n: (rng.random((T, B, 8)) < 0.3).astype(float) for n in m.names}
    check_layer_grads(m, data(B, T))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_zoneout_compiled_equals_readable_and_checkpointed(dtype):
    X = data(3, 9).astype(dtype)
    res = {}
    for be, mem in (("reference", "full"), ("numba", "full"), ("numba", "checkpoint")):
        m = u.LSTM(3, 4, dtype=dtype, seed=0, zoneout=0.4, memory=mem)
        with u.backend(be):
            out, _, cache = m.forward(X, training=True)
            g, dX, _ = m.backward(cache, np.ones_like(out))
        res[be, mem] = [out, dX] + [g["l0"][k] for k in sorted(g["l0"])]
    tol = 1e-12 if dtype == "float64" else 1e-5
    for key in (("numba", "full"), ("numba", "checkpoint")):
        for a, b in zip(res[key], res["reference", "full"]):
            assert rel_err(a, b) < tol


def test_zoneout_keeps_units_in_training_and_averages_at_evaluation():
    X = data(2, 6)
    m = u.LSTM(3, 4, dtype="float64", seed=0, zoneout=0.5)
    zh = np.zeros((6, 2, 8))
    zh[:, :, :4] = 1.0  # every h unit keeps its value: h stays at h0 = 0
    m.fixed_noise = {"l0": zh}
    out = m.forward(X, training=True)[0]
    assert np.all(out == 0)
    plain = u.LSTM(3, 4, dtype="float64", seed=0)
    plain.params = m.params
    ev = m.forward(X)[0]
    assert rel_err(ev, plain.forward(X)[0]) > 1e-3  # evaluation mixes with p = 0.5
    with pytest.raises(ValueError, match="zoneout needs a cell"):
        u.GRU(3, 4, zoneout=0.1)


def test_lstm_layer_norm_option(tmp_path):
    m = u.LSTM(3, 4, layer_norm=True, dtype="float64", seed=0)
    assert m.cell == "layernorm_lstm"
    assert np.all(m.params["l0"]["ln_ih_weight"] == 1) and np.all(m.params["l0"]["ln_c_bias"] == 0)
    check_layer_grads(m, data())
    u.save_model(m, tmp_path / "m.npz")
    m2, _ = u.load_model(tmp_path / "m.npz")
    assert m2.cell == "layernorm_lstm"
    assert np.array_equal(m2.forward(data())[0], m.forward(data())[0])
    with pytest.raises(ValueError, match="combined are not built"):
        u.LSTM(3, 4, layer_norm=True, peepholes=True)


def test_pinned_masks_are_checked_and_cast():
    X = data().astype("float32")
    m = u.LSTM(3, 4, dtype="float32", seed=0, weight_drop=0.3, recurrent_dropout=0.3,
               input_dropout=0.3)
    rng = np.random.default_rng(0)
    m.fixed_weight_masks = {"l0": (rng.random((16, 4)) > 0.3) / 0.7}        # float64
    m.fixed_recurrent_masks = {"l0": (rng.random((3, 4)) > 0.3) / 0.7}
    m.fixed_input_masks = {0: (rng.random((3, 3)) > 0.3) / 0.7}
    res = {}
    for be in ("reference", "numba"):
        with u.backend(be):
            out, _, cache = m.forward(X, training=True)
            g, dX, _ = m.backward(cache, np.ones_like(out))
        assert out.dtype == np.float32 and g["l0"]["weight_hh"].dtype == np.float32
        res[be] = [out, dX, g["l0"]["weight_hh"]]
    for a, b in zip(res["numba"], res["reference"]):
        assert np.all(np.isfinite(a)) and rel_err(a, b) < 1e-5
    m.fixed_recurrent_masks = {"l0": np.ones((1, 4))}
    with pytest.raises(ValueError, match=r"fixed_recurrent_masks\['l0'\] must have shape"):
        m.forward(X, training=True)
    m.fixed_recurrent_masks = None
    m.fixed_input_masks = {"l0": np.ones((3, 3))}
    with pytest.raises(ValueError, match="fixed_input_masks has no mask for 0"):
        m.forward(X, training=True)


def test_teacher_forcing_with_recurrent_masks_is_refused():
    with pytest.raises(ValueError, match="teacher forcing runs every step at once"):
        u.Elman(3, 4, recurrent_dropout=0.3).forward(
            np.zeros((2, 3, 3), "f4"), teacher=np.ones((2, 3, 4), "f4"), training=True)


def test_generator_refuses_a_windowed_cell():
    with pytest.raises(ValueError, match="input window"):
        u.Generator(u.QRNN(3, 4))


def test_reference_backend_wins_over_the_parallel_scan():
    m = u.MinGRU(3, 4)
    with u.settings.override(scan="parallel", backend="reference"):
        assert "readable" in u.explain(m)


def test_embedding_dropout_drops_whole_rows_with_exact_gradients():
    from helpers import numeric_grads

    emb = u.Embedding(7, 3, dtype="float64", seed=0, dropout=0.4)
    X = np.array([[1, 2, 1, 5], [3, 1, 0, 6]])
    Y, _, cache = emb.forward(X, training=True)
    scale = cache[2]
    assert set(np.unique(scale)) <= {0.0, 1 / 0.6}
    dropped = np.flatnonzero(scale == 0)
    for v in dropped:  # every use of a dropped symbol is zero
        assert np.all(Y[X == v] == 0)
    assert np.array_equal(emb.forward(X)[0], emb._params["weight"][X])  # evaluation
    R = np.random.default_rng(1).standard_normal(Y.shape)
    g, _, _ = emb.backward(cache, R)

    def f():  # the same mask: the loss as a function of the table
        return float(np.sum(emb._params["weight"][X] * scale[X][..., None] * R))
    (num,) = numeric_grads(f, [emb._params["weight"]])
    assert rel_err(g["weight"], num) < 1e-8


def test_ar_tar_value_and_gradient():
    from helpers import numeric_grads

    from unrolled.losses import activation_regularization

    rng = np.random.default_rng(0)
    h = rng.standard_normal((2, 5, 3))
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
    v, g = activation_regularization(h, alpha=2.0, beta=1.0, mask=mask)
    (num,) = numeric_grads(lambda: activation_regularization(h, 2.0, 1.0, mask)[0], [h])
    assert rel_err(g, num) < 1e-8
    valid = h[mask]
    assert np.isclose(activation_regularization(h, 1.0, 0.0, mask)[0], np.mean(valid ** 2))
    assert np.all(g[~mask] == 0)
