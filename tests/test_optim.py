"""Learners, schedules and clipping vs torch.optim, state round trips, bad input."""
import json
import warnings

import numpy as np
import pytest

from unrolled.optim import (
    SGD,
    Adagrad,
    Adam,
    AdamW,
    CosineLR,
    RMSprop,
    StepLR,
    WarmupLR,
    clip_grad_norm,
    clip_grad_value,
    get_optimizer,
)
from unrolled.tree import tree_flatten, tree_leaves, tree_map, tree_unflatten

STEPS = 10


def make_params(rng, dtype=np.float64):
    return {"l0": {"weight_ih": rng.normal(size=(8, 3)), "weight_hh": rng.normal(size=(8, 2)),
                   "bias": rng.normal(size=(8,))},
            "out": {"weight": rng.normal(size=(4, 2))}}


def make_grads(rng, params, steps=STEPS):
    # gradients whose scale changes from step to step, so amsgrad's maximum matters
    return [tree_map(lambda p: rng.normal(size=p.shape) * np.exp(rng.normal()), params)
            for _ in range(steps)]


def copy_tree(tree):
    return tree_map(lambda a: a.copy(), tree)


CASES = [
    ("sgd", {"lr": 0.1}),
    ("sgd", {"lr": 0.1, "momentum": 0.9}),
    ("sgd", {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01}),
    ("sgd", {"lr": 0.05, "momentum": 0.8, "dampening": 0.3, "weight_decay": 0.1}),
    ("adagrad", {}),
    ("adagrad", {"lr": 0.1, "lr_decay": 0.05, "weight_decay": 0.01,
                 "initial_accumulator_value": 0.2, "eps": 1e-6}),
    ("rmsprop", {}),
    ("rmsprop", {"centered": True}),
    ("rmsprop", {"lr": 0.01, "alpha": 0.9, "momentum": 0.9, "centered": True,
                 "weight_decay": 0.01, "eps": 1e-6}),
    ("adam", {}),
    ("adam", {"amsgrad": True}),
    ("adam", {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.05,
              "amsgrad": True}),
    ("adamw", {}),
    ("adamw", {"lr": 0.01, "weight_decay": 0.1, "amsgrad": True}),
]
IDS = [f"{n}-{'-'.join(k for k in kw if k != 'lr') or 'default'}" for n, kw in CASES]
TORCH_NAMES = {"sgd": "SGD", "adagrad": "Adagrad", "rmsprop": "RMSprop", "adam": "Adam",
               "adamw": "AdamW"}


def torch_run(name, kwargs, params, grads, scheduler=None):
    """PyTorch's parameters after each step, as flat dicts of arrays."""
    torch = pytest.importorskip("torch")
    flat = tree_flatten(params)
    tensors = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in flat.items()}
    opt = getattr(torch.optim, TORCH_NAMES[name])(list(tensors.values()), **kwargs)
    sched = scheduler(opt) if scheduler else None
    history = []
    for g in grads:
        for k, v in tree_flatten(g).items():
            tensors[k].grad = torch.tensor(v)
        opt.step()
        if sched:
            sched.step()
        history.append({k: t.detach().numpy().copy() for k, t in tensors.items()})
    return history


def assert_close_trees(flat_ours, flat_ref, rtol):
    for k in flat_ref:
        ref = flat_ref[k]
        np.testing.assert_allclose(flat_ours[k], ref, rtol=rtol,
                                   atol=rtol * np.abs(ref).max(), err_msg=k)


@pytest.mark.parametrize("name,kwargs", CASES, ids=IDS)
def test_ten_steps_equal_torch(name, kwargs):
    rng = np.random.default_rng(0)
    params = make_params(rng)
    grads = make_grads(rng, params)
    ref = torch_run(name, kwargs, params, grads)
    opt = get_optimizer(name, **kwargs)
    for t, g in enumerate(grads):
        opt.step(params, g)
        assert_close_trees(tree_flatten(params), ref[t], rtol=1e-12)
    assert opt.step_count == STEPS


