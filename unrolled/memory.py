"""Checkpointed BPTT and the memory planner.

Full BPTT keeps every step's activations until the backward pass: memory O(T). The
checkpointed policy runs the one time loop of :mod:`unrolled.unroll` segment by segment,
keeping only the state at the start of each segment (a *checkpoint*); the backward pass
walks the segments in reverse, recomputes each one from its checkpoint with its tape, and
runs ``unroll.backward`` on it with the state gradient coming from the segment after it.
With segments of about √T steps the peak is O(√T) for about one extra forward pass
(Chen et al. 2016, "Training deep nets with sublinear memory cost"; Gruslys et al. 2016,
"Memory-efficient backpropagation through time").

The recomputed segment runs the same arithmetic as the full pass, so outputs and states
are the same numbers; the weight gradients are sums of per-segment matrix products instead
of one product over all T steps, so they equal full BPTT's to rounding (about 1e-16
relative in float64), not bit for bit.

:func:`plan_memory` predicts the bytes an update of a recurrent layer allocates, before
running it, and the layers use it to choose a segment length for a byte budget and to
refuse a full unrolling that would not fit in memory.
"""
import math
from dataclasses import dataclass, field

import numpy as np

from . import unroll

# Full BPTT is refused when its estimate exceeds this fraction of the available memory.
RAM_FRACTION = 0.8


class MemoryPlanError(ValueError):
    """An update would not fit in the memory allowed; the message names the estimate."""


def set_max_bytes(n):
    """Refuse any full BPTT whose planned bytes exceed ``n`` (None: use available RAM).

    The ceiling also applies to a checkpointed run that cannot fit even with the best
    segment length. The same as ``unrolled.settings.max_bytes`` (``UNROLLED_MAX_BYTES``).
    """
    from .settings import settings

    if n is not None and (not isinstance(n, (int, np.integer)) or n < 1):
        raise ValueError(f"max_bytes must be a positive number of bytes or None, got {n!r}")
    settings.max_bytes = None if n is None else int(n)


_meminfo = []  # [time read, bytes]: /proc/meminfo read at most every 2 s


def available_bytes():
    """Bytes an update may use: the user's ceiling, else a fraction of available RAM.

    Returns None where neither is known (then nothing is refused).
    """
    from .settings import settings

    if settings.max_bytes is not None:
        return settings.max_bytes
    import time

    now = time.monotonic()
    if _meminfo and now - _meminfo[0] < 2.0:  # read at most every 2 s, not every forward
        return _meminfo[1]
    avail = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(RAM_FRACTION * int(line.split()[1]) * 1024)
                    break
    except OSError:
        pass
    _meminfo[:] = [now, avail]
    return avail


def check_memory_option(memory):
    """``memory`` must be "full", "checkpoint" or a positive byte budget (int)."""
    if memory in ("full", "checkpoint"):
        return memory
    if isinstance(memory, (int, np.integer)) and not isinstance(memory, bool) and memory > 0:
        return int(memory)
    raise ValueError(f"memory must be 'full', 'checkpoint' or a byte budget (a positive int, "
                     f"e.g. 2**30), got {memory!r}")


def _fmt(n):
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


# -- the checkpointed loop -------------------------------------------------------------
@dataclass
class CheckpointTape:
    """What a checkpointed forward keeps: inputs, one state per segment, maybe outputs."""

    X: object                 # (T, B, D) inputs (a reference, not a copy)
    mask: object              # (T, B) bool or None
    starts: list              # first step of each segment, ascending; starts[0] == 0
    checkpoints: list         # per segment, tuple of (B, S): the state entering it
    final: tuple              # tuple of (B, S): the state after the last step
    outputs: object = None    # (T, B, S0) output sequence, or None when not needed
    segment: int = 0


