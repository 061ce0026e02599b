"""benchmarks/e2e.py still runs: two batches of each workload, unrolled and PyTorch.

Not a timing test: it checks that both sides trained on the same batches, that their
losses after the same updates agree (dropout's masks differ, so only roughly), and that
the profile accounts for the epoch.
"""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[1]


def test_e2e_smoke(tmp_path):
    out = tmp_path / "e2e.json"
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "e2e.py"), "--smoke",
                        "--torch-threads", "1", "--json", str(out)],
                       capture_output=True, text=True, timeout=120, cwd=str(ROOT))
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["mode"] == "smoke"
    ran = {k: v for k, v in res["workloads"].items() if "skipped" not in v}
    assert {"charlm", "names", "series"} <= set(ran)
    for name, r in ran.items():
        assert r["ours"]["setup_calls"], name  # the command line's process set-up ran
        assert r["torch"]["threads"]["torch_threads"] == 1
        (run,) = r["runs"]
        assert run["same_batches"], name
        assert run["ours"]["batches"] == run["torch"]["batches"] == 2 + 2  # warm-up, measured
        for side in ("ours", "torch"):
            assert all(s > 0 for s in run[side]["epoch_seconds"]), name
            assert len(run[side]["load_before"]) == 3
        lo, lt = r["final_loss"]["ours"], r["final_loss"]["torch"]
        assert math.isfinite(lo) and math.isfinite(lt)
        assert abs(lo - lt) <= 0.05 * abs(lt) + 1e-3, (name, lo, lt)
        prof = r["profile"]
        parts = prof["parts_seconds"]
        assert parts["recurrent: forward loop"] > 0 and parts["optimizer"] > 0
        assert sum(parts.values()) == pytest.approx(prof["epoch_seconds"], rel=1e-6)
    assert "BATCHES DIFFER" not in p.stdout
    assert "torch/ours" in p.stdout


@pytest.mark.parametrize("kind", ["names", "tagging", "series"])
def test_mirror_is_the_same_model(kind):
    """The PyTorch mirror computes the same outputs, loss and gradients as the unrolled
    model on a padded batch (dropout at rate 0, so both sides compute the same thing)."""
    import numpy as np
    import torch

    from unrolled import layers as L
    from unrolled.losses import get_loss
    from unrolled.tasks.base import Batch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from torch_tasks import TorchTrainer, mirror

    rng = np.random.default_rng(0)
    B, T = 5, 7
    lengths = np.array([7, 3, 5, 1, 6])
    mask = np.arange(T)[None] < lengths[:, None]
    if kind == "names":
        model = L.Sequential(L.Embedding(11, 6, seed=1), L.Dropout(0.0, seed=2),
                             L.GRU(6, 8, bidirectional=True, return_sequences=False, seed=3),
                             L.Dropout(0.0, seed=4), L.Dense(16, 4, seed=5))
        X = np.where(mask, rng.integers(1, 11, (B, T)), 0)
        Y, loss = rng.integers(0, 4, B), "cross_entropy"
    elif kind == "tagging":
        model = L.Sequential(L.Embedding(11, 6, seed=1), L.Dropout(0.0, seed=2),
                             L.LSTM(6, 8, bidirectional=True, seed=3),
                             L.Dropout(0.0, seed=4), L.Dense(16, 4, seed=5))
        X = np.where(mask, rng.integers(1, 11, (B, T)), 0)
        Y, loss = np.where(mask, rng.integers(1, 4, (B, T)), 0), "cross_entropy"
    else:
        model = L.Sequential(L.LSTM(3, 8, return_sequences=False, seed=3),
                             L.Dense(8, 1, seed=5))
        X = rng.standard_normal((B, T, 3)).astype(np.float32)
        Y, loss, mask = rng.standard_normal((B, 1)).astype(np.float32), "mse", None
    full = ours = model(X, mask=mask)
    net = mirror(model).eval()
    with torch.no_grad():
        theirs, _ = net(torch.from_numpy(X), mask)
    if kind == "tagging":  # padded steps: zeros here, the bias there; never scored
        theirs, ours = theirs[torch.from_numpy(mask)], ours[mask]
    np.testing.assert_allclose(theirs.numpy(), ours, rtol=1e-4, atol=1e-5)
    # and the loss the mirror's trainer takes, on the same batch
    ok = None if kind != "series" else np.array([[True], [False], [True], [True], [True]])
    batch = Batch(X, Y, mask, B, loss_mask=ok)
    task = type("T", (), {"loss": loss, "stateful": False})()
    tt = TorchTrainer(task, model, {"optimizer": "adam", "lr": 1e-3, "clip": 0},
                      lambda s: 1e-3)
    lmask = ok if ok is not None else (mask if kind == "tagging" else None)
    want, _ = get_loss(loss).value_and_grad(full, Y, lmask)
    with torch.no_grad():
        got = tt._loss(torch.from_numpy(np.asarray(full)), batch).item()
    assert got == pytest.approx(float(want), rel=1e-5)
    # the gradients of one training step, every parameter
    from unrolled.grad import backward_params
    from unrolled.interop import to_torch_state_dict
    from unrolled.layers import Recurrent

    out, _, cache = model.forward(X, mask=mask, training=True)
    _, d_out = get_loss(loss).value_and_grad(out, Y, lmask)
    grads, _, _ = backward_params(model, cache, d_out)
    net = tt.net.train()
    tt._loss(net(torch.from_numpy(X), mask)[0], batch).backward()
    checked = 0
    for i, (layer, part) in enumerate(zip(model.layers, net.parts)):
        g = grads[str(i)]
        if isinstance(layer, Recurrent):
            g, part = to_torch_state_dict(layer, g), part.rnn
        for name, prm in part.named_parameters():
            np.testing.assert_allclose(prm.grad.numpy(), g[name], rtol=1e-3, atol=1e-6,
                                       err_msg=f"{kind}: layer {i} {name}")
            checked += 1
    assert checked == {"names": 11, "tagging": 11, "series": 6}[kind]
