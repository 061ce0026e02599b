"""LSTM and GRU with hard-sigmoid gates, as old Keras files have them.

    hard_sigmoid(x) = clip(slope · x + 0.5, 0, 1)

``slope=0.2`` is Keras 2's (and tf.keras's before 2.16) ``hard_sigmoid``, the default
``recurrent_activation`` of Keras 2's ``LSTM`` and ``GRU``; Keras 3's ``hard_sigmoid`` is
``relu6(x + 3) / 6``, i.e. ``slope=1/6``. The gates of the ``lstm``/``gru`` cells become
hard sigmoids (their ``gate`` and ``gate_back``); everything else is their step. Written
with ``relu``: ``clip(y, 0, 1) = 1 - relu(1 - relu(y))``, so it compiles like the plain
cells; its derivative is ``slope`` where the output is strictly between 0 and 1, else 0
(at the two kinks it takes the saturated side's 0, as Keras's clip does).
"""
from dataclasses import dataclass

from .base import register
from .gru import GRUCell
from .lstm import LSTMCell
from .ops import relu


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


class _HardGates:
    """The gates of the cell it is mixed into become hard sigmoids of ``slope``."""

    def __post_init__(self):
        _check_slope(self.slope)

    def gate(self, a):
        return hard_sigmoid(a, self.slope)

    def gate_back(self, d, s):
        return through_hard_sigmoid(d, s, self.slope)


@register
@dataclass(frozen=True)
class HardSigmoidLSTMCell(_HardGates, LSTMCell):
    """LSTM whose gates i, f, o are hard sigmoids (Keras 2's default LSTM)."""

    slope: float = 0.2
    name = "hard_sigmoid_lstm"


@register
@dataclass(frozen=True)
class HardSigmoidGRUCell(_HardGates, GRUCell):
    """GRU whose gates r, z are hard sigmoids (Keras 2's default GRU: ``reset_after=False``
    there, both modes here)."""

    slope: float = 0.2
    name = "hard_sigmoid_gru"
