"""The shapes of recurrent problems as building blocks, under CNTK's names.

=====================  ======================================  ===========================
CNTK (``cntk.layers``)  here                                    the library's own spelling
=====================  ======================================  ===========================
``Recurrence(step)``    ``Recurrence(layer)``: many-to-many,    ``layer`` with
                        an output at every step                 ``return_sequences=True``
``Fold(step)``          ``Fold(layer)``: many-to-one, the       ``return_sequences=False``
                        state after each record's last valid
                        step
``RecurrenceFrom``      ``RecurrenceFrom(layer)``: the initial  ``layer.forward(X,
``(step)(h0, x)``       state comes from data, one per record;  initial_state=h0)``
                        its gradient is returned to that data
``UnfoldFrom(gen,       ``UnfoldFrom(layer, readout, ...)``:    :class:`unrolled.seq2seq`'s
until, length)``        one-to-many, each output fed back as    decoder without an encoder
                        the next input until an end symbol or
                        a length
=====================  ======================================  ===========================

Each wraps one recurrent layer (:class:`~unrolled.layers.Elman`, ``LSTM``, ``GRU``,
``Jordan``) or builds it from a cell name, and shares that layer's parameters: the same
layer object in a ``Recurrence`` and a ``Fold`` is one set of weights. ``go_backwards``
(CNTK's argument) runs over each record's valid steps in reverse, pads staying in place.
All keep the layer protocol (``forward`` leaves a cache, ``backward`` consumes it), so they
go inside :class:`~unrolled.layers.Sequential` and :func:`unrolled.value_and_grad`.
"""
import numpy as np

from .layers import Jordan
from .layers.base import Module
from .cells import REGISTRY
from .layers.recurrent import Recurrent, _gather_time, layer_class, reverse_index



def _as_layer(step, input_size, hidden_size, kw):
    """A recurrent layer from a layer object or a cell name ("lstm", "gru", ...)."""
    if isinstance(step, Recurrent):
        if input_size is not None or hidden_size is not None or kw:
            raise ValueError("give either a recurrent layer or a cell name with input_size "
                             "and hidden_size, not both")
        return step
    if isinstance(step, str) and (step.lower() in REGISTRY or step.lower() == "rnn"):
        if input_size is None or hidden_size is None:
            raise ValueError(f"a cell name ({step!r}) needs input_size and hidden_size")
        return layer_class(step)(input_size, hidden_size, **kw)
    raise TypeError(f"expected a recurrent layer (Elman, LSTM, GRU, Jordan, ...) or a "
                    f"registered cell name ({', '.join(sorted(REGISTRY))}), got "
                    f"{type(step).__name__}")


