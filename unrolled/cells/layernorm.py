"""Layer-normalised LSTM (Ba et al. 2016): the input and recurrent pre-activations and
the cell state are normalised over their units, each with a gain and a bias.

    z = LN_x(x_t W_ihᵀ + b_ih) + LN_h(h_(t-1) W_hhᵀ + b_hh)      (over the 4H gate units)
    [i, f, g, o] = [σ, σ, tanh, σ](z),   c_t = f ⊙ c_(t-1) + i ⊙ g
    h_t = o ⊙ tanh(LN_c(c_t))                                      (over the H units)

LN(a) = (a − mean(a)) / sqrt(var(a) + 1e-5) ⊙ γ + β, per row. The row reductions make
the step more than per-unit arithmetic: it is written on whole arrays and runs on the
readable loop.
"""
from dataclasses import dataclass

from .base import Cell, register
from .ops import sigmoid, tanh

EPS = 1e-5


def _ln(a, gain, bias, xp):
    mu = a.mean(-1, keepdims=True)
    sig = xp.sqrt(((a - mu) ** 2).mean(-1, keepdims=True) + EPS)
    xhat = (a - mu) / sig
    return xhat * gain + bias, xhat, sig


def _ln_back(dy, xhat, sig, gain):
    """Gradient w.r.t. the input of LN, given dy w.r.t. its output."""
    g = dy * gain
    return (g - g.mean(-1, keepdims=True) - xhat * (g * xhat).mean(-1, keepdims=True)) / sig


@register
@dataclass(frozen=True)
class LayerNormLSTMCell(Cell):
    name = "layernorm_lstm"
    state = ("h", "c")
    gate_names = ("i", "f", "g", "o")
    _LN = {"ln_ih_weight": 4, "ln_ih_bias": 4, "ln_hh_weight": 4, "ln_hh_bias": 4,
           "ln_c_weight": 1, "ln_c_bias": 1}

    def param_shapes(self, input_size, hidden_size):
        shapes = super().param_shapes(input_size, hidden_size)
        shapes.update({k: (n * hidden_size,) for k, n in self._LN.items()})
        return shapes

    def init_param(self, key, shape, rng, hidden_size):
        if key in self._LN:  # gains 1, biases 0: LN starts as plain normalisation
            import numpy as np

            return np.full(shape, 1.0 if key.endswith("weight") else 0.0)
        return super().init_param(key, shape, rng, hidden_size)

    def step(self, p, xw, state, xp):
        h, c = state
        H = c.shape[-1]
        zx, xhx, sgx = _ln(xw, p["ln_ih_weight"], p["ln_ih_bias"], xp)
        zh, xhh, sgh = _ln(h @ p["W_hhT"] + p["bias_hh"], p["ln_hh_weight"], p["ln_hh_bias"], xp)
        z = zx + zh
        i, f = sigmoid(z[:, :H]), sigmoid(z[:, H:2 * H])
        g, o = tanh(z[:, 2 * H:3 * H]), sigmoid(z[:, 3 * H:])
        c_new = f * c + i * g
        lc, chat, sgc = _ln(c_new, p["ln_c_weight"], p["ln_c_bias"], xp)
        tl = tanh(lc)
        return (o * tl, c_new), {"i": i, "f": f, "g": g, "o": o, "tanh_ln_c": tl,
                                 "xhat_x": xhx, "sig_x": sgx, "xhat_h": xhh, "sig_h": sgh,
                                 "xhat_c": chat, "sig_c": sgc}

    def step_back(self, p, cache, prev, new, dnew, xp):
        dh, dc = dnew
        i, f, g, o, tl = (cache[k] for k in ("i", "f", "g", "o", "tanh_ln_c"))
        dlc = dh * o * (1 - tl * tl)                      # into LN_c's output
        dct = dc + _ln_back(dlc, cache["xhat_c"], cache["sig_c"], p["ln_c_weight"])
        dz = xp.concatenate([dct * g * (i * (1 - i)), dct * prev[1] * (f * (1 - f)),
                             dct * i * (1 - g * g), dh * tl * (o * (1 - o))], axis=-1)
        dxw = _ln_back(dz, cache["xhat_x"], cache["sig_x"], p["ln_ih_weight"])
        dR = _ln_back(dz, cache["xhat_h"], cache["sig_h"], p["ln_hh_weight"])
        saved = {"dR": dR, "dz": dz, "dlc": dlc}
        return dxw, (dR @ p["weight_hh"], dct * f), saved

    def weight_grads(self, p, prev_states, tape, dXW, saved, xp):
        H = p["weight_hh"].shape[1]
        flat = lambda a: a.reshape(-1, a.shape[-1])  # noqa: E731
        R, dz, dlc = flat(saved["dR"]), flat(saved["dz"]), flat(saved["dlc"])
        return {"weight_hh": R.T @ flat(prev_states[0]), "bias_hh": R.sum(0),
                "ln_ih_weight": (dz * flat(tape["xhat_x"])).sum(0), "ln_ih_bias": dz.sum(0),
                "ln_hh_weight": (dz * flat(tape["xhat_h"])).sum(0), "ln_hh_bias": dz.sum(0),
                "ln_c_weight": (dlc * flat(tape["xhat_c"])).sum(0), "ln_c_bias": dlc.sum(0)}

    def prepare(self, params, xp):
        p = super().prepare(params, xp)
        p["bias_x"], p["bias_r"] = params["bias_ih"], params["bias_hh"]
        return p
