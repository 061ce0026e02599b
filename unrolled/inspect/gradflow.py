"""Gradient flow over time: what BPTT carries back, step by step, exactly.

BPTT walks the unrolled graph from the last step to the first carrying ∂L/∂h_t, the
gradient of the loss w.r.t. the state after step t. It reaches h_t through the output
o_t and through h_{t+1}; on the way back it is multiplied by one Jacobian per step,
so it shrinks (vanishes) or grows (explodes) with the distance from the loss.

How the numbers are obtained, without a second copy of the time loop
------------------------------------------------------------------
The model's own backward is run once, and every call it makes to
:func:`unrolled.unroll.backward` is recorded with its arguments (the gradient that
reached that layer and direction from above). Each recorded call is then *replayed one
step at a time*: the backward of the one-step tape of step t, started from the gradient
carried into it, is exactly iteration t of the full loop (same arrays, same arithmetic),
so

- the gradient carried into step t is the loop's own ``dh_t`` (and ``dc_t``), bit for bit;
- the parameter gradients of the one-step run are step t's *share* of each weight
  gradient (they sum to the full gradient);
- the gradient left at the start is the loop's ``d_state0``, bit for bit (checked).

The Jacobians ∂s_T/∂s_t (s the whole state: h, or (h, c) for an LSTM) come from the
same replay, seeded at the last step with the identity, one seed per record row.
"""
import contextlib
import dataclasses
import threading
import warnings

import numpy as np

from .. import unroll
from ..backend import to_numpy
from ..grad import loss_mask_for
from ..losses import get_loss
from .traces import as_batch, new_figure, recurrent_caches, save_figure, to_input_order

# --------------------------------------------------------------------------- replay

_RECORDING = threading.Lock()


@contextlib.contextmanager
def record_backward_calls():
    """Record ``(args, result)`` of every :func:`unrolled.unroll.backward` call made
    inside the block (by the layers' own backward).

    The module function is swapped for a recording one for the duration of the block;
    blocks in different threads wait for each other. A call made meanwhile by another
    thread is recorded too (and ignored by :func:`gradient_flow`, which matches calls
    to its own tapes)."""
    with _RECORDING:
        calls = []
        original = unroll.backward

        def recording(cell, p, tp, xp, d_out=None, d_final=None, truncate=None, **kw):
            result = original(cell, p, tp, xp, d_out, d_final, truncate, **kw)
            calls.append(((cell, p, tp, xp, d_out, d_final, truncate), result))
            return result

        unroll.backward = recording
        try:
            yield calls
        finally:
            unroll.backward = original


def step_tape(tp, t):
    """The tape of step ``t`` alone: inputs, states t and t+1, the step's cache and mask."""
    return dataclasses.replace(
        tp, X=tp.X[t:t + 1], states=tuple(s[t:t + 2] for s in tp.states),
        tape={k: v[t:t + 1] for k, v in tp.tape.items()},
        mask=None if tp.mask is None else tp.mask[t:t + 1])


def replay(cell, p, tp, xp, d_out=None, d_final=None, truncate=None, shares=True):
    """:func:`unrolled.unroll.backward` one step at a time, keeping what it carries.

    Arguments as for ``unroll.backward``. Returns a dict:
    ``dstate`` tuple of (T, B, S): the gradient w.r.t. each state component after step t
    as the loop carries it into step t (∂L/∂h_t including the path through o_t; with
    ``truncate``, after the truncation window, and at padded steps the value passed
    through); ``d_state0`` tuple of (B, S); ``shares`` list of T parameter-gradient dicts
    (``shares=True``), of T dicts of their norms (``shares="norms"``) or None; ``dX``
    (T, B, D).
    """
    if tp.teacher is not False:
        raise ValueError("the gradient flow of a teacher-forced run has no recurrence to "
                         "follow; run the forward without teacher")
    T, B, _ = tp.X.shape
    dtype = tp.X.dtype
    carry = [xp.zeros(s.shape[1:], dtype=dtype) if d_final is None or d_final[k] is None
             else d_final[k] for k, s in enumerate(tp.states)]
    win = (None if truncate is None
           else unroll.truncation_window(tp.mask, T, B, truncate, xp, dtype))
    dstate = tuple(xp.empty((T,) + s.shape[1:], dtype=dtype) for s in tp.states)
    dX = None
    per_step = [None] * T if shares else None
    for t in reversed(range(T)):
        # what the loop does before the cell's step: add the output's gradient, window it
        d = list(carry)
        if d_out is not None:
            m = None if tp.mask is None else tp.mask[t][:, None]
            d[0] = d[0] + (d_out[t] if m is None else d_out[t] * m)
        if win is not None:
            d = [g * win[t] for g in d]
        for k, g in enumerate(d):
            dstate[k][t] = g
        g, dx, d0 = unroll.backward(cell, p, step_tape(tp, t), xp, None, tuple(d), None)
        if dX is None:
            dX = xp.empty((T,) + dx.shape[1:], dtype=dtype)
        dX[t] = dx[0]
        if shares == "norms":  # only the size of each share: no T copies of the weights
            per_step[t] = {k: float(xp.sqrt((v.astype(xp.float64) ** 2).sum()))
                           for k, v in g.items()}
        elif shares:
            per_step[t] = g
        carry = list(d0)
    return {"dstate": dstate, "d_state0": tuple(carry), "shares": per_step, "dX": dX}


