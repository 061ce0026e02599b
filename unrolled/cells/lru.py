"""LRU, the Linear Recurrent Unit (Orvieto et al. 2023, "Resurrecting Recurrent Neural
Networks for Long Sequences"): a complex diagonal linear recurrence.

    λ = exp(−exp(ν) + i·exp(θ))                       (|λ| = exp(−exp ν) < 1, phase exp θ)
    h_t = λ ⊙ h_(t−1) + γ ⊙ (B x_t)                   (N complex units, B = B_re + i B_im)
    y_t = Re(C h_t) + D x_t                           (C = C_re + i C_im, (H, N))

with γ = exp(γ_log) trained from γ_log = log √(1 − |λ|²) (the reference code), or, with
``gamma="tied"``, γ = √(1 − |λ|²) recomputed from ν (its gradient then flows into ν).
Ring initialisation: |λ|² uniform in [r_min², r_max²] (uniform on the ring's area) and the
phase uniform in [0, max_phase]; B, C normal with variances 1/(2D), 1/N; D normal.

How it is run by the one time loop. Every matrix product is outside the steps: ``B x``
is the loop's input projection (over all T), ``C h`` a product over all T after it, and
λ, γ are functions of the parameters alone, computed once per call
(:meth:`LRUCell.loop_params`) — cos and sin never appear in a step. The step itself is
the per-unit cell below, written once: one complex unit as two real state components
(real and imaginary part), with its hand-written backward.

So that the loop's output state (its first) holds both parts of every unit, each unit
is run twice, as h and as −i·h (whose real part is Im h): the loop's ``h`` is
[Re h, Im h] (2N wide) and its ``h_rot`` is [Im h, −Re h]. The input projection's rows
for the copies are B's rows permuted and negated ([γB_re; γB_im; γB_im; −γB_re]), so
the readout, its gradient, masks, truncation, checkpointing and bidirectional layers need
nothing of their own; the price is twice the elementwise work and input rows of a
minimal implementation. ``h_rot`` is always derived from ``h`` (an initial state given
for it is replaced).
"""
import math
from dataclasses import dataclass

import numpy as np

from .base import Cell, register


