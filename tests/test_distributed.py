"""Data-parallel training (unrolled.distributed): the pieces on one process, and with
``mpiexec -n 2`` that two ranks compute what one process computes on the same global
batches, that a run resumes on another number of ranks, and that a failing rank ends
the job. The MPI tests skip where mpi4py or mpiexec is missing."""
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_train import tiny_names

from unrolled import distributed as D
from unrolled.data import bundled_path
from unrolled.tasks.base import Batch

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("distributed_worker.py")
MPIEXEC = shutil.which("mpiexec", path=os.pathsep.join(
    [str(Path(sys.executable).parent), os.environ.get("PATH", "")]))


def _have_mpi4py():
    try:
        import mpi4py  # noqa: F401 - the package only; MPI starts with mpi4py.MPI
    except ImportError:
        return False
    return True


HAVE_MPI = MPIEXEC is not None and _have_mpi4py()
needs_mpi = pytest.mark.skipif(not HAVE_MPI, reason="needs mpi4py and mpiexec "
                                                    "(pip install 'unrolled[mpi]')")

NAMES = {"epochs": 2, "hidden": 16, "embed": 8, "batch_size": 16, "max_batches": 6,
         "dropout": 0.3, "lr": 0.01, "progress": False, "checkpoint_every": 0, "seed": 4}
# stateful streams, TBPTT windows (k2 > k1), two layers with dropout between them
TEXT = {"epochs": 1, "hidden": 24, "embed": 8, "layers": 2, "dropout": 0.2, "chunk": 12,
        "k2": 18, "batch_size": 6, "max_batches": 20, "lr": 0.01, "progress": False,
        "checkpoint_every": 0, "patience": 0, "eval_streams": 4, "seed": 1}
# an encoder-decoder with attention and scheduled sampling (the g2p task's policy)
G2P = {"epochs": 1, "hidden": 12, "embed": 6, "batch_size": 16, "val_words": 40,
       "test_words": 40, "ss_k": 20.0, "max_batches": 10, "lr": 0.01, "progress": False,
       "checkpoint_every": 0, "patience": 0, "seed": 2}


# ------------------------------------------------------------------------- one process

def test_record_slices_cover_the_batch_once():
    for n in (1, 2, 5, 16, 17):
        for size in (1, 2, 3, 4):
            parts = [D.record_slice(n, D.Context(rank=r, size=size)) for r in range(size)]
            assert parts[0][0] == 0 and parts[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
            sizes = [hi - lo for lo, hi in parts]
            assert max(sizes) - min(sizes) <= 1 and sizes[-1] >= 1


def test_slice_batch_cuts_every_record_array():
    X = np.arange(24).reshape(4, 3, 2)
    mask = np.arange(12).reshape(4, 3) % 5 != 0
    b = Batch(X, np.arange(4), mask, loss_mask=~mask)
    s = D.slice_batch(b, 1, 3)
    assert s.size == 2
    np.testing.assert_array_equal(s.X, X[1:3])
    np.testing.assert_array_equal(s.Y, [1, 2])
    np.testing.assert_array_equal(s.mask, mask[1:3])
    np.testing.assert_array_equal(s.loss_mask, ~mask[1:3])
    with pytest.raises(ValueError, match="records"):
        D.slice_batch(Batch(X, np.arange(3)), 0, 2)


@pytest.mark.parametrize("axis,shape", [(0, (6, 5, 3)), (1, (5, 6, 3))])
def test_sliced_generator_hands_out_rows_of_one_global_draw(axis, shape):
    full = np.random.default_rng(7).random(shape)
    parts = []
    gens = [np.random.default_rng(7) for _ in range(3)]
    for r, g in enumerate(gens):
        lo, hi = D.record_slice(6, D.Context(rank=r, size=3))
        local = list(shape)
        local[axis] = hi - lo
        parts.append(D._SlicedGenerator(g, axis, 6, lo, hi).random(tuple(local)))
    np.testing.assert_array_equal(np.concatenate(parts, axis=axis), full)
    # every rank's generator moved as one process's did
    assert len({str(g.bit_generator.state) for g in gens}) == 1


def test_collectives_of_one_rank_are_the_identity():
    ctx = D.Context()
    tree = {"a": np.arange(3.0), "b": {"c": np.ones((2, 2)), "d": None}}
    out, scalars = D.allreduce_tree(tree, (2, 3.5), ctx)
    assert out is tree and scalars == [2.0, 3.5]
    assert D.broadcast_tree(tree, 0, ctx) is tree
    D.check_same(tree, ctx=ctx)
    assert D.checksum(tree) != D.checksum({"a": np.arange(3.0) + 1e-12, "b": tree["b"]})


def test_launched_follows_the_launcher_environment(monkeypatch):
    for var in list(os.environ):
        if var.startswith(("PMI", "OMPI_", "MV2_", "MPI_", "SLURM_", "UNROLLED_DIST")):
            monkeypatch.delenv(var)
    assert not D.launched()
    monkeypatch.setenv("PMI_SIZE", "1")
    assert not D.launched()
    monkeypatch.setenv("SLURM_NTASKS", "8")  # srun without MPI: independent tasks
    monkeypatch.delenv("PMI_SIZE")
    assert not D.launched()
    monkeypatch.setenv("PMIX_RANK", "3")  # srun --mpi=pmix
    assert D.launched()
    monkeypatch.delenv("PMIX_RANK")
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "4")
    assert D.launched()
    monkeypatch.setenv("UNROLLED_DISTRIBUTED", "0")
    assert not D.launched()


