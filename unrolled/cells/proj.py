"""LSTM with a projection (Sak et al. 2014; PyTorch's ``proj_size``): the state carried to
the next step is h_t = W_hr (o ⊙ tanh c_t), P wide, while c_t stays H wide.

    [i, f, g, o] = [σ, σ, tanh, σ](x_t W_ihᵀ + b_ih + h_(t-1) W_hhᵀ + b_hh)   (W_hh: 4H × P)
    c_t = f ⊙ c_(t-1) + i ⊙ g,     m_t = o ⊙ tanh(c_t),     h_t = m_t W_hrᵀ  (W_hr: P × H)

A second product inside the step: written on whole arrays (the readable loop), with
PyTorch's parameter names and layouts (``weight_hr``).
"""
from dataclasses import dataclass

from .base import Cell, register
from .ops import sigmoid, tanh


@register
@dataclass(frozen=True)
class ProjLSTMCell(Cell):
    proj_size: int = 1
    name = "proj_lstm"
    state = ("h", "c")
    gate_names = ("i", "f", "g", "o")

    def __post_init__(self):
        if not isinstance(self.proj_size, int) or self.proj_size < 1:
            raise ValueError(f"proj_size must be a positive integer, got {self.proj_size!r}")

    def param_shapes(self, input_size, hidden_size):
        H, P = hidden_size, self.proj_size
        return {"weight_ih": (4 * H, input_size), "weight_hh": (4 * H, P),
                "bias_ih": (4 * H,), "bias_hh": (4 * H,), "weight_hr": (P, H)}

    def state_sizes(self, hidden_size):
        return (self.proj_size, hidden_size)

    def prepare(self, params, xp):
        p = super().prepare(params, xp)
        p["bias_x"], p["bias_r"] = params["bias_ih"], params["bias_hh"]
        p["W_hrT"] = params["weight_hr"].T.copy()
        return p

    def step(self, p, xw, state, xp):
        h, c = state
        z = xw + h @ p["W_hhT"] + p["bias_hh"]
        H = c.shape[-1]
        i, f = sigmoid(z[:, :H]), sigmoid(z[:, H:2 * H])
        g, o = tanh(z[:, 2 * H:3 * H]), sigmoid(z[:, 3 * H:])
        c_new = f * c + i * g
        tc = tanh(c_new)
        m = o * tc
        return (m @ p["W_hrT"], c_new), {"i": i, "f": f, "g": g, "o": o, "tanh_c": tc, "m": m}

    def step_back(self, p, cache, prev, new, dnew, xp):
        dh, dc = dnew
        i, f, g, o, tc = (cache[k] for k in ("i", "f", "g", "o", "tanh_c"))
        dm = dh @ p["weight_hr"]
        dct = dc + dm * o * (1 - tc * tc)
        dz = xp.concatenate([dct * g * (i * (1 - i)), dct * prev[1] * (f * (1 - f)),
                             dct * i * (1 - g * g), dm * tc * (o * (1 - o))], axis=-1)
        return dz, (dz @ p["weight_hh"], dct * f), {"dh": dh}

    def weight_grads(self, p, prev_states, tape, dXW, saved, xp):
        P, H = p["weight_hr"].shape
        G = dXW.reshape(-1, 4 * H)
        return {"weight_hh": G.T @ prev_states[0].reshape(-1, P), "bias_hh": G.sum(0),
                "weight_hr": saved["dh"].reshape(-1, P).T @ tape["m"].reshape(-1, H)}
