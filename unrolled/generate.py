"""Fast step-by-step generation: one token at a time, nothing allocated per token.

A :class:`Generator` wraps a recurrent layer (optionally with the embedding in front of
it and the dense layer after it) for sampling. Everything a step touches is allocated
once: the state (two sets of buffers that swap roles), the cell's workspace, the
logits and the sampling buffers. With an embedding, the product of the embedding table
and the first layer's input weights (plus its biases) is folded into one table of shape
(V, G*H), so the input projection of a symbol is a row lookup.

    gen = Generator(lstm, embedding=emb, output=dense, batch=1, seed=0)
    ids = gen.sample(500, start=vocab.index("\\n"), temperature=0.8)   # (1, 500)

    gen.reset()
    logits = gen.step(symbols)   # (B, V) view into the generator's buffer

The tables are a snapshot of the weights: build a new Generator (or call
:meth:`Generator.refresh`) after training further.
"""
import numpy as np

from . import unroll


def _check_temperature(t):
    if not (t == 0 or t > 0):
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {t}")


class Generator:
    """Sample from ``rnn`` one step at a time.

    Parameters
    ----------
    rnn : a recurrent layer whose cell has a per-unit step (``LSTM``, ``GRU`` with
        ``reset_after=True``, ``Elman``, any registered cell of that kind),
        unidirectional, any number of layers.
    embedding : optional ``Embedding`` feeding the first layer: steps then take integer
        symbols (B,) instead of vectors (B, D).
    output : optional ``Dense`` on top: steps then return logits (B, V), else the last
        layer's hidden state (B, H).
    batch : int, rows sampled in parallel.
    seed : int or numpy Generator, for the draws.
    xp : array module (NumPy default; CuPy for a GPU).
    """

    def __init__(self, rnn, embedding=None, output=None, batch=1, seed=None, xp=None):
        cell = rnn._cell
        if getattr(cell, "forward", None) is None or not cell.compiles():
            raise ValueError(f"Generator supports layers whose cell has a per-unit step "
                             f"(LSTM, GRU with reset_after=True, Elman, ...), got {rnn!r}; use "
                             "the layer's forward one step at a time instead")
        if getattr(cell, "noise", ()) or getattr(cell, "window", 1) > 1:
            raise ValueError(f"Generator does not run cells with noise inputs or an input "
                             f"window ({cell.name}); "
                             "use the layer's forward one step at a time instead")
        if rnn.bidirectional:
            raise ValueError("a bidirectional layer cannot generate step by step; use "
                             "bidirectional=False")
        if not isinstance(batch, (int, np.integer)) or batch < 1:
            raise ValueError(f"batch must be a positive integer, got {batch!r}")
        if embedding is not None and embedding.embedding_dim != rnn.input_size:
            raise ValueError(f"the embedding gives {embedding.embedding_dim} features but the "
                             f"layer takes {rnn.input_size}; match embedding_dim to input_size")
        if output is not None and output.in_features != rnn.hidden_size:
            raise ValueError(f"the output layer takes {output.in_features} features but the "
                             f"layer gives {rnn.hidden_size}")
        self.rnn, self.embedding, self.output = rnn, embedding, output
        self.cell, self.batch = cell, int(batch)
        self.xp = np if xp is None else xp
        self.dtype = np.dtype(rnn.dtype)
        self.rng = np.random.default_rng(seed)
        self.refresh()
        self.reset()

    # -- set up ---------------------------------------------------------------------
    def refresh(self):
        """Rebuild the folded tables and buffers from the layers' current weights."""
        xp, B, H = self.xp, self.batch, self.rnn.hidden_size
        asx = (lambda a: xp.asarray(a))
        self.p = []
        for name in self.rnn.names:
            p = self.rnn._prepared(name, np)
            p = {k: (None if v is None else asx(v)) for k, v in p.items()}
            p["W_ihT"] = xp.ascontiguousarray(p["weight_ih"].T)
            if p.get("W_hhT") is not None:  # a snapshot (the prepared one is a view)
                p["W_hhT"] = xp.ascontiguousarray(p["W_hhT"])
            self.p.append(p)
        self.table = None
        if self.embedding is not None:  # (V, G*H): embedding . W_ih^T + every foldable bias
            E = asx(self.embedding._params["weight"])
            self.table = (E @ self.p[0]["W_ihT"] + self.p[0]["bias_x"]).astype(self.dtype)
        if self.output is not None:  # in the layer's dtype, as the compiled sampler reads it
            self.W_outT = xp.ascontiguousarray(
                asx(self.output._params["weight"]).T.astype(self.dtype))
            self.b_out = (asx(self.output._params["bias"]).astype(self.dtype)
                          if self.output.bias else None)
            V = self.output.out_features
            self.logits = xp.empty((B, V), self.dtype)
            self.cum = xp.empty((B, V), self.dtype)
            self.u = np.empty(B, self.dtype)
            self.below = xp.empty((B, V), bool)
            self.ids = xp.empty(B, np.int64)
            self.top = xp.empty((B, 1), self.dtype)
        self._sampler_args = self._sampler_arguments()
        G = self.p[0]["weight_ih"].shape[0]
        self.xw = xp.empty((B, G), self.dtype)
        ns = len(self.rnn.state_sizes)
        L = self.rnn.num_layers
        # per layer and state component: (2, B, H), the state before [0] and after [1] a step
        self.states = [tuple(xp.zeros((2, B, H), self.dtype) for _ in range(ns)) for _ in range(L)]
        self.cache = tuple(xp.empty((1, B, H), self.dtype) for _ in self.cell.cache)
        self.z = xp.empty((B, G), self.dtype)
        self.units = [unroll._units(self.cell, p, H, self.dtype, xp) for p in self.p]
        self.cur = 0

    def reset(self, initial_state=None):
        """Start again from zeros, or from ``initial_state`` ({"h": (L, B, H), "c": ...}
        or an (L, B, H) array, as the layer's ``forward`` takes and returns)."""
        if initial_state is not None and not isinstance(initial_state, dict):
            initial_state = {"h": initial_state}
        L = self.rnn.num_layers
        for k in range(L):
            for j, key in enumerate(self.cell.state):
                buf = self.states[k][j][0]
                given = None if initial_state is None else initial_state.get(key)
                if given is None:
                    buf[...] = 0
                else:
                    if tuple(given.shape) != (L, self.batch, self.rnn.hidden_size):
                        raise ValueError(f"initial_state['{key}'] must have shape "
                                         f"({L}, {self.batch}, {self.rnn.hidden_size}), got "
                                         f"{tuple(given.shape)}")
                    buf[...] = self.xp.asarray(given[k])

    @property
    def state(self):
        """The current state as the layer returns it: {"h": (L, B, H), ...} (copies)."""
        xp = self.xp
        return {key: xp.stack([s[j][0] for s in self.states]) for j, key in
                enumerate(self.cell.state)}

    # -- one step -------------------------------------------------------------------
    def step(self, x):
        """Advance one step on ``x``: symbols (B,) (or an int for batch 1) with an
        embedding, else vectors (B, D). Returns the logits (B, V) with an output layer,
        else the last hidden state (B, H): a view into a buffer the next step overwrites."""
        xp, cell = self.xp, self.cell
        xw = self.xw
        if self.table is not None:
            if isinstance(x, (int, np.integer)):
                if not 0 <= x < self.table.shape[0]:
                    raise ValueError(f"symbol {x} is outside the vocabulary of "
                                     f"{self.table.shape[0]}")
                xw = self.table[x:x + 1] if self.batch == 1 else xp.broadcast_to(
                    self.table[x], xw.shape)
            else:
                xp.take(self.table, x, axis=0, out=xw)
        else:
            xp.matmul(x, self.p[0]["W_ihT"], out=xw)
            xw += self.p[0]["bias_x"]
        for k, p in enumerate(self.p):
            if k > 0:
                xw = self.xw
                xp.matmul(self.states[k - 1][0][0], p["W_ihT"], out=xw)
                xw += p["bias_x"]
            S = self.states[k]
            unroll.step_once(cell, p, xw, S, self.cache, xp, z=self.z, units=self.units[k])
            for s in S:  # the new state becomes the state of the next step
                s[0] = s[1]
        h = self.states[-1][0][0]
        if self.output is None:
            return h
        xp.matmul(h, self.W_outT, out=self.logits)
        if self.b_out is not None:
            self.logits += self.b_out
        return self.logits

    def draw(self, logits, temperature=1.0):
        """Sample one symbol per row of ``logits`` (B, V) at ``temperature`` (0: the most
        likely one). Returns the (B,) int64 buffer of symbols (overwritten next draw);
        ``logits`` is overwritten."""
        xp = self.xp
        if temperature == 0:
            return xp.argmax(logits, axis=1, out=self.ids)
        _check_temperature(temperature)
        # softmax without temporaries: subtract the row maximum, scale, exponentiate
        xp.max(logits, axis=1, keepdims=True, out=self.top)
        logits -= self.top
        if temperature != 1:
            logits *= 1.0 / temperature
        xp.exp(logits, out=logits)
        xp.cumsum(logits, axis=1, out=self.cum)
        u = self.rng.random(self.batch, dtype=self.dtype, out=self.u)
        u *= self.cum[:, -1] if xp is np else xp.asnumpy(self.cum[:, -1])
        uu = u if xp is np else xp.asarray(u)
        # the drawn symbol is the number of cumulative weights below u
        xp.less(self.cum, uu[:, None], out=self.below)
        xp.sum(self.below, axis=1, out=self.ids)
        xp.minimum(self.ids, self.cum.shape[1] - 1, out=self.ids)
        return self.ids

    def sample(self, n, start=0, temperature=1.0):
        """Generate ``n`` symbols after ``start`` (an int or (B,) symbols); returns (B, n)
        int64. Needs an embedding and an output layer."""
        if self.table is None or self.output is None:
            raise ValueError("sample needs a Generator built with an embedding and an output "
                             "layer; call step() and draw() yourself otherwise")
        V_in, V_out = self.table.shape[0], self.output.out_features
        if V_out > V_in:
            raise ValueError(f"sample feeds each drawn symbol back through the embedding, but "
                             f"the output layer draws from {V_out} symbols and the embedding "
                             f"has {V_in}; give them one vocabulary, or call step() and draw() "
                             "yourself")
        xp = self.xp
        out = xp.empty((self.batch, n), np.int64)
        x = start
        if isinstance(x, (int, np.integer)) and self.batch > 1:
            x = xp.full(self.batch, x, np.int64)
        if n > 0 and self._compiled_sampler() is not None:
            return self._sample_compiled(n, x, temperature, out)
        for t in range(n):
            ids = self.draw(self.step(x), temperature)
            out[:, t] = ids
            x = int(ids[0]) if self.batch == 1 else ids
        return out

    # -- the whole token loop compiled -------------------------------------------------
    def _compiled_sampler(self):
        """The cell's compiled ``sample_tokens`` where every step runs compiled on NumPy
        arrays (None elsewhere: ``sample`` then steps from Python)."""
        if self._sampler_args is None:
            return None
        from .kernels import compiled

        return getattr(compiled.loops(self.cell, self.dtype), "sample_tokens", None)

    def _sampler_arguments(self):
        """Where the compiled sampler can run (NumPy, float32/64, the compiled loop), its
        per-layer arguments, built once: recurrent weights (packed), ``bias_r``, input
        weights (packed; layer 0's input is folded into the table), ``bias_x``, and the
        output layer's weight (packed) and bias. None elsewhere (nothing packed, numba
        not needed)."""
        if self.xp is not np or self.dtype not in (np.float32, np.float64):
            return None
        from . import kernels

        if kernels.plan(self.cell, np, self.dtype, None, warn=False).name != "compiled":
            return None
        none = np.zeros(0, self.dtype)
        for p in self.p:
            p["W_hhP"] = unroll.packed(p["W_hhT"], np)
        W = tuple(p["W_hhP"] for p in self.p)
        BR = tuple(none if p.get("bias_r") is None else np.ascontiguousarray(p["bias_r"])
                   for p in self.p)
        WI = tuple(unroll.packed(p["W_ihT"], np) for p in self.p)
        BX = tuple(np.ascontiguousarray(p["bias_x"]) for p in self.p)
        if self.output is None:
            return W, BR, WI, BX, None, none
        bout = none if self.b_out is None else np.ascontiguousarray(self.b_out)
        return W, BR, WI, BX, unroll.packed(self.W_outT, np), bout

    def _sample_compiled(self, n, x, temperature, out):
        """``sample`` in one compiled call: the same tables, buffers, draws (B uniforms a
        token from the same stream) and rule as the step-by-step loop; the exponentials
        are numba's, so a draw within a rounding of a boundary may differ."""
        _check_temperature(temperature)
        B, V = self.batch, self.table.shape[0]
        ids = np.empty(B, np.int64)
        ids[:] = x
        if ids.min() < 0 or ids.max() >= V:
            bad = int(ids[(ids < 0) | (ids >= V)][0])
            raise ValueError(f"symbol {bad} is outside the vocabulary of {V}")
        greedy = temperature == 0
        u = (np.zeros((n, B), self.dtype) if greedy
             else self.rng.random((n, B), dtype=self.dtype))
        inv = self.dtype.type(0 if greedy else 1.0 / temperature)
        W, BR, WI, BX, Wout, bout = self._sampler_args
        self._compiled_sampler()(
            n, ids, self.table, tuple(self.states), self.cache, tuple(self.units), W, BR, WI,
            BX, Wout, bout, self.xw, self.z, self.logits, self.cum, u, inv, greedy, out,
            np.zeros((0, 0), self.dtype))
        return out
