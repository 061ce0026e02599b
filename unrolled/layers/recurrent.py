"""Recurrent layers: every cell, stacked and bidirectional, over the one time loop.

``Elman``, ``LSTM``, ``GRU`` and ``Jordan`` differ only in the cell they hand to
:mod:`unrolled.unroll`. Batch-first (B, T, D) arrays at the surface, time-major inside.
"""
import math

import numpy as np

from .. import memory as _memory
from .. import unroll
from ..backend import get_xp
from ..cells import (ElmanCell, GRUCell, JordanCell, LayerNormLSTMCell, LRUCell, LSTMCell,
                     MinGRUCell, MinLSTMCell, PeepholeLSTMCell, ProjLSTMCell, QRNNCell,
                     SRUCell, ZoneoutLSTMCell)
from ..cells import get as get_cell
from ..checks import check_dtype_name, check_finite, check_float_input, check_mask
from .base import Module, make_rng


def _orthogonal(rng, rows, cols):
    a = rng.standard_normal((max(rows, cols), min(rows, cols)))
    q, r = np.linalg.qr(a)
    q *= np.sign(np.diag(r))
    return q if rows >= cols else q.T


def reverse_index(mask, T, B, xp):
    """(T, B) permutation that reverses each record's valid steps in place (pads stay)."""
    t = xp.arange(T)[:, None].repeat(B, 1)
    if mask is None:
        return t[::-1].copy()
    rank = xp.cumsum(mask, 0) - 1                 # position among the valid steps
    n = mask.sum(0)                               # valid steps per record
    target_rank = (n - 1 - rank)                  # the valid step to swap with
    order = xp.argsort(~mask, axis=0, kind="stable")  # valid step positions first, in order
    swapped = xp.take_along_axis(order, xp.clip(target_rank, 0, T - 1), 0)
    return xp.where(mask, swapped, t)


def _gather_time(a, idx, xp):
    return a[idx, xp.arange(a.shape[1])[None, :]]


