"""TBPTT(k1, k2) over stateful streams against a reference written out by hand."""
import numpy as np
import pytest
from helpers import rel_err

import unrolled as u
from unrolled.data import stream_batches
from unrolled.streams import TBPTT, evaluate_stream


def reference_tbptt(params, V, c, stream_X, stream_Y, k1, k2, lr):
    """TBPTT(k1, k2) for an Elman layer + linear readout, MSE, plain SGD, by hand.

    ``s[t]`` is the latest computed state before step t; update n recomputes its window
    from s[window start] with the current weights and backpropagates the loss of the
    chunk's new steps through the whole window (min-char-rnn's lossFun, windowed).
    """
    Wih, Whh, bih, bhh = (params[n].copy() for n in ("weight_ih", "weight_hh", "bias_ih",
                                                      "bias_hh"))
    V, c = V.copy(), c.copy()
    B, N, _ = stream_X.shape
    H = Whh.shape[0]
    s = {0: np.zeros((B, H))}
    losses = []
    for end in range(k1, N + k1, k1):
        end = min(end, N)
        new = end - ((end - 1) % k1 + 1)  # first step of the chunk
        start = max(0, new - (k2 - k1))  # the window: k2 - k1 steps of history + the chunk
        hs = {start - 1: s[start]}
        for t in range(start, end):
            hs[t] = np.tanh(stream_X[:, t] @ Wih.T + bih + hs[t - 1] @ Whh.T + bhh)
            s[t + 1] = hs[t]
        out = np.stack([hs[t] @ V.T + c for t in range(new, end)], 1)  # (B, k, O)
        diff = out - stream_Y[:, new:end]
        losses.append(float((diff ** 2).mean()))
        dout = 2 * diff / diff.size
        g = {n: 0.0 for n in ("Wih", "Whh", "bih", "bhh", "V", "c")}
        dhnext = np.zeros((B, H))
        for t in reversed(range(start, end)):
            dh = dhnext.copy()
            if t >= new:
                d = dout[:, t - new]
                g["V"] = g["V"] + d.T @ hs[t]
                g["c"] = g["c"] + d.sum(0)
                dh += d @ V                          # backprop into h through the readout
            da = (1 - hs[t] ** 2) * dh               # through tanh
            g["Wih"] = g["Wih"] + da.T @ stream_X[:, t]
            g["Whh"] = g["Whh"] + da.T @ hs[t - 1]
            g["bih"] = g["bih"] + da.sum(0)
            g["bhh"] = g["bhh"] + da.sum(0)
            dhnext = da @ Whh
        Wih -= lr * g["Wih"]
        Whh -= lr * g["Whh"]
        bih -= lr * g["bih"]
        bhh -= lr * g["bhh"]
        V -= lr * g["V"]
        c -= lr * g["c"]
    return {"weight_ih": Wih, "weight_hh": Whh, "bias_ih": bih, "bias_hh": bhh}, V, c, losses


