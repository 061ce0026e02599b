"""Peephole LSTM (Gers & Schmidhuber 2000; ONNX's ``P`` input): the input and forget
gates also see c_(t-1), the output gate sees c_t, through one weight vector each.

    i = σ(x_i + r_i + p_i ⊙ c_(t-1)),  f = σ(x_f + r_f + p_f ⊙ c_(t-1)),  g = tanh(x_g + r_g)
    c_t = f ⊙ c_(t-1) + i ⊙ g,         o = σ(x_o + r_o + p_o ⊙ c_t),      h_t = o ⊙ tanh(c_t)

The worked example of docs/cells.md ("Adding a cell").
"""
from dataclasses import dataclass

from .base import Cell, register
from .ops import sigmoid, tanh


@register
@dataclass(frozen=True)
class PeepholeLSTMCell(Cell):
    name = "peephole_lstm"
    state = ("h", "c")
    gate_names = ("i", "f", "g", "o")
    cache = ("i", "f", "g", "o", "tanh_c")
    units = ("peephole_i", "peephole_f", "peephole_o")

    def forward(self, x, r, s, u):
        c_prev = s[1]
        i = sigmoid(x[0] + r[0] + u[0] * c_prev)
        f = sigmoid(x[1] + r[1] + u[1] * c_prev)
        g = tanh(x[2] + r[2])
        c = f * c_prev + i * g
        o = sigmoid(x[3] + r[3] + u[2] * c)
        tc = tanh(c)
        return (o * tc, c), (i, f, g, o, tc)

    def backward(self, d, s, new, cache, u):
        dh, dc = d
        c_prev, c = s[1], new[1]
        i, f, g, o, tc = cache
        do = dh * tc * (o * (1 - o))                   # output gate pre-activation
        dct = dc + dh * o * (1 - tc * tc) + do * u[2]  # into c_t, also through p_o
        di = dct * g * (i * (1 - i))
        df = dct * c_prev * (f * (1 - f))
        dg = dct * i * (1 - g * g)
        dz = (di, df, dg, do)
        d_c_prev = dct * f + di * u[0] + df * u[1]
        return dz, dz, (0.0, d_c_prev), (di * c_prev, df * c_prev, do * c)
