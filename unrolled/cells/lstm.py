"""LSTM cell, gate blocks in PyTorch's order (input, forget, cell, output).

    [i, f, g, o] = [σ, σ, tanh, σ](x_t W_ihᵀ + b_ih + h_(t-1) W_hhᵀ + b_hh)
    c_t = f ⊙ c_(t-1) + i ⊙ g          (the linear path the gradient survives on)
    h_t = o ⊙ tanh(c_t)
"""
from dataclasses import dataclass

from .base import Cell, register
from .ops import sigmoid, tanh


@register
@dataclass(frozen=True)
class LSTMCell(Cell):
    name = "lstm"
    state = ("h", "c")
    gate_names = ("i", "f", "g", "o")
    cache = ("i", "f", "g", "o", "tanh_c")

    def forward(self, x, r, s, u):
        i = self.gate(x[0] + r[0])
        f = self.gate(x[1] + r[1])
        g = tanh(x[2] + r[2])
        o = self.gate(x[3] + r[3])
        c = f * s[1] + i * g
        tc = tanh(c)
        return (o * tc, c), (i, f, g, o, tc)

    def backward(self, d, s, new, cache, u):
        dh, dc = d
        i, f, g, o, tc = cache
        dct = dc + dh * o * (1 - tc * tc)  # total gradient into c_t
        dz = (self.gate_back(dct * g, i),     # input gate
              self.gate_back(dct * s[1], f),  # forget gate
              dct * i * (1 - g * g),          # candidate
              self.gate_back(dh * tc, o))     # output gate
        return dz, dz, (0.0, dct * f), ()


@register
@dataclass(frozen=True)
class ZoneoutLSTMCell(LSTMCell):
    """LSTM with zoneout (Krueger et al. 2017): each unit of h and of c keeps its previous
    value where its mask is 1. The masks are per-step inputs (``noise``): drawn with
    probability p in training, p itself (their expectation) at evaluation.

        c̃ = f ⊙ c_(t-1) + i ⊙ g,   c_t = z_c ⊙ c_(t-1) + (1 - z_c) ⊙ c̃
        h_t = z_h ⊙ h_(t-1) + (1 - z_h) ⊙ o ⊙ tanh(c̃)
    """

    name = "zoneout_lstm"
    noise = ("zh", "zc")
    cache = ("i", "f", "g", "o", "tanh_c", "zh", "zc")

    def forward(self, x, r, s, u):
        i = sigmoid(x[0] + r[0])
        f = sigmoid(x[1] + r[1])
        g = tanh(x[2] + r[2])
        o = sigmoid(x[3] + r[3])
        zh, zc = x[4], x[5]
        c = f * s[1] + i * g
        tc = tanh(c)
        return (zh * s[0] + (1 - zh) * (o * tc), zc * s[1] + (1 - zc) * c), \
            (i, f, g, o, tc, zh, zc)

    def backward(self, d, s, new, cache, u):
        dh, dc = d
        i, f, g, o, tc, zh, zc = cache
        dhh = dh * (1 - zh)                               # into o ⊙ tanh(c̃)
        dct = dc * (1 - zc) + dhh * o * (1 - tc * tc)     # into c̃
        dz = (dct * g * (i * (1 - i)), dct * s[1] * (f * (1 - f)),
              dct * i * (1 - g * g), dhh * tc * (o * (1 - o)))
        return dz, dz, (dh * zh, dc * zc + dct * f), ()
