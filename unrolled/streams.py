"""Stateful streams and truncated BPTT(k1, k2) (Williams & Peng 1990).

A long record, or B parallel streams cut from one long text or series
(:func:`unrolled.data.stream_batches`), is read in forward chunks of ``k1`` steps. The
state is carried from one chunk to the next through ``initial_state=``, so the forward
pass is the full recurrence; each update backpropagates the loss of the chunk's ``k1``
new steps through the last ``k2`` steps only.

``k1 == k2`` is the classic truncated BPTT of min-char-rnn and CNTK: every chunk is
unrolled on its own from the carried state. ``k2 > k1`` lets the gradient of the newest
steps reach further back than one chunk: the driver keeps the inputs of the last
``k2 - k1`` steps and the state just before them, and recomputes those steps with the
current weights before the new chunk (the same recomputation as checkpointed BPTT).
The window's first state is a constant for the gradient, as the truncation demands.

Exactly, update ``n`` (chunk ``[n k1, (n+1) k1)``) does::

    window  W = [max(0, n k1 - (k2 - k1)), end of the chunk)   # k2 steps for a full chunk
    loss    L_n = loss(outputs at the chunk's steps, targets)      # earlier steps: no loss
    grads   dL_n/dθ by BPTT over W from the stored state at W's start, with weights θ_n
    θ_{n+1} = optimizer(θ_n, grads)
    the state at the next window's start is taken from this forward (weights θ_n)
"""
import numpy as np

from .backend import get_xp
from .grad import backward_params
from .losses import get_loss
from .optim import clip_grad_norm


def _cat(a, b, axis=1):
    if a is None:
        return b
    return get_xp(b).concatenate([a, b], axis=axis)


def _slice_state(state, xp):
    return None if state is None else {k: xp.array(v, copy=True) for k, v in state.items()}


