"""Online learning without unrolling: exact RTRL and its rank-one approximation UORO.

Both carry, next to the state ``s_t`` of a recurrent layer, the sensitivity of the state
to the parameters, so a gradient is available at every step and nothing of the past is
kept: memory independent of T.

Real-time recurrent learning (Williams & Zipser 1989) carries the influence matrix
``M_t = ds_t/dθ`` (S × P per stream, S the width of all state components together):

    M_t = J_t M_{t-1} + I_t,        J_t = ∂s_t/∂s_{t-1},   I_t = ∂s_t/∂θ (this step only)
    dL_t/dθ = (∂L_t/∂s_t) M_t

With fixed parameters, Σ_t dL_t/dθ is exactly the gradient full BPTT computes over the
record (a test checks it in float64). Its cost is O(S² P) per step, so it is for small
networks.

UORO (Tallec & Ollivier 2017, "Unbiased online recurrent optimization") keeps a rank-one
``M_t ≈ s̃ θ̃ᵀ`` per stream. With a random sign vector ν each step:

    s̃ ← ρ0 J_t s̃ + ρ1 ν,     θ̃ ← θ̃ / ρ0 + (νᵀ I_t) / ρ1
    ρ0 = sqrt(|θ̃| / |J_t s̃|),  ρ1 = sqrt(|νᵀ I_t| / |ν|)   (variance-minimising scales)

Its expectation over ν is the RTRL gradient (unbiased), at the cost of a few forward
steps per step: ``J_t s̃`` is a tangent product, taken by central finite differences of the
cell's step as the paper suggests, and ``νᵀ I_t`` is one backward step.

Both only use the cell contract of :mod:`unrolled.cells` (``step``, ``step_back``,
``weight_grads``), so they work for every cell; the Jacobians are built from backward
steps with unit cotangents, one per state unit.
"""
import numpy as np

from .layers.recurrent import Recurrent


def _check_layer(layer, who):
    if not isinstance(layer, Recurrent):
        raise TypeError(f"{who} needs a recurrent layer (Elman, LSTM, GRU, Jordan), got "
                        f"{type(layer).__name__}")
    if layer.num_layers != 1 or layer.bidirectional:
        raise ValueError(f"{who} follows one unidirectional layer (num_layers=1, "
                         f"bidirectional=False); got num_layers={layer.num_layers}, "
                         f"bidirectional={layer.bidirectional}")


def _row(a, r):
    """Row r of a (R, ...) array as a one-step, one-row tape (1, 1, ...)."""
    return a[r:r + 1][None]