class Recurrence(Module):
    """Many-to-many: the layer's output at every step, (B, T, D) -> (B, T, S).

    CNTK: ``Recurrence(step_function, go_backwards=False)``.

    Parameters
    ----------
    step : a recurrent layer, or a cell name ("elman", "lstm", "gru", "jordan") together
        with ``input_size``, ``hidden_size`` and any layer keyword (``num_layers``, ...).
    go_backwards : bool, read each record from its last valid step to its first; outputs
        are put back in the records' own order.
    """

    recurrent = True
    _sequences = True

    def __init__(self, step, input_size=None, hidden_size=None, go_backwards=False, **kw):
        self.layer = _as_layer(step, input_size, hidden_size, kw)
        if go_backwards and self.layer.bidirectional:
            raise ValueError("go_backwards needs a unidirectional layer; a bidirectional one "
                             "already reads both ways")
        self.go_backwards = bool(go_backwards)

    # the layer's parameters are the block's (also when a container assigns ``_params``)
    @property
    def _params(self):
        return self.layer._params

    @_params.setter
    def _params(self, tree):
        self.layer._params = tree

    @property
    def dtype(self):
        return self.layer.dtype

    @property
    def output_size(self):
        return self.layer.output_size

    def forward(self, X, mask=None, initial_state=None, training=False, keep_tape=True,
                **kw):
        ridx = None
        if self.go_backwards:
            B, T = X.shape[:2]
            ridx = reverse_index(None if mask is None else mask.T, T, B, np)  # (T, B)
            X = _gather_time(X.transpose(1, 0, 2), ridx, np).transpose(1, 0, 2)
        keep = self.layer.return_sequences
        self.layer.return_sequences = self._sequences
        try:
            out, state, cache = self.layer.forward(X, mask=mask, initial_state=initial_state,
                                                   training=training, keep_tape=keep_tape, **kw)
        finally:
            self.layer.return_sequences = keep
        if ridx is not None and out.ndim == 3:
            out = _gather_time(out.transpose(1, 0, 2), ridx, np).transpose(1, 0, 2)
        return out, state, (cache, ridx)

    def backward(self, cache, d_out, d_state=None):
        cache, ridx = cache
        if ridx is not None and d_out is not None and d_out.ndim == 3:
            d_out = _gather_time(d_out.transpose(1, 0, 2), ridx, np).transpose(1, 0, 2)
        keep = self.layer.return_sequences
        self.layer.return_sequences = self._sequences
        try:
            grads, dX, d0 = self.layer.backward(cache, d_out, d_state)
        finally:
            self.layer.return_sequences = keep
        if ridx is not None:
            # the reversal is its own inverse: gather with the same index
            dX = _gather_time(dX.transpose(1, 0, 2), ridx, np).transpose(1, 0, 2)
        return grads, dX, d0

    def named_children(self):
        return [("layer", self.layer)]

    def extra_repr(self):
        return "go_backwards=True" if self.go_backwards else ""


class Fold(Recurrence):
    """Many-to-one: the state after each record's last valid step, (B, T, D) -> (B, S).

    CNTK: ``Fold(folder_function, go_backwards=False)``; with ``go_backwards`` the state
    after reading the record backwards, i.e. after its first step. Padded steps never
    reach the answer.
    """

    _sequences = False


class RecurrenceFrom(Recurrence):
    """Many-to-many from an initial state given per record (computed from data).

    CNTK: ``RecurrenceFrom(step_function)(h0, [c0,] x)``. Here
    ``forward(X, mask, initial_state=h0)`` with ``h0`` of shape (B, S) — or a dict
    ``{"h": (L, B, S), "c": ...}`` for an LSTM or a stack — is required, and ``backward``
    returns ``d_initial_state`` in the same form, so the gradient flows on into whatever
    produced the state (an encoder, a Dense layer over features, ...).
    """

    def forward(self, X, mask=None, initial_state=None, training=False, keep_tape=True,
                **kw):
        if initial_state is None:
            raise ValueError("RecurrenceFrom needs initial_state (B, S) or a dict of "
                             "(layers, B, S) arrays; use Recurrence for a fixed initial state")
        flat = not isinstance(initial_state, dict)
        out, state, cache = super().forward(X, mask, initial_state, training, keep_tape, **kw)
        return out, state, (cache, flat)

    def backward(self, cache, d_out, d_state=None):
        cache, flat = cache
        grads, dX, d0 = super().backward(cache, d_out, d_state)
        if flat:
            d0 = d0["h"][0] if d0["h"].shape[0] == 1 else d0["h"]
        return grads, dX, d0