def test_a_wrong_formula_is_detected():
    # negative control: Adam without its second bias correction drifts from torch
    class NoBias2(Adam):
        def _update(self, p, g, s, lr, t):
            super()._update(p, g, s, lr * (1 - self.betas[1] ** t) ** 0.5, t)

    rng = np.random.default_rng(0)
    params = make_params(rng)
    grads = make_grads(rng, params)
    ref = torch_run("adam", {}, params, grads)
    opt = NoBias2()
    for g in grads:
        opt.step(params, g)
    with pytest.raises(AssertionError):
        assert_close_trees(tree_flatten(params), ref[-1], rtol=1e-12)


def test_step_updates_the_arrays_in_place():
    rng = np.random.default_rng(1)
    params = make_params(rng)
    leaves = tree_leaves(params)
    before = [a.copy() for a in leaves]
    out = Adam(lr=0.1).step(params, make_grads(rng, params, 1)[0])
    assert out is params
    for a, b, new in zip(leaves, before, tree_leaves(params)):
        assert a is new  # the very same arrays: a model holding them sees the update
        assert not np.array_equal(a, b)


def test_float32_stays_float32_and_close_to_torch():
    rng = np.random.default_rng(2)
    params = tree_map(lambda a: a.astype(np.float32), make_params(rng))
    grads = [tree_map(lambda a: a.astype(np.float32), g) for g in make_grads(rng, params)]
    ref = torch_run("adam", {"lr": 0.01}, params, grads)
    opt = Adam(lr=0.01)
    for g in grads:
        opt.step(params, g)
    assert all(a.dtype == np.float32 for a in tree_leaves(params))
    assert all(a.dtype == np.float32 for a in tree_leaves(opt.state_dict()["state"]))
    assert_close_trees(tree_flatten(params), ref[-1], rtol=1e-5)


# ------------------------------------------------------------------- state round trip

def save_and_load(opt, path):
    """Write a state_dict as .npz + JSON and read it back."""
    sd = opt.state_dict()
    np.savez(path / "state.npz", **tree_flatten(sd["state"]))
    (path / "meta.json").write_text(json.dumps({k: v for k, v in sd.items() if k != "state"}))
    meta = json.loads((path / "meta.json").read_text())
    with np.load(path / "state.npz") as z:
        meta["state"] = tree_unflatten({k: z[k] for k in z.files})
    return meta


@pytest.mark.parametrize("name,kwargs", CASES, ids=IDS)
def test_state_dict_round_trip_continues_bit_for_bit(name, kwargs, tmp_path):
    rng = np.random.default_rng(3)
    params = make_params(rng)
    grads = make_grads(rng, params)
    kwargs = dict(kwargs)
    if name in ("sgd", "adam"):
        kwargs["lr"] = WarmupLR(CosineLR(kwargs.get("lr", 1e-3), 20), 3)  # a schedule too
    opt = get_optimizer(name, **kwargs)
    for g in grads[:5]:
        opt.step(params, g)
    # a learner built with other settings takes everything from the saved state
    other = get_optimizer(name, lr=0.5)
    other.load_state_dict(save_and_load(opt, tmp_path))
    assert other.lr == opt.lr
    params2 = copy_tree(params)
    for g in grads[5:]:
        opt.step(params, g)
        other.step(params2, g)
    for a, b in zip(tree_leaves(params), tree_leaves(params2)):
        np.testing.assert_array_equal(a, b)


def test_custom_schedule_is_kept_on_load(tmp_path):
    rng = np.random.default_rng(10)
    params = make_params(rng)
    halve = lambda step: 0.1 / 2**step
    opt = SGD(lr=halve)
    opt.step(params, make_grads(rng, params, 1)[0])
    sd = save_and_load(opt, tmp_path)
    assert sd["hyperparams"]["lr"] is None  # a lambda cannot be saved
    other = SGD(lr=halve)
    other.load_state_dict(sd)
    assert other.lr == 0.05 and other.step_count == 1


