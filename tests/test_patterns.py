"""CNTK-named building blocks: Recurrence, Fold, RecurrenceFrom, UnfoldFrom."""
import numpy as np
import pytest
from helpers import numeric_grads, rel_err

from unrolled.layers import GRU, LSTM, Dense, Elman, Embedding, Jordan, Sequential
from unrolled.patterns import Fold, Recurrence, RecurrenceFrom, UnfoldFrom
from unrolled.tree import tree_flatten


def _data(B=3, T=5, D=4, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((B, T, D))
    lengths = np.array([T, 3, 1])[:B]
    mask = np.arange(T)[None] < lengths[:, None]
    return X, mask, lengths


def test_recurrence_and_fold_are_the_layer_in_two_shapes():
    X, mask, lengths = _data()
    layer = LSTM(4, 6, dtype="float64", seed=0)
    seq = Recurrence(layer)(X, mask)
    last = Fold(layer)(X, mask)
    assert seq.shape == (3, 5, 6) and last.shape == (3, 6)
    # the fold is the sequence's output at each record's last valid step
    np.testing.assert_allclose(last, seq[np.arange(3), lengths - 1], atol=1e-12)
    # and the wrapped layer is left as it was
    assert layer.return_sequences is True
    # one set of weights: changing the layer changes both
    layer.params["l0"]["weight_hh"] *= 0
    assert not np.allclose(Fold(layer)(X, mask), last)


def test_cell_name_builds_the_layer_and_bad_steps_are_refused():
    r = Recurrence("gru", input_size=4, hidden_size=5, seed=1)
    assert isinstance(r.layer, GRU) and r.output_size == 5
    with pytest.raises(ValueError, match="input_size and hidden_size"):
        Fold("lstm")
    with pytest.raises(TypeError, match="recurrent layer"):
        Recurrence(Dense(3, 3))
    with pytest.raises(ValueError, match="go_backwards"):
        Recurrence(LSTM(3, 3, bidirectional=True), go_backwards=True)


@pytest.mark.parametrize("cls", [Elman, GRU])
def test_go_backwards_reads_each_record_reversed(cls):
    X, mask, lengths = _data()
    layer = cls(4, 5, dtype="float64", seed=2)
    back_seq = Recurrence(layer, go_backwards=True)(X, mask)
    back_fold = Fold(layer, go_backwards=True)(X, mask)
    for b, n in enumerate(lengths):
        rev = X[b:b + 1, :n][:, ::-1]                         # the valid steps, reversed
        ref = layer(rev)                                      # (1, n, S)
        np.testing.assert_allclose(back_seq[b, :n], ref[0, ::-1], atol=1e-12)
        np.testing.assert_allclose(back_fold[b], ref[0, -1], atol=1e-12)
        assert np.all(back_seq[b, n:] == 0)                   # pads stay where they were


@pytest.mark.parametrize("block", [Recurrence, Fold])
def test_go_backwards_gradients_match_finite_differences(block):
    X, mask, _ = _data()
    blk = block(LSTM(4, 3, dtype="float64", seed=3), go_backwards=True)
    out, _, _ = blk.forward(X, mask, training=True)
    R = np.random.default_rng(4).standard_normal(out.shape)
    f = lambda: float(np.sum(blk.forward(X, mask, training=True)[0] * R))
    _, _, cache = blk.forward(X, mask, training=True)
    grads, dX, _ = blk.backward(cache, R)
    flat, gflat = tree_flatten(blk.params), tree_flatten(grads)
    for k in flat:
        (num,) = numeric_grads(f, [flat[k]])
        assert rel_err(gflat[k], num) < 1e-6, k
    (nX,) = numeric_grads(f, [X])
    assert rel_err(dX * mask[..., None], nX) < 1e-6


def test_recurrence_from_sends_the_state_gradient_back_to_the_data():
    # initial state = tanh(Dense(features)): the gradient reaches the Dense weights
    rng = np.random.default_rng(5)
    X, mask, _ = _data()
    feats = rng.standard_normal((3, 2))
    to_state = Dense(2, 4, dtype="float64", seed=6)
    rec = RecurrenceFrom(GRU(4, 4, dtype="float64", seed=7))
    R = rng.standard_normal((3, 5, 4))

    def run():
        z, _, cz = to_state.forward(feats)
        h0 = np.tanh(z)
        out, _, cr = rec.forward(X, mask, initial_state=h0, training=True)
        return float(np.sum(out * R)), h0, cz, cr

    _, h0, cz, cr = run()
    g_rec, _, d_h0 = rec.backward(cr, R)
    assert d_h0.shape == (3, 4)
    g_dense, _, _ = to_state.backward(cz, d_h0 * (1 - h0 ** 2))
    f = lambda: run()[0]
    num_w, num_b = numeric_grads(f, [to_state.params["weight"], to_state.params["bias"]])
    assert rel_err(g_dense["weight"], num_w) < 1e-6
    assert rel_err(g_dense["bias"], num_b) < 1e-6
    (num_hh,) = numeric_grads(f, [rec.params["l0"]["weight_hh"]])
    assert rel_err(g_rec["l0"]["weight_hh"], num_hh) < 1e-6
    with pytest.raises(ValueError, match="initial_state"):
        rec.forward(X, mask)


def test_blocks_work_inside_sequential_with_value_and_grad():
    from unrolled import value_and_grad

    rng = np.random.default_rng(8)
    model = Sequential(Embedding(7, 3, dtype="float64", seed=0),
                       Fold("lstm", input_size=3, hidden_size=4, dtype="float64", seed=1),
                       Dense(4, 2, dtype="float64", seed=2))
    X = rng.integers(0, 7, (4, 6))
    mask = np.arange(6)[None] < np.array([6, 4, 2, 5])[:, None]
    y = np.array([0, 1, 1, 0])
    _, grads = value_and_grad(model, "cross_entropy", X, y, mask)
    W = model.params["1"]["l0"]["weight_ih"]
    (num,) = numeric_grads(lambda: value_and_grad(model, "cross_entropy", X, y, mask)[0], [W])
    assert rel_err(grads["1"]["l0"]["weight_ih"], num) < 1e-6
    # assigning the container's parameters reaches the wrapped layer
    before = model(X, mask)
    new = {k: {kk: vv for kk, vv in v.items()} for k, v in model.params.items()}
    new["1"] = {"l0": {k: v * 0 for k, v in model.params["1"]["l0"].items()}}
    model.params = new
    assert np.all(model.layers[1].layer.params["l0"]["weight_hh"] == 0)
    assert not np.allclose(model(X, mask), before)


def test_unfold_from_generates_what_teacher_forcing_scores_highest():
    # symbols: greedy generation fed back == the argmax of the teacher-forced pass over it
    V, start, end = 6, 0, 1
    gen = UnfoldFrom(GRU(3, 5, dtype="float64", seed=9), Dense(5, V, dtype="float64", seed=10),
                     embed=Embedding(V, 3, dtype="float64", seed=11), start=start, until=end,
                     length=8)
    h0 = np.random.default_rng(12).standard_normal((2, 5))
    seqs = gen.generate(h0)
    assert len(seqs) == 2 and all(len(s) <= 8 and end not in s for s in seqs)
    for b, s in enumerate(seqs):
        Y_in = np.array([[start] + s])
        logits, _, _ = gen.forward(Y_in, initial_state=h0[b:b + 1])
        expect = s + ([end] if len(s) < 8 else [])
        assert logits[0].argmax(-1)[:len(expect)].tolist() == expect


def test_unfold_from_vectors_and_its_gradients():
    # vectors: each output is the next input (a Jordan-like generator over an LSTM)
    gen = UnfoldFrom(LSTM(2, 4, dtype="float64", seed=13), Dense(4, 2, dtype="float64", seed=14),
                     length=6)
    h0 = np.random.default_rng(15).standard_normal((3, 4))
    Y = gen.generate(h0)
    assert Y.shape == (3, 6, 2)
    Y_in = np.concatenate([np.zeros((3, 1, 2)), Y[:, :-1]], 1)
    out, _, cache = gen.forward(Y_in, initial_state=h0)
    np.testing.assert_allclose(out, Y, atol=1e-12)
    R = np.random.default_rng(16).standard_normal(out.shape)
    grads, _, d0 = gen.backward(cache, R)
    f = lambda: float(np.sum(gen.forward(Y_in, initial_state=h0)[0] * R))
    (num0,) = numeric_grads(f, [h0])
    assert rel_err(d0, num0) < 1e-6
    (numw,) = numeric_grads(f, [gen.params["readout"]["weight"]])
    assert rel_err(grads["readout"]["weight"], numw) < 1e-6
    with pytest.raises(ValueError, match="fed back"):
        UnfoldFrom(Jordan(3, 4), Dense(4, 2))
    # assigned parameters reach the wrapped layers: all-zero weights generate zeros
    from unrolled.tree import tree_map
    gen.params = tree_map(lambda a: a * 0, gen.params)
    assert np.all(gen.generate(h0) == 0) and np.all(gen.readout.params["weight"] == 0)


# -- Jordan: teacher forcing (no sequential loop), free running, scheduled sampling --------
from unrolled.patterns import scheduled_backward, scheduled_forward


def _jordan_case(seed=20):
    rng = np.random.default_rng(seed)
    layer = Jordan(3, 5, output_size=2, dtype="float64", seed=seed)
    X, Y = rng.standard_normal((4, 6, 3)), rng.standard_normal((4, 6, 2))
    return layer, X, Y, rng.standard_normal((4, 6, 2))


@pytest.mark.parametrize("sampling", [0.0, 1.0])
def test_scheduled_sampling_ends_are_teacher_forcing_and_free_running(sampling):
    layer, X, Y, R = _jordan_case()
    out, cache = scheduled_forward(layer, X, Y, sampling, np.random.default_rng(0))
    kw = {"teacher": Y} if sampling == 0 else {}
    ref, _, rcache = layer.forward(X, training=True, **kw)
    np.testing.assert_allclose(out, ref, atol=1e-12)
    g, dX = scheduled_backward(layer, cache, R)
    rg, rdX, _ = layer.backward(rcache, R)
    np.testing.assert_allclose(dX, rdX, atol=1e-12)
    for k, v in tree_flatten(rg).items():
        assert rel_err(tree_flatten(g)[k], v) < 1e-10, k


def test_teacher_forcing_runs_every_step_at_once():
    # with the true previous outputs given, step t does not need step t-1: changing the
    # input of one step changes that step's output only
    layer, X, Y, _ = _jordan_case()
    out = layer.forward(X, teacher=Y)[0]
    X2 = X.copy()
    X2[:, 2] += 1.0
    out2 = layer.forward(X2, teacher=Y)[0]
    changed = np.abs(out2 - out).max(axis=(0, 2)) > 0
    assert changed.tolist() == [False, False, True, False, False, False]
    free = layer.forward(X2)[0] - layer.forward(X)[0]
    assert np.all(np.abs(free[:, 3:]).max(axis=(0, 2)) > 0)   # free running: it propagates


def test_scheduled_sampling_gradients_match_finite_differences():
    layer, X, Y, R = _jordan_case()
    f = lambda: float(np.sum(scheduled_forward(layer, X, Y, 0.5,
                                               np.random.default_rng(3))[0] * R))
    _, cache = scheduled_forward(layer, X, Y, 0.5, np.random.default_rng(3))
    assert any(o is not None and o.any() and not o.all() for o in cache[1])  # a real mix
    g, dX = scheduled_backward(layer, cache, R)
    flat = tree_flatten(layer.params)
    for k, a in flat.items():
        (num,) = numeric_grads(f, [a])
        assert rel_err(tree_flatten(g)[k], num) < 1e-6, k
    (nX,) = numeric_grads(f, [X])
    assert rel_err(dX, nX) < 1e-6
    with pytest.raises(TypeError, match="Jordan"):
        scheduled_forward(LSTM(3, 2), X, Y, 0.5, np.random.default_rng(0))


@pytest.mark.parametrize("teacher", [True, False])
def test_jordan_against_pytorch_autograd(teacher):
    torch = pytest.importorskip("torch")
    layer, X, Y, R = _jordan_case(21)
    mask = np.arange(6)[None] < np.array([6, 4, 2, 5])[:, None]
    out, _, cache = layer.forward(X, mask, training=True, teacher=Y if teacher else None)
    g, dX, _ = layer.backward(cache, R * mask[..., None])
    P = {k: torch.tensor(v, requires_grad=True) for k, v in layer.params["l0"].items()}
    Xt, Yt = torch.tensor(X, requires_grad=True), torch.tensor(Y)
    y = torch.zeros(4, 2, dtype=torch.float64)
    outs = []
    for t in range(6):
        if teacher and t > 0:
            # the true previous target where the previous step was real
            y = torch.where(torch.tensor(mask[:, t - 1:t]), Yt[:, t - 1], torch.zeros_like(y))
        h = torch.tanh(Xt[:, t] @ P["weight_ih"].T + P["bias_ih"] + y @ P["weight_hh"].T
                       + P["bias_hh"])
        y_new = h @ P["weight_ho"].T + P["bias_ho"]
        m = torch.tensor(mask[:, t:t + 1])
        outs.append(torch.where(m, y_new, torch.zeros_like(y_new)))
        y = torch.where(m, y_new, y)
    loss = (torch.stack(outs, 1) * torch.tensor(R * mask[..., None])).sum()
    loss.backward()
    np.testing.assert_allclose(out, torch.stack(outs, 1).detach().numpy(), atol=1e-12)
    for k, v in g["l0"].items():
        assert rel_err(v, P[k].grad.numpy()) < 1e-10, k
    assert rel_err(dX * mask[..., None], Xt.grad.numpy()) < 1e-10
