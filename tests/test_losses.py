"""Losses: values and gradients vs PyTorch, finite differences, masks, bad input."""
import numpy as np
import pytest

from unrolled.losses import BCE, MSE, CrossEntropy, get_loss

B, T, C = 4, 6, 5


def random_mask(rng, shape):
    m = rng.random(shape) > 0.35
    m.flat[0] = True  # at least one valid position
    return m


def ce_case(rng, seq=True, masked=True):
    """Logits, targets (garbage at padded steps), mask."""
    shape = (B, T) if seq else (B,)
    logits = rng.normal(size=shape + (C,)) * 3
    targets = rng.integers(0, C, size=shape)
    mask = random_mask(rng, shape) if (seq and masked) else None
    if mask is not None:
        targets = np.where(mask, targets, rng.choice([-100, C + 7, -1], size=shape))
        logits = np.where(mask[..., None], logits, np.nan)  # must not leak into anything
    return logits, targets, mask


def real_case(rng, kind, mask_kind, seq=True):
    """Outputs, targets (NaN at masked positions), mask for MSE / BCE."""
    shape = (B, T, 3) if seq else (B, 3)
    outputs = rng.normal(size=shape) * 2
    targets = rng.normal(size=shape) if kind == "mse" else rng.random(shape)
    if mask_kind is None:
        mask, full = None, np.ones(shape, bool)
    elif mask_kind == "step":
        mask = random_mask(rng, shape[:2])
        full = np.broadcast_to(mask[..., None], shape)
    else:
        mask = full = random_mask(rng, shape)
    targets = np.where(full, targets, np.nan)
    return outputs, targets, mask, full


# ------------------------------------------------------------------------ torch oracle

def torch_value_and_grad(fn, outputs, targets, valid, reduction):
    """torch loss on the valid part only, and its gradient w.r.t. all outputs."""
    torch = pytest.importorskip("torch")
    o = torch.tensor(np.nan_to_num(outputs), requires_grad=True)
    v = torch.tensor(valid)
    t = torch.tensor(targets)
    loss = fn(o[v], t[v], reduction=reduction)
    loss.backward()
    return loss.item(), o.grad.numpy()


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("seq,masked", [(True, True), (True, False), (False, False)])
def test_cross_entropy_matches_torch(reduction, seq, masked):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    logits, targets, mask = ce_case(rng, seq, masked)
    value, grad = CrossEntropy(reduction).value_and_grad(logits, targets, mask)
    valid = mask if mask is not None else np.ones(targets.shape, bool)
    ref_v, ref_g = torch_value_and_grad(torch.nn.functional.cross_entropy, logits,
                                        np.where(valid, targets, 0), valid, reduction)
    assert grad.shape == logits.shape and grad.dtype == logits.dtype
    np.testing.assert_allclose(value, ref_v, rtol=1e-10)
    np.testing.assert_allclose(grad, ref_g, rtol=1e-10, atol=1e-14)
    assert np.all(grad[~valid] == 0)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("mask_kind", [None, "step", "element"])