def test_state_dict_is_a_copy_and_checks_the_learner():
    rng = np.random.default_rng(4)
    params = make_params(rng)
    opt = Adam()
    assert opt.state_dict()["state"] == {} and opt.state_dict()["step"] == 0
    opt.step(params, make_grads(rng, params, 1)[0])
    sd = opt.state_dict()
    sd["state"]["exp_avg"]["out"]["weight"][:] = 99
    assert not np.any(opt.state["exp_avg"]["out/weight"] == 99)
    with pytest.raises(ValueError, match="'adam'"):
        SGD(lr=0.1).load_state_dict(sd)
    amsgrad = Adam(amsgrad=True)
    amsgrad.load_state_dict(sd)  # hyperparameters come with the state
    assert amsgrad.amsgrad is False
    broken = dict(sd, state={"exp_avg": sd["state"]["exp_avg"]})
    with pytest.raises(ValueError, match="slots"):
        Adam(amsgrad=True).load_state_dict(broken)
    with pytest.raises(ValueError, match="unknown hyperparameters"):
        Adam().load_state_dict(dict(sd, hyperparams={"momentum": 0.9}))
    fresh = Adam()
    fresh.load_state_dict(sd)
    small = {"out": {"weight": params["out"]["weight"]}}
    with pytest.raises(ValueError, match="another parameter tree"):
        fresh.step(small, small)


# ------------------------------------------------------------------------- schedules

def torch_lrs(make_scheduler, n, base_lr):
    """The learning rate torch uses at each of n updates (one scheduler.step() each)."""
    torch = pytest.importorskip("torch")
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base_lr)
    sched = make_scheduler(opt)
    lrs = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(n):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
    return np.array(lrs)


def test_step_lr_equals_torch():
    torch = pytest.importorskip("torch")
    ref = torch_lrs(lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=3, gamma=0.5),
                    20, 0.1)
    ours = [StepLR(0.1, 3, gamma=0.5)(s) for s in range(20)]
    np.testing.assert_allclose(ours, ref, rtol=1e-12)


def test_cosine_lr_equals_torch():
    torch = pytest.importorskip("torch")
    sched = lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=10, eta_min=1e-3)
    ref = torch_lrs(sched, 11, 0.1)
    ours = [CosineLR(0.1, 10, min_lr=1e-3)(s) for s in range(11)]
    np.testing.assert_allclose(ours, ref, rtol=1e-12)
    assert CosineLR(0.1, 10, min_lr=1e-3)(25) == 1e-3  # held at min_lr afterwards


def test_warmup_lr_equals_torch_sequential():
    torch = pytest.importorskip("torch")
    lrs = torch.optim.lr_scheduler

    def sched(o):
        warm = lrs.LinearLR(o, start_factor=0.25, total_iters=4)
        cos = lrs.CosineAnnealingLR(o, T_max=10, eta_min=1e-3)
        return lrs.SequentialLR(o, [warm, cos], milestones=[4])

    ref = torch_lrs(sched, 15, 0.1)
    ours = [WarmupLR(CosineLR(0.1, 10, 1e-3), 4, start_factor=0.25)(s) for s in range(15)]
    np.testing.assert_allclose(ours, ref, rtol=1e-12)


def test_warmup_from_zero():
    w = WarmupLR(0.2, 4)
    np.testing.assert_allclose([w(s) for s in range(7)], [0, 0.05, 0.1, 0.15, 0.2, 0.2, 0.2])
    assert WarmupLR(StepLR(1.0, 2), 0)(3) == 0.1  # no warm-up: the wrapped schedule


def test_learner_uses_the_schedule_like_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    params = make_params(rng)
    grads = make_grads(rng, params)
    ref = torch_run("sgd", {"lr": 0.1, "momentum": 0.9}, params, grads,
                    scheduler=lambda o: torch.optim.lr_scheduler.StepLR(o, 3, 0.5))
    opt = SGD(lr=StepLR(0.1, 3, 0.5), momentum=0.9)
    assert opt.lr == 0.1
    for g in grads:
        opt.step(params, g)
    assert opt.lr == 0.1 * 0.5 ** 3  # after ten updates: the rate of the eleventh
    assert_close_trees(tree_flatten(params), ref[-1], rtol=1e-12)


# --------------------------------------------------------------------------- clipping