# ------------------------------------------------------------------------- mpiexec

@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    text = d / "text.txt"
    text.write_text(bundled_path("tinyshakespeare").read_text("utf-8")[:12000], "utf-8")
    from test_task_g2p import fake_dictionary

    return {"names": str(tiny_names(d)), "text": str(text),
            "g2p": str(fake_dictionary(d / "words.dict"))}


def run(tmp_path, spec, ranks=None, timeout=120, threads="1"):
    """Run the worker on ``spec`` in one process (ranks None) or under mpiexec."""
    path = tmp_path / f"spec-{time.monotonic_ns()}.json"
    path.write_text(json.dumps(spec))
    cmd = [sys.executable, str(WORKER), str(path)]
    if ranks is not None:
        cmd = [MPIEXEC, "-n", str(ranks)] + cmd
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT),
                                                       os.environ.get("PYTHONPATH", "")]))
    env.pop("UNROLLED_THREADS", None)
    if threads:
        env["UNROLLED_THREADS"] = threads
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


_runs = {}


def train(tmp_path, task, data, options, ranks=None, threads="1", **spec):
    """The final parameters, the initial ones, the history and the BLAS threads of one
    run (runs without a checkpoint directory are made once per session)."""
    key = json.dumps([task, options, ranks, threads, spec], sort_keys=True)
    if key in _runs:
        return _runs[key]
    out = tmp_path / f"run-{time.monotonic_ns()}.npz"
    full = {"task": task, "data": data[task], "options": options, "out": str(out),
            "distributed": ranks is not None, **spec}
    res = run(tmp_path, full, ranks, threads=threads)
    assert res.returncode == 0, res.stderr[-3000:]
    with np.load(out) as f:
        r = {"params": {k: f[k] for k in f.files if "/" in k and not k.startswith("init:")},
             "init": {k[5:]: f[k] for k in f.files if k.startswith("init:")},
             "history": json.loads(str(f["history"])), "threads": int(f["threads"])}
    if "run_dir" not in spec:
        _runs[key] = r
    return r


def rel_diff(a, b):
    """The largest difference of two parameter sets, relative to their largest value."""
    assert a.keys() == b.keys() and a
    return (max(float(np.max(np.abs(a[k] - b[k]))) for k in a)
            / max(float(np.max(np.abs(a[k]))) for k in a))


