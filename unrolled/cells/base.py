"""What a cell is: its parameters, its named state, and one step written once.

A cell file declares

``state``       the names of the state components, e.g. ``("h", "c")``; ``h`` (the first)
                is the output and the input of the recurrent product.
``gate_names``  the blocks of the pre-activation, each ``hidden_size`` wide: the input
                projection ``x_t W_ihᵀ + b_ih`` and the recurrent product
                ``h_(t-1) W_hhᵀ + b_hh`` are both ``len(gate_names) * H`` wide.
``cache``       what the forward keeps per unit for the backward (the tape).
``units``       extra parameters, one vector of ``H`` per name (peepholes, ...).
``tied``        True where every gate's pre-activation is the sum of its two parts
                (``x + r``): then both biases fold into the input projection and one
                gradient serves both products (LSTM, Elman). False (GRU): the backward
                also gives the gradient of the recurrent part on its own.
``noise``       per-step inputs that are not learned (zoneout's masks), one block of H
                each, handed to ``forward`` after the gates in ``x`` (``x[G + k]``); the
                layer draws them (training) or sets their expectation (evaluation).
``recurrent``   False for a cell with no recurrent product at all (MinGRU, SRU, QRNN):
                no ``weight_hh``/``bias_hh``, ``r`` and ``dr`` are empty tuples, and the
                only link between steps is the cell's own per-unit arithmetic, so
                every product of the layer runs over all T steps at once.

and writes the arithmetic of one hidden unit once, with :mod:`unrolled.cells.ops`::

    def forward(self, x, r, s, u):       # gate parts, states, unit params (tuples)
        return new_states, cache
    def backward(self, d, s, new, c, u):  # d: gradient w.r.t. the new states
        return dx, dr, d_prev, du        # dx, dr per gate; d_prev per state; du per unit

``d_prev`` is only the unit's own path to the previous state: the loop adds the
recurrent product's share ``dr W_hh`` to ``d_prev[0]`` itself. The loop derives
everything else from these two functions: the readable step on whole arrays (below),
the compiled loop (:mod:`unrolled.kernels.compiled`), the GPU kernels, the weight
gradients and the generated tests. A cell whose step is not a per-unit function of two
products (Jordan's output layer, the GRU with the reset before the product) instead
overrides ``step``/``step_back``/``weight_grads`` and runs on the readable loop.
"""
import math

import numpy as np

from . import ops as _ops

REGISTRY = {}


