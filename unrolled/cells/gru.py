"""GRU cell, gate blocks in PyTorch's order (reset r, update z, new n).

    r = σ(x W_ir^T + b_ir + h W_hr^T + b_hr),  z = σ(... same with z ...)
    reset_after=True  (PyTorch, Keras default):  n = tanh(x W_in^T + b_in + r ⊙ (h W_hn^T + b_hn))
    reset_after=False (Keras's other mode, CNTK): n = tanh(x W_in^T + b_in + (r ⊙ h) W_hn^T + b_hn)
    h_t = (1 - z) ⊙ n + z ⊙ h_{t-1}
"""
from dataclasses import dataclass

from .lstm import _sigmoid


@dataclass(frozen=True)
class GRUCell:
    reset_after: bool = True
    name = "gru"
    gates = 3

    def param_shapes(self, input_size, hidden_size):
        G = 3 * hidden_size
        return {"weight_ih": (G, input_size), "weight_hh": (G, hidden_size),
                "bias_ih": (G,), "bias_hh": (G,)}

    def state_sizes(self, hidden_size):
        return (hidden_size,)

    def prepare(self, params, xp):
        W = params["weight_hh"]
        H = W.shape[1]
        if self.reset_after:
            return {**params, "W_hhT": xp.ascontiguousarray(W.T)}
        return {**params, "W_rzT": xp.ascontiguousarray(W[:2 * H].T),
                "W_nT": xp.ascontiguousarray(W[2 * H:].T)}

    def step(self, p, xw, state, xp):
        h = state[0]
        H = h.shape[-1]
        acts = xp.empty_like(xw)  # r, z, n after their nonlinearities
        if self.reset_after:
            hw = h @ p["W_hhT"] + p["bias_hh"]
            acts[:, :2 * H] = _sigmoid(xw[:, :2 * H] + hw[:, :2 * H], xp)
            hn = hw[:, 2 * H:]
            acts[:, 2 * H:] = xp.tanh(xw[:, 2 * H:] + acts[:, :H] * hn)
            cache = {"acts": acts, "hn": hn}
        else:
            acts[:, :2 * H] = _sigmoid(xw[:, :2 * H] + h @ p["W_rzT"] + p["bias_hh"][:2 * H], xp)
            rh = acts[:, :H] * h
            acts[:, 2 * H:] = xp.tanh(xw[:, 2 * H:] + rh @ p["W_nT"] + p["bias_hh"][2 * H:])
            cache = {"acts": acts}
        z, n = acts[:, H:2 * H], acts[:, 2 * H:]
        return (n + z * (h - n),), cache

    def step_back(self, p, cache, prev, new, dnew, xp):
        dh, h = dnew[0], prev[0]
        acts = cache["acts"]
        H = dh.shape[-1]
        r, z, n = acts[:, :H], acts[:, H:2 * H], acts[:, 2 * H:]
        dxw = xp.empty_like(acts)
        dan = dh * (1 - z) * (1 - n * n)             # into n's pre-activation
        dxw[:, H:2 * H] = dh * (h - n) * z * (1 - z)  # update gate
        dxw[:, 2 * H:] = dan
        W = p["weight_hh"]
        if self.reset_after:
            hn = cache["hn"]
            dxw[:, :H] = dan * hn * r * (1 - r)       # reset gate
            dhw = dxw.copy()
            dhw[:, 2 * H:] *= r                       # n's hidden part is scaled by r
            return dxw, (dh * z + dhw @ W,), {"dhw": dhw}
        drh = dan @ W[2 * H:]                         # into r ⊙ h
        dxw[:, :H] = drh * h * r * (1 - r)
        dprev = dh * z + drh * r + dxw[:, :2 * H] @ W[:2 * H]
        return dxw, (dprev,), {}

    def weight_grads(self, p, prev_states, tape, dXW, saved, xp):
        H = p["weight_hh"].shape[1]
        Hp = prev_states[0].reshape(-1, H)
        if self.reset_after:
            G = saved["dhw"].reshape(-1, 3 * H)
            return {"weight_hh": G.T @ Hp, "bias_hh": G.sum(0)}
        G = dXW.reshape(-1, 3 * H)
        R = tape["acts"][..., :H].reshape(-1, H)
        dW = xp.concatenate([G[:, :2 * H].T @ Hp, G[:, 2 * H:].T @ (R * Hp)], axis=0)
        return {"weight_hh": dW, "bias_hh": G.sum(0)}