# --------------------------------------------------------------------------- the analysis

@dataclasses.dataclass
class GradientFlow:
    """What :func:`gradient_flow` measured. Per layer/direction key (``"l0"``, ``"1/l0"``,
    ``"l0_reverse"``, ...), arrays batch-first, time in the input's own order.

    Attributes
    ----------
    loss : float, the loss value.
    grads : the model's full gradient tree (from its own backward).
    dstate : {key: {"h": (B, T, S), "c": ...}} ∂L/∂(state after step t).
    norms : {key: (B, T)} ‖∂L/∂h_t‖ per record (over the units of h).
    total_norms : {key: (T,)} ‖∂L/∂h_t‖ over the whole batch.
    d_state0 : {key: tuple of (B, S)} gradient w.r.t. the initial state.
    shares : {key: {param: (T, ...)}} step t's share of each weight gradient (with
        ``keep_shares=True``; else None), summing over t to the layer's gradient.
    share_norms : {key: {param: (T,)}} the norm of each share.
    order : {key: "input" or "reverse"}: ``"reverse"`` keys were processed from the
        last step to the first (their distance from the end is t, not T-1-t).
    """

    loss: float
    grads: dict
    dstate: dict
    norms: dict
    total_norms: dict
    d_state0: dict
    shares: dict
    share_norms: dict
    order: dict

    def arrays(self, prefix="gradflow"):
        """A flat dict of the arrays for ``np.savez``."""
        out = {}
        for k in self.norms:
            out[f"{prefix}/{k}/norms"] = self.norms[k]
            out[f"{prefix}/{k}/total_norms"] = self.total_norms[k]
            for n, v in self.dstate[k].items():
                out[f"{prefix}/{k}/d{n}"] = v
            for n, v in self.share_norms[k].items():
                out[f"{prefix}/{k}/share_norm/{n}"] = v
        return out


class _Surrogate:
    """L = Σ R ⊙ outputs: the gradient of a chosen output without a target."""

    def __init__(self, R):
        self.R = R

    def value_and_grad(self, outputs, targets=None, mask=None):
        d = self.R if mask is None or mask.shape[:2] != outputs.shape[:2] or outputs.ndim < 3 \
            else self.R * mask[..., None]
        return float(np.sum(outputs * d)), d


def _loss_and_dout(model_out, Y, loss, mask, loss_mask):
    if loss is None:
        if Y is not None:
            raise ValueError("a target Y needs a loss: pass loss='mse', 'cross_entropy', ...")
        # no target: follow the sum of the outputs (of the last step for a folded model)
        loss = _Surrogate(np.ones_like(model_out))
    else:
        loss = get_loss(loss)
    return loss.value_and_grad(model_out, Y, loss_mask_for(model_out, mask, loss_mask))


