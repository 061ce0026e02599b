"""Elman (vanilla) cell: a_t = x_t W_ihᵀ + b_ih + h_(t-1) W_hhᵀ + b_hh;  h_t = act(a_t)."""
from dataclasses import dataclass

from .base import Cell, register
from .ops import relu, tanh


@register
@dataclass(frozen=True)
class ElmanCell(Cell):
    nonlinearity: str = "tanh"
    name = "elman"

    def __post_init__(self):
        if self.nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {self.nonlinearity!r}")

    def forward(self, x, r, s, u):
        a = x[0] + r[0]
        return ((tanh(a) if self.nonlinearity == "tanh" else relu(a)),), ()

    def backward(self, d, s, new, cache, u):
        h = new[0]
        # through the nonlinearity, written with the output h_t
        da = d[0] * (1 - h * h) if self.nonlinearity == "tanh" else d[0] * (h > 0)
        return (da,), (da,), (0.0,), ()
