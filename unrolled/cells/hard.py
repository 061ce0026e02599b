"""LSTM and GRU with hard-sigmoid gates, as old Keras files have them.

    hard_sigmoid(x) = clip(slope · x + 0.5, 0, 1)

``slope=0.2`` is Keras 2's (and tf.keras's before 2.16) ``hard_sigmoid``, the default
``recurrent_activation`` of Keras 2's ``LSTM`` and ``GRU``; Keras 3's ``hard_sigmoid`` is
``relu6(x + 3) / 6``, i.e. ``slope=1/6``. The gates of the ``lstm``/``gru`` cells become
hard sigmoids; everything else is the same step. Written with ``relu``:
``clip(y, 0, 1) = 1 - relu(1 - relu(y))``, so it compiles like the plain cells; its
derivative is ``slope`` where the output is strictly between 0 and 1, else 0 (at the two
kinks it takes the saturated side's 0, as Keras's clip does).
"""
from dataclasses import dataclass

from .base import register
from .gru import GRUCell
from .lstm import LSTMCell
from .ops import relu, tanh


def hard_sigmoid(x, slope):
    """clip(slope · x + 0.5, 0, 1), as 1 - relu(1 - relu(y)): exactly 0 and 1 where it
    clips (relu(y) - relu(y - 1) would give 1 - 2⁻⁵³ for some y > 1, and a gradient there)."""
    y = slope * x + 0.5
    return 1 - relu(1 - relu(y))


def through_hard_sigmoid(d, s, slope):
    """``d`` times d hard_sigmoid / dx, from its output ``s``: slope inside (0, 1), 0 where
    clipped (written left to right so that ``d``'s precision is kept)."""
    return d * (s > 0) * (s < 1) * slope


def _check_slope(slope):
    if not isinstance(slope, (int, float)) or not slope > 0:
        raise ValueError(f"slope must be a positive number (0.2: Keras 2's hard_sigmoid, "
                         f"1/6: Keras 3's), got {slope!r}")


@register
@dataclass(frozen=True)
class HardSigmoidLSTMCell(LSTMCell):
    """LSTM whose gates i, f, o are hard sigmoids (Keras 2's default LSTM)."""

    slope: float = 0.2
    name = "hard_sigmoid_lstm"

    def __post_init__(self):
        _check_slope(self.slope)

    def forward(self, x, r, s, u):
        a = self.slope
        i = hard_sigmoid(x[0] + r[0], a)
        f = hard_sigmoid(x[1] + r[1], a)
        g = tanh(x[2] + r[2])
        o = hard_sigmoid(x[3] + r[3], a)
        c = f * s[1] + i * g
        tc = tanh(c)
        return (o * tc, c), (i, f, g, o, tc)

    def backward(self, d, s, new, cache, u):
        dh, dc = d
        i, f, g, o, tc = cache
        a = self.slope
        dct = dc + dh * o * (1 - tc * tc)
        dz = (through_hard_sigmoid(dct * g, i, a),
              through_hard_sigmoid(dct * s[1], f, a),
              dct * i * (1 - g * g),
              through_hard_sigmoid(dh * tc, o, a))
        return dz, dz, (0.0, dct * f), ()


@register
@dataclass(frozen=True)
class HardSigmoidGRUCell(GRUCell):
    """GRU whose gates r, z are hard sigmoids (Keras 2's default GRU: ``reset_after=False``
    there, both modes here)."""

    slope: float = 0.2
    name = "hard_sigmoid_gru"

    def __post_init__(self):
        _check_slope(self.slope)

    def forward(self, x, r, s, u):
        a = self.slope
        rg = hard_sigmoid(x[0] + r[0], a)
        z = hard_sigmoid(x[1] + r[1], a)
        hn = r[2]
        n = tanh(x[2] + rg * hn)
        return (n + z * (s[0] - n),), (rg, z, n, hn)

    def backward(self, d, s, new, cache, u):
        dh = d[0]
        rg, z, n, hn = cache
        a = self.slope
        dn = dh * (1 - z) * (1 - n * n)
        dr = through_hard_sigmoid(dn * hn, rg, a)
        du = through_hard_sigmoid(dh * (s[0] - n), z, a)
        return (dr, du, dn), (dr, du, dn * rg), (dh * z,), ()

    # -- the reset before the product (on whole arrays, as GRUCell) -----------------------
    def step(self, p, xw, state, xp):
        if self.reset_after:
            return super().step(p, xw, state, xp)
        h = state[0]
        H = h.shape[-1]
        rz = hard_sigmoid(xw[:, :2 * H] + h @ p["W_rzT"] + p["bias_hh"][:2 * H], self.slope)
        r, z = rz[:, :H], rz[:, H:]
        n = tanh(xw[:, 2 * H:] + (r * h) @ p["W_nT"] + p["bias_hh"][2 * H:])
        return (n + z * (h - n),), {"r": r, "z": z, "n": n}

    def step_back(self, p, cache, prev, new, dnew, xp):
        if self.reset_after:
            return super().step_back(p, cache, prev, new, dnew, xp)
        dh, h = dnew[0], prev[0]
        r, z, n = cache["r"], cache["z"], cache["n"]
        H = dh.shape[-1]
        W = p["weight_hh"]
        a = self.slope
        dxw = xp.empty(h.shape[:-1] + (3 * H,), dtype=h.dtype)
        dan = dh * (1 - z) * (1 - n * n)
        dxw[:, H:2 * H] = through_hard_sigmoid(dh * (h - n), z, a)
        dxw[:, 2 * H:] = dan
        drh = dan @ W[2 * H:]
        dxw[:, :H] = through_hard_sigmoid(drh * h, r, a)
        dprev = dh * z + drh * r + dxw[:, :2 * H] @ W[:2 * H]
        return dxw, (dprev,), {}
