"""Forward outputs, final states and every gradient against PyTorch on the same weights.

Variable-length batches: PyTorch runs packed sequences; unrolled runs padded + masked.
"""
import numpy as np
import pytest
from helpers import rel_err

from unrolled.interop import from_torch, to_torch_state_dict

torch = pytest.importorskip("torch")

LENGTHS = [7, 3, 5, 1]
WORST = {}  # largest relative error per (cell, dtype), printed at the end of the module


def torch_module(kind, D, H, L, bi, dtype):
    torch.manual_seed(0)
    kw = dict(num_layers=L, bidirectional=bi, batch_first=True)
    if kind.startswith("rnn"):
        m = torch.nn.RNN(D, H, nonlinearity=kind.split("_")[1], **kw)
    else:
        m = getattr(torch.nn, kind.upper())(D, H, **kw)
    return m.to(dtype)


def run_torch(m, X, lengths, R, Rh, kind):
    Xt = torch.from_numpy(X).requires_grad_(True)
    packed = torch.nn.utils.rnn.pack_padded_sequence(Xt, lengths, batch_first=True,
                                                     enforce_sorted=False)
    out, st = m(packed)
    out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True,
                                                    total_length=X.shape[1])
    st = {"h": st[0], "c": st[1]} if kind == "lstm" else {"h": st}
    loss = (out * torch.from_numpy(R)).sum()
    for k, v in st.items():
        loss = loss + (v * torch.from_numpy(Rh[k])).sum()
    m.zero_grad()
    loss.backward()
    grads = {k: p.grad.numpy() for k, p in m.named_parameters()}
    return out.detach().numpy(), {k: v.detach().numpy() for k, v in st.items()}, grads, \
        Xt.grad.numpy()


@pytest.mark.parametrize("kind", ["rnn_tanh", "rnn_relu", "lstm", "gru"])
@pytest.mark.parametrize("L", [1, 2])
@pytest.mark.parametrize("bi", [False, True])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_matches_pytorch(kind, L, bi, dtype):
    tol = 1e-9 if dtype == "float64" else 1e-4
    tdt = getattr(torch, dtype)
    D, H, B, T = 5, 6, len(LENGTHS), max(LENGTHS)
    m = torch_module(kind, D, H, L, bi, tdt)
    layer = from_torch(m)
    assert layer.dtype == dtype
    rng = np.random.default_rng(0)
    X = rng.standard_normal((B, T, D)).astype(dtype)
    mask = np.arange(T)[None] < np.array(LENGTHS)[:, None]
    X[~mask] = 0
    out, state, cache = layer.forward(X, mask=mask, training=True)
    R = rng.standard_normal(out.shape).astype(dtype)
    Rh = {k: rng.standard_normal(v.shape).astype(dtype) for k, v in state.items()}
    grads, dX, _ = layer.backward(cache, R, Rh)
    t_out, t_state, t_grads, t_dX = run_torch(m, X, LENGTHS, R, Rh, kind)
    errs = [rel_err(out, t_out), rel_err(dX, t_dX)]
    errs += [rel_err(state[k], t_state[k]) for k in state]
    ours = to_torch_state_dict(layer, grads)
    assert set(ours) == set(t_grads)
    errs += [rel_err(ours[k], t_grads[k]) for k in t_grads]
    worst = max(errs)
    key = (kind, dtype)
    WORST[key] = max(WORST.get(key, 0.0), worst)
    assert worst < tol, f"largest relative error {worst:.2e}"


@pytest.mark.parametrize("kind", ["rnn_tanh", "lstm", "gru"])
def test_weights_round_trip_and_bias_free(kind):
    m = torch_module(kind, 3, 4, 2, True, torch.float64)
    layer = from_torch(m, return_sequences=False)
    sd = {k: torch.from_numpy(v) for k, v in to_torch_state_dict(layer).items()}
    m2 = torch_module(kind, 3, 4, 2, True, torch.float64)
    m2.load_state_dict(sd, strict=True)
    for (k, a), (_, b) in zip(m.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(a, b), k
    # bias=False and batch_first=False still map one-to-one
    kw = dict(bias=False, batch_first=False)
    mb = (torch.nn.RNN(3, 4, **kw) if kind == "rnn_tanh" else
          getattr(torch.nn, kind.upper())(3, 4, **kw)).double()
    lb = from_torch(mb)
    X = np.random.default_rng(0).standard_normal((2, 5, 3))
    ref = mb(torch.from_numpy(X.transpose(1, 0, 2)))[0].detach().numpy().transpose(1, 0, 2)
    assert rel_err(lb(X), ref) < 1e-12


def test_learned_initial_state_torch_equivalent():
    """h0 as a parameter: its gradient is the sum over the batch of dL/dh0."""
    m = torch_module("gru", 3, 4, 1, False, torch.float64)
    layer = from_torch(m, initial_state="learned")
    h0 = np.random.default_rng(1).standard_normal(4)
    p = layer.params
    p["l0"]["h0"][:] = h0
    X = np.random.default_rng(2).standard_normal((3, 5, 3))
    out, _, cache = layer.forward(X, training=True)
    grads, _, _ = layer.backward(cache, np.ones_like(out))
    th0 = torch.from_numpy(h0).requires_grad_(True)
    o, _ = m(torch.from_numpy(X), th0.expand(1, 3, 4).contiguous())
    o.sum().backward()
    assert rel_err(grads["l0"]["h0"], th0.grad.numpy()) < 1e-12


def teardown_module():
    if WORST:
        print("\nlargest relative error vs PyTorch:")
        for (kind, dtype), e in sorted(WORST.items()):
            print(f"  {kind:9s} {dtype}: {e:.1e}")
