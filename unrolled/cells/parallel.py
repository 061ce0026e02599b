"""Cells with no recurrent product: every matrix product runs over all T steps at once.

The only link between steps is per-unit arithmetic (a gated running average), so a
layer's products are one input projection before the loop and one weight gradient after
it, and the compiled loop between them is a fused elementwise scan — cheap against a
step of an LSTM, whose every step waits for an (B, H)·(H, 4H) product.

MinGRU and MinLSTM (Feng et al. 2024, "Were RNNs all we needed?"):

    minGRU:   z = σ(x_z),  h̃ = x_h,            h_t = (1 − z) ⊙ h_(t−1) + z ⊙ h̃
    minLSTM:  f = σ(x_f),  i = σ(x_i),  h̃ = x_h,
              h_t = (f ⊙ h_(t−1) + i ⊙ h̃) / (f + i)      (normalised gates f', i')

SRU (Lei et al. 2018), with a projected highway so that input and hidden sizes may differ:

    f = σ(x_f + v_f ⊙ c_(t−1)),  r = σ(x_r + v_r ⊙ c_(t−1))
    c_t = f ⊙ c_(t−1) + (1 − f) ⊙ x_w,      h_t = r ⊙ c_t + (1 − r) ⊙ x_s

(x_· are the blocks of the input projection x_t W_ihᵀ + b_ih.)
"""
from dataclasses import dataclass

from .base import Cell, register
from .ops import sigmoid


@register
@dataclass(frozen=True)
class MinGRUCell(Cell):
    name = "mingru"
    gate_names = ("z", "h")
    cache = ("z",)
    recurrent = False

    def forward(self, x, r, s, u):
        z = sigmoid(x[0])
        return ((1 - z) * s[0] + z * x[1],), (z,)

    def backward(self, d, s, new, cache, u):
        (z,), dh = cache, d[0]
        # h̃ = (h_t − (1 − z) h_(t−1)) / z is not needed: dz uses h̃ − h_(t−1) = (h_t − h_(t−1)) / z
        dz = dh * (new[0] - s[0]) * (1 - z)  # = dh (h̃ − h_(t−1)) z (1 − z)
        return (dz, dh * z), (), (dh * (1 - z),), ()

    # h_t = a_t h_(t-1) + b_t with a, b from the input alone: trains in parallel over time
    def linear(self, x):
        z = sigmoid(x[0])
        return 1 - z, z * x[1]

    def linear_back(self, x, da, db):
        z = sigmoid(x[0])
        return ((db * x[1] - da) * (z * (1 - z)), db * z)


@register
@dataclass(frozen=True)
class MinLSTMCell(Cell):
    name = "minlstm"
    gate_names = ("f", "i", "h")
    cache = ("f", "i", "h_tilde")
    recurrent = False

    def forward(self, x, r, s, u):
        f, i = sigmoid(x[0]), sigmoid(x[1])
        return ((f * s[0] + i * x[2]) / (f + i),), (f, i, x[2])

    def backward(self, d, s, new, cache, u):
        f, i, ht = cache
        dh, a = d[0], s[0]
        q = dh / ((f + i) * (f + i))
        return ((q * i * (a - ht) * (f * (1 - f)), q * f * (ht - a) * (i * (1 - i)),
                 dh * i / (f + i)), (), (dh * f / (f + i),), ())

    def linear(self, x):
        f, i = sigmoid(x[0]), sigmoid(x[1])
        return f / (f + i), i / (f + i) * x[2]

    def linear_back(self, x, da, db):
        f, i = sigmoid(x[0]), sigmoid(x[1])
        q = 1 / ((f + i) * (f + i))
        df = (da - db * x[2]) * i * q
        di = (db * x[2] - da) * f * q
        return (df * (f * (1 - f)), di * (i * (1 - i)), db * i / (f + i))


@register
@dataclass(frozen=True)
class SRUCell(Cell):
    name = "sru"
    state = ("h", "c")
    gate_names = ("w", "f", "r", "s")
    cache = ("f", "r", "x_w", "x_s")
    units = ("v_f", "v_r")
    recurrent = False

    def forward(self, x, r, s, u):
        c_prev = s[1]
        f = sigmoid(x[1] + u[0] * c_prev)
        rg = sigmoid(x[2] + u[1] * c_prev)
        c = f * c_prev + (1 - f) * x[0]
        return (rg * c + (1 - rg) * x[3], c), (f, rg, x[0], x[3])

    def backward(self, d, s, new, cache, u):
        f, rg, xw, xs = cache
        dh, dc = d
        c_prev, c = s[1], new[1]
        dr = dh * (c - xs) * (rg * (1 - rg))
        dct = dc + dh * rg
        df = dct * (c_prev - xw) * (f * (1 - f))
        d_c_prev = dct * f + df * u[0] + dr * u[1]
        return ((dct * (1 - f), df, dr, dh * (1 - rg)), (), (0.0, d_c_prev),
                (df * c_prev, dr * c_prev))