def gradient_flow(model, X, Y=None, loss=None, mask=None, initial_state=None, loss_mask=None,
                  keep_shares=False, training=False):
    """∂L/∂h_t for every step t and every recurrent layer and direction, and each step's
    share of each weight gradient.

    Parameters
    ----------
    model : a recurrent layer or a ``Sequential`` holding recurrent layers.
    X : a batch (B, T, D) / (B, T) of symbols, or one record (T, D) / (T,).
    Y, loss : targets and loss (a name or an object with ``value_and_grad``). With
        neither, L is the sum of the model's outputs.
    mask : (B, T) bool or None. loss_mask : a mask for the loss if it differs.
    keep_shares : keep every step's share of every weight gradient (T copies of each
        weight: mind the memory); the norms of the shares are always kept.
    training : run the forward in training mode (dropout on).

    Returns
    -------
    :class:`GradientFlow`.
    """
    X, mask = as_batch(X, mask)
    if Y is not None and X.shape[0] == 1 and np.ndim(Y) in (0,):
        Y = np.asarray([Y])
    out, _, cache = model.forward(X, mask=mask, initial_state=initial_state, training=training,
                                  keep_tape=True)
    value, d_out = _loss_and_dout(out, Y, loss, mask, loss_mask)
    with record_backward_calls() as calls:
        grads, _, _ = model.backward(cache, d_out)
    by_tape = {id(args[2]): (args, res) for args, res in calls}
    res = GradientFlow(float(value), grads, {}, {}, {}, {}, {}, {}, {})
    for key, layer, name, lc in recurrent_caches(model, cache):
        tp = lc["tapes"][name]
        if id(tp) not in by_tape:
            raise RuntimeError(f"the backward of layer {key} did not go through "
                               "unrolled.unroll.backward; its gradient flow cannot be read")
        args, (full_g, _, full_d0) = by_tape[id(tp)]
        cell, p, _, xp, dd, d_final, truncate = args
        r = replay(cell, p, tp, xp, dd, d_final, truncate,
                   shares=True if keep_shares else "norms")
        for a, b in zip(r["d_state0"], full_d0):  # the replay is the loop, bit for bit
            if not bool((a == b).all()):
                warnings.warn(f"{key}: the step-by-step replay differs from the backward "
                              f"by {float(abs(a - b).max()):.3g}", RuntimeWarning,
                              stacklevel=2)
        names = ("h", "c")
        host = [to_numpy(to_input_order(d, name, lc, xp)) for d in r["dstate"]]  # (T, B, S)
        res.dstate[key] = {names[j] if j < 2 else f"s{j}": np.ascontiguousarray(d.swapaxes(0, 1))
                           for j, d in enumerate(host)}
        dh = res.dstate[key]["h"]
        res.norms[key] = np.sqrt((dh.astype(np.float64) ** 2).sum(-1))
        res.total_norms[key] = np.sqrt((res.norms[key] ** 2).sum(0))
        res.d_state0[key] = tuple(to_numpy(d) for d in r["d_state0"])
        res.order[key] = "reverse" if name.endswith("_reverse") else "input"
        # shares stay in the order the direction read its input: a reverse direction
        # reverses each record's valid steps separately, so its step-t share (a sum over
        # the batch) has no single position in the input
        steps = r["shares"]
        pnames = [k for k in steps[0] if k in full_g]
        if keep_shares:
            stacked = {k: np.stack([to_numpy(s[k]) for s in steps]) for k in pnames}
            res.shares[key] = stacked
            res.share_norms[key] = {k: np.sqrt((v.astype(np.float64) ** 2)
                                               .reshape(v.shape[0], -1).sum(1))
                                    for k, v in stacked.items()}
        else:
            res.shares[key] = None
            res.share_norms[key] = {k: np.array([s[k] for s in steps]) for k in pnames}
    if not res.norms:
        raise ValueError(f"{type(model).__name__} has no recurrent layer; pass a recurrent "
                         "layer or a Sequential that holds one")
    return res


# --------------------------------------------------------------------------- Jacobians

def state_jacobians(model, X, mask=None, initial_state=None, key=None, record=0, part="state"):
    """The Jacobians ∂s_T/∂s_t of one record, for t = 0..T, and their singular values.

    Parameters
    ----------
    model, X, mask, initial_state : as for :func:`traces`.
    key : the layer/direction (default: the first one).
    record : which record of the batch.
    part : ``"state"`` (all state components: h, or [h; c] for an LSTM) or ``"h"``
        (∂h_T/∂h_t with the other components held fixed).

    Returns
    -------
    dict: ``"jacobians"`` (T+1, N, N) with ``[t] = ∂s_T/∂s_t`` (s_t the state after step
    t, s_0 the initial state; ``[T]`` is the identity), ``"singular_values"`` (T+1, N)
    in decreasing order, ``"distance"`` (T+1,) = T - t, in the direction's own order of
    steps (a reverse direction's step t reads the input from the end).
    """
    if part not in ("state", "h"):
        raise ValueError(f"part must be 'state' or 'h', got {part!r}")
    X, mask = as_batch(X, mask)
    _out, _, cache = model.forward(X, mask=mask, initial_state=initial_state, training=False,
                                  keep_tape=True)
    found = {k: (layer, name, lc) for k, layer, name, lc in recurrent_caches(model, cache)}
    if not found:
        raise ValueError(f"{type(model).__name__} has no recurrent layer; pass a recurrent "
                         "layer or a Sequential that holds one")
    key = next(iter(found)) if key is None else key
    if key not in found:
        raise ValueError(f"no recurrent layer {key!r}; choose one of {list(found)}")
    layer, name, lc = found[key]
    tp = lc["tapes"][name]
    xp = lc.get("xp", np)
    T = tp.X.shape[0]
    sizes = [s.shape[-1] for s in tp.states]
    N = sum(sizes) if part == "state" else sizes[0]
    # one copy of the record per seed: row j of the batch carries the gradient of s_T[j]
    rep = lambda a: xp.repeat(a[:, record:record + 1], N, axis=1)
    one = dataclasses.replace(
        tp, X=rep(tp.X), states=tuple(rep(s) for s in tp.states),
        tape={k: rep(v) for k, v in tp.tape.items()},
        mask=None if tp.mask is None else rep(tp.mask))
    eye = xp.eye(N, dtype=tp.X.dtype)
    seeds, o = [], 0
    for S in sizes:
        if part == "h" and o > 0:
            seeds.append(None)
        else:
            seeds.append(xp.ascontiguousarray(eye[:, o:o + S]))
        o += S
    r = replay(layer._cell, layer._prepared(name, xp), one, xp, None, tuple(seeds), None,
               shares=False)
    J = np.empty((T + 1, N, N), dtype=np.float64)
    cols = lambda ds: np.concatenate([to_numpy(d) for d in ds], -1)[:, :N]
    J[0] = cols(r["d_state0"])
    for t in range(T):
        J[t + 1] = cols([d[t] for d in r["dstate"]])
    sv = np.linalg.svd(J, compute_uv=False)
    return {"jacobians": J, "singular_values": sv, "distance": T - np.arange(T + 1),
            "key": key, "part": part}