def register(cls):
    """Class decorator: make ``cls`` known by its ``name`` to every part of the library
    (layers by name, saving and loading, the command line, the generated tests)."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"{cls.__name__} needs a `name` (a string) to be registered")
    old = REGISTRY.get(name)
    if old is not None and (old.__module__, old.__qualname__) != (cls.__module__,
                                                                  cls.__qualname__):
        raise ValueError(f"a cell named {name!r} is already registered ({old.__qualname__})")
    REGISTRY[name] = cls
    return cls


def get(name):
    """The registered cell class called ``name``."""
    try:
        return REGISTRY[str(name).lower()]
    except KeyError:
        raise ValueError(f"unknown cell {name!r}; registered cells: "
                         f"{', '.join(sorted(REGISTRY))}") from None


def _full(v, like, xp):
    """``v`` (an array or a number) as a new array shaped like ``like``."""
    if getattr(v, "shape", None) == like.shape:
        return v
    return xp.broadcast_to(xp.asarray(v, dtype=like.dtype), like.shape).copy()


class Cell:
    """Base of every cell. Subclasses are frozen dataclasses holding only configuration."""

    name = None
    state = ("h",)
    gate_names = ("a",)
    cache = ()
    units = ()
    tied = True
    recurrent = True
    noise = ()
    forward = None   # the per-unit step (see the module doc)
    backward = None  # its hand-derived backward

    # -- declarations --------------------------------------------------------------------
    @property
    def gates(self):
        return len(self.gate_names)

    def gate(self, a):
        """The squashing of a gate (the LSTM's i, f, o; the GRU's r, z): σ. A variant with
        other gates overrides this and :meth:`gate_back` (see ``cells/hard.py``)."""
        return _ops.sigmoid(a)

    def gate_back(self, d, s):
        """``d`` times the derivative of :meth:`gate`, from the gate's output ``s``."""
        return d * (s * (1 - s))

    def compiles(self):
        """Whether the compiled loop can run this cell (it has a per-unit definition)."""
        return self.forward is not None and self.backward is not None

    def param_shapes(self, input_size, hidden_size):
        G = self.gates * hidden_size
        shapes = {"weight_ih": (G, input_size), "weight_hh": (G, hidden_size),
                  "bias_ih": (G,), "bias_hh": (G,)}
        if not self.recurrent:
            del shapes["weight_hh"], shapes["bias_hh"]
        shapes.update({k: (hidden_size,) for k in self.units})
        return shapes

    def init_param(self, key, shape, rng, hidden_size):
        """The initial value of one parameter (PyTorch's U(-1/√H, 1/√H) by default)."""
        bound = 1.0 / math.sqrt(hidden_size)
        return rng.uniform(-bound, bound, shape)

    def state_sizes(self, hidden_size):
        return (hidden_size,) * len(self.state)

    def prepare(self, params, xp):
        """Arrays derived once per call: the transposed recurrent weight (a view) and the
        biases as the compiled loop folds them (``bias_x`` into the input projection,
        ``bias_r`` added to the recurrent product where a gate's parts are not summed)."""
        if not self.recurrent:  # nothing to fold; an empty recurrent weight for the loop
            b = params["bias_ih"]
            return {**params, "W_hhT": xp.zeros((0, 0), b.dtype),
                    "weight_hh": xp.zeros((0, 0), b.dtype), "bias_x": b, "bias_r": None}
        # a view: the compiled loop packs from it and the readable one multiplies through
        # it (BLAS takes the transpose), so no copy of W_hh is made per call
        p = {**params, "W_hhT": params["weight_hh"].T}
        if self.tied:
            p["bias_x"], p["bias_r"] = params["bias_ih"] + params["bias_hh"], None
        else:
            p["bias_x"], p["bias_r"] = params["bias_ih"], params["bias_hh"]
        return p

    # -- the readable step, derived from forward/backward ---------------------------------
    def _split(self, a, n=None):
        n = self.gates if n is None else n
        H = a.shape[-1] // n
        return tuple(a[..., k * H:(k + 1) * H] for k in range(n))

    def noise_expectation(self, k):
        """The value of noise input ``k`` at evaluation (its expectation): 0 by default."""
        return 0.0

    def step(self, p, xw, state, xp):
        """One step on whole arrays: ``xw`` (B, G*H) is ``x_t W_ihᵀ + b_ih``."""
        hin = state[0] if p.get("h_mask") is None else state[0] * p["h_mask"]
        r = self._split(hin @ p["W_hhT"] + p["bias_hh"]) if self.recurrent else ()
        u = tuple(p[k] for k in self.units)
        if self.noise and xw.shape[-1] == self.gates * state[0].shape[-1]:
            # called without the noise blocks (a single step, the memory planner): their
            # expectation
            xw = xp.concatenate([xw] + [xp.full(state[0].shape, self.noise_expectation(k),
                                                xw.dtype) for k in range(len(self.noise))], -1)
        new, cache = self.forward(self._split(xw, self.gates + len(self.noise)), r,
                                  tuple(state), u)
        new = tuple(_full(v, state[0], xp) for v in new)
        return new, {k: _full(v, state[0], xp) for k, v in zip(self.cache, cache)}

    def step_back(self, p, cache, prev, new, dnew, xp):
        """The chain rule through one step: ``(dxw, dprev, saved)``."""
        like = prev[0]
        u = tuple(p[k] for k in self.units)
        c = tuple(cache[k] for k in self.cache)
        dx, dr, dp, du = self.backward(tuple(dnew), tuple(prev), tuple(new), c, u)
        dxw = xp.concatenate([_full(v, like, xp) for v in dx], axis=-1)
        dprev = [_full(v, like, xp) for v in dp]
        saved = {}
        if self.recurrent:
            rows = dxw if self.tied else xp.concatenate([_full(v, like, xp) for v in dr], -1)
            back = rows @ p["weight_hh"]
            dprev[0] = dprev[0] + (back if p.get("h_mask") is None else back * p["h_mask"])
            if not self.tied:
                saved["dR"] = rows
        for k, v in zip(self.units, du):
            saved["d_" + k] = _full(v, like, xp)
        return dxw, tuple(dprev), saved

    def supports_recurrent_mask(self):
        """Whether the step applies ``p["h_mask"]`` (recurrent dropout) to h_(t-1) in the
        recurrent product: every cell that uses this class's step."""
        return (self.recurrent and type(self).step is Cell.step
                and type(self).step_back is Cell.step_back)

    def recurrent_grad_rows(self, dXW, saved):
        """The rows whose products with the previous states give dW_hh (sums: db_hh)."""
        return dXW if self.tied else saved["dR"]

    def weight_grads(self, p, prev_states, tape, dXW, saved, xp):
        """Every parameter's gradient but the input projection's, over all rows at once."""
        H = prev_states[0].shape[-1]
        g = {}
        if self.recurrent:
            R = self.recurrent_grad_rows(dXW, saved)
            R = R.reshape(-1, R.shape[-1])
            hin = prev_states[0] if p.get("h_mask") is None else prev_states[0] * p["h_mask"]
            g = {"weight_hh": R.T @ hin.reshape(-1, H), "bias_hh": R.sum(0)}
        for k in self.units:
            g[k] = saved["d_" + k].reshape(-1, H).sum(0)
        return g