class TBPTT:
    """Truncated BPTT(k1, k2) over stateful streams.

    Parameters
    ----------
    model : a recurrent layer or a ``Sequential`` whose recurrent layer returns sequences
        (outputs (B, T, ...) at every step); its state is carried between chunks.
    loss : a loss name ("cross_entropy", "mse", "bce") or object with ``value_and_grad``.
    optimizer : an optimizer from :mod:`unrolled.optim` (``step(params, grads)``).
    k1 : int, new steps per update (the forward chunk).
    k2 : int >= k1 or None (= k1), steps the gradient reaches back from each update.
    clip_norm : float or None, clip the global gradient norm before each update.

    Attributes
    ----------
    state : the carried state (``{"h": (L, B, H), ...}``) after the last chunk, or None.
    updates : int, updates done since construction.

    Examples
    --------
    >>> import numpy as np, unrolled as u
    >>> from unrolled.data import stream_batches
    >>> model = u.Sequential(u.Embedding(5, 4, seed=0), u.LSTM(4, 8, seed=0),
    ...                      u.Dense(8, 5, seed=0))
    >>> tb = TBPTT(model, "cross_entropy", u.Adam(1e-2), k1=5, k2=10)
    >>> losses = tb.fit_stream(stream_batches(np.arange(200) % 5, batch_size=4, chunk=5))
    >>> len(losses)
    10
    """

    def __init__(self, model, loss, optimizer, k1, k2=None, clip_norm=None):
        k2 = k1 if k2 is None else k2
        for what, v in (("k1", k1), ("k2", k2)):
            if not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{what} must be a positive number of steps, got {v!r}")
        if k2 < k1:
            raise ValueError(f"k2={k2} < k1={k1}: each update backpropagates through at "
                             f"least its own {k1} new steps; use k2 >= k1")
        if not callable(getattr(optimizer, "step", None)):
            raise TypeError("optimizer must have step(params, grads), e.g. unrolled.Adam(1e-3)")
        self.model, self.loss, self.optimizer = model, get_loss(loss), optimizer
        self.k1, self.k2, self.clip_norm = int(k1), int(k2), clip_norm
        self.updates = 0
        self.reset()

    def reset(self):
        """Forget the carried state and history: the next chunk starts a new stream."""
        self.state = None       # state after the last chunk
        self._start = None      # state at the start of the kept history
        self._hist = None       # (B, k2 - k1 or fewer, ...) inputs of the kept history

    def step(self, X, Y, mask=None):
        """One update from the next chunk of every stream.

        Parameters
        ----------
        X : (B, k, ...) the chunk's inputs, k <= k1 (the last chunk may be shorter).
        Y : targets of those k steps, in the loss's form (e.g. (B, k) class indices).
        mask : (B, k) bool or None, steps that count in the loss.

        Returns
        -------
        float, the loss of the chunk (before the update).
        """
        k = X.shape[1]
        if k > self.k1:
            raise ValueError(f"a chunk has {k} steps but k1={self.k1}; cut the stream with "
                             f"stream_batches(..., chunk={self.k1})")
        xp = get_xp(X)
        h = 0 if self._hist is None else self._hist.shape[1]
        Xw = _cat(self._hist, X)                            # (B, h + k, ...) the window
        keep = min(self.k2 - self.k1, h + k)                # history kept for the next update
        split = h + k - keep                                # next window starts here
        # forward in two parts so the state at the next window's start is seen
        parts = [(0, split), (split, h + k)]
        outs, caches, state = [], [], self._start
        for a, b in parts:
            if b == a:
                outs.append(None)
                caches.append(None)
                continue
            out, st, cache = self.model.forward(Xw[:, a:b], initial_state=state, training=True)
            outs.append(out)
            caches.append(cache)
            if a == 0:
                next_start = st
            state = st
        if split == 0:
            next_start = self._start
        out = outs[0] if outs[1] is None else _cat(outs[0], outs[1])
        if out.ndim < 3:
            raise ValueError("TBPTT needs outputs at every step (B, T, ...); build the "
                             "recurrent layer with return_sequences=True")
        # the loss of the new steps only; earlier steps were scored by earlier updates
        value, d_new = self.loss.value_and_grad(out[:, h:], Y, mask)
        d_out = xp.zeros_like(out)
        d_out[:, h:] = d_new
        # backward: second part first, its initial-state gradient into the first part
        grads, d_state = None, None
        for (a, b), cache in reversed(list(zip(parts, caches))):
            if cache is None:
                continue
            g, _, d_state = backward_params(self.model, cache, d_out[:, a:b], d_state)
            grads = g if grads is None else _tree_add(grads, g)
        if self.clip_norm is not None:
            grads, _ = clip_grad_norm(grads, self.clip_norm)
        self.optimizer.step(self.model.params, grads)
        self.updates += 1
        # carry: the state after the chunk, and the history the next window needs
        self.state = _slice_state(state, xp)
        self._start = _slice_state(next_start, xp)
        self._hist = None if keep == 0 else xp.array(Xw[:, split:], copy=True)
        return float(value)

    def fit_stream(self, batches, reset=True):
        """One pass over an iterable of ``(X_chunk, Y_chunk)`` (e.g. ``stream_batches``).

        Returns the list of chunk losses. ``reset=True`` starts from a zero state.
        """
        if reset:
            self.reset()
        return [self.step(X, Y) for X, Y in batches]


def _tree_add(a, b):
    if isinstance(a, dict):
        return {k: _tree_add(a[k], b[k]) for k in a}
    return a + b


def evaluate_stream(model, loss, batches, state=None):
    """Mean loss over stateful streams, carrying the state from chunk to chunk, no update.

    Parameters
    ----------
    model : the model trained with :class:`TBPTT`.
    loss : a loss name or object.
    batches : iterable of ``(X_chunk, Y_chunk)``, e.g. ``stream_batches(valid, B, chunk)``.
    state : the state to start from (None: zeros).

    Returns
    -------
    (mean loss per step, final state)
    """
    loss = get_loss(loss)
    total, steps = 0.0, 0
    for X, Y in batches:
        out, state, _ = model.forward(X, initial_state=state, training=False, keep_tape=False)
        value, _ = loss.value_and_grad(out, Y)
        total += float(value) * X.shape[1]
        steps += X.shape[1]
    if steps == 0:
        raise ValueError("evaluate_stream: no chunks to evaluate; is the stream empty?")
    return total / steps, state