# --------------------------------------------------------------------------- pictures

def plot_gradient_flow(flows, path=None, title=None, record=None, labels=None):
    """‖∂L/∂h_t‖ against t (log scale), one line per layer/direction.

    Parameters
    ----------
    flows : a :class:`GradientFlow`, or a dict ``{label: GradientFlow}`` drawn side by side.
    record : None for the norm over the whole batch, or a record index.
    labels : optional T strings naming the steps on the time axis (e.g. characters).
    """
    if isinstance(flows, GradientFlow):
        flows = {"": flows}
    fig = new_figure(1.0 + 4.2 * len(flows), 3.4)
    axes = fig.subplots(1, len(flows), squeeze=False, sharey=True)[0]
    for ax, (label, fl) in zip(axes, flows.items()):
        for k in fl.norms:
            y = fl.total_norms[k] if record is None else fl.norms[k][record]
            y = np.where(y > 0, y, np.nan)
            ax.semilogy(np.arange(len(y)), y, marker=".", lw=1.4, ms=4, label=k)
            if labels is not None and len(labels) == len(y) <= 60:
                ax.set_xticks(range(len(y)))
                ax.set_xticklabels([str(s) for s in labels], fontsize=8)
        ax.set_xlabel("time step t")
        ax.set_title(label or "gradient flow", fontsize=11)
        ax.grid(True, which="both", alpha=0.25)
        ax.legend(fontsize=8)
    axes[0].set_ylabel(r"$\|\partial L / \partial h_t\|$")
    if title:
        fig.suptitle(title, fontsize=11)
    if path is not None:
        save_figure(fig, path)
    return fig


def plot_shares(flow, path=None, key=None):
    """Each step's share of each weight gradient of one layer (norms), against t."""
    key = next(iter(flow.share_norms)) if key is None else key
    fig = new_figure(5.2, 3.4)
    ax = fig.add_subplot()
    for n, v in flow.share_norms[key].items():
        v = np.where(v > 0, v, np.nan)
        ax.semilogy(np.arange(len(v)), v, marker=".", lw=1.2, ms=4, label=n)
    ax.set_xlabel("time step t (order the layer read its input)")
    ax.set_ylabel("norm of step t's share")
    ax.set_title(f"{key}: where each weight gradient comes from", fontsize=10)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=8)
    if path is not None:
        save_figure(fig, path)
    return fig


def plot_jacobians(jacs, path=None, top=3):
    """Singular values of ∂s_T/∂s_t against the distance T - t (log scale).

    ``jacs``: a result of :func:`state_jacobians`, or ``{label: result}`` side by side.
    The largest singular value bounds how much of a change at step t can still be seen
    at step T; the curve's slope is the rate at which information decays.
    """
    if "singular_values" in jacs:
        jacs = {"": jacs}
    fig = new_figure(1.0 + 4.2 * len(jacs), 3.4)
    axes = fig.subplots(1, len(jacs), squeeze=False, sharey=True)[0]
    for ax, (label, j) in zip(axes, jacs.items()):
        sv, dist = j["singular_values"], j["distance"]
        for i in range(min(top, sv.shape[1])):
            y = np.where(sv[:, i] > 0, sv[:, i], np.nan)
            ax.semilogy(dist, y, lw=1.4, label=f"σ{i + 1}")
        ax.set_xlabel("distance T - t")
        ax.set_title(label or f"{j['key']}: ∂s_T/∂s_t", fontsize=11)
        ax.grid(True, which="both", alpha=0.25)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("singular value")
    if path is not None:
        save_figure(fig, path)
    return fig