class _Online:
    """Shared plumbing: the layer's parameters as one flat vector, one cell step."""

    def __init__(self, layer, batch_size, who):
        _check_layer(layer, who)
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.layer, self.B = layer, int(batch_size)
        self.cell = layer._cell
        self.sizes = layer.state_sizes
        self.S = sum(self.sizes)
        # the trainable arrays of the layer, in a fixed order (a learned h0/c0 is not)
        self.names = [k for k in layer.params["l0"] if k not in ("h0", "c0")]
        self.shapes = [layer.params["l0"][k].shape for k in self.names]
        self.P = sum(int(np.prod(s)) for s in self.shapes)
        self.dtype = np.dtype(layer.dtype)
        self.reset()

    def reset(self, state=None):
        """Start a new stream: the state (zeros or ``state``, a tuple of (B, S)) and no history."""
        if state is None:
            state = tuple(np.zeros((self.B, s), self.dtype) for s in self.sizes)
        self.state = tuple(np.array(s, self.dtype) for s in state)
        self._reset_sensitivity()

    def _step(self, x):
        """One step of the cell from the carried state; returns (p, prev, new, cache, x)."""
        x = np.asarray(x, self.dtype)
        if x.shape != (self.B, self.layer.input_size):
            raise ValueError(f"x must have shape (batch, input_size) = ({self.B}, "
                             f"{self.layer.input_size}), got {x.shape}")
        p = self.layer._prepared("l0", np)
        xw = x @ p["weight_ih"].T + p["bias_ih"]   # (B, G) input projection
        prev = self.state
        new, cache = self.cell.step(p, xw, prev, np)
        return p, prev, new, cache, x

    def _vjp(self, p, prev, new, cache, x, dnew, rows):
        """Backward of one step for cotangents ``dnew`` (R, S) on copies of batch ``rows``.

        Returns (dprev (R, S), dθ (R, P)): the rows of νᵀJ and νᵀI for each cotangent ν.
        """
        R = dnew.shape[0]
        # (R, ...) copies of each row's arrays, one per cotangent
        prev_r, new_r = tuple(a[rows] for a in prev), tuple(a[rows] for a in new)
        cache_r = {k: v[rows] for k, v in cache.items()}
        split = np.cumsum(self.sizes)[:-1]
        dn = tuple(np.ascontiguousarray(d) for d in np.split(dnew, split, axis=1))
        dxw, dprev, saved = self.cell.step_back(p, cache_r, prev_r, new_r, dn, np)
        dprev = np.concatenate(dprev, axis=1)
        dth = np.empty((R, self.P), self.dtype)
        xr = x[rows]
        for r in range(R):
            # weight_grads sums over its rows, so each cotangent gets its own call
            g = self.cell.weight_grads(p, tuple(_row(a, r) for a in prev_r),
                                       {k: _row(v, r) for k, v in cache_r.items()},
                                       _row(dxw, r), {k: _row(v, r) for k, v in saved.items()},
                                       np)
            g["weight_ih"] = np.outer(dxw[r], xr[r])  # the input projection, as in the loop
            g["bias_ih"] = dxw[r]
            dth[r] = np.concatenate([np.ravel(g[k]) for k in self.names])
        return dprev, dth

    def _readout(self, d_out, d_state):
        """(B, S) cotangent of the whole state from the output's and the state's gradients."""
        c = np.zeros((self.B, self.S), self.dtype)
        if d_out is not None:
            c[:, :self.sizes[0]] += d_out
        if d_state is not None:
            c += np.concatenate([np.asarray(d, self.dtype) for d in d_state], axis=1)
        return c

    def _unflatten(self, flat):
        out, i = {}, 0
        for k, shape in zip(self.names, self.shapes):
            n = int(np.prod(shape))
            out[k] = flat[i:i + n].reshape(shape)
            i += n
        return {"l0": out}


class RTRL(_Online):
    """Exact real-time recurrent learning for one recurrent layer.

    Parameters
    ----------
    layer : a single-layer unidirectional ``Elman``, ``LSTM``, ``GRU`` or ``Jordan``.
    batch_size : int, parallel streams B.

    Use
    ---
    ``h = rtrl.step(x_t)`` advances every stream one step ((B, D) in, (B, S0) out) and
    updates the influence matrix; ``rtrl.grad(d_out)`` is then the gradient of this step's
    loss w.r.t. the layer's parameters, a tree shaped like ``layer.params``. Memory:
    B × S × P numbers, whatever the length of the stream.

    >>> import numpy as np, unrolled as u
    >>> rtrl = RTRL(u.Elman(1, 4, seed=0), batch_size=1)
    >>> h = rtrl.step(np.ones((1, 1), np.float32))
    >>> rtrl.grad(np.ones_like(h))["l0"]["weight_hh"].shape
    (4, 4)
    """

    def __init__(self, layer, batch_size=1):
        super().__init__(layer, batch_size, "RTRL")

    def _reset_sensitivity(self):
        self.M = np.zeros((self.B, self.S, self.P), self.dtype)  # ds_t/dθ per stream

    def step(self, x):
        p, prev, new, cache, x = self._step(x)
        # J_t and I_t from S backward steps per stream, one unit cotangent each
        rows = np.repeat(np.arange(self.B), self.S)
        eye = np.tile(np.eye(self.S, dtype=self.dtype), (self.B, 1))  # (B*S, S)
        J, I = self._vjp(p, prev, new, cache, x, eye, rows)
        J = J.reshape(self.B, self.S, self.S)          # J[b, i, j] = ∂s_t[i]/∂s_{t-1}[j]
        I = I.reshape(self.B, self.S, self.P)
        self.M = J @ self.M + I                        # (B, S, P)
        self.state = new
        return new[0]

    def grad(self, d_out=None, d_state=None):
        """dL_t/dθ for this step's loss: ``d_out`` (B, S0) its gradient w.r.t. the output,
        ``d_state`` an optional tuple of (B, S) w.r.t. each state component."""
        c = self._readout(d_out, d_state)
        return self._unflatten(np.einsum("bs,bsp->p", c, self.M))