@dataclass
class Checkpointed:
    """A memory policy with the signatures of :mod:`unrolled.unroll` (forward, backward,
    final_state), so a layer calls it in place of the full loop.

    Parameters
    ----------
    segment : int, steps per segment (the distance between checkpoints).
    keep_outputs : bool, keep the output sequence (T, B, S0). A layer whose only output is
        its final state (``return_sequences=False``, top layer) does not need it, and that
        is what makes its peak O(√T).
    truncate : int or None, the layer's truncation, known at forward time so the tape
        recomputed in the backward covers only the steps the gradient reaches.
    """

    segment: int
    keep_outputs: bool = True
    truncate: int = None

    def forward(self, cell, p, X, state0, xp, mask=None, keep_tape=True, prev_states=None):
        """Run the loop segment by segment keeping only each segment's starting state."""
        if prev_states is not None:
            raise ValueError("memory='checkpoint' does not apply to teacher forcing, whose "
                             "steps are independent; use memory='full'")
        T = X.shape[0]
        L = max(1, int(self.segment))
        starts = list(range(0, T, L))
        outputs = None
        checkpoints = []
        state = tuple(state0)
        for a in starts:
            b = min(a + L, T)
            checkpoints.append(state)
            tp = unroll.forward(cell, unroll.segment_params(p, a, b), X[a:b], state, xp,
                                None if mask is None else mask[a:b], keep_tape=False)
            if self.keep_outputs:
                if outputs is None:
                    outputs = xp.empty((T,) + tp.states[0].shape[1:], dtype=X.dtype)
                outputs[a:b] = tp.states[0][1:]
            # copy: a view would keep the whole segment's states alive
            state = tuple(s[-1].copy() for s in tp.states)
            del tp
        return CheckpointTape(X, mask, starts, checkpoints, state, outputs, L)

    def final_state(self, tp, xp):
        return tp.final

    def backward(self, cell, p, tp, xp, d_out=None, d_final=None, truncate=None,
                 need_dx=True):
        """BPTT over the segments in reverse, each recomputed from its checkpoint.

        Same arguments and returns as :func:`unrolled.unroll.backward`.
        """
        X, mask = tp.X, tp.mask
        T, B, D = X.shape
        truncate = self.truncate if truncate is None else truncate
        dX = xp.zeros((T, B, D), dtype=X.dtype) if need_dx else None
        if truncate is not None:
            return self._backward_truncated(cell, p, tp, xp, d_out, d_final, truncate, dX)
        grads = None
        dstate = d_final
        ends = tp.starts[1:] + [T]
        for i in reversed(range(len(tp.starts))):
            a, b = tp.starts[i], ends[i]
            m = None if mask is None else mask[a:b]
            ps = unroll.segment_params(p, a, b)
            seg = unroll.forward(cell, ps, X[a:b], tp.checkpoints[i], xp, m, keep_tape=True)
            g, dXs, dstate = unroll.backward(
                cell, ps, seg, xp, None if d_out is None else d_out[a:b], dstate,
                need_dx=need_dx)
            if need_dx:
                dX[a:b] = dXs
            del seg
            grads = g if grads is None else {k: grads[k] + v for k, v in g.items()}
        return grads, dX, tuple(dstate)

    def _backward_truncated(self, cell, p, tp, xp, d_out, d_final, k, dX):
        # The gradient reaches each record's last k valid steps only. Every step before the
        # earliest window start gets none, so one tape from the checkpoint just before it
        # to the end suffices, and unroll.backward's own window (computed from the mask of
        # that tail, which ends where the record ends) is the full pass's window.
        T, B, _ = tp.X.shape
        mask = tp.mask
        valid = np.ones((T, B)) if mask is None else np.asarray(mask, dtype=float)
        rev_cum = np.cumsum(valid[::-1], axis=0)[::-1]
        first = int(np.argmax((rev_cum <= k).any(axis=1)))  # earliest step in any window
        i = max(j for j, a in enumerate(tp.starts) if a <= first)
        a = tp.starts[i]
        ps = unroll.segment_params(p, a, tp.X.shape[0])
        seg = unroll.forward(cell, ps, tp.X[a:], tp.checkpoints[i], xp,
                             None if mask is None else mask[a:], keep_tape=True)
        g, dXs, dstate = unroll.backward(cell, ps, seg, xp, None if d_out is None else d_out[a:],
                                         d_final, k, need_dx=dX is not None)
        if dX is not None:
            dX[a:] = dXs
        if a > 0:  # no gradient crosses the truncation into the steps before
            dstate = tuple(xp.zeros_like(s) for s in dstate)
        return g, dX, tuple(dstate)