@register
@dataclass(frozen=True)
class LRUCell(Cell):
    """One complex unit: (a, b) = (Re h, Im h); the gates are the real and imaginary
    parts of γ ⊙ (B x_t); the units are Re λ and Im λ."""

    state_size: int = 0          # N complex units; 0: hidden_size // 2 (at least 1)
    r_min: float = 0.0
    r_max: float = 1.0
    max_phase: float = 2 * math.pi
    gamma: str = "learned"       # "learned" (γ_log trained) or "tied" (γ = √(1 − |λ|²))

    name = "lru"
    state = ("h", "h_rot")
    gate_names = ("re", "im")
    cache = ()
    units = ("lambda_re", "lambda_im")
    recurrent = False
    derived_states = ("h_rot",)  # functions of "h", never inputs of their own
    readout_params = ("C_re", "C_im", "D")  # the parameters of the readout alone

    def __post_init__(self):
        if self.gamma not in ("learned", "tied"):
            raise ValueError(f"LRU: gamma must be 'learned' or 'tied', got {self.gamma!r}")
        if not 0 <= self.r_min <= self.r_max <= 1:
            raise ValueError(f"LRU: need 0 <= r_min <= r_max <= 1, got r_min={self.r_min}, "
                             f"r_max={self.r_max}")
        if not self.max_phase >= 0:
            raise ValueError(f"LRU: max_phase must be >= 0, got {self.max_phase}")
        if self.state_size < 0:
            raise ValueError(f"LRU: state_size must be >= 1 (or 0: hidden_size // 2), got "
                             f"{self.state_size}")

    # -- the per-unit step --------------------------------------------------------------
    def forward(self, x, r, s, u):
        lr, li = u
        a, b = s
        return (lr * a - li * b + x[0], lr * b + li * a + x[1]), ()

    def backward(self, d, s, new, cache, u):
        lr, li = u
        da, db = d
        a, b = s
        return ((da, db), (), (lr * da + li * db, lr * db - li * da),
                (da * a + db * b, db * a - da * b))

    # -- sizes and parameters ------------------------------------------------------------
    def complex_units(self, hidden_size):
        return int(self.state_size) or max(1, hidden_size // 2)

    def state_sizes(self, hidden_size):
        n = 2 * self.complex_units(hidden_size)
        return (n, n)

    def output_width(self, hidden_size):
        return hidden_size

    def param_shapes(self, input_size, hidden_size):
        N = self.complex_units(hidden_size)
        shapes = {"weight_ih": (2 * N, input_size), "nu_log": (N,), "theta_log": (N,)}
        if self.gamma == "learned":
            shapes["gamma_log"] = (N,)
        shapes.update({"C_re": (hidden_size, N), "C_im": (hidden_size, N),
                       "D": (hidden_size,) if input_size == hidden_size
                       else (hidden_size, input_size)})
        return shapes

    def init_params(self, shapes, rng, hidden_size):
        """Ring initialisation (minimal-LRU's): |λ|² ~ U[r_min², r_max²], phase ~
        U[0, max_phase]; γ_log = log √(1 − |λ|²); B ~ N(0, 1/(2D)), C ~ N(0, 1/N)."""
        N, Din = shapes["weight_ih"][0] // 2, shapes["weight_ih"][1]
        u1, u2 = 1.0 - rng.random(N), rng.random(N)  # u1 in (0, 1]: the log is finite
        r2 = u1 * (self.r_max ** 2 - self.r_min ** 2) + self.r_min ** 2
        p = {"weight_ih": rng.standard_normal((2 * N, Din)) / math.sqrt(2 * Din),
             "nu_log": np.log(-0.5 * np.log(np.maximum(r2, 1e-300))),
             "theta_log": np.log(np.maximum(self.max_phase * u2, 1e-300))}
        if self.gamma == "learned":
            p["gamma_log"] = np.log(np.sqrt(-np.expm1(-2 * np.exp(p["nu_log"]))))
        p["C_re"] = rng.standard_normal(shapes["C_re"]) / math.sqrt(N)
        p["C_im"] = rng.standard_normal(shapes["C_im"]) / math.sqrt(N)
        D = shapes["D"]
        p["D"] = rng.standard_normal(D) / (1.0 if len(D) == 1 else math.sqrt(D[1]))
        return p

    # -- parameters -> what the loop runs, and the chain rule back ------------------------
    def _lambda_gamma(self, params, xp):
        nu, th = params["nu_log"], params["theta_log"]
        en = xp.exp(nu)
        mod = xp.exp(-en)
        phase = xp.exp(th)
        lr, li = mod * xp.cos(phase), mod * xp.sin(phase)
        if self.gamma == "learned":
            g = xp.exp(params["gamma_log"])
        else:
            g = xp.sqrt(-xp.expm1(-2 * en))  # √(1 − |λ|²), accurate for |λ| near 1
        return en, mod, lr, li, g

    def loop_params(self, params, xp):
        """The arrays the loop runs: the doubled input projection (γ folded in), λ tiled
        over both copies, no bias."""
        _, _, lr, li, g = self._lambda_gamma(params, xp)
        N = lr.shape[0]
        W = params["weight_ih"]
        Bre, Bim = W[:N] * g[:, None], W[N:] * g[:, None]
        Wl = xp.concatenate([Bre, Bim, Bim, -Bre], 0)
        return {"weight_ih": Wl, "bias_ih": xp.zeros(4 * N, W.dtype),
                "lambda_re": xp.concatenate([lr, lr]), "lambda_im": xp.concatenate([li, li])}

    def loop_grads(self, params, g, xp):
        """The parameters' gradients from the loop's (w.r.t. its weight_ih and λ)."""
        en, mod, lr, li, gam = self._lambda_gamma(params, xp)
        N = lr.shape[0]
        dW = g["weight_ih"]
        dBre = dW[:N] - dW[3 * N:]          # w.r.t. γ B_re
        dBim = dW[N:2 * N] + dW[2 * N:3 * N]  # w.r.t. γ B_im
        W = params["weight_ih"]
        dgam = (dBre * W[:N]).sum(1) + (dBim * W[N:]).sum(1)
        dlr = g["lambda_re"][:N] + g["lambda_re"][N:]
        dli = g["lambda_im"][:N] + g["lambda_im"][N:]
        # λ = exp(−e^ν) e^{i e^θ}: ∂λ/∂ν = −e^ν λ, ∂λ/∂θ = i e^θ λ
        dnu = -(dlr * lr + dli * li) * en
        dth = (dli * lr - dlr * li) * xp.exp(params["theta_log"])
        out = {"weight_ih": xp.concatenate([dBre * gam[:, None], dBim * gam[:, None]], 0),
               "nu_log": dnu, "theta_log": dth}
        if self.gamma == "learned":
            out["gamma_log"] = dgam * gam
        else:  # γ = √(1 − e^{−2 e^ν}): dγ/dν = e^ν |λ|² / γ
            out["nu_log"] = dnu + dgam * en * mod * mod / gam
        return out

    # -- the readout y = Re(C h) + D x, over all steps at once ---------------------------
    def _w_out(self, params, xp):
        return xp.concatenate([params["C_re"], -params["C_im"]], 1)  # (H, 2N) on [Re; Im]

    def readout(self, params, h, x, xp):
        """y (..., H) from the loop's h (..., 2N) and the layer's input x (..., D)."""
        y = h @ self._w_out(params, xp).T
        D = params["D"]
        return y + (x * D if D.ndim == 1 else x @ D.T)

    def readout_back(self, params, h, x, dy, xp):
        """(dh, dx, grads of C_re, C_im, D) of :meth:`readout`."""
        N = params["C_re"].shape[1]
        H, D = dy.shape[-1], params["D"]
        rows = dy.reshape(-1, H)
        dWo = rows.T @ h.reshape(-1, 2 * N)
        g = {"C_re": dWo[:, :N], "C_im": -dWo[:, N:]}
        dh = dy @ self._w_out(params, xp)
        if D.ndim == 1:
            g["D"] = (dy * x).reshape(-1, H).sum(0)
            dx = dy * D
        else:
            g["D"] = rows.T @ x.reshape(-1, x.shape[-1])
            dx = dy @ D
        return dh, dx, g

    # -- the derived state h_rot = −i h ----------------------------------------------------
    @staticmethod
    def complete_state(s, xp):
        """(h, h_rot) with h_rot derived from h = [Re, Im]: [Im, −Re]."""
        h = s[0]
        n = h.shape[-1] // 2
        return (h, xp.concatenate([h[..., n:], -h[..., :n]], -1))

    @staticmethod
    def complete_state_back(ds, xp):
        """The gradients w.r.t. (h, h_rot) of :meth:`complete_state`, as w.r.t. h alone."""
        dh, dr = ds
        n = dh.shape[-1] // 2
        return (dh + xp.concatenate([-dr[..., n:], dr[..., :n]], -1), xp.zeros_like(dr))