class UnfoldFrom(Module):
    """One-to-many: generate a sequence from an initial state (a vector per record) or
    a seed, feeding each output back in as the next input.

    CNTK: ``UnfoldFrom(generator_function, until_predicate, length_increase)``.

    Parameters
    ----------
    step : a recurrent layer (or a cell name with input_size/hidden_size and keywords).
    readout : a :class:`~unrolled.layers.Dense` from the layer's output to the output
        (symbol logits, or a vector).
    embed : an :class:`~unrolled.layers.Embedding` for symbols: the next input is the
        embedding of the symbol just produced (the most likely one, or one sampled).
        ``None``: vectors; the next input is the readout's output itself (its size must
        equal the layer's input size).
    start : the first input: a symbol id (with ``embed``) or a vector (default zeros).
    until : a symbol id that ends a record (CNTK's ``until_predicate``), or None.
    length : the most steps generated (CNTK's ``length_increase`` times the input length).

    Training is teacher forcing: :meth:`forward` takes the true previous outputs as the
    inputs (``shift`` them with ``start`` first) and, with an ``initial_state``, returns
    its gradient from :meth:`backward` like :class:`RecurrenceFrom`.
    """

    recurrent = True

    def __init__(self, step, readout, embed=None, start=None, until=None, length=50,
                 input_size=None, hidden_size=None, **kw):
        self.rec = RecurrenceFrom(_as_layer(step, input_size, hidden_size, kw))
        self.layer, self.readout, self.embed = self.rec.layer, readout, embed
        if readout.in_features != self.layer.output_size:
            raise ValueError(f"readout takes {readout.in_features} features but the layer "
                             f"gives {self.layer.output_size}")
        if embed is None and readout.out_features != self.layer.input_size:
            raise ValueError("without an embedding the output is fed back as the next "
                             f"input: readout gives {readout.out_features} values but the "
                             f"layer takes {self.layer.input_size}")
        if embed is not None and start is None:
            raise ValueError("give the start symbol (start=<id of <bos>>)")
        self.start, self.until, self.length = start, until, int(length)

    def named_children(self):
        kids = [("layer", self.layer), ("readout", self.readout)]
        return kids + ([("embed", self.embed)] if self.embed is not None else [])

    def extra_repr(self):
        opts = {"start": self.start, "until": self.until, "length": self.length}
        return ", ".join(f"{k}={v!r}" for k, v in opts.items() if v is not None)

    @property
    def _params(self):
        p = {"layer": self.layer._params, "readout": self.readout._params}
        if self.embed is not None:
            p["embed"] = self.embed._params
        return p

    @_params.setter
    def _params(self, tree):
        self.layer._params, self.readout._params = tree["layer"], tree["readout"]
        if self.embed is not None:
            self.embed._params = tree["embed"]

    @property
    def dtype(self):
        return self.layer.dtype

    def _zero_state(self, B):
        L = len(self.layer.names)
        z = np.zeros((L, B, self.layer.state_sizes[0]), self.layer.dtype)
        return {k: z for k in self.layer._state_keys()}

    def forward(self, Y_in, mask=None, initial_state=None, training=False, keep_tape=True):
        """Teacher-forced outputs (B, T, O) for the true previous outputs ``Y_in``
        ((B, T) symbols or (B, T, O) vectors, the first being ``start``)."""
        ce = None
        X = Y_in
        if self.embed is not None:
            X, _, ce = self.embed.forward(Y_in, mask)
        s0 = self._zero_state(len(Y_in)) if initial_state is None else initial_state
        H, state, cr = self.rec.forward(X, mask, s0, training, keep_tape)
        out, _, cd = self.readout.forward(H, mask)
        return out, state, (ce, cr, cd)

    def backward(self, cache, d_out, d_state=None):
        ce, cr, cd = cache
        g_out, dH, _ = self.readout.backward(cd, d_out)
        g_layer, dX, d0 = self.rec.backward(cr, dH, d_state)
        g = {"layer": g_layer, "readout": g_out}
        if self.embed is not None:
            g["embed"], _, _ = self.embed.backward(ce, dX)
            dX = None
        return g, dX, d0

    def generate(self, initial_state=None, batch=None, greedy=True, temperature=1.0,
                 rng=None):
        """Outputs generated step by step from ``initial_state`` ((B, S) or a state dict;
        zeros if None, then ``batch`` records).

        Returns a list of B id lists (symbols; ``until`` not included) or an array
        (B, length, O) of vectors.
        """
        if initial_state is None:
            state = self._zero_state(batch or 1)
        elif isinstance(initial_state, dict):
            state = initial_state
        else:
            state = {"h": initial_state[None]}
            if len(self.layer.state_sizes) > 1:
                state["c"] = np.zeros_like(state["h"])
        B = next(iter(state.values())).shape[1]
        rng = np.random.default_rng() if rng is None else rng
        dt = self.layer.dtype
        if self.embed is not None:
            y = np.full(B, self.start, dtype=np.int64)
            out, done = [[] for _ in range(B)], np.zeros(B, bool)
        else:
            y = (np.zeros((B, self.layer.input_size), dt) if self.start is None
                 else np.broadcast_to(np.asarray(self.start, dt), (B, self.layer.input_size)))
            out = []
        for _ in range(self.length):
            x = (self.embed.forward(y[:, None], keep_tape=False)[0] if self.embed is not None
                 else y[:, None, :].astype(dt))
            h, state, _ = self.layer.forward(x, None, initial_state=state, keep_tape=False)
            o = self.readout.forward(h[:, 0])[0]
            if self.embed is None:
                y = o
                out.append(o)
                continue
            if greedy:
                y = o.argmax(-1)
            else:
                z = o.astype(np.float64) / temperature
                p = np.exp(z - z.max(-1, keepdims=True))
                p /= p.sum(-1, keepdims=True)
                y = (p.cumsum(-1) > rng.random((B, 1))).argmax(-1)
            for b in np.flatnonzero(~done):
                if self.until is not None and y[b] == self.until:
                    done[b] = True
                else:
                    out[b].append(int(y[b]))
            if done.all():
                break
        return out if self.embed is not None else np.stack(out, 1)


