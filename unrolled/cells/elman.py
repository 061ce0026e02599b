"""Elman (vanilla) cell: a_t = x_t U^T + b_ih + h_{t-1} W^T + b_hh;  h_t = act(a_t)."""
from dataclasses import dataclass

from .lstm import flush_into, hidden_weight_grads


@dataclass(frozen=True)
class ElmanCell:
    nonlinearity: str = "tanh"
    name = "elman"
    gates = 1

    def __post_init__(self):
        if self.nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {self.nonlinearity!r}")

    def param_shapes(self, input_size, hidden_size):
        H = hidden_size
        return {"weight_ih": (H, input_size), "weight_hh": (H, H), "bias_ih": (H,), "bias_hh": (H,)}

    def state_sizes(self, hidden_size):
        return (hidden_size,)

    def prepare(self, params, xp):
        # bias_x: every bias folded into the input projection (used by the fast path)
        return {**params, "W_hhT": params["weight_hh"].T.copy(),
                "bias_x": params["bias_ih"] + params["bias_hh"]}

    def step(self, p, xw, state, xp):
        a = xw + state[0] @ p["W_hhT"] + p["bias_hh"]
        h = xp.tanh(a) if self.nonlinearity == "tanh" else xp.maximum(a, 0)
        return (h,), {}

    def step_back(self, p, cache, prev, new, dnew, xp):
        h, dh = new[0], dnew[0]
        # backprop through the nonlinearity, written with the output h_t
        da = dh * (1 - h * h) if self.nonlinearity == "tanh" else dh * (h > 0)
        return da, (da @ p["weight_hh"],), {}

    def weight_grads(self, p, prev_states, tape, dXW, saved, xp):
        return hidden_weight_grads(p, prev_states, self.recurrent_grad_rows(dXW, saved))

    # -- the fast path: preallocated buffers, out= arguments (see unrolled.kernels) ------
    fast = True

    @property
    def loop_kind(self):
        """The compiled loop's step (unrolled.kernels.loop_numba): "tanh" or "relu"."""
        return self.nonlinearity

    def recurrent_grad_rows(self, dXW, saved):
        """The rows whose products with the previous states give dW_hh (and sums db_hh)."""
        return dXW

    def loop_params(self, p):
        return ()

    def tape_shapes(self, B, H):
        return {}

    def saved_shapes(self, B, H):
        return {}

    def workspace(self, B, H, dtype, xp):
        return {"t": xp.empty((B, H), dtype), "small": xp.empty((B, H), bool)}

    def step_into(self, p, xw, prev, new, cache, ws, xp, kern=None):
        """``step`` written into ``new`` (a view of the state tape)."""
        h = new[0]
        xp.matmul(prev[0], p["W_hhT"], out=h)  # xw already holds both biases
        if kern is not None:
            kern.elman_fwd(h, xw, self.nonlinearity == "tanh")
            return
        h += xw
        if self.nonlinearity == "tanh":
            xp.tanh(h, out=h)
        else:
            xp.maximum(h, 0, out=h)

    def step_back_into(self, p, cache, prev, new, dnew, dxw, dprev, saved, ws, xp, kern=None,
                       flush=0.0):
        """``step_back`` written into ``dxw`` (B, H) and ``dprev`` (buffers)."""
        h, dh = new[0], dnew[0]
        if kern is not None:
            kern.elman_bwd(dh, h, dxw, self.nonlinearity == "tanh", flush)
        elif self.nonlinearity == "tanh":
            t = ws["t"]
            xp.multiply(h, h, out=t)
            xp.subtract(1, t, out=t)
            xp.multiply(dh, t, out=dxw)
        else:
            xp.greater(h, 0, out=dxw)
            dxw *= dh
        if kern is None:  # keep subnormals out of the product
            flush_into(dxw, flush, ws["t"], ws["small"], xp)
        xp.matmul(dxw, p["weight_hh"], out=dprev[0])