def torch_grads(grads):
    torch = pytest.importorskip("torch")
    tensors = []
    for g in tree_leaves(grads):
        t = torch.zeros(g.shape, dtype=torch.float64, requires_grad=True)
        t.grad = torch.tensor(g)
        tensors.append(t)
    return tensors


@pytest.mark.parametrize("max_norm", [0.5, 1e3])
def test_clip_grad_norm_equals_torch(max_norm):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(6)
    grads = make_grads(rng, make_params(rng), 1)[0]
    before = copy_tree(grads)
    tensors = torch_grads(grads)
    ref_norm = torch.nn.utils.clip_grad_norm_(tensors, max_norm).item()
    clipped, norm = clip_grad_norm(grads, max_norm)
    np.testing.assert_allclose(norm, ref_norm, rtol=1e-12)
    for a, t in zip(tree_leaves(clipped), tensors):
        np.testing.assert_allclose(a, t.grad.numpy(), rtol=1e-12)
    for a, b in zip(tree_leaves(grads), tree_leaves(before)):
        np.testing.assert_array_equal(a, b)  # the input tree is left as it was
    if max_norm < norm:
        flat = np.concatenate([a.ravel() for a in tree_leaves(clipped)])
        np.testing.assert_allclose(np.linalg.norm(flat), max_norm, rtol=1e-5)


def test_clip_grad_value_equals_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    grads = make_grads(rng, make_params(rng), 1)[0]
    tensors = torch_grads(grads)
    torch.nn.utils.clip_grad_value_(tensors, 0.3)
    clipped = clip_grad_value(grads, 0.3)
    for a, t in zip(tree_leaves(clipped), tensors):
        np.testing.assert_array_equal(a, t.grad.numpy())
    assert max(np.abs(a).max() for a in tree_leaves(clipped)) == 0.3


def test_clip_grad_norm_names_the_non_finite_leaf():
    rng = np.random.default_rng(8)
    grads = make_grads(rng, make_params(rng), 1)[0]
    grads["l0"]["weight_hh"][1, 0] = np.nan
    with pytest.raises(ValueError, match="l0/weight_hh.*learning rate"):
        clip_grad_norm(grads, 1.0)
    with pytest.raises(ValueError, match="overflows"):
        clip_grad_norm({"a": np.full(4, 1e300)}, 1.0)
    with pytest.raises(ValueError, match="max_norm"):
        clip_grad_norm(grads, 0)
    with pytest.raises(ValueError, match="clip_value"):
        clip_grad_value(grads, -1)


# ------------------------------------------------------------------------ bad input

def test_get_optimizer_registry():
    for name, cls in [("sgd", SGD), ("adagrad", Adagrad), ("rmsprop", RMSprop),
                      ("adam", Adam), ("adamw", AdamW)]:
        kwargs = {"lr": 0.1} if name == "sgd" else {}
        assert type(get_optimizer(name, **kwargs)) is cls
    with pytest.raises(ValueError, match="sgd, adagrad, rmsprop, adam, adamw"):
        get_optimizer("lbfgs")


def test_defaults_equal_torch():
    torch = pytest.importorskip("torch")
    p = [torch.zeros(1, requires_grad=True)]
    for name in ["adagrad", "rmsprop", "adam", "adamw"]:
        ours = get_optimizer(name)
        theirs = getattr(torch.optim, TORCH_NAMES[name])(p).defaults
        for k in ("lr",) + ours._hyper:
            assert getattr(ours, k) == theirs[k], (name, k)


def test_errors_name_the_problem():
    rng = np.random.default_rng(9)
    params = make_params(rng)
    grads = make_grads(rng, params, 1)[0]
    with pytest.raises(ValueError, match="nesterov"):
        SGD(lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="lr"):
        Adam(lr=-1)
    with pytest.raises(ValueError, match="betas"):
        Adam(betas=(0.9, 1.0))
    missing = {"l0": grads["l0"]}
    with pytest.raises(ValueError, match=r"missing \['out/weight'\]"):
        Adam().step(params, missing)
    wrong = copy_tree(grads)
    wrong["out"]["weight"] = wrong["out"]["weight"].T
    with pytest.raises(ValueError, match="out/weight"):
        Adam().step(params, wrong)
    mixed = tree_map(lambda a: a.astype(np.float32), grads)
    with pytest.raises(ValueError, match="float32 but its parameter is float64"):
        Adam().step(params, mixed)


