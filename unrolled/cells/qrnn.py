"""QRNN with fo-pooling (Bradbury et al. 2016): the gates come from a width-2
convolution of the input alone, and the recurrence is elementwise.

    [z, f, o] = [tanh, σ, σ]([x_t, x_(t−1)] W_ihᵀ + b_ih)     (the convolution, over all T)
    c_t = f ⊙ c_(t−1) + (1 − f) ⊙ z,        h_t = o ⊙ c_t

The cell sees the window [x_t, x_(t−1)] as its input; the layer (:class:`unrolled.QRNN`)
builds it. No recurrent product: every matrix product runs over all T steps at once.
"""
from dataclasses import dataclass

from .base import Cell, register
from .ops import sigmoid, tanh


@register
@dataclass(frozen=True)
class QRNNCell(Cell):
    name = "qrnn"
    state = ("h", "c")
    gate_names = ("z", "f", "o")
    cache = ("z", "f", "o")
    recurrent = False
    window = 2  # the layer feeds [x_t, x_(t-1)]

    def forward(self, x, r, s, u):
        z, f, o = tanh(x[0]), sigmoid(x[1]), sigmoid(x[2])
        c = f * s[1] + (1 - f) * z
        return (o * c, c), (z, f, o)

    def backward(self, d, s, new, cache, u):
        z, f, o = cache
        dh, dc = d
        c = new[1]
        dct = dc + dh * o
        return ((dct * (1 - f) * (1 - z * z), dct * (s[1] - z) * (f * (1 - f)),
                 dh * c * (o * (1 - o))), (), (0.0, dct * f), ())