@pytest.mark.parametrize("k1,k2", [(3, 3), (3, 5), (3, 7), (4, 6), (5, 20)])
def test_tbptt_equals_hand_written_reference(k1, k2):
    rng = np.random.default_rng(0)
    B, N = 3, 22  # 22 steps: the last chunk is shorter than k1
    X = rng.standard_normal((B, N, 2))
    Y = rng.standard_normal((B, N, 2))
    rnn, dense = u.Elman(2, 4, dtype="float64", seed=1), u.Dense(4, 2, dtype="float64", seed=2)
    p0 = {k: v.copy() for k, v in rnn.params["l0"].items()}
    V0, c0 = dense.params["weight"].copy(), dense.params["bias"].copy()
    tb = TBPTT(u.Sequential(rnn, dense), "mse", u.SGD(0.3), k1, k2)
    losses = [tb.step(X[:, a:a + k1], Y[:, a:a + k1]) for a in range(0, N, k1)]
    ref, V, c, ref_losses = reference_tbptt(p0, V0, c0, X, Y, k1, k2, 0.3)
    assert rel_err(losses, ref_losses) < 1e-12, (losses, ref_losses)
    for n in ref:
        assert rel_err(rnn.params["l0"][n], ref[n]) < 1e-12, n
    assert rel_err(dense.params["weight"], V) < 1e-12
    assert rel_err(dense.params["bias"], c) < 1e-12
    assert tb.updates == -(-N // k1)


def test_longer_k2_gives_a_different_gradient():
    """k2 > k1 must really reach further back (a negative control for the test above)."""
    rng = np.random.default_rng(0)
    X, Y = rng.standard_normal((2, 12, 2)), rng.standard_normal((2, 12, 2))
    finals = []
    for k2 in (3, 9):
        rnn = u.Elman(2, 4, dtype="float64", seed=1)
        tb = TBPTT(u.Sequential(rnn, u.Dense(4, 2, dtype="float64", seed=2)), "mse",
                   u.SGD(0.3), 3, k2)
        for a in range(0, 12, 3):
            tb.step(X[:, a:a + 3], Y[:, a:a + 3])
        finals.append(rnn.params["l0"]["weight_hh"].copy())
    assert rel_err(finals[0], finals[1]) > 1e-6


def test_classic_tbptt_carries_lstm_state_like_chunked_forward():
    """With k1 = k2 and lr = 0 the carried state equals one forward over the whole stream."""
    rng = np.random.default_rng(3)
    lstm = u.LSTM(3, 5, dtype="float64", seed=0)
    X = rng.standard_normal((2, 17, 3))
    tb = TBPTT(lstm, "mse", u.SGD(0.0), 4)
    for a in range(0, 17, 4):
        tb.step(X[:, a:a + 4], np.zeros((2, min(4, 17 - a), 5)))
    _, state = lstm(X, return_state=True)
    for k in ("h", "c"):
        assert rel_err(tb.state[k], state[k]) < 1e-14


def test_text_stream_learns_and_evaluates():
    text = np.array(list("abcabdabcabd" * 40))
    vocab = {ch: i for i, ch in enumerate(sorted(set(text)))}
    ids = np.array([vocab[ch] for ch in text])
    model = u.Sequential(u.Embedding(4, 8, seed=0), u.LSTM(8, 16, seed=0), u.Dense(16, 4, seed=0))
    tb = TBPTT(model, "cross_entropy", u.Adam(2e-2), k1=8, k2=16, clip_norm=5.0)
    batches = stream_batches(ids, batch_size=4, chunk=8)
    first = np.mean(tb.fit_stream(batches))
    for _ in range(4):
        last = np.mean(tb.fit_stream(batches))
    assert last < 0.6 * first
    val, state = evaluate_stream(model, "cross_entropy", batches)
    assert val < first and state["h"].shape == (1, 4, 16)


def test_bad_settings_are_rejected():
    m = u.LSTM(2, 3)
    with pytest.raises(ValueError, match="k2 >= k1"):
        TBPTT(m, "mse", u.SGD(0.1), 5, 3)
    with pytest.raises(ValueError, match="k1 must be"):
        TBPTT(m, "mse", u.SGD(0.1), 0)
    tb = TBPTT(u.LSTM(2, 3, return_sequences=False), "mse", u.SGD(0.1), 2)
    with pytest.raises(ValueError, match="return_sequences=True"):
        tb.step(np.zeros((1, 2, 2), np.float32), np.zeros((1, 3), np.float32))
    tb = TBPTT(m, "mse", u.SGD(0.1), 2)
    with pytest.raises(ValueError, match="chunk=2"):
        tb.step(np.zeros((1, 3, 2), np.float32), np.zeros((1, 3, 3), np.float32))


def test_tbptt_windows_are_the_text_tasks_windows():
    """TBPTT builds from pushed chunks the batches the text task reads from its text:
    the same inputs, loss mask, scored targets and carry step, so both are one trainer
    step on the same window."""
    from unrolled.tasks.text import tbptt_window
    from unrolled.train import Trainer

    streams = stream_batches(np.arange(103) % 7, batch_size=3, chunk=4)
    model = u.Sequential(u.Embedding(7, 3, seed=0), u.LSTM(3, 4, seed=0),
                         u.Dense(4, 7, seed=0))
    tb = TBPTT(model, "cross_entropy", u.SGD(0.0), 4, 10)
    assert isinstance(tb.trainer, Trainer) and tb.trainer.policy.require_sequences
    n = 0
    for i, (X, Y) in enumerate(streams):
        b = tb.window(X, Y)
        Xr, Yr, lm, at = tbptt_window(streams, i, 10)
        assert np.array_equal(b.X, Xr) and b.carry_at == at, i
        if lm is None:
            assert b.loss_mask is None and np.array_equal(b.Y, Yr)
        else:
            assert np.array_equal(b.loss_mask, lm) and np.array_equal(b.Y[lm], Yr[lm])
            n += 1
    assert n == len(streams) - 1  # every window but the first repeats earlier steps
