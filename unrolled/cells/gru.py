"""GRU cell, gate blocks in PyTorch's order (reset r, update z, new n).

    r = σ(x W_irᵀ + b_ir + h W_hrᵀ + b_hr),  z = σ(... same with z ...)
    reset_after=True  (PyTorch, Keras default):  n = tanh(x W_inᵀ + b_in + r ⊙ (h W_hnᵀ + b_hn))
    reset_after=False (Keras's other mode, CNTK): n = tanh(x W_inᵀ + b_in + (r ⊙ h) W_hnᵀ + b_hn)
    h_t = (1 - z) ⊙ n + z ⊙ h_(t-1)

With the reset after the product the step is one product and per-unit arithmetic (it
runs compiled); with the reset before it there is a second product inside the step,
written below as a general step on whole arrays.
"""
from dataclasses import dataclass

from .base import Cell, register
from .ops import tanh


@register
@dataclass(frozen=True)
class GRUCell(Cell):
    reset_after: bool = True
    name = "gru"
    gate_names = ("r", "z", "n")
    cache = ("r", "z", "n", "hn")
    tied = False  # n's recurrent part is scaled by r: its two parts have two gradients

    def compiles(self):
        return self.reset_after

    def supports_recurrent_mask(self):
        return self.reset_after  # the reset-after step is the base class's

    def forward(self, x, r, s, u):
        rg = self.gate(x[0] + r[0])
        z = self.gate(x[1] + r[1])
        hn = r[2]
        n = tanh(x[2] + rg * hn)
        return (n + z * (s[0] - n),), (rg, z, n, hn)

    def backward(self, d, s, new, cache, u):
        dh = d[0]
        rg, z, n, hn = cache
        dn = dh * (1 - z) * (1 - n * n)            # into n's pre-activation
        dr = self.gate_back(dn * hn, rg)           # reset gate
        du = self.gate_back(dh * (s[0] - n), z)    # update gate
        return (dr, du, dn), (dr, du, dn * rg), (dh * z,), ()

    # -- the reset before the product: a second product inside the step ------------------
    def prepare(self, params, xp):
        p = super().prepare(params, xp)
        if not self.reset_after:
            H = params["weight_hh"].shape[1]
            p["W_rzT"] = params["weight_hh"][:2 * H].T.copy()
            p["W_nT"] = params["weight_hh"][2 * H:].T.copy()
        return p

    def step(self, p, xw, state, xp):
        if self.reset_after:
            return super().step(p, xw, state, xp)
        h = state[0]
        H = h.shape[-1]
        rz = self.gate(xw[:, :2 * H] + h @ p["W_rzT"] + p["bias_hh"][:2 * H])
        r, z = rz[:, :H], rz[:, H:]
        n = tanh(xw[:, 2 * H:] + (r * h) @ p["W_nT"] + p["bias_hh"][2 * H:])
        return (n + z * (h - n),), {"r": r, "z": z, "n": n}

    def step_back(self, p, cache, prev, new, dnew, xp):
        if self.reset_after:
            return super().step_back(p, cache, prev, new, dnew, xp)
        dh, h = dnew[0], prev[0]
        r, z, n = cache["r"], cache["z"], cache["n"]
        H = dh.shape[-1]
        W = p["weight_hh"]
        dxw = xp.empty(h.shape[:-1] + (3 * H,), dtype=h.dtype)
        dan = dh * (1 - z) * (1 - n * n)             # into n's pre-activation
        dxw[:, H:2 * H] = self.gate_back(dh * (h - n), z)  # update gate
        dxw[:, 2 * H:] = dan
        drh = dan @ W[2 * H:]                         # into r ⊙ h
        dxw[:, :H] = self.gate_back(drh * h, r)
        dprev = dh * z + drh * r + dxw[:, :2 * H] @ W[:2 * H]
        return dxw, (dprev,), {}

    def weight_grads(self, p, prev_states, tape, dXW, saved, xp):
        if self.reset_after:
            return super().weight_grads(p, prev_states, tape, dXW, saved, xp)
        H = p["weight_hh"].shape[1]
        Hp = prev_states[0].reshape(-1, H)
        G = dXW.reshape(-1, 3 * H)
        R = tape["r"].reshape(-1, H)
        dW = xp.concatenate([G[:, :2 * H].T @ Hp, G[:, 2 * H:].T @ (R * Hp)], axis=0)
        return {"weight_hh": dW, "bias_hh": G.sum(0)}