def assert_same_history(h1, h2, rtol):
    assert h1 and [r.keys() for r in h1] == [r.keys() for r in h2]
    for r1, r2 in zip(h1, h2):
        for k in r1:
            if k not in ("seconds", "examples_per_s"):
                assert r2[k] == pytest.approx(r1[k], rel=rtol, abs=rtol), k


@needs_mpi
def test_two_ranks_equal_one_process_float64(tmp_path, data):
    one = train(tmp_path, "names", data, NAMES)
    two = train(tmp_path, "names", data, NAMES, ranks=2, threads=None)
    assert len(one["history"]) == 2
    assert rel_diff(one["params"], one["init"]) > 1e-2  # training moved the weights ...
    assert rel_diff(one["params"], two["params"]) < 1e-12  # ... the same way on 2 ranks
    assert_same_history(one["history"], two["history"], 1e-12)
    # without UNROLLED_THREADS each rank takes its share of the cores
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert two["threads"] == max(1, cores // 2)


@needs_mpi
def test_two_ranks_equal_one_process_float32_streams(tmp_path, data):
    one = train(tmp_path, "text", data, TEXT, dtype="float32")
    two = train(tmp_path, "text", data, TEXT, ranks=2, dtype="float32")
    assert rel_diff(one["params"], one["init"]) > 1e-3  # 20 steps moved the weights ...
    assert rel_diff(one["params"], two["params"]) < 1e-5  # ... the same way on 2 ranks
    assert_same_history(one["history"], two["history"], 1e-5)


def checkpoint_meta(run_dir):
    from unrolled import io

    return io.load_arrays(Path(run_dir) / "checkpoint.npz", io.CHECKPOINT_FORMAT)[1]


@needs_mpi
def test_two_ranks_equal_one_process_seq2seq(tmp_path, data):
    """The g2p task's batches through its teacher-forcing policy, the coin flips of
    scheduled sampling drawn for the whole batch: two ranks make the updates of one."""
    one = train(tmp_path, "g2p", data, G2P)
    two = train(tmp_path, "g2p", data, G2P, ranks=2)
    assert rel_diff(one["params"], one["init"]) > 1e-3
    assert rel_diff(one["params"], two["params"]) < 1e-5
    assert_same_history(one["history"], two["history"], 1e-5)


@needs_mpi
def test_a_run_resumes_on_another_number_of_ranks(tmp_path, data):
    """2 ranks -> 1 process -> 3 ranks, with streams carried: the weights of one run."""
    whole = train(tmp_path, "text", data, TEXT)
    run_dir = str(tmp_path / "run")
    spec = {"task": "text", "data": data["text"], "options": TEXT, "out": "-",
            "distributed": True, "run_dir": run_dir, "stop_at": 7}
    res = run(tmp_path, spec, ranks=2)
    assert res.returncode == 130, res.stderr[-3000:]
    assert checkpoint_meta(run_dir)["step"] == 8  # every rank stopped after step 8
    res = run(tmp_path, {**spec, "distributed": False, "resume": True, "stop_at": 13})
    assert res.returncode == 130, res.stderr[-3000:]
    assert checkpoint_meta(run_dir)["step"] == 13
    resumed = train(tmp_path, "text", data, TEXT, ranks=3, run_dir=run_dir, resume=True)
    assert rel_diff(whole["params"], resumed["params"]) < 1e-12
    assert_same_history(whole["history"], resumed["history"], 1e-12)


@needs_mpi
def test_a_raising_rank_ends_the_job_naming_it(tmp_path, data):
    spec = {"task": "names", "data": data["names"], "options": {**NAMES, "epochs": 50},
            "out": str(tmp_path / "x.npz"), "distributed": True, "fail_at": 3, "fail_rank": 1}
    t0 = time.monotonic()
    res = run(tmp_path, spec, ranks=2, timeout=60)
    assert res.returncode != 0
    assert time.monotonic() - t0 < 30
    assert "rank 1 of 2" in res.stderr and "failure injected at step 3" in res.stderr
    assert not (tmp_path / "x.npz").exists()


@needs_mpi
def test_a_killed_rank_ends_the_job_and_the_run_resumes_bit_exactly(tmp_path, data):
    run_dir = str(tmp_path / "run")
    opts = {**NAMES, "checkpoint_every": 2}
    spec = {"task": "names", "data": data["names"], "options": opts, "out": "-",
            "distributed": True, "run_dir": run_dir, "kill_at": 5, "fail_rank": 1}
    t0 = time.monotonic()
    res = run(tmp_path, spec, ranks=2, timeout=60)
    assert res.returncode != 0
    assert time.monotonic() - t0 < 30
    assert checkpoint_meta(run_dir)["step"] == 4  # the last checkpoint, intact
    resumed = train(tmp_path, "names", data, opts, ranks=2, run_dir=run_dir, resume=True)
    uninterrupted = train(tmp_path, "names", data, NAMES, ranks=2, threads=None)
    for k, v in uninterrupted["params"].items():
        np.testing.assert_array_equal(resumed["params"][k], v)


@needs_mpi
def test_cli_train_under_mpiexec_is_the_run_of_one_process(tmp_path, data):
    args = [sys.executable, "-m", "unrolled.cli", "train", "names", "--data", data["names"],
            "--epochs", "1", "--seed", "3", "--quiet", "--hidden", "16", "--embed", "8"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT),
                                                       os.environ.get("PYTHONPATH", "")]))
    runs = {}
    for name, cmd in (("one", args), ("two", [MPIEXEC, "-n", "2", *args])):
        res = subprocess.run([*cmd, "--out", str(tmp_path / name)], env=env,
                             capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr[-3000:]
        runs[name] = res
    out = runs["two"].stdout
    assert out.count("resolved config") == 1  # rank 0 alone prints
    assert "data-parallel on 2 ranks" in out and "rank 1 pid" in out
    from unrolled import io

    m1, meta1 = io.load_model(tmp_path / "one")
    m2, meta2 = io.load_model(tmp_path / "two")
    from unrolled.tree import tree_flatten

    p1, p2 = tree_flatten(m1.params), tree_flatten(m2.params)
    assert rel_diff(p1, p2) < 1e-4  # float32: the order of the sums differs
    t1, t2 = meta1["extra"]["test"], meta2["extra"]["test"]
    assert t1.keys() == t2.keys() and all(abs(t1[k] - t2[k]) < 1e-4 for k in t1)
    assert_same_history(meta1["extra"]["history"], meta2["extra"]["history"], 1e-4)
    for f in ("report.txt", "log.csv", "checkpoint.npz", "confusion.png"):
        assert (tmp_path / "two" / f).exists()


@needs_mpi
def test_cli_error_under_mpiexec_ends_the_job_with_one_message(tmp_path, data):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT),
                                                       os.environ.get("PYTHONPATH", "")]))
    res = subprocess.run([MPIEXEC, "-n", "2", sys.executable, "-m", "unrolled.cli", "train",
                          "names", "--data", data["names"], "--hidden", "abc",
                          "--out", str(tmp_path / "x")],
                         env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    lines = [ln for ln in res.stderr.splitlines() if "--hidden takes an integer" in ln]
    # once, from rank 0, unless rank 1 met it seconds earlier (a slow start of rank 0)
    assert 1 <= len(lines) <= 2 and "Traceback" not in res.stderr
    for ln in lines:
        assert re.fullmatch(r"unrolled train: error on rank [01] of 2: --hidden takes an "
                            r"integer, got 'abc'", ln), ln
    assert not (tmp_path / "x" / "config.json").exists()


def test_distributed_trainer_of_one_rank_is_the_plain_trainer(tmp_path):
    """Outside mpiexec, Trainer(distributed=True) sums, then divides by the count, and
    draws its dropout through the sliced generators: the weights stay those of the plain
    trainer, bit for bit, and so do the checkpoints of an interrupted, resumed run."""
    from test_train import names_task

    from unrolled.train import Callback, Trainer
    from unrolled.tree import tree_flatten

    class StopAt(Callback):
        def on_batch_end(self, trainer, batch, logs):
            if batch == 5 and not trainer.history.rows:
                trainer._interrupted = True

    task = names_task(tiny_names(tmp_path), epochs=2, hidden=12, embed=6, dropout=0.3)
    plain = Trainer(task, log=lambda m: None)
    plain.fit()
    one = Trainer(task, log=lambda m: None, distributed=True, out_dir=tmp_path / "run",
                  callbacks=[StopAt()])
    assert isinstance(one, D.DistributedTrainer) and one.ctx.size == 1
    with pytest.raises(KeyboardInterrupt):
        one.fit()
    assert one.step == 5
    again = Trainer(task, log=lambda m: None, distributed=True, out_dir=tmp_path / "run")
    again.fit(resume=True)
    a, b = tree_flatten(plain.model.params), tree_flatten(again.model.params)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert plain.history.rows[-1]["val_loss"] == again.history.rows[-1]["val_loss"]


def test_a_trainer_subclass_keeps_its_methods_when_distributed(tmp_path):
    from test_train import names_task

    from unrolled.train import Trainer

    class Counting(Trainer):
        evaluated = 0

        def evaluate(self, split):
            self.evaluated += 1
            return super().evaluate(split)

    task = names_task(tiny_names(tmp_path), epochs=2, hidden=8, embed=4, max_batches=2)
    t = Counting(task, log=lambda m: None, distributed=True)
    assert isinstance(t, Counting) and isinstance(t, D.DistributedTrainer)
    assert type(Counting(task, log=lambda m: None, distributed=True)) is type(t)
    t.fit()
    assert t.evaluated == 2 and t.step == 4


@needs_mpi
def test_ranks_that_drift_apart_are_caught_by_the_checksum(tmp_path, data):
    spec = {"task": "names", "data": data["names"], "options": NAMES, "out": "-",
            "distributed": True, "perturb_at": 2, "fail_rank": 1, "check_every": 4}
    res = run(tmp_path, spec, ranks=2, timeout=60)
    assert res.returncode != 0
    assert "the parameters after step 4 differ between ranks (ranks [1] differ from " \
           "rank 0)" in res.stderr


@needs_mpi
def test_checkpoints_by_time_are_taken_by_every_rank_together(tmp_path, data):
    """--checkpoint-seconds: rank 0's clock decides, so the ranks gather the streams'
    state for each checkpoint together (no rank waits alone), and the run is unchanged."""
    opts = {**TEXT, "checkpoint_every": 0, "checkpoint_seconds": 0.25}
    # rank 1 sleeps after every second step, so by its own clock a checkpoint falls due
    # a step before or after it does by rank 0's
    timed = train(tmp_path, "text", data, opts, ranks=2, run_dir=str(tmp_path / "run"),
                  lag=0.06)
    whole = train(tmp_path, "text", data, TEXT, run_dir=str(tmp_path / "one"))
    assert rel_diff(whole["params"], timed["params"]) < 1e-12
    # the last checkpoint holds every stream's state as one process has it
    from unrolled import io

    a, meta = io.load_arrays(tmp_path / "run" / "checkpoint.npz", io.CHECKPOINT_FORMAT)
    b, _ = io.load_arrays(tmp_path / "one" / "checkpoint.npz", io.CHECKPOINT_FORMAT)
    carry = [k for k in b if k.startswith("carry/")]
    assert meta["step"] == 20 and carry
    saved = [json.loads((tmp_path / "run" / f"saved-at-{r}.json").read_text()) for r in (0, 1)]
    assert saved[0] == saved[1] and len(saved[0]) > 2  # together, and not only at the end
    assert rel_diff({k: b[k] for k in carry}, {k: a[k] for k in carry}) < 1e-12