@pytest.mark.parametrize("kind", ["mse", "bce"])
def test_real_losses_match_torch(kind, mask_kind, reduction):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    outputs, targets, mask, full = real_case(rng, kind, mask_kind)
    loss = MSE(reduction) if kind == "mse" else BCE(reduction)
    fn = (torch.nn.functional.mse_loss if kind == "mse"
          else torch.nn.functional.binary_cross_entropy_with_logits)
    value, grad = loss.value_and_grad(outputs, targets, mask)
    ref_v, ref_g = torch_value_and_grad(fn, outputs, targets, full, reduction)
    assert grad.shape == outputs.shape and grad.dtype == outputs.dtype
    np.testing.assert_allclose(value, ref_v, rtol=1e-10)
    np.testing.assert_allclose(grad, ref_g, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("kind", ["mse", "bce"])
def test_last_step_outputs_match_torch(kind):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    outputs, targets, mask, full = real_case(rng, kind, "element", seq=False)
    loss = get_loss(kind)
    fn = (torch.nn.functional.mse_loss if kind == "mse"
          else torch.nn.functional.binary_cross_entropy_with_logits)
    value, grad = loss.value_and_grad(outputs, targets, mask)
    ref_v, ref_g = torch_value_and_grad(fn, outputs, targets, full, "mean")
    np.testing.assert_allclose(value, ref_v, rtol=1e-10)
    np.testing.assert_allclose(grad, ref_g, rtol=1e-10, atol=1e-14)


def test_bce_is_stable_for_large_logits():
    torch = pytest.importorskip("torch")
    x = np.array([[-800.0, -30.0, 0.0, 30.0, 800.0]])
    y = np.array([[1.0, 0.0, 0.5, 1.0, 0.0]])
    value, grad = BCE().value_and_grad(x, y)
    ref_v, ref_g = torch_value_and_grad(
        torch.nn.functional.binary_cross_entropy_with_logits, x, y, np.ones_like(x, bool), "mean")
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    np.testing.assert_allclose(value, ref_v, rtol=1e-12)
    np.testing.assert_allclose(grad, ref_g, rtol=1e-12)


# ------------------------------------------------------------------ finite differences

def fd_check(loss, outputs, targets, mask, valid, eps=1e-4):
    """Largest relative error between d_outputs and central differences.

    Entries below 1e-4 are compared on that scale: their differences carry the
    round-off of the loss value (about 1e-16 / eps), not gradient errors.
    """
    _, grad = loss.value_and_grad(outputs, targets, mask)
    num = np.zeros_like(outputs)
    for i in np.ndindex(outputs.shape):
        if not valid[i]:
            continue  # padded positions: the loss does not read them (they hold NaN)
        o = outputs.copy()
        o[i] += eps
        up = loss.value_and_grad(o, targets, mask)[0]
        o[i] -= 2 * eps
        down = loss.value_and_grad(o, targets, mask)[0]
        num[i] = (up - down) / (2 * eps)
    err = np.abs(grad - num) / np.maximum(np.abs(grad) + np.abs(num), 1e-4)
    return err.max(), grad, num


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_cross_entropy_finite_differences(reduction):
    rng = np.random.default_rng(4)
    logits, targets, mask = ce_case(rng)
    valid = np.broadcast_to(mask[..., None], logits.shape)
    err, _, _ = fd_check(CrossEntropy(reduction), logits, targets, mask, valid)
    assert err < 1e-6


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_class_weighted_cross_entropy_matches_torch_and_finite_differences(reduction):
    rng = np.random.default_rng(6)
    logits, targets, mask = ce_case(rng)
    w = rng.uniform(0.2, 3.0, C)
    loss = CrossEntropy(reduction, weight=w)
    valid = np.broadcast_to(mask[..., None], logits.shape)
    err, _, _ = fd_check(loss, logits, targets, mask, valid)
    assert err < 1e-6
    torch = pytest.importorskip("torch")
    value, grad = loss.value_and_grad(logits, targets, mask)
    fn = lambda o, t, reduction: torch.nn.functional.cross_entropy(
        o, t, weight=torch.tensor(w), reduction=reduction)
    ref_v, ref_g = torch_value_and_grad(fn, logits, np.where(mask, targets, 0), mask,
                                        reduction)
    np.testing.assert_allclose(value, ref_v, rtol=1e-10)
    np.testing.assert_allclose(grad, ref_g, rtol=1e-10, atol=1e-14)
    # unit weights give the plain loss; a wrong weight count is refused
    plain = CrossEntropy(reduction).value_and_grad(logits, targets, mask)
    ones = CrossEntropy(reduction, weight=np.ones(C)).value_and_grad(logits, targets, mask)
    np.testing.assert_allclose(ones[0], plain[0], rtol=1e-12)
    with pytest.raises(ValueError, match="one weight per class"):
        CrossEntropy(weight=np.ones(C + 1)).value_and_grad(logits, targets, mask)


@pytest.mark.parametrize("mask_kind", ["step", "element"])
@pytest.mark.parametrize("loss", [MSE(), BCE(), MSE("sum"), BCE("sum")], ids=repr)
def test_real_losses_finite_differences(loss, mask_kind):
    rng = np.random.default_rng(5)
    kind = "mse" if isinstance(loss, MSE) else "bce"
    outputs, targets, mask, full = real_case(rng, kind, mask_kind)
    outputs = np.where(full, outputs, np.nan)
    err, _, _ = fd_check(loss, outputs, targets, mask, full)
    assert err < 1e-6


def test_finite_difference_check_catches_a_wrong_gradient():
    # negative control: a loss whose gradient is off by 1% must fail the same check
    class Wrong(MSE):
        def value_and_grad(self, outputs, targets, mask=None):
            v, g = super().value_and_grad(outputs, targets, mask)
            return v, g * 1.01

    rng = np.random.default_rng(6)
    outputs, targets, mask, full = real_case(rng, "mse", "step")
    err, _, _ = fd_check(Wrong(), outputs, targets, mask, full)
    assert err > 1e-3


# -------------------------------------------------------------------- masks and dtypes

def test_masked_steps_are_ignored_whatever_they_hold():
    rng = np.random.default_rng(7)
    logits, targets, mask = ce_case(rng)
    v1, g1 = CrossEntropy().value_and_grad(logits, targets, mask)
    other = np.where(mask, targets, 10**6)
    v2, g2 = CrossEntropy().value_and_grad(np.where(mask[..., None], logits, 1e300), other, mask)
    assert v1 == v2
    np.testing.assert_array_equal(g1, g2)


def test_mean_is_over_valid_steps():
    # two records, one step each valid: the mean equals the mean of the two per-step losses
    logits = np.zeros((2, 3, 4))
    targets = np.zeros((2, 3), int)
    mask = np.array([[True, False, False], [False, False, True]])
    value, _ = CrossEntropy().value_and_grad(logits, targets, mask)
    np.testing.assert_allclose(value, np.log(4))
    total, _ = CrossEntropy("sum").value_and_grad(logits, targets, mask)
    np.testing.assert_allclose(total, 2 * np.log(4))


def test_float32_in_float32_out():
    rng = np.random.default_rng(8)
    logits, targets, _ = ce_case(rng, masked=False)
    _, g = CrossEntropy().value_and_grad(logits.astype(np.float32), targets)
    assert g.dtype == np.float32
    outputs, t, m, _ = real_case(rng, "bce", "step")
    _, g = BCE().value_and_grad(outputs.astype(np.float32), t, m)
    assert g.dtype == np.float32
    _, g = MSE().value_and_grad(outputs.astype(np.float32), t, m)
    assert g.dtype == np.float32


def test_float_targets_holding_integers_are_accepted():
    rng = np.random.default_rng(9)
    logits, targets, _ = ce_case(rng, masked=False)
    a = CrossEntropy().value_and_grad(logits, targets)
    b = CrossEntropy().value_and_grad(logits, targets.astype(float))
    assert a[0] == b[0]


# ------------------------------------------------------------------------- get_loss

def test_get_loss_names_and_objects():
    assert isinstance(get_loss("cross_entropy"), CrossEntropy)
    assert isinstance(get_loss("mse"), MSE)
    assert isinstance(get_loss("bce"), BCE)
    custom = MSE("sum")
    assert get_loss(custom) is custom
    with pytest.raises(ValueError, match="cross_entropy, mse, bce"):
        get_loss("hinge")
    with pytest.raises(TypeError, match="MSE()"):
        get_loss(MSE)
    with pytest.raises(TypeError, match="value_and_grad"):
        get_loss(42)


# ------------------------------------------------------------------------ bad input

def test_errors_name_the_problem():
    rng = np.random.default_rng(10)
    logits, targets, mask = ce_case(rng)
    ce = CrossEntropy()
    with pytest.raises(ValueError, match="reduction"):
        CrossEntropy("max")
    with pytest.raises(ValueError, match=r"targets must have shape \(4, 6\)"):
        ce.value_and_grad(logits, targets[:, :-1], mask)
    with pytest.raises(ValueError, match="argmax"):
        ce.value_and_grad(logits, np.eye(C)[np.abs(targets) % C], mask)
    with pytest.raises(ValueError, match="mask must have shape"):
        ce.value_and_grad(logits, targets, mask[:, :-1])
    bad = np.where(mask, targets, 0)
    bad[0, 0] = C  # out of range at a valid step
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        ce.value_and_grad(logits, bad, mask)
    with pytest.raises(ValueError, match="integer class indices"):
        ce.value_and_grad(logits, np.where(mask, targets, 0) + 0.5, mask)
    with pytest.raises(TypeError, match="integer class indices"):
        ce.value_and_grad(logits, np.full(targets.shape, "a"), mask)
    nan_logits = logits.copy()
    nan_logits[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        ce.value_and_grad(nan_logits, targets, mask)
    with pytest.raises(ValueError, match="no valid step"):
        ce.value_and_grad(logits, targets, np.zeros_like(mask))
    with pytest.raises(TypeError, match="floating-point"):
        ce.value_and_grad(np.ones(logits.shape, int), targets, mask)
    with pytest.raises(ValueError, match=r"\(B, T, C\)"):
        ce.value_and_grad(logits[None], targets, mask)

    outputs, t, m, full = real_case(rng, "bce", "step")
    with pytest.raises(ValueError, match=r"targets\[..., None\]"):
        MSE().value_and_grad(outputs[..., :1], t[..., 0], m)
    with pytest.raises(ValueError, match="element mask"):
        MSE().value_and_grad(outputs, t, m[:, :-1])
    last, t_last, _, _ = real_case(rng, "mse", None, seq=False)
    with pytest.raises(ValueError, match="mask=None"):
        MSE().value_and_grad(last, t_last, m)  # a step mask with last-step outputs
    with pytest.raises(ValueError, match="missing targets"):
        MSE().value_and_grad(outputs, t, None)  # NaN targets without a mask
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        BCE().value_and_grad(outputs, np.where(full, t * 3, np.nan), m)
    with pytest.raises(ValueError, match="no valid element"):
        BCE().value_and_grad(outputs, t, np.zeros_like(m))
    with pytest.raises(TypeError, match="boolean"):
        BCE().value_and_grad(outputs, t, m.astype(float))
