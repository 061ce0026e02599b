"""LSTM cell, gate blocks in PyTorch's order (input, forget, cell, output).

    [i, f, g, o] = [σ, σ, tanh, σ](x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh)
    C_t = f ⊙ C_{t-1} + i ⊙ g          (the linear path the gradient survives on)
    h_t = o ⊙ tanh(C_t)
"""
from dataclasses import dataclass


def _sigmoid(x, xp):
    return 0.5 * (xp.tanh(0.5 * x) + 1)  # stable for large |x|, no overflow warnings


def hidden_weight_grads(p, prev_states, rows):
    """dW_hh and db_hh over the whole tape: one product, T*B rows. ``rows`` is the gradient
    of the recurrent pre-activation (the cell's ``recurrent_grad_rows``): for Elman and
    LSTM the same as that of the input projection, for the GRU its own."""
    H = p["weight_hh"].shape[1]
    G = rows.reshape(-1, rows.shape[-1])
    return {"weight_hh": G.T @ prev_states[0].reshape(-1, H), "bias_hh": G.sum(0)}


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
        # bias_x: every bias folded into the input projection (used by the fast path)
        return {**params, "W_hhT": params["weight_hh"].T.copy(),
                "bias_x": params["bias_ih"] + params["bias_hh"]}

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
        return hidden_weight_grads(p, prev_states, self.recurrent_grad_rows(dXW, saved))

    # -- the fast path: preallocated buffers, out= arguments (see unrolled.kernels) ------
    fast = True

    loop_kind = "lstm"  # the compiled loop's step (unrolled.kernels.loop_numba)

    def recurrent_grad_rows(self, dXW, saved):
        """The rows whose products with the previous states give dW_hh (and sums db_hh)."""
        return dXW

    def loop_params(self, p):
        return ()

    def tape_shapes(self, B, H):
        return {"acts": (B, 4 * H), "tanh_c": (B, H)}

    def saved_shapes(self, B, H):
        return {}

    def workspace(self, B, H, dtype, xp):
        return {"z": xp.empty((B, 4 * H), dtype), "q": xp.empty((B, 4 * H), dtype),
                "small": xp.empty((B, 4 * H), bool),
                "t": xp.empty((B, H), dtype), "dct": xp.empty((B, H), dtype)}

    def step_into(self, p, xw, prev, new, cache, ws, xp, kern=None):
        """``step`` written into ``new`` (views of the state tape) and ``cache``."""
        h, c = prev
        h_new, c_new = new
        acts, tc, z = cache["acts"], cache["tanh_c"], ws["z"]
        xp.matmul(h, p["W_hhT"], out=z)  # xw already holds both biases
        if kern is not None:
            kern.lstm_fwd(z, xw, c, acts, tc, h_new, c_new)
            return
        H = h.shape[-1]
        z += xw
        _sigmoid_into(z, acts, xp)
        xp.tanh(z[:, 2 * H:3 * H], out=acts[:, 2 * H:3 * H])
        i, f, g, o = acts[:, :H], acts[:, H:2 * H], acts[:, 2 * H:3 * H], acts[:, 3 * H:]
        xp.multiply(f, c, out=c_new)
        xp.multiply(i, g, out=ws["t"])
        c_new += ws["t"]
        xp.tanh(c_new, out=tc)
        xp.multiply(o, tc, out=h_new)

    def step_back_into(self, p, cache, prev, new, dnew, dxw, dprev, saved, ws, xp, kern=None,
                       flush=0.0):
        """``step_back`` written into ``dxw`` (B, 4H) and ``dprev`` (buffers)."""
        dh, dc = dnew
        acts, tc = cache["acts"], cache["tanh_c"]
        if kern is not None:
            kern.lstm_bwd(dh, dc, acts, tc, prev[1], dxw, dprev[1], flush)
            xp.matmul(dxw, p["weight_hh"], out=dprev[0])
            return
        H = dh.shape[-1]
        i, f, g, o = acts[:, :H], acts[:, H:2 * H], acts[:, 2 * H:3 * H], acts[:, 3 * H:]
        t, dct, q = ws["t"], ws["dct"], ws["q"]
        # dct = dc + dh * o * (1 - tc^2)
        xp.multiply(tc, tc, out=t)
        xp.subtract(1, t, out=t)
        t *= o
        t *= dh
        xp.add(dc, t, out=dct)
        # q = a (1 - a) for the sigmoid gates, 1 - g^2 for the candidate
        xp.multiply(acts, acts, out=q)
        xp.subtract(acts, q, out=q)
        xp.subtract(1, xp.multiply(g, g, out=q[:, 2 * H:3 * H]), out=q[:, 2 * H:3 * H])
        for blk, a, b in ((0, dct, g), (1, dct, prev[1]), (2, dct, i), (3, dh, tc)):
            d = dxw[:, blk * H:(blk + 1) * H]
            xp.multiply(a, b, out=d)
            d *= q[:, blk * H:(blk + 1) * H]
        xp.multiply(dct, f, out=dprev[1])
        flush_into(dxw, flush, q, ws["small"], xp)  # keep subnormals out of the product
        xp.matmul(dxw, p["weight_hh"], out=dprev[0])


def flush_into(a, thr, mag, small, xp):
    """Zero, in place, the entries of ``a`` smaller than ``thr`` in magnitude (``mag`` and
    ``small`` are scratch buffers shaped like ``a``); see unroll.flush_threshold."""
    if thr:
        xp.abs(a, out=mag)
        xp.less(mag, thr, out=small)
        xp.copyto(a, 0, where=small)


def _sigmoid_into(x, out, xp):
    """out = σ(x) = (tanh(x/2) + 1) / 2 without temporaries."""
    xp.multiply(x, 0.5, out=out)
    xp.tanh(out, out=out)
    out *= 0.5
    out += 0.5
