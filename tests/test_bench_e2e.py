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