# -- the planner ----------------------------------------------------------------------------
@dataclass
class MemoryPlan:
    """The planner's prediction for one update (forward + backward) of a recurrent layer.

    ``bytes`` is the predicted peak of what the layer allocates during the update; the
    caller's own arrays (the input batch, the loss gradient, the parameters) are not in it.
    ``parts`` breaks the peak down; ``segment`` is the checkpoint distance (None: full).
    """

    mode: str
    bytes: int
    segment: int = None
    B: int = 0
    T: int = 0
    parts: dict = field(default_factory=dict)
    full_bytes: int = 0

    def __str__(self):
        seg = "" if self.segment is None else f", a checkpoint every {self.segment} steps"
        parts = ", ".join(f"{k} {_fmt(v)}" for k, v in self.parts.items() if v)
        return (f"memory={self.mode!r}{seg}: about {_fmt(self.bytes)} for B={self.B}, "
                f"T={self.T} ({parts}); full BPTT would need {_fmt(self.full_bytes)}")


def _bytes_per_row(cell, layer, name):
    """Per-batch-row bytes of one step's cell cache and of its backward's saved arrays.

    Found by running the cell once on a single zero row, so it holds for every cell.
    """
    from .backend import to_numpy

    p = {k: to_numpy(v) for k, v in layer._prepared(name, np).items()}  # also CuPy weights
    dt = np.dtype(layer.dtype)
    G = p["weight_ih"].shape[0]
    state = tuple(np.zeros((1, s), dt) for s in layer.state_sizes)
    new, cache = cell.step(p, np.zeros((1, G), dt), state, np)
    _, _, saved = cell.step_back(p, cache, state, new, tuple(np.ones_like(s) for s in new), np)
    return (sum(v.nbytes for v in cache.values()), sum(v.nbytes for v in saved.values()))


# the layer for a cell name, given by unrolled.layers when it loads (importing the package
# loads them): the planner sits below the layers and reads them through their attributes
LAYER_FOR_CELL = []


def _layer_from_config(cfg):
    cfg = dict(cfg)
    cell = str(cfg.pop("cell", "lstm")).lower()
    make = LAYER_FOR_CELL[0](cell)  # an unknown name: one error naming the registered cells
    for key in ("input_size", "hidden_size"):
        if key not in cfg:
            raise ValueError(f"a layer config needs '{key}', got keys {sorted(cfg)}")
    cfg.pop("memory", None)
    return make(**cfg)


def _segments(T, L):
    return -(-T // L)  # ceil


def plan_memory(layer_or_config, B, T, memory=None, return_sequences=None, segment=None):
    """Predict the bytes of one training update of a recurrent layer before running it.

    Parameters
    ----------
    layer_or_config : a recurrent layer (``Elman``, ``LSTM``, ``GRU``, ``Jordan``), a
        ``Sequential`` (its recurrent layers are summed, an upper bound) or a dict such as
        ``{"cell": "lstm", "input_size": 32, "hidden_size": 256, "num_layers": 1}``.
    B, T : int, batch size and time steps.
    memory : "full", "checkpoint", a byte budget, or None for the layer's own setting.
    return_sequences : bool or None (None: the layer's own setting).
    segment : int or None, checkpoint distance (None: the one that minimises the peak).

    Returns
    -------
    :class:`MemoryPlan`; ``str(plan)`` is a one-line summary.

    The model counts what the loop allocates: the copy of the input the projection reads,
    the input projection (T, B, G) of the forward, the states (T+1, B, S) and the cell caches kept for
    the backward, the per-step gradients of the backward (T, B, G), and the input gradient;
    a checkpointed run keeps one state per segment and holds one segment's worth of the
    rest at a time.
    """
    def recurrent(ly):  # a recurrent layer: it runs a cell through the time loop
        return hasattr(ly, "_cell") and hasattr(ly, "state_sizes")

    if isinstance(layer_or_config, dict):
        layer = _layer_from_config(layer_or_config)
    elif not recurrent(layer_or_config) and hasattr(layer_or_config, "layers"):
        rec = [ly for ly in layer_or_config.layers if recurrent(ly)]
        if not rec:
            raise ValueError("plan_memory: this Sequential has no recurrent layer")
        plans = [plan_memory(ly, B, T, memory, None, segment) for ly in rec]
        total = MemoryPlan(plans[-1].mode, sum(q.bytes for q in plans), plans[-1].segment,
                           B, T, {}, sum(q.full_bytes for q in plans))
        for q in plans:
            for k, v in q.parts.items():
                total.parts[k] = total.parts.get(k, 0) + v
        return total
    elif recurrent(layer_or_config):
        layer = layer_or_config
    else:
        raise TypeError("plan_memory needs a recurrent layer, a Sequential or a config dict, "
                        f"got {type(layer_or_config).__name__}")
    for what, v in (("B", B), ("T", T)):
        if not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"plan_memory: {what} must be a positive int, got {v!r}")
    memory = check_memory_option(getattr(layer, "memory", "full") if memory is None else memory)
    rs = layer.return_sequences if return_sequences is None else return_sequences
    full = _plan(layer, B, T, None, rs)
    if memory == "full":
        return full
    if segment is not None:
        return _plan(layer, B, T, int(segment), rs, full.bytes)
    best = _best_segment(layer, B, T, rs)
    plan = _plan(layer, B, T, best, rs, full.bytes)
    if memory == "checkpoint":
        return plan
    if full.bytes <= memory:  # the budget holds everything: no recomputation needed
        full.mode = "full"
        return full
    if plan.bytes > memory:
        return plan  # over budget; the layer refuses it with the estimate
    # the longest segments (fewest recomputation calls) that still fit the budget
    lo, hi = best, T
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if _plan(layer, B, T, mid, rs).bytes <= memory:
            lo = mid
        else:
            hi = mid - 1
    return _plan(layer, B, T, lo, rs, full.bytes)


