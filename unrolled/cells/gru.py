"""GRU cell, gate blocks in PyTorch's order (reset r, update z, new n).

    r = σ(x W_ir^T + b_ir + h W_hr^T + b_hr),  z = σ(... same with z ...)
    reset_after=True  (PyTorch, Keras default):  n = tanh(x W_in^T + b_in + r ⊙ (h W_hn^T + b_hn))
    reset_after=False (Keras's other mode, CNTK): n = tanh(x W_in^T + b_in + (r ⊙ h) W_hn^T + b_hn)
    h_t = (1 - z) ⊙ n + z ⊙ h_{t-1}
"""
from dataclasses import dataclass

from .lstm import _sigmoid, _sigmoid_into, flush_into, hidden_weight_grads


@dataclass(frozen=True)
class GRUCell:
    reset_after: bool = True
    name = "gru"
    gates = 3

    @property
    def fast(self):
        """The fast path covers PyTorch's placement of the reset gate."""
        return self.reset_after

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
            # bias_x: the input projection's bias plus the hidden biases of r and z (the
            # fast path folds them; n's hidden bias sits inside r * (...) and cannot be)
            b = params["bias_ih"] + params["bias_hh"]
            b[2 * H:] = params["bias_ih"][2 * H:]
            return {**params, "W_hhT": W.T.copy(), "bias_x": b,
                    "bias_hn": params["bias_hh"][2 * H:]}
        return {**params, "W_rzT": W[:2 * H].T.copy(),
                "W_nT": W[2 * H:].T.copy()}

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
        if self.reset_after:
            return hidden_weight_grads(p, prev_states, self.recurrent_grad_rows(dXW, saved))
        H = p["weight_hh"].shape[1]
        Hp = prev_states[0].reshape(-1, H)
        G = dXW.reshape(-1, 3 * H)
        R = tape["acts"][..., :H].reshape(-1, H)
        dW = xp.concatenate([G[:, :2 * H].T @ Hp, G[:, 2 * H:].T @ (R * Hp)], axis=0)
        return {"weight_hh": dW, "bias_hh": G.sum(0)}

    # -- the fast path (reset_after=True): preallocated buffers, out= arguments -----------
    loop_kind = "gru"  # the compiled loop's step (unrolled.kernels.loop_numba)

    def recurrent_grad_rows(self, dXW, saved):
        """The rows whose products with the previous states give dW_hh (and sums db_hh);
        reset_after=True, where the backward saves them as ``dhw``."""
        return saved["dhw"]

    def loop_params(self, p):
        return (p["bias_hn"],)

    def tape_shapes(self, B, H):
        return {"acts": (B, 3 * H), "hn": (B, H)}

    def saved_shapes(self, B, H):
        return {"dhw": (B, 3 * H)}

    def workspace(self, B, H, dtype, xp):
        return {"hw": xp.empty((B, 3 * H), dtype), "t": xp.empty((B, H), dtype),
                "small": xp.empty((B, 3 * H), bool),
                "u": xp.empty((B, H), dtype), "dhz": xp.empty((B, H), dtype)}

    def step_into(self, p, xw, prev, new, cache, ws, xp, kern=None):
        """``step`` written into ``new`` (a view of the state tape) and ``cache``."""
        h, h_new = prev[0], new[0]
        acts, hn, hw = cache["acts"], cache["hn"], ws["hw"]
        xp.matmul(h, p["W_hhT"], out=hw)
        if kern is not None:
            kern.gru_fwd(hw, xw, p["bias_hn"], h, acts, hn, h_new)
            return
        H = h.shape[-1]
        t = ws["t"]
        xp.add(hw[:, :2 * H], xw[:, :2 * H], out=acts[:, :2 * H])
        _sigmoid_into(acts[:, :2 * H], acts[:, :2 * H], xp)
        xp.add(hw[:, 2 * H:], p["bias_hn"], out=hn)
        r, z, n = acts[:, :H], acts[:, H:2 * H], acts[:, 2 * H:]
        xp.multiply(r, hn, out=n)
        n += xw[:, 2 * H:]
        xp.tanh(n, out=n)
        xp.subtract(h, n, out=t)   # h' = n + z (h - n)
        t *= z
        xp.add(n, t, out=h_new)

    def step_back_into(self, p, cache, prev, new, dnew, dxw, dprev, saved, ws, xp, kern=None,
                       flush=0.0):
        """``step_back`` written into ``dxw`` (B, 3H), ``saved`` and ``dprev`` (buffers)."""
        dh, h = dnew[0], prev[0]
        acts, hn, dhw, dhz = cache["acts"], cache["hn"], saved["dhw"], ws["dhz"]
        if kern is None:
            H = dh.shape[-1]
            r, z, n = acts[:, :H], acts[:, H:2 * H], acts[:, 2 * H:]
            t, u = ws["t"], ws["u"]
            dr, dz, dn = dxw[:, :H], dxw[:, H:2 * H], dxw[:, 2 * H:]
            xp.multiply(dh, z, out=dhz)
            xp.subtract(dh, dhz, out=dn)          # dh (1 - z)
            xp.multiply(n, n, out=t)
            xp.subtract(1, t, out=t)
            dn *= t                                # ... (1 - n^2)
            xp.subtract(h, n, out=t)               # update gate: dh (h - n) z (1 - z)
            t *= dh
            xp.multiply(z, z, out=u)
            xp.subtract(z, u, out=u)
            xp.multiply(t, u, out=dz)
            xp.multiply(r, r, out=u)               # reset gate: dn hn r (1 - r)
            xp.subtract(r, u, out=u)
            xp.multiply(dn, hn, out=dr)
            dr *= u
            dhw[:, :2 * H] = dxw[:, :2 * H]
            xp.multiply(dn, r, out=dhw[:, 2 * H:])  # n's hidden part is scaled by r
            flush_into(dhw, flush, ws["hw"], ws["small"], xp)  # no subnormals in the product
        else:
            kern.gru_bwd(dh, h, acts, hn, dxw, dhw, dhz, flush)
        xp.matmul(dhw, p["weight_hh"], out=dprev[0])
        dprev[0] += dhz