class UORO(_Online):
    """Unbiased online recurrent optimisation (Tallec & Ollivier 2017) for one layer.

    Same use as :class:`RTRL`; ``grad`` returns an unbiased, noisy estimate of RTRL's
    gradient. Memory: B × (S + P) numbers. ``seed`` drives the random signs ν;
    ``eps`` is the relative step of the finite-difference tangent product J s̃.
    """

    def __init__(self, layer, batch_size=1, seed=None, eps=None):
        self.rng = np.random.default_rng(seed)
        super().__init__(layer, batch_size, "UORO")
        self.eps = eps if eps is not None else (1e-6 if self.dtype == np.float64 else 1e-3)

    def _reset_sensitivity(self):
        self.s_tilde = np.zeros((self.B, self.S), self.dtype)
        self.th_tilde = np.zeros((self.B, self.P), self.dtype)

    def _tangent(self, p, x, prev, v):
        """J_t v by central differences of the cell step (the state direction v, (B, S))."""
        xw = x @ p["weight_ih"].T + p["bias_ih"]
        norm = np.linalg.norm(v, axis=1, keepdims=True)
        scale = np.where(norm > 0, self.eps / np.where(norm > 0, norm, 1), 0).astype(self.dtype)
        split = np.cumsum(self.sizes)[:-1]
        dv = np.split(v * scale, split, axis=1)
        plus, _ = self.cell.step(p, xw, tuple(a + d for a, d in zip(prev, dv)), np)
        minus, _ = self.cell.step(p, xw, tuple(a - d for a, d in zip(prev, dv)), np)
        diff = np.concatenate([a - b for a, b in zip(plus, minus)], axis=1)
        return np.where(scale > 0, diff / (2 * np.where(scale > 0, scale, 1)), 0.0)

    def step(self, x):
        p, prev, new, cache, x = self._step(x)
        nu = self.rng.choice(np.array([-1.0, 1.0], self.dtype), size=(self.B, self.S))
        Js = self._tangent(p, x, prev, self.s_tilde)                    # (B, S)  J_t s̃
        _, nuI = self._vjp(p, prev, new, cache, x, nu, np.arange(self.B))  # (B, P)  νᵀ I_t
        tiny = np.finfo(self.dtype).tiny
        n_th, n_Js = np.linalg.norm(self.th_tilde, axis=1), np.linalg.norm(Js, axis=1)
        n_nuI, n_nu = np.linalg.norm(nuI, axis=1), np.linalg.norm(nu, axis=1)
        # variance-minimising scales; the first step (s̃ = 0) has nothing to scale
        rho0 = np.where((n_th > 0) & (n_Js > 0), np.sqrt(n_th / np.maximum(n_Js, tiny)), 1.0)
        rho1 = np.where(n_nuI > 0, np.sqrt(n_nuI / n_nu), 1.0)
        self.s_tilde = (rho0[:, None] * Js + rho1[:, None] * nu).astype(self.dtype)
        self.th_tilde = (self.th_tilde / rho0[:, None] + nuI / rho1[:, None]).astype(self.dtype)
        self.state = new
        return new[0]

    def grad(self, d_out=None, d_state=None):
        """An unbiased estimate of dL_t/dθ: (c · s̃) θ̃ summed over the streams."""
        c = self._readout(d_out, d_state)
        return self._unflatten(np.einsum("b,bp->p", (c * self.s_tilde).sum(1), self.th_tilde))