def _best_segment(layer, B, T, rs):
    # peak ≈ (T/L)·B·ΣS·(bytes) + L·(per-step bytes): minimised at L = sqrt(T·ΣS/per-step)
    one, two = _plan(layer, B, T, 1, rs), _plan(layer, B, T, 2, rs)
    per_step = max(1, (two.parts["segment"] - one.parts["segment"]))
    per_ckpt = max(1, one.parts["checkpoints"] / T)
    L0 = max(1, min(T, round(math.sqrt(T * per_ckpt / per_step))))
    # the formula is a guide; look around it for the exact minimum of the model
    cands = {max(1, min(T, int(L0 * f))) for f in (0.5, 0.7, 0.85, 1, 1.2, 1.4, 2)}
    return min(cands, key=lambda L: (_plan(layer, B, T, L, rs).bytes, -L))


def _plan(layer, B, T, L, rs, full_bytes=None):
    """The byte model; L None means full BPTT. Walks the update as the layer runs it."""
    it = np.dtype(layer.dtype).itemsize
    nd = 1 + layer.bidirectional
    S = layer.state_sizes
    G = layer._cell.gates * layer.hidden_size
    TB = T * B
    parts = {"inputs": 0, "tape": 0, "checkpoints": 0, "segment": 0, "outputs": 0,
             "gradients": 0}
    keep, peak = 0, 0  # bytes alive until the update ends; the highest total seen
    rows = [_bytes_per_row(layer._cell, layer, f"l{k}") for k in range(layer.num_layers)]

    def states(n):  # (n + 1, B, S) for every state component
        return (n + 1) * B * sum(S) * it

    def seg_bytes(k, n):  # recomputing and backpropagating one segment of n steps
        D = layer._layer_input_size(k)
        cache_row, saved_row = rows[k]
        fwd = max(2 * n * B * G * it, states(n) + n * B * (cache_row + G * it))
        bwd = states(n) + n * B * (cache_row + G * it + saved_row + D * it)
        return max(fwd, bwd)

    # -- forward: layer by layer, direction by direction
    for k in range(layer.num_layers):
        D = layer._layer_input_size(k)
        seq_needed = rs or k < layer.num_layers - 1
        cache_row, _ = rows[k]
        # the reversed input of a second direction; the first reads the caller's batch
        # through a time-major view (the projection copies it for a moment, below)
        x_copy = TB * D * it * (nd == 2)
        keep += x_copy
        parts["inputs"] += x_copy
        for _ in range(nd):
            if L is None:
                tape = states(T) + TB * cache_row
                peak = max(peak, keep + max(2 * TB * G * it + TB * D * it * (k == 0),
                                            tape + TB * G * it))
                keep += tape
                parts["tape"] += tape
            else:
                seg = seg_bytes(k, L)
                peak = max(peak, keep + seg)
                ck = _segments(T, L) * B * sum(S) * it
                out = TB * S[0] * it if seq_needed else 0
                keep += ck + out
                parts["checkpoints"] += ck
                parts["segment"] = max(parts["segment"], seg)
                parts["outputs"] += out
        if seq_needed and nd == 2:  # both directions side by side: one more copy
            keep += TB * nd * S[0] * it
            parts["outputs"] += TB * nd * S[0] * it
    if rs:  # the batch-first output the layer returns
        keep += TB * nd * S[0] * it
        parts["outputs"] += TB * nd * S[0] * it
    peak = max(peak, keep)
    # -- backward: top layer first; the gradient of each layer's input flows down
    d_seq = TB * nd * S[0] * it if rs else 0  # time-major copy of the output gradient
    for k in reversed(range(layer.num_layers)):
        D = layer._layer_input_size(k)
        _, saved_row = rows[k]
        for d in range(nd):
            dX_prev = d * TB * D * it  # the other direction's input gradient, held
            if L is None:
                bwd = TB * max(G * it + saved_row + D * it, 2 * D * it)
            else:
                bwd = TB * D * it + seg_bytes(k, L)
            peak = max(peak, keep + d_seq + dX_prev + bwd)
        d_seq = TB * D * it  # this layer's input gradient is the next one's output gradient
        parts["gradients"] = max(parts["gradients"], d_seq)
    peak = max(peak, keep + 2 * TB * layer.input_size * it)  # the batch-first dX copy
    # parameter-sized arrays: the prepared transposes and the gradients (a checkpointed
    # backward also holds a segment's gradients next to their running sum)
    P = sum(v.nbytes for q in layer.params.values() for v in q.values())
    parts["parameters"] = P * (2 if L is None else 3)
    peak += parts["parameters"]
    mode = "full" if L is None else "checkpoint"
    return MemoryPlan(mode, int(peak), L, B, T, {k: int(v) for k, v in parts.items()},
                      int(peak if full_bytes is None else full_bytes))


