"""One time step of each cell: forward and hand-derived backward, side by side.

A cell is a small frozen object holding only its configuration (activation, reset
placement, ...). Its methods are pure functions on arrays; the time loop in
:mod:`unrolled.unroll` calls them and owns all state. The contract:

``param_shapes(input_size, hidden_size)``
    ``{name: shape}``; always ``weight_ih (G*H, D)``, ``bias_ih (G*H,)`` (the input
    projection, hoisted out of the loop by the loop itself) plus the cell's own.
``state_sizes(hidden_size)``
    the width of each state component, e.g. ``(H,)`` or ``(H, H)`` for ``(h, c)``.
``prepare(params, xp)``
    derived arrays used in every step (contiguous transposes), computed once per call.
``step(p, xw, state, xp) -> (new_state, cache)``
    one step; ``xw`` is this step's input projection ``x_t W_ih^T + b_ih`` (B, G*H).
``step_back(p, cache, prev, new, dnew, xp) -> (dxw, dprev, saved)``
    the chain rule through that step; ``saved`` holds per-step arrays the cell wants
    stacked over time for :meth:`weight_grads`.
``weight_grads(p, prev_states, tape, dXW, saved, xp) -> {name: grad}``
    gradients of every parameter except the input projection, as matrix products over
    the whole tape (T*B rows at once), never per step.

A cell with ``fast = True`` also runs on the fast loop (see :mod:`unrolled.kernels`):
``tape_shapes``/``saved_shapes``/``workspace`` size its preallocated buffers,
``step_into``/``step_back_into`` write into them, ``recurrent_grad_rows(dXW, saved)``
gives the rows whose products with the previous states are dW_hh (their sum db_hh),
and ``loop_kind``/``loop_params(p)`` name its step in the compiled loop
(:mod:`unrolled.kernels.loop_numba`; ``loop_kind = None`` keeps it step by step).
"""
from .elman import ElmanCell
from .gru import GRUCell
from .jordan import JordanCell
from .lstm import LSTMCell

__all__ = ["ElmanCell", "GRUCell", "JordanCell", "LSTMCell"]