class Recurrent(Module):
    """A stack of recurrent layers over one cell.

    Parameters
    ----------
    cell : a cell from :mod:`unrolled.cells`, or the name of a registered one
        (``Recurrent("peephole_lstm", 8, 16)``).
    input_size, hidden_size : int
    num_layers : int, stacked layers (the output sequence of one is the input of the next).
    bidirectional : bool, run a second copy over each record reversed (valid steps only).
    dropout : float, dropout on the outputs of every layer but the last (training only).
    return_sequences : bool, True: outputs at every step (B, T, dirs*S);
        False: the output at each record's last valid step (B, dirs*S); for a bidirectional
        layer the forward final state next to the backward one (PyTorch's ``h_n``).
    bias : bool
    initial_state : "zeros", a float constant, or "learned" (a trainable ``h0``/``c0`` per
        layer and direction); a per-record state can also be given at call time.
    truncate : int or None, backpropagate through each record's last ``truncate`` steps only.
    memory : "full" (default: keep every step for the backward), "checkpoint" (keep the
        state every ~√T steps and recompute each segment in the backward: same gradients to
        rounding, peak memory O(√T) for about one extra forward), or a byte budget (int):
        full BPTT when it fits, else checkpoints as far apart as the budget allows. See
        :mod:`unrolled.memory`; a full unrolling that would not fit in memory is refused.
    recurrent_dropout : float, dropout on h_(t-1) where it enters the recurrent product
        (Gal & Ghahramani 2016): one mask per sequence (the same at every step), drawn per
        forward from the layer's seed, held for the backward; training only.
    input_dropout : float, dropout on each layer's input x_t with one mask per sequence
        (the same at every step; Keras's ``dropout``); training only.
    zoneout : float, for a cell with noise inputs (``LSTM(zoneout=p)``): each unit of each
        state keeps its previous value with this probability in training, and the
        expectation (p of the old value, 1 - p of the new) at evaluation.
    weight_drop : float, DropConnect on the recurrent weight W_hh (Merity et al. 2018): in
        training, each entry of W_hh is zeroed with this probability (the rest scaled by
        1/(1-p)), one mask per forward, drawn from the layer's seed; the backward uses
        the same mask. Evaluation uses W_hh itself.
    dtype : "float32" (default) or "float64".
    seed : int or None, for the initialisation and for dropout.
    input_init : "uniform" (PyTorch's U(-1/sqrt(H), 1/sqrt(H)), the default) or "glorot".
    recurrent_init : "uniform" (default) or "orthogonal" (per gate block).
    """

    recurrent = True

    def __init__(self, cell, input_size, hidden_size, num_layers=1, bidirectional=False,
                 dropout=0.0, return_sequences=True, bias=True, initial_state="zeros",
                 truncate=None, dtype="float32", seed=None, input_init="uniform",
                 recurrent_init="uniform", memory="full", weight_drop=0.0,
                 recurrent_dropout=0.0, input_dropout=0.0, zoneout=0.0):
        for what, v in (("input_size", input_size), ("hidden_size", hidden_size),
                        ("num_layers", num_layers)):
            if not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{what} must be a positive integer, got {v!r}")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        for what, v in (("weight_drop", weight_drop), ("recurrent_dropout", recurrent_dropout),
                        ("input_dropout", input_dropout), ("zoneout", zoneout)):
            if not 0 <= v < 1:
                raise ValueError(f"{what} must be in [0, 1), got {v}")
        if truncate is not None and (not isinstance(truncate, (int, np.integer)) or truncate < 1):
            raise ValueError(f"truncate must be a positive number of steps or None, got {truncate!r}")
        if not (initial_state in ("zeros", "learned") or isinstance(initial_state, (int, float))):
            raise ValueError("initial_state must be 'zeros', 'learned' or a number, got "
                             f"{initial_state!r}")
        if input_init not in ("uniform", "glorot"):
            raise ValueError(f"input_init must be 'uniform' or 'glorot', got {input_init!r}")
        if recurrent_init not in ("uniform", "orthogonal"):
            raise ValueError(f"recurrent_init must be 'uniform' or 'orthogonal', got {recurrent_init!r}")
        if isinstance(cell, str):
            cell = get_cell(cell)()
        self._cell = cell
        self.cell = cell.name
        self.input_size, self.hidden_size = int(input_size), int(hidden_size)
        self.num_layers, self.bidirectional = int(num_layers), bool(bidirectional)
        self.dropout, self.return_sequences, self.bias = float(dropout), return_sequences, bias
        self.weight_drop = float(weight_drop)
        if self.weight_drop and not getattr(cell, "recurrent", True):
            raise ValueError(f"weight_drop needs a recurrent weight; the {cell.name} cell has "
                             "none")
        self.recurrent_dropout, self.input_dropout = float(recurrent_dropout), float(input_dropout)
        if self.recurrent_dropout and not (hasattr(cell, "supports_recurrent_mask")
                                           and cell.supports_recurrent_mask()):
            raise ValueError(f"recurrent_dropout needs a cell whose recurrent product reads "
                             f"h_(t-1) directly; the {cell.name} cell "
                             f"({type(cell).__name__}) does not")
        # {name: mask} to reuse instead of drawing (gradient checks with fixed masks)
        self.fixed_weight_masks = None
        self.fixed_recurrent_masks = None
        self.fixed_input_masks = None
        self.zoneout = float(zoneout)
        if self.zoneout and not getattr(cell, "noise", ()):
            raise ValueError(f"zoneout needs a cell with zoneout masks (LSTM(zoneout=p)); the "
                             f"{cell.name} cell has none")
        self.fixed_noise = None
        self.initial_state, self.truncate = initial_state, truncate
        self.memory = _memory.check_memory_option(memory)
        self.dtype = check_dtype_name(dtype)
        self.seed = seed
        self.input_init, self.recurrent_init = input_init, recurrent_init
        self.state_sizes = cell.state_sizes(self.hidden_size)
        # a cell with a readout (LRU) outputs its own width, not its first state's
        width = (cell.output_width(self.hidden_size) if hasattr(cell, "readout")
                 else self.state_sizes[0])
        self.output_size = width * (2 if bidirectional else 1)
        init_rng, self.rng = make_rng(seed)
        self._params = self._init_params(init_rng)

    # -- parameters -----------------------------------------------------------------
    @property
    def names(self):
        """Parameter groups in PyTorch's order: l0, l0_reverse, l1, ..."""
        dirs = ("", "_reverse") if self.bidirectional else ("",)
        return [f"l{k}{d}" for k in range(self.num_layers) for d in dirs]

    def _layer_input_size(self, k):
        D = self.input_size if k == 0 else self.output_size
        return D * getattr(self._cell, "window", 1)

    def _window(self, inp, mT, xp):
        """Each step's input as the cell reads it: x_t, or for a cell with ``window = 2``
        (QRNN) the pair [x_t, x_(t-1)] (zeros before a record's first valid step)."""
        if getattr(self._cell, "window", 1) == 1:
            return inp
        prev = xp.zeros_like(inp)
        prev[1:] = inp[:-1] if mT is None else inp[:-1] * mT[:-1, :, None]
        return xp.concatenate([inp, prev], axis=-1)

    def _window_back(self, d, mT, xp):
        if getattr(self._cell, "window", 1) == 1 or d is None:
            return d
        D = d.shape[-1] // 2
        out = d[..., :D].copy()
        dp = d[1:, :, D:]
        out[:-1] += dp if mT is None else dp * mT[:-1, :, None]
        return out

    def _init_params(self, rng):
        H, G = self.hidden_size, self._cell.gates
        params = {}
        for name in self.names:
            k = int(name[1:].split("_")[0])
            shapes = self._cell.param_shapes(self._layer_input_size(k), H)
            p = {}
            if hasattr(self._cell, "init_params"):  # parameters initialised together (LRU)
                p = {key: w.astype(self.dtype)
                     for key, w in self._cell.init_params(shapes, rng, H).items()}
                shapes = {}
            for key, shape in shapes.items():
                if key.startswith("bias") and not self.bias:
                    continue
                if key == "weight_ih" and self.input_init == "glorot":
                    b = math.sqrt(6.0 / (shape[1] + shape[0] // G))
                    w = rng.uniform(-b, b, shape)
                elif key == "weight_hh" and self.recurrent_init == "orthogonal":
                    rows = shape[0] // G
                    w = np.concatenate([_orthogonal(rng, rows, shape[1]) for _ in range(G)], 0)
                else:
                    w = self._cell.init_param(key, shape, rng, H)
                p[key] = w.astype(self.dtype)
            if self.initial_state == "learned":
                for sname, size in zip(self._state_keys(), self.state_sizes):
                    if sname not in getattr(self._cell, "derived_states", ()):
                        p[sname + "0"] = np.zeros(size, dtype=self.dtype)
            params[name] = p
        return params

    def _prepared(self, name, xp, weight_mask=None):
        p = self._params[name]
        if hasattr(self._cell, "loop_params"):  # the loop's arrays derived from the params
            return self._cell.prepare(self._cell.loop_params(p, xp), xp)
        if weight_mask is not None:  # DropConnect: the forward and backward see W_hh * mask
            p = {**p, "weight_hh": p["weight_hh"] * weight_mask}
        if not self.bias:
            G = p["weight_ih"].shape[0]
            p = {**p, "bias_ih": xp.zeros(G, self.dtype), "bias_hh": xp.zeros(G, self.dtype)}
            if "weight_ho" in p:
                p["bias_ho"] = xp.zeros(p["weight_ho"].shape[0], self.dtype)
        return self._cell.prepare(p, xp)

    # -- states ---------------------------------------------------------------------
    def _state_keys(self):
        return tuple(self._cell.state)

    def _initial_states(self, given, B, xp):
        """{name: tuple of (B, S)} from the layer's policy or a state given at call time."""
        n = len(self.names)
        if given is not None and not isinstance(given, dict):
            given = {"h": given}
        out = {name: [] for name in self.names}
        for j, (key, size) in enumerate(zip(self._state_keys(), self.state_sizes)):
            arr = None if given is None else given.get(key)
            if arr is not None:
                if arr.ndim == 2 and n == 1:
                    arr = arr[None]
                if arr.shape != (n, B, size):
                    raise ValueError(f"initial_state['{key}'] must have shape (num_layers * "
                                     f"num_directions, batch, {size}) = ({n}, {B}, {size}), got "
                                     f"{tuple(arr.shape)}")
                if arr.dtype.name != self.dtype:
                    raise TypeError(f"initial_state['{key}'] is {arr.dtype.name} but the layer "
                                    f"is {self.dtype}; pass it as .astype('{self.dtype}')")
            for i, name in enumerate(self.names):
                if arr is not None:
                    s = xp.ascontiguousarray(arr[i])
                elif (self.initial_state == "learned"
                      and key not in getattr(self._cell, "derived_states", ())):
                    s = xp.broadcast_to(self._params[name][key + "0"], (B, size)).copy()
                else:
                    value = (float(self.initial_state)
                             if isinstance(self.initial_state, (int, float)) else 0.0)
                    s = xp.full((B, size), value, dtype=self.dtype)
                out[name].append(s)
        if hasattr(self._cell, "complete_state"):  # states derived from the others
            return {k: self._cell.complete_state(tuple(v), xp) for k, v in out.items()}
        return {k: tuple(v) for k, v in out.items()}

    # -- forward and backward -----------------------------------------------------------
    def forward(self, X, mask=None, initial_state=None, training=False, keep_tape=True,
                teacher=None):
        who = type(self).__name__
        xp = get_xp(X)
        check_float_input(X, self.input_size, self.dtype, who)
        B, T, _ = X.shape
        mask = check_mask(mask, B, T, who)
        check_finite(X, who, mask)
        # (T, B, D) time-major: a view, not a copy (the loop reads it block by block)
        Xt = X.transpose(1, 0, 2)
        mT = None if mask is None else xp.ascontiguousarray(mask.T)  # (T, B)
        s0 = self._initial_states(initial_state, B, xp)
        ridx = reverse_index(mT, T, B, xp) if self.bidirectional else None
        if teacher is not None and training and (self.recurrent_dropout or self.zoneout):
            raise ValueError("teacher forcing runs every step at once, without the state the "
                             "recurrent dropout and zoneout masks act on; train without "
                             "teacher= or without those options")
        prev = self._teacher_states(teacher, s0, mT, T, B, xp) if teacher is not None else None
        tapes, drops, finals, readouts = {}, [], {}, {}
        inp = Xt
        loops, prepared, weight_masks = {}, {}, {}
        in_masks = []
        for k in range(self.num_layers):
            outs = []
            im = None
            if training and self.input_dropout > 0:  # one mask per sequence, every step
                im = self._pinned("fixed_input_masks", k, (B, inp.shape[-1]), xp)
                if im is None:
                    keep = self.rng.random((B, inp.shape[-1])) >= self.input_dropout
                    im = xp.asarray(keep.astype(self.dtype) / (1 - self.input_dropout))
                inp = inp * im[None]
            in_masks.append(im)
            inp = self._window(inp, mT, xp)
            # the full loop, or a checkpointed policy of it (see unrolled.memory)
            seq_needed = self.return_sequences or k < self.num_layers - 1
            loop = _memory.policy(self, B, T, keep_tape, teacher, seq_needed)
            for d, suffix in enumerate(("", "_reverse")[: 1 + self.bidirectional]):
                name = f"l{k}{suffix}"
                x_in = inp if d == 0 else _gather_time(inp, ridx, xp)
                wm = None
                if training and self.weight_drop > 0:
                    wm = self._pinned("fixed_weight_masks", name,
                                      self._params[name]["weight_hh"].shape, xp)
                    if wm is None:
                        shape = self._params[name]["weight_hh"].shape
                        keep = self.rng.random(shape) >= self.weight_drop
                        wm = xp.asarray(keep.astype(self.dtype) / (1 - self.weight_drop))
                    weight_masks[name] = wm
                prepared[name] = self._prepared(name, xp, wm)
                if training and self.recurrent_dropout > 0:
                    hm = self._pinned("fixed_recurrent_masks", name, (B, self.hidden_size), xp)
                    if hm is None:
                        keep = self.rng.random((B, self.hidden_size)) >= self.recurrent_dropout
                        hm = xp.asarray(keep.astype(self.dtype) / (1 - self.recurrent_dropout))
                    prepared[name] = {**prepared[name], "h_mask": hm}
                nz = getattr(self._cell, "noise", ())
                if nz:  # the cell's per-step masks: drawn in training, expected at evaluation
                    arr = (self._pinned("fixed_noise", name,
                                        (T, B, len(nz) * self.hidden_size), xp)
                           if training else None)
                    if arr is None:
                        shape = (T, B, len(nz) * self.hidden_size)
                        arr = (xp.asarray((self.rng.random(shape) < self.zoneout)
                                          .astype(self.dtype)) if training
                               else xp.full(shape, self.zoneout, self.dtype))
                    prepared[name] = {**prepared[name], "noise": arr}
                tp = loop.forward(self._cell, prepared[name], x_in, s0[name], xp,
                                  mT, keep_tape, prev)
                tapes[name], loops[name] = tp, loop
                finals[name] = loop.final_state(tp, xp)
                if hasattr(self._cell, "readout"):
                    readouts[name] = (x_in, None)
                if not seq_needed:
                    continue  # only the final state leaves this layer
                y = tp.states[0][1:] if loop is unroll else tp.outputs
                if hasattr(self._cell, "readout"):  # y = readout(h, x) over all steps
                    readouts[name] = (x_in, y)
                    y = self._cell.readout(self._params[name], y, x_in, xp)
                outs.append(y if d == 0 else _gather_time(y, ridx, xp))
            if not seq_needed:
                drops.append(None)
                break
            y = outs[0] if len(outs) == 1 else xp.concatenate(outs, axis=-1)
            if mT is not None:
                y = y * mT[:, :, None]  # outputs at padded steps are zero
            if training and self.dropout > 0 and k < self.num_layers - 1:
                keep = xp.asarray(self.rng.random(y.shape) >= self.dropout)
                drop = keep.astype(self.dtype) / (1 - self.dropout)
                y = y * drop
                drops.append(drop)
            else:
                drops.append(None)
            inp = y
        state = {key: xp.stack([finals[n][j] for n in self.names])
                 for j, key in enumerate(self._state_keys())}
        if self.return_sequences:
            out = xp.ascontiguousarray(inp.transpose(1, 0, 2))
        else:
            last = self.names[-1 - self.bidirectional:]
            if hasattr(self._cell, "readout"):  # the readout at each record's last valid step
                tl = self._last_steps(mT, T, B, xp)
                out = xp.concatenate([self._cell.readout(
                    self._params[n], finals[n][0], readouts[n][0][tl, xp.arange(B)], xp)
                    for n in last], axis=-1)
            else:
                out = xp.concatenate([finals[n][0] for n in last], axis=-1)
        cache = {"tapes": tapes, "drops": drops, "ridx": ridx, "mask": mT, "B": B, "T": T,
                 "given_state": initial_state is not None, "xp": xp,
                 "keep_tape": keep_tape, "loops": loops, "weight_masks": weight_masks,
                 "input_masks": in_masks, "readouts": readouts,
                 "finals": {n: finals[n][0] for n in readouts},
                 # the weights as the forward used them (the backward differentiates those)
                 "prepared": prepared if keep_tape else {}}
        return out, state, cache

    @staticmethod
    def _last_steps(mT, T, B, xp):
        """(B,) each record's last valid step (in either direction's own time: the reversal
        keeps the pads in place)."""
        if mT is None:
            return xp.full(B, T - 1)
        return T - 1 - xp.argmax(mT[::-1], axis=0)

    def _pinned(self, attr, key, shape, xp):
        """A mask pinned by the user (``layer.<attr>[key]``), checked and in the layer's
        dtype; None where none is pinned."""
        given = getattr(self, attr, None)
        if not given:
            return None
        if key not in given:
            raise ValueError(f"{attr} has no mask for {key!r}; its keys must be "
                             f"{self.names if isinstance(key, str) else list(range(self.num_layers))}")
        m = xp.asarray(given[key], dtype=self.dtype)
        if tuple(m.shape) != tuple(shape):
            raise ValueError(f"{attr}[{key!r}] must have shape {tuple(shape)}, got "
                             f"{tuple(m.shape)}")
        return m

    def _teacher_states(self, teacher, s0, mT, T, B, xp):
        """The state fed into each step under teacher forcing: the true previous output."""
        if self.num_layers != 1 or self.bidirectional:
            raise ValueError("teacher forcing needs a single unidirectional layer "
                             "(num_layers=1, bidirectional=False)")
        S = self.state_sizes[0]
        if teacher.shape != (B, T, S):
            raise ValueError(f"teacher must have shape (batch, time, {S}) = ({B}, {T}, {S}), "
                             f"got {tuple(teacher.shape)}")
        teacher = teacher.astype(self.dtype, copy=False)
        tT = teacher.transpose(1, 0, 2)
        first = s0[self.names[0]][0]
        prev = xp.empty((T, B, S), dtype=self.dtype)
        prev[0] = first
        if T > 1:
            given = tT[:-1] if mT is None else xp.where(mT[:-1, :, None], tT[:-1], first[None])
            prev[1:] = given
        return (prev,)

    def backward(self, cache, d_out, d_state=None, need_input_grad=True):
        """BPTT through every layer and direction; ``need_input_grad=False`` skips the
        gradient w.r.t. the inputs (when they are data), and dX is then None."""
        xp, ridx = cache["xp"], cache["ridx"]
        tapes = cache["tapes"]
        if not cache["keep_tape"]:
            raise ValueError("backward needs the tape: run forward(..., keep_tape=True)")
        nd = 1 + self.bidirectional
        S = self.output_size // nd
        ro = self._cell if hasattr(self._cell, "readout") else None
        mT = cache["mask"]
        ro_grads, ro_dx = {}, {}  # the readout's parameter gradients and input gradients
        # gradient w.r.t. each final state, from d_state and from a folded output
        d_final = {n: [None] * len(self.state_sizes) for n in self.names}
        if d_state is not None:
            for j, key in enumerate(self._state_keys()):
                if d_state.get(key) is not None:
                    for i, n in enumerate(self.names):
                        d_final[n][j] = d_state[key][i]
        if self.return_sequences:
            d_seq = None if d_out is None else xp.ascontiguousarray(d_out.transpose(1, 0, 2))
        else:
            d_seq = None
            for d, n in enumerate(self.names[-nd:]):
                part = d_out[:, d * S:(d + 1) * S]
                if ro is not None:  # through the readout at each record's last valid step
                    B, T = cache["B"], cache["T"]
                    tl = self._last_steps(mT, T, B, xp)
                    x_in = cache["readouts"][n][0]
                    part, dxl, ro_grads[n] = ro.readout_back(
                        self._params[n], cache["finals"][n], x_in[tl, xp.arange(B)], part, xp)
                    ro_dx[n] = xp.zeros_like(x_in)
                    ro_dx[n][tl, xp.arange(B)] = dxl
                d_final[n][0] = part if d_final[n][0] is None else d_final[n][0] + part
        grads, d_s0 = {}, {}
        for k in reversed(range(self.num_layers)):
            if d_seq is not None and cache["drops"][k] is not None:
                d_seq = d_seq * cache["drops"][k]
            d_in = None
            for d, suffix in enumerate(("", "_reverse")[:nd]):
                name = f"l{k}{suffix}"
                dd = None if d_seq is None else d_seq[..., d * S:(d + 1) * S]
                if d == 1 and dd is not None:
                    dd = _gather_time(dd, ridx, xp)
                if ro is not None and dd is not None:  # back through y = readout(h, x)
                    if mT is not None:
                        dd = dd * mT[:, :, None]  # padded steps' outputs are zeros
                    x_in, h = cache["readouts"][name]
                    dd, ro_dx[name], ro_grads[name] = ro.readout_back(
                        self._params[name], h, x_in, dd, xp)
                loop = cache["loops"][name]
                need_dx = need_input_grad or k > 0
                p = cache.get("prepared", {}).get(name) or self._prepared(name, xp)
                g, dX, ds0 = loop.backward(self._cell, p, tapes[name], xp,
                                           dd, tuple(d_final[name]), self.truncate,
                                           need_dx=need_dx)
                if ro is not None:
                    rg = ro_grads.get(name) or {  # no gradient reached the outputs
                        key: xp.zeros_like(self._params[name][key])
                        for key in ro.readout_params}
                    g = {**ro.loop_grads(self._params[name], g, xp), **rg}
                    if need_dx and name in ro_dx:
                        dX = dX + ro_dx[name]
                if hasattr(self._cell, "complete_state"):
                    ds0 = self._cell.complete_state_back(ds0, xp)
                if need_dx:
                    if d == 1:
                        dX = _gather_time(dX, ridx, xp)
                    d_in = dX if d_in is None else d_in + dX
                if not self.bias:
                    g = {key: v for key, v in g.items() if not key.startswith("bias")}
                if self.initial_state == "learned":
                    for j, key in enumerate(self._state_keys()):
                        if key in getattr(self._cell, "derived_states", ()):
                            continue
                        g[key + "0"] = (xp.zeros_like(ds0[j][0]) if cache["given_state"]
                                        else ds0[j].sum(0))
                wm = cache.get("weight_masks", {}).get(name)
                if wm is not None:  # d/dW of (W * mask) is the mask times d/d(W * mask)
                    g["weight_hh"] = g["weight_hh"] * wm
                grads[name] = {key: g[key] for key in self._params[name]}
                d_s0[name] = ds0
            d_in = self._window_back(d_in, cache["mask"], xp)
            im = cache.get("input_masks", [None] * (k + 1))[k]
            if im is not None and d_in is not None:
                d_in = d_in * im[None]
            d_seq = d_in
        grads = {n: grads[n] for n in self.names}
        dX = None if d_seq is None else xp.ascontiguousarray(d_seq.transpose(1, 0, 2))
        d_initial = {key: xp.stack([d_s0[n][j] for n in self.names])
                     for j, key in enumerate(self._state_keys())}
        return grads, dX, d_initial

class Elman(Recurrent):
    """Elman (vanilla) RNN: h_t = act(x_t U^T + h_{t-1} W^T + b); PyTorch's ``nn.RNN``."""

    cell_class = ElmanCell

    def __init__(self, input_size, hidden_size, nonlinearity="tanh", **kw):
        self.nonlinearity = nonlinearity
        super().__init__(ElmanCell(nonlinearity), input_size, hidden_size, **kw)


class LSTM(Recurrent):
    """LSTM; gate order (input, forget, cell, output) as PyTorch's ``nn.LSTM``.

    ``forget_bias=1.0`` starts the forget gate open (bias_ih's forget block set to the
    value, bias_hh's to 0); the default keeps PyTorch's initialisation.
    ``peepholes=True``: the input and forget gates also see c_(t-1) and the output gate
    c_t, through the vectors ``peephole_i``, ``peephole_f``, ``peephole_o`` (Gers; ONNX's
    ``P``), i.e. the ``peephole_lstm`` cell.
    ``zoneout=p``: zoneout on h and c (the ``zoneout_lstm`` cell), compiled.
    ``layer_norm=True``: layer normalisation of both pre-activations and of c_t (Ba et al.
    2016; the ``layernorm_lstm`` cell, gains ``ln_*_weight`` and biases ``ln_*_bias``);
    runs on the readable loop.
    ``proj_size=P``: h_t = W_hr (o ⊙ tanh c_t), P wide (PyTorch's ``proj_size``, the
    ``proj_lstm`` cell, with PyTorch's ``weight_hr`` layout); runs on the readable loop.
    """

    cell_class = LSTMCell

    def __init__(self, input_size, hidden_size, forget_bias=None, peepholes=False,
                 proj_size=0, layer_norm=False, **kw):
        self.peepholes, self.proj_size = bool(peepholes), int(proj_size or 0)
        self.layer_norm = bool(layer_norm)
        if sum((self.peepholes, bool(self.proj_size), bool(kw.get("zoneout")),
                self.layer_norm)) > 1:
            raise ValueError("peepholes, proj_size, zoneout and layer_norm combined are not "
                             "built; choose one")
        cell = (PeepholeLSTMCell() if self.peepholes else
                LayerNormLSTMCell() if self.layer_norm else
                ProjLSTMCell(self.proj_size) if self.proj_size else
                ZoneoutLSTMCell() if kw.get("zoneout") else LSTMCell())
        super().__init__(cell, input_size, hidden_size, **kw)
        self.forget_bias = forget_bias
        if forget_bias is not None and self.bias:
            H = self.hidden_size
            for p in self._params.values():
                p["bias_ih"][H:2 * H] = forget_bias
                p["bias_hh"][H:2 * H] = 0


class GRU(Recurrent):
    """GRU; ``reset_after=True`` is PyTorch's ``nn.GRU`` (reset applied after the hidden
    matmul), ``reset_after=False`` applies it before (Keras's other mode, CNTK)."""

    cell_class = GRUCell

    def __init__(self, input_size, hidden_size, reset_after=True, **kw):
        self.reset_after = reset_after
        super().__init__(GRUCell(reset_after), input_size, hidden_size, **kw)


class Jordan(Recurrent):
    """Jordan (output-to-hidden) network: the previous output feeds the hidden layer.

    ``output_size`` defaults to ``hidden_size``. Call ``forward(X, teacher=Y)`` to train
    with teacher forcing (the true previous target replaces the previous output, and all
    steps run at once without a sequential loop).
    """

    cell_class = JordanCell

    def __init__(self, input_size, hidden_size, output_size=None, nonlinearity="tanh",
                 output_activation="identity", **kw):
        self.nonlinearity, self.output_activation = nonlinearity, output_activation
        cell = JordanCell(int(output_size or hidden_size), nonlinearity, output_activation)
        super().__init__(cell, input_size, hidden_size, **kw)


class PeepholeLSTM(Recurrent):
    """LSTM with peepholes (Gers): i and f see c_(t−1), o sees c_t; ONNX's ``P``."""

    cell_class = PeepholeLSTMCell

    def __init__(self, input_size, hidden_size, **kw):
        super().__init__(PeepholeLSTMCell(), input_size, hidden_size, **kw)


class MinGRU(Recurrent):
    """minGRU (Feng et al. 2024): h_t = (1 − z) ⊙ h_(t−1) + z ⊙ h̃ with z = σ(W_z x_t),
    h̃ = W_h x_t. No recurrent product: every product runs over all T steps at once and
    only a fused elementwise scan is sequential."""

    cell_class = MinGRUCell

    def __init__(self, input_size, hidden_size, **kw):
        super().__init__(MinGRUCell(), input_size, hidden_size, **kw)


class MinLSTM(Recurrent):
    """minLSTM (Feng et al. 2024): h_t = (f h_(t−1) + i h̃) / (f + i), f, i = σ(W x_t),
    h̃ = W_h x_t. No recurrent product (see :class:`MinGRU`)."""

    cell_class = MinLSTMCell

    def __init__(self, input_size, hidden_size, **kw):
        super().__init__(MinLSTMCell(), input_size, hidden_size, **kw)


class SRU(Recurrent):
    """Simple Recurrent Unit (Lei et al. 2018) with a projected highway: no recurrent
    product, the gates see c_(t−1) through one weight vector each (v_f, v_r)."""

    cell_class = SRUCell

    def __init__(self, input_size, hidden_size, **kw):
        super().__init__(SRUCell(), input_size, hidden_size, **kw)


class QRNN(Recurrent):
    """QRNN with fo-pooling (Bradbury et al. 2016): gates from a width-2 convolution of
    the input ([x_t, x_(t-1)] W_ihᵀ, so ``weight_ih`` is (3H, 2D)), an elementwise
    recurrence c_t = f c_(t-1) + (1 - f) z, h_t = o c_t. No recurrent product."""

    cell_class = QRNNCell

    def __init__(self, input_size, hidden_size, **kw):
        super().__init__(QRNNCell(), input_size, hidden_size, **kw)


class LRU(Recurrent):
    """Linear Recurrent Unit (Orvieto et al. 2023): a complex diagonal recurrence
    h_t = λ ⊙ h_(t−1) + γ ⊙ (B x_t), λ = exp(−exp ν + i exp θ), read out as
    y_t = Re(C h_t) + D x_t (``hidden_size`` wide). ``state_size``: N complex units
    (default hidden_size // 2); ring initialisation with |λ| in [``r_min``, ``r_max``] and
    the phase in [0, ``max_phase``]; ``gamma="learned"`` (γ_log trained, the reference
    code) or ``"tied"`` (γ = √(1 − |λ|²)). No recurrent product: B x and C h run over all
    T steps at once, the per-unit complex step is compiled (:mod:`unrolled.cells.lru`).
    D is a vector (the paper's diagonal) where input and output widths are equal, an
    (H, input) matrix otherwise."""

    cell_class = LRUCell

    def __init__(self, input_size, hidden_size, state_size=0, r_min=0.0, r_max=1.0,
                 max_phase=2 * math.pi, gamma="learned", **kw):
        if not isinstance(state_size, (int, np.integer)) or state_size < 0:
            raise ValueError(f"LRU: state_size must be a positive integer (or 0: "
                             f"hidden_size // 2), got {state_size!r}")
        cell = LRUCell(int(state_size), float(r_min), float(r_max), float(max_phase), gamma)
        super().__init__(cell, input_size, hidden_size, **kw)


def layer_class(cell):
    """The layer for a registered cell name: its own class where it has one (``LSTM``,
    ``GRU``, ``Elman`` — also called ``"rnn"`` — and ``Jordan``), else the generic
    :class:`Recurrent` over that cell. Called as ``layer_class(name)(input_size,
    hidden_size, **kw)``."""
    import functools

    name = str(cell).lower()
    name = "elman" if name == "rnn" else name
    cls = get_cell(name)  # one error, naming the registered cells, for an unknown name
    for sub in Recurrent.__subclasses__():
        if getattr(sub, "cell_class", None) is cls:
            return sub
    return functools.partial(Recurrent, cls())


_memory.LAYER_FOR_CELL[:] = [layer_class]  # the planner builds layers from configs with it
