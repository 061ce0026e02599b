"""Keras layouts both ways: against the documented Keras equations written out here, and
against Keras itself (torch backend) where it is installed."""

import numpy as np
import pytest
from helpers import rel_err

from unrolled.interop import from_keras, from_keras_weights, to_keras_weights

D, H, B, T = 3, 4, 2, 5
KERAS_TOL = 1e-6


def sig(x):
    return 1 / (1 + np.exp(-x))


def keras_reference(kind, w, X, reset_after=True, activation="tanh"):
    """Keras's recurrent layers from their documented equations (gate order z|r|h, i|f|c|o)."""
    kernel, rec, bias = w
    h = np.zeros((X.shape[0], rec.shape[0]))
    c = np.zeros_like(h)
    outs = []
    for t in range(X.shape[1]):
        x = X[:, t]
        if kind == "SimpleRNN":
            a = x @ kernel + h @ rec + bias
            h = np.tanh(a) if activation == "tanh" else np.maximum(a, 0)
        elif kind == "LSTM":
            zz = x @ kernel + h @ rec + bias
            i, f, g, o = np.split(zz, 4, axis=1)
            c = sig(f) * c + sig(i) * np.tanh(g)
            h = sig(o) * np.tanh(c)
        else:
            bx, bh = (bias[0], bias[1]) if reset_after else (bias, 0 * bias)
            xz, xr, xh = np.split(x @ kernel + bx, 3, axis=1)
            Uz, Ur, Uh = np.split(rec, 3, axis=1)
            bhz, bhr, bhh = np.split(bh, 3)
            z = sig(xz + h @ Uz + bhz)
            r = sig(xr + h @ Ur + bhr)
            if reset_after:
                hh = np.tanh(xh + r * (h @ Uh + bhh))
            else:
                hh = np.tanh(xh + (r * h) @ Uh)
            h = z * h + (1 - z) * hh
        outs.append(h)
    return np.stack(outs, 1)


def random_weights(kind, reset_after=True, seed=0):
    rng = np.random.default_rng(seed)
    G = {"SimpleRNN": 1, "LSTM": 4, "GRU": 3}[kind]
    bias = rng.standard_normal((2, G * H) if kind == "GRU" and reset_after else G * H)
    return [rng.standard_normal((D, G * H)), rng.standard_normal((H, G * H)), bias]


CASES = [("SimpleRNN", True, "tanh"), ("SimpleRNN", True, "relu"), ("LSTM", True, "tanh"),
         ("GRU", True, "tanh"), ("GRU", False, "tanh")]


@pytest.mark.parametrize("kind,reset_after,act", CASES)
def test_keras_layout_matches_documented_equations(kind, reset_after, act):
    w = random_weights(kind, reset_after)
    X = np.random.default_rng(1).standard_normal((B, T, D))
    layer = from_keras_weights(kind, w, activation=act)
    assert layer.dtype == "float64"
    ref = keras_reference(kind, w, X, reset_after, act)
    assert rel_err(layer(X), ref) < 1e-12
    back = to_keras_weights(layer)
    for a, b in zip(back, w):
        assert rel_err(a, b) < 1e-15


def test_refuses_mismatched_layouts():
    w = random_weights("GRU", reset_after=True)
    with pytest.raises(ValueError, match="reset_after=True layout"):
        from_keras_weights("GRU", w, reset_after=False)
    with pytest.raises(ValueError, match="looks like a LSTM"):
        from_keras_weights("GRU", random_weights("LSTM"))
    with pytest.raises(ValueError, match="kernel of shape"):
        from_keras_weights("LSTM", [np.zeros((3, 8)), np.zeros((4, 16)), np.zeros(16)])
    with pytest.raises(ValueError, match="one of"):
        from_keras_weights("ConvLSTM", w)


def test_bidirectional_weights():
    wf, wb = random_weights("LSTM", seed=1), random_weights("LSTM", seed=2)
    layer = from_keras_weights("LSTM", wf, backward_weights=wb)
    X = np.random.default_rng(3).standard_normal((B, T, D))
    out = layer(X)
    assert rel_err(out[..., :H], keras_reference("LSTM", wf, X)) < 1e-12
    assert rel_err(out[..., H:], keras_reference("LSTM", wb, X[:, ::-1])[:, ::-1]) < 1e-12
    assert len(to_keras_weights(layer)) == 6


@pytest.mark.parametrize("kind,reset_after,act", CASES)
def test_against_keras_itself(keras, kind, reset_after, act):
    kw = {"reset_after": reset_after} if kind == "GRU" else {}
    if kind == "SimpleRNN":
        kw["activation"] = act
    kl = getattr(keras.layers, kind)(H, return_sequences=True, dtype="float64", **kw)
    # inputs exactly representable in float32: Keras may pass them through its floatx
    X = np.random.default_rng(4).standard_normal((B, T, D)).astype("float32").astype("float64")
    kl(X)  # build
    kl.set_weights(random_weights(kind, reset_after, seed=5))
    ref = np.asarray(kl(X).cpu().detach())
    layer = from_keras(kl)
    # Keras's generic recurrent path (SimpleRNN, GRU without reset_after) rounds through
    # float32 somewhere even for float64 layers (~1e-7 relative; its fused LSTM/GRU path
    # agrees to 1e-15); a wrong layout would be off by O(1), so 1e-6 still decides
    assert rel_err(layer(X), ref) < KERAS_TOL
    # and back: our weights loaded into a fresh Keras layer give the same outputs
    k2 = getattr(keras.layers, kind)(H, return_sequences=True, dtype="float64", **kw)
    k2(X)
    k2.set_weights(to_keras_weights(layer))
    assert rel_err(np.asarray(k2(X).cpu().detach()), ref) < KERAS_TOL


def test_against_keras_bidirectional(keras):
    bi = keras.layers.Bidirectional(keras.layers.GRU(H, return_sequences=True, dtype="float64"))
    X = np.random.default_rng(6).standard_normal((B, T, D)).astype("float32").astype("float64")
    ref = np.asarray(bi(X).cpu().detach())
    layer = from_keras(bi)
    assert rel_err(layer(X), ref) < KERAS_TOL
