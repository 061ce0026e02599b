"""Jordan (output-to-hidden) cell: the only recurrence is from the previous output.

    h_t = act(x_t W_ihᵀ + b_ih + y_(t-1) W_hhᵀ + b_hh)
    y_t = out(h_t W_hoᵀ + b_ho)

The state carried from step to step is y (output_size wide), not h: a second product
(the output layer) sits inside the step, so the step is written on whole arrays and
runs on the readable loop. With teacher forcing the true previous target stands in for
y_(t-1), the steps no longer depend on each other and the loop runs them all as one
batched step.
"""
from dataclasses import dataclass

from .base import Cell, register
from .ops import relu, sigmoid, tanh

_ACTS = ("tanh", "relu", "sigmoid", "identity")


def _act(name, a):
    if name == "tanh":
        return tanh(a)
    if name == "relu":
        return relu(a)
    if name == "sigmoid":
        return sigmoid(a)
    return a


def _act_grad(name, y, dy):
    """d act / d a written with the activation's output y."""
    if name == "tanh":
        return dy * (1 - y * y)
    if name == "relu":
        return dy * (y > 0)
    if name == "sigmoid":
        return dy * y * (1 - y)
    return dy


@register
@dataclass(frozen=True)
class JordanCell(Cell):
    output_size: int = 1
    nonlinearity: str = "tanh"
    output_activation: str = "identity"
    name = "jordan"
    state = ("h",)   # the output fed back (called h by the layer, as every cell's first)
    cache = ("h",)

    def __post_init__(self):
        for what, v in (("nonlinearity", self.nonlinearity),
                        ("output_activation", self.output_activation)):
            if v not in _ACTS:
                raise ValueError(f"{what} must be one of {_ACTS}, got {v!r}")

    def param_shapes(self, input_size, hidden_size):
        H, O = hidden_size, self.output_size
        return {"weight_ih": (H, input_size), "weight_hh": (H, O), "bias_ih": (H,),
                "bias_hh": (H,), "weight_ho": (O, H), "bias_ho": (O,)}

    def state_sizes(self, hidden_size):
        return (self.output_size,)

    def prepare(self, params, xp):
        p = super().prepare(params, xp)
        p["bias_x"], p["bias_r"] = params["bias_ih"], params["bias_hh"]
        p["W_hoT"] = params["weight_ho"].T.copy()
        return p

    def step(self, p, xw, state, xp):
        h = _act(self.nonlinearity, xw + state[0] @ p["W_hhT"] + p["bias_hh"])
        y = _act(self.output_activation, h @ p["W_hoT"] + p["bias_ho"])
        return (y,), {"h": h}

    def step_back(self, p, cache, prev, new, dnew, xp):
        do = _act_grad(self.output_activation, new[0], dnew[0])
        da = _act_grad(self.nonlinearity, cache["h"], do @ p["weight_ho"])
        return da, (da @ p["weight_hh"],), {"do": do}

    def weight_grads(self, p, prev_states, tape, dXW, saved, xp):
        H, O = p["weight_hh"].shape
        G = dXW.reshape(-1, H)
        DO = saved["do"].reshape(-1, O)
        return {"weight_hh": G.T @ prev_states[0].reshape(-1, O), "bias_hh": G.sum(0),
                "weight_ho": DO.T @ tape["h"].reshape(-1, H), "bias_ho": DO.sum(0)}