def scheduled_forward(layer, X, teacher, sampling, rng, initial_state=None, training=True):
    """Jordan network trained with scheduled sampling (Bengio et al. 2015).

    At each step t > 0 and for each record, the output fed back into the hidden layer is
    the true previous target ``teacher[:, t-1]`` with probability ``1 - sampling``, else the
    network's own previous output. ``sampling=0`` is teacher forcing (use
    ``layer.forward(X, teacher=Y)``: no sequential loop), ``sampling=1`` free running (use
    ``layer.forward(X)``). In between the steps depend on coin flips and run one at a
    time; where the network's own output was fed back, the gradient flows back through it.

    Parameters
    ----------
    layer : a one-layer :class:`~unrolled.layers.Jordan` (its state is its output).
    X : (B, T, D) inputs; teacher : (B, T, O) true outputs.
    sampling : float in [0, 1]; rng : numpy Generator for the coin flips.

    Returns
    -------
    out : (B, T, O) outputs; cache for :func:`scheduled_backward`.
    """
    if not isinstance(layer, Jordan) or layer.num_layers != 1 or layer.bidirectional:
        raise TypeError("scheduled_forward needs a one-layer, one-direction Jordan layer, "
                        f"got {layer!r}")
    if not 0 <= sampling <= 1:
        raise ValueError(f"sampling must be a probability in [0, 1], got {sampling}")
    B, T, _ = X.shape
    O = layer.state_sizes[0]
    if teacher.shape != (B, T, O):
        raise ValueError(f"teacher must have shape {(B, T, O)}, got {tuple(teacher.shape)}")
    state, steps, outs, owns = initial_state, [], [], []
    for t in range(T):
        own = None
        if t > 0:
            own = rng.random(B) < sampling                      # True: the model's output
            prev = np.where(own[:, None], outs[-1], teacher[:, t - 1]).astype(layer.dtype)
            state = {"h": prev[None]}
        y, _, c = layer.forward(X[:, t:t + 1], None, initial_state=state, training=training)
        steps.append(c)
        owns.append(own)
        outs.append(y[:, 0])
    return np.stack(outs, 1), (steps, owns)


def scheduled_backward(layer, cache, d_out):
    """Gradients of the layer's parameters and of X for :func:`scheduled_forward`."""
    steps, owns = cache
    grads, dXs, d_next = None, [], None
    for t in reversed(range(len(steps))):
        ds = None if d_next is None else {"h": d_next[None]}
        g, dX, d0 = layer.backward(steps[t], d_out[:, t:t + 1], ds)
        grads = g if grads is None else _add(grads, g)
        dXs.append(dX[:, 0])
        # the gradient reaches the previous output only where that output was fed back
        d_next = None if owns[t] is None else d0["h"][0] * owns[t][:, None]
    return grads, np.stack(dXs[::-1], 1)


def _add(a, b):
    return {k: _add(a[k], b[k]) for k in a} if isinstance(a, dict) else a + b
