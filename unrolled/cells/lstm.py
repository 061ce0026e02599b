"""LSTM cell, gate blocks in PyTorch's order (input, forget, cell, output).

    [i, f, g, o] = [σ, σ, tanh, σ](x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh)
    C_t = f ⊙ C_{t-1} + i ⊙ g          (the linear path the gradient survives on)
    h_t = o ⊙ tanh(C_t)
"""
from dataclasses import dataclass


def _sigmoid(x, xp):
    return 0.5 * (xp.tanh(0.5 * x) + 1)  # stable for large |x|, no overflow warnings


@dataclass(frozen=True)
class LSTMCell:
    name = "lstm"
    gates = 4

    def param_shapes(self, input_size, hidden_size):
        G = 4 * hidden_size
        return {"weight_ih": (G, input_size), "weight_hh": (G, hidden_size),
                "bias_ih": (G,), "bias_hh": (G,)}

    def state_sizes(self, hidden_size):
        return (hidden_size, hidden_size)

    def prepare(self, params, xp):
        return {**params, "W_hhT": xp.ascontiguousarray(params["weight_hh"].T)}

    def step(self, p, xw, state, xp):
        h, c = state
        H = h.shape[-1]
        z = xw + h @ p["W_hhT"] + p["bias_hh"]  # (B, 4H) pre-activations
        acts = _sigmoid(z, xp)
        acts[:, 2 * H:3 * H] = xp.tanh(z[:, 2 * H:3 * H])
        i, f, g, o = acts[:, :H], acts[:, H:2 * H], acts[:, 2 * H:3 * H], acts[:, 3 * H:]
        c_new = f * c + i * g
        tc = xp.tanh(c_new)
        return (o * tc, c_new), {"acts": acts, "tanh_c": tc}

    def step_back(self, p, cache, prev, new, dnew, xp):
        dh, dc = dnew
        acts, tc = cache["acts"], cache["tanh_c"]
        H = dh.shape[-1]
        i, f, g, o = acts[:, :H], acts[:, H:2 * H], acts[:, 2 * H:3 * H], acts[:, 3 * H:]
        dct = dc + dh * o * (1 - tc * tc)  # total gradient into C_t
        dz = xp.empty_like(acts)
        dz[:, :H] = dct * g * i * (1 - i)              # input gate
        dz[:, H:2 * H] = dct * prev[1] * f * (1 - f)   # forget gate
        dz[:, 2 * H:3 * H] = dct * i * (1 - g * g)     # candidate
        dz[:, 3 * H:] = dh * tc * o * (1 - o)          # output gate
        return dz, (dz @ p["weight_hh"], dct * f), {}

    def weight_grads(self, p, prev_states, tape, dXW, saved, xp):
        H = p["weight_hh"].shape[1]
        G = dXW.reshape(-1, dXW.shape[-1])
        return {"weight_hh": G.T @ prev_states[0].reshape(-1, H), "bias_hh": G.sum(0)}
