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

There is one training loop, :class:`unrolled.train.Trainer`; the carry of the state
across chunks is a policy it runs, :class:`CarryState` (the ``text`` task's). A window
is a batch whose ``carry_at`` says at which step the next window starts and whose
``loss_mask`` leaves the repeated steps out of the loss. :class:`TBPTT` is the same
trainer step fed one chunk at a time: it keeps the inputs of the last ``k2 - k1``
steps and builds each window from them and the new chunk.
"""
import numpy as np

from .backend import get_xp
from .grad import backward_params
from .losses import get_loss
from .tree import tree_map

__all__ = ["CarryState", "TBPTT", "evaluate_stream"]


def _copy_state(state, xp=np):
    return None if state is None else {k: xp.array(v, copy=True) for k, v in state.items()}


class CarryState:
    """The trainer's batch policy for stateful streams: each batch starts from the state
    the previous one carried (truncated BPTT; see the module docstring).

    A batch whose ``carry_at`` is set is a TBPTT(k1, k2 > k1) window: it is run in two
    parts, ``[:carry_at]`` then ``[carry_at:]``, so that the state at ``carry_at`` (where
    the next window starts) is seen; the outputs and gradients are those of one forward
    over the whole window. Otherwise the state after the last step is carried. A batch of
    another size than the carried state starts from the zero state.

    Parameters
    ----------
    require_sequences : raise a ValueError unless the model's outputs have a time axis
        (B, T, ...) (a loss per step is what the windows mask).

    Attributes
    ----------
    carry : the state carried into the next batch, or None (the zero state).
    final : the state after the last step of the last batch, or None.
    """

    def __init__(self, require_sequences=False):
        self.require_sequences = require_sequences
        self.carry = None
        self.final = None

    def start_epoch(self):
        """Every epoch cuts the streams anew: start from the zero state."""
        self.carry = None

    def forward(self, trainer, batch):
        model = trainer.model
        init = self.carry
        if init is not None and next(iter(init.values())).shape[1] != batch.size:
            init = None  # a batch of another size starts from the zero state
        split = getattr(batch, "carry_at", None)
        if split is None:
            out, state, cache = model.forward(batch.X, mask=batch.mask, initial_state=init,
                                              training=True)
            final = state
        else:
            out, state, final, cache = _forward_split(model, batch, init, int(split))
        if self.require_sequences and out.ndim < 3:
            raise ValueError("TBPTT needs outputs at every step (B, T, ...); build the "
                             "recurrent layer with return_sequences=True")
        return out, (cache, split, state, final, get_xp(out))

    def backward(self, trainer, cache, d_out):
        cache, split, state, final, xp = cache
        if split is None:
            grads, _, _ = backward_params(trainer.model, cache, d_out)
        else:
            grads = _backward_split(trainer.model, cache, d_out)
        if state is not None or split is not None:
            # with carry_at, the state at that step (None: the zero state) is carried
            self.carry = _copy_state(state, xp)
            self.final = _copy_state(final, xp)
        return grads


def _forward_split(model, batch, init, split):
    """Forward ``batch.X`` as two parts, ``[:split]`` then ``[split:]``, the first part's
    final state starting the second. The outputs and the gradients are those of one
    forward over the whole batch; only the state at ``split`` is extra.

    Returns ``(out (B, T, ...), state at split, state at the end, [(cache, (a, b)) per
    non-empty part])``.
    """
    T = batch.X.shape[1]
    if not 0 <= split <= T:
        raise ValueError(f"Batch.carry_at={split} is outside the batch's {T} steps")
    outs, parts, state, carried = [], [], init, init
    for a, b in ((0, split), (split, T)):
        if b == a:
            continue
        m = None if batch.mask is None else batch.mask[:, a:b]
        o, state, c = model.forward(batch.X[:, a:b], mask=m, initial_state=state,
                                    training=True)
        outs.append(o)
        parts.append((c, (a, b)))
        if a == 0 and b < T:
            carried = state
    if split == T:
        carried = state
    out = outs[0] if len(outs) == 1 else get_xp(outs[0]).concatenate(outs, axis=1)
    return out, carried, state, parts


def _backward_split(model, parts, d_out):
    """BPTT through the parts of :func:`_forward_split`: the last part first, its
    initial-state gradient flowing into the end of the part before it."""
    grads, d_state = None, None
    for cache, (a, b) in reversed(parts):
        g, _, d_state = backward_params(model, cache, d_out[:, a:b], d_state)
        grads = g if grads is None else tree_map(
            lambda x, y: None if x is None else x + y, grads, g)
    return grads


class _Chunks:
    """The task a :class:`TBPTT` trains: chunks pushed one at a time, no epochs."""

    name = "streams"
    stateful = True
    monitor, monitor_mode = "loss", "min"

    def __init__(self, loss):
        self.loss = loss

    def epoch_batches(self, rng):
        return []


class TBPTT:
    """Truncated BPTT(k1, k2) over stateful streams, one chunk at a time.

    Each :meth:`step` is one update of :class:`unrolled.train.Trainer` with the
    :class:`CarryState` policy: the window (the kept ``k2 - k1`` steps and the new chunk)
    is a batch that carries the state at the next window's start.

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
    trainer : the :class:`unrolled.train.Trainer` that makes the updates.

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
        from .config import TRAIN_DEFAULTS
        from .train import Trainer

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
        cfg = dict(TRAIN_DEFAULTS, clip=clip_norm or 0.0, progress=False)
        self.trainer = Trainer(_Chunks(self.loss), cfg, model=model, optimizer=optimizer,
                               policy=CarryState(require_sequences=True), log=lambda m: None)
        self.updates = 0
        self.reset()

    def reset(self):
        """Forget the carried state and history: the next chunk starts a new stream."""
        self.trainer.policy.start_epoch()
        self.trainer.policy.final = None
        self._hist = None       # (B, k2 - k1 or fewer, ...) inputs of the kept history

    @property
    def state(self):
        """The state after the last chunk (None before the first)."""
        return self.trainer.policy.final

    def window(self, X, Y, mask=None):
        """The batch of the next update: the kept history and the chunk ``X``, the loss
        on the chunk's steps only, the state carried from where the next window starts."""
        from .tasks.base import Batch

        k = X.shape[1]
        if k > self.k1:
            raise ValueError(f"a chunk has {k} steps but k1={self.k1}; cut the stream with "
                             f"stream_batches(..., chunk={self.k1})")
        xp = get_xp(X)
        h = 0 if self._hist is None else self._hist.shape[1]
        Xw = X if h == 0 else xp.concatenate([self._hist, X], axis=1)
        keep = min(self.k2 - self.k1, h + k)   # history kept for the next update
        loss_mask = mask
        if h:  # the history was scored by earlier updates: no loss, no target
            Y = xp.concatenate([xp.zeros((Y.shape[0], h) + Y.shape[2:], Y.dtype), Y], 1)
            loss_mask = xp.zeros((X.shape[0], h + k), dtype=bool)
            loss_mask[:, h:] = True if mask is None else mask
        self._hist = None if keep == 0 else xp.array(Xw[:, h + k - keep:], copy=True)
        return Batch(X=Xw, Y=Y, size=X.shape[0], loss_mask=loss_mask,
                     carry_at=None if keep == 0 else h + k - keep)

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
        hist = self._hist
        batch = self.window(X, Y, mask)
        try:
            value, _ = self.trainer.train_step(batch)
        except Exception:
            self._hist = hist
            raise
        self.updates += 1
        return value

    def fit_stream(self, batches, reset=True):
        """One pass over an iterable of ``(X_chunk, Y_chunk)`` (e.g. ``stream_batches``).

        Returns the list of chunk losses. ``reset=True`` starts from a zero state.
        """
        if reset:
            self.reset()
        return [self.step(X, Y) for X, Y in batches]


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