_plans = {}


def _cached_plan(layer, B, T, memory):
    """plan_memory, remembered per layer configuration: a layer asks at every call."""
    key = (layer._cell, layer.input_size, layer.hidden_size, layer.num_layers,
           layer.bidirectional, layer.dtype, layer.return_sequences, B, T, memory)
    if key not in _plans:
        if len(_plans) > 256:
            _plans.clear()
        _plans[key] = plan_memory(layer, B, T, memory)
    return _plans[key]


def policy(layer, B, T, keep_tape, teacher, seq_needed):
    """The loop a layer runs for this call: :mod:`unrolled.unroll` itself (full BPTT) or a
    :class:`Checkpointed` policy. Refuses a full unrolling that would not fit."""
    memory = getattr(layer, "memory", "full")
    if teacher is not None:
        return unroll
    limit = available_bytes()
    if memory == "full":
        if keep_tape and limit is not None:
            plan = _cached_plan(layer, B, T, "full")
            if plan.bytes > limit:
                raise MemoryPlanError(
                    f"full BPTT over T={T} steps (batch {B}) needs about {_fmt(plan.bytes)} "
                    f"by the planner (unrolled.memory.plan_memory), more than the {_fmt(limit)} "
                    f"allowed; build the layer with memory='checkpoint' (about "
                    f"{_fmt(_cached_plan(layer, B, T, 'checkpoint').bytes)}) or a byte "
                    f"budget memory=<bytes>, set truncate=k, or use shorter chunks")
        return unroll
    plan = _cached_plan(layer, B, T, memory)
    if plan.mode == "full":
        return unroll
    if limit is not None and keep_tape and plan.bytes > limit:
        raise MemoryPlanError(
            f"even checkpointed BPTT over T={T} steps (batch {B}) needs about "
            f"{_fmt(plan.bytes)} (unrolled.memory.plan_memory), more than the "
            f"{_fmt(limit)} allowed; use truncate=k or shorter chunks (unrolled.streams.TBPTT)")
    if keep_tape and isinstance(memory, int) and plan.bytes > memory:
        raise MemoryPlanError(
            f"memory={memory} bytes is below the smallest checkpointed plan for T={T}, "
            f"batch {B}: about {_fmt(plan.bytes)} (unrolled.memory.plan_memory); raise the "
            f"budget or use truncate=k")
    return Checkpointed(plan.segment, seq_needed, layer.truncate)