# ------------------------------------------------------------- compiled equals readable

@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name,kwargs", CASES, ids=IDS)
def test_compiled_update_equals_the_readable_formula_bit_for_bit(name, kwargs, dtype):
    from unrolled import fused
    from unrolled.settings import settings

    if not fused.use_compiled(np):
        pytest.skip("numba is not installed")
    rng = np.random.default_rng(9)
    params = tree_map(lambda a: a.astype(dtype), make_params(rng))
    grads = [tree_map(lambda a: a.astype(dtype), g) for g in make_grads(rng, params)]
    grads[3]["out"]["weight"][0, 0] = 0.0  # an exact zero, and a tiny value, on the way
    grads[4]["l0"]["bias"][1] = 1e-30
    runs = {}
    for backend in ("reference", "auto"):
        p = copy_tree(params)
        opt = get_optimizer(name, **kwargs)
        with settings.override(backend=backend):
            for g in grads:
                opt.step(p, g)
        runs[backend] = (tree_flatten(p), tree_flatten(opt.state_dict()["state"]))
    (p_ref, s_ref), (p_fast, s_fast) = runs["reference"], runs["auto"]
    assert not np.array_equal(p_ref["out/weight"], params["out"]["weight"])  # it moved
    for k in p_ref:
        np.testing.assert_array_equal(p_fast[k], p_ref[k], err_msg=k)
        assert p_fast[k].dtype == dtype
    assert s_fast.keys() == s_ref.keys()
    for k in s_ref:
        np.testing.assert_array_equal(s_fast[k], s_ref[k], err_msg=k)


def test_compiled_update_reads_a_non_contiguous_gradient():
    rng = np.random.default_rng(10)
    p = {"w": rng.normal(size=(4, 3))}
    g = {"w": np.asfortranarray(rng.normal(size=(4, 3)))}
    ref = copy_tree(p)
    Adam(lr=0.1).step(p, g)
    from unrolled.settings import settings

    with settings.override(backend="reference"):
        Adam(lr=0.1).step(ref, {"w": np.ascontiguousarray(g["w"])})
    np.testing.assert_array_equal(p["w"], ref["w"])


@pytest.mark.parametrize("max_norm", [0.5, 1e3])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_clip_grad_norm_in_place_equals_torch_and_the_copy(max_norm, dtype):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(11)
    grads = tree_map(lambda a: a.astype(dtype), make_grads(rng, make_params(rng), 1)[0])
    tensors = []
    for a in tree_leaves(grads):
        t = torch.zeros(a.shape, dtype=torch.from_numpy(a).dtype, requires_grad=True)
        t.grad = torch.tensor(a.copy())
        tensors.append(t)
    ref_norm = torch.nn.utils.clip_grad_norm_(tensors, max_norm).item()
    before = copy_tree(grads)
    copied, norm_copy = clip_grad_norm(grads, max_norm)
    leaves = tree_leaves(grads)
    out, norm = clip_grad_norm(grads, max_norm, inplace=True)
    assert out is grads and all(a is b for a, b in zip(tree_leaves(out), leaves))
    assert norm == norm_copy
    rtol = 1e-12 if dtype == np.float64 else 1e-6
    np.testing.assert_allclose(norm, ref_norm, rtol=rtol)
    for a, b, t in zip(tree_leaves(out), tree_leaves(copied), tensors):
        np.testing.assert_array_equal(a, b)  # the same bits as the copy
        np.testing.assert_allclose(a, t.grad.numpy(), rtol=rtol)
        assert a.dtype == dtype
    moved = [not np.array_equal(a, b) for a, b in zip(tree_leaves(out), tree_leaves(before))]
    assert all(moved) if max_norm < norm else not any(moved)  # scaled only when needed
