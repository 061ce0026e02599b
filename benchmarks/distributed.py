"""Data-parallel training on this machine, and a model of scaling out to N nodes.

    python benchmarks/distributed.py [--steps 30] [--ranks 1 2] [--out benchmarks/results]

For the default ``names`` model (bidirectional GRU, H=128, batch 32) and the default
character LM (``text``: LSTM H=256, 32 streams x 64 steps), it runs ``mpiexec -n 1`` and
``mpiexec -n 2`` of itself, one thread per rank, and measures on the same global batches:

- the time of a training step (forward, loss, BPTT, Allreduce, clipping, update): the
  median over ``--steps`` steps (medians, because other work on the machine takes a
  core now and then), and the mean wall time of the steps;
- the work of a step: its processor time less that spent in the Allreduce (where MPI
  polls while it waits), on the busiest rank (median); with the Allreduce alone, an
  estimate of the step on cores no other process takes (``estimated``), for machines
  shared with other work;
- the time a rank spends in the gradient's Allreduce during a step (the transfer and
  the wait for the slower rank), and the time of the Allreduce alone (after a barrier,
  so without the wait; median of 50): the communication share of a step;
- the bytes reduced per step (the gradient and six numbers, one flat buffer).

From the compute time of one rank (its estimated step) and the bytes per step it then
models a step on N nodes (one rank each) linked by 10, 25 or 100 GbE: a ring Allreduce
sends 2(N-1)/N of the bytes per rank in 2(N-1) messages (each with a latency, 20 us by
default), so ``step(N) = compute + 2(N-1)/N * bytes / bandwidth + 2(N-1) * latency``
with each node's batch fixed (the global batch grows N times) and
``compute / N + ...`` with the global batch fixed (an upper bound: a step on fewer
records keeps fixed costs; on this machine half the batch takes 55-65 % of the time of
the whole). Writes ``distributed.json``,
``distributed.md`` (tables) and ``distributed.png`` (plot) into ``--out``.
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODELS = {"names": ("names", "names"), "charlm": ("text", "tinyshakespeare")}
LINKS_GBIT = (10, 25, 100)
NODES = (1, 2, 4, 8, 16, 32, 64)


# --------------------------------------------------------------------------- one rank

def worker(models, steps, warmup, out):
    from unrolled import distributed as D
    from unrolled.config import resolve_config
    from unrolled.data import bundled_path
    from unrolled.tasks import get_task
    from unrolled.train import Trainer

    from unrolled.backend import reuse_freed_memory

    ctx = D.init(threads=1)
    reuse_freed_memory()  # as the command line and Trainer.fit do
    reduce_cpu = [0.0]  # processor time inside the trainer's Allreduce (polling included)
    allreduce = D.allreduce_tree

    def timed_allreduce(*args, **kwargs):
        p = time.process_time()
        try:
            return allreduce(*args, **kwargs)
        finally:
            reduce_cpu[0] += time.process_time() - p

    D.allreduce_tree = timed_allreduce
    results = {}
    for name in models:
        task_name, data = MODELS[name]
        T = get_task(task_name)
        cfg = resolve_config(T, overrides={"progress": "false", "checkpoint_every": "0"})
        task = T(cfg)
        task.load(str(bundled_path(data)))
        trainer = Trainer(task, cfg, log=lambda m: None, distributed=True)
        plan = task.epoch_batches(trainer.rng)
        batches = [task.get_batch("train", plan[i % len(plan)]) for i in range(warmup + steps)]
        for b in batches[:warmup]:
            trainer.train_step(b)
        barrier = ctx.comm.Barrier if ctx.comm is not None else (lambda: None)
        barrier()
        times, cpu, comm = [], [], []
        t0 = time.perf_counter()
        for b in batches[warmup:]:
            t, p, c = time.perf_counter(), time.process_time(), trainer.comm_seconds
            r0 = reduce_cpu[0]
            trainer.train_step(b)
            times.append(time.perf_counter() - t)
            # the work of the step: its processor time less that of the Allreduce
            cpu.append(time.process_time() - p - (reduce_cpu[0] - r0))
            comm.append(trainer.comm_seconds - c)
        barrier()
        mean_step = (time.perf_counter() - t0) / steps
        # medians: robust to the moments another process takes a core
        step, in_step = float(np.median(times)), float(np.median(comm))
        # the busiest rank's work
        work = max(ctx.comm.allgather(float(np.median(cpu)))) if ctx.comm else float(
            np.median(cpu))
        # the Allreduce alone, every rank ready
        grads = {k: np.zeros_like(v) for k, v in _flat(trainer.model.params).items()}
        alone = []
        for _ in range(50):
            barrier()
            t = time.perf_counter()
            allreduce(grads, (0.0,) * 6, ctx)
            alone.append(time.perf_counter() - t)
        alone = float(np.median(alone)) if ctx.size > 1 else 0.0
        itemsize = next(iter(grads.values())).dtype.itemsize
        nbytes = (sum(g.size for g in grads.values()) + 6) * itemsize
        batch = batches[-1].size
        r = {"ranks": ctx.size, "step_s": step, "mean_step_s": mean_step,
             "work_s": work, "estimated_step_s": work + alone,
             "allreduce_in_step_s": in_step,
             "allreduce_alone_s": alone, "bytes_per_step": nbytes, "global_batch": batch,
             "params": trainer.model.num_params(), "records_per_s": batch / step}
        if ctx.comm is not None:
            r["step_s_per_rank"] = ctx.comm.gather(step, root=0)
        results[name] = r
    if ctx.root:
        Path(out).write_text(json.dumps(results, indent=1))


def _flat(tree):
    from unrolled.tree import tree_flatten

    return tree_flatten(tree)


# --------------------------------------------------------------------------- the model

def model_step(compute_s, nbytes, n, gbit, latency_s, fixed="node"):
    """Modelled seconds of one step on ``n`` nodes (see the module docstring)."""
    comm = 0.0 if n == 1 else (2 * (n - 1) / n * nbytes / (gbit * 1e9 / 8)
                               + 2 * (n - 1) * latency_s)
    return (compute_s if fixed == "node" else compute_s / n) + comm


def scaling_tables(res, latency_s):
    lines = []
    for name, r in res.items():
        c, nb, B = r[1]["estimated_step_s"], r[1]["bytes_per_step"], r[1]["global_batch"]
        lines += [f"### {name}: compute {c * 1e3:.1f} ms per step of {B} records on one rank, "
                  f"{nb / 1e6:.2f} MB reduced per step", "",
                  "| nodes | " + " | ".join(f"{g} GbE: speed-up, batch per node fixed"
                                          for g in LINKS_GBIT)
                  + " | " + " | ".join(f"{g} GbE: speed-up, global batch fixed (at most)"
                                       for g in LINKS_GBIT) + " |",
                  "|---:|" + "---:|" * (2 * len(LINKS_GBIT))]
        for n in NODES:
            weak = [n * c / model_step(c, nb, n, g, latency_s) for g in LINKS_GBIT]
            strong = [c / model_step(c, nb, n, g, latency_s, "global") if n <= B else None
                      for g in LINKS_GBIT]
            lines.append(f"| {n} | " + " | ".join(f"{w:.1f}x ({w / n:.0%})" for w in weak)
                         + " | " + " | ".join("-" if s is None else f"{s:.1f}x ({s / n:.0%})"
                                              for s in strong) + " |")
        lines.append("")
    return lines


def plot(res, latency_s, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(res), figsize=(5.5 * len(res), 4.2), squeeze=False)
    for ax, (name, r) in zip(axes[0], res.items()):
        c, nb = r[1]["estimated_step_s"], r[1]["bytes_per_step"]
        ns = np.array(NODES)
        ax.plot(ns, ns, "k:", label="ideal")
        for g in LINKS_GBIT:
            ax.plot(ns, [n * c / model_step(c, nb, n, g, latency_s) for n in ns], "o-",
                    label=f"{g} GbE, batch per node fixed")
        few = ns[ns <= r[1]["global_batch"]]  # at least one record per node
        for g in LINKS_GBIT:
            ax.plot(few, [c / model_step(c, nb, n, g, latency_s, "global") for n in few],
                    "x--", label=f"{g} GbE, global batch fixed (at most)")
        if 2 in r:
            ax.plot([2], [r[1]["step_s"] / r[2]["step_s"]], "r*", ms=12,
                    label="2 ranks here: wall time (machine shared)")
            ax.plot([2], [c / r[2]["estimated_step_s"]], "g*", ms=12,
                    label="2 ranks here: estimated from processor time")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log", base=2)
        ax.set_xlabel("nodes (one rank each)")
        ax.set_ylabel("speed-up over one rank")
        ax.set_title(f"{name}: {c * 1e3:.1f} ms compute, {nb / 1e6:.2f} MB per step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--latency-us", type=float, default=20.0)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        return worker(a.models, a.steps, a.warmup, a.worker)
    mpiexec = Path(sys.executable).with_name("mpiexec")
    mpiexec = str(mpiexec) if mpiexec.exists() else "mpiexec"
    env = dict(os.environ, UNROLLED_THREADS="1", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    res, load = {}, os.getloadavg()[0]
    for n in a.ranks:
        tmp = out / f".distributed-{n}.json"
        cmd = [mpiexec, "-n", str(n), sys.executable, __file__, "--worker", str(tmp),
               "--steps", str(a.steps), "--warmup", str(a.warmup), "--models", *a.models]
        subprocess.run(cmd, env=env, check=True)
        for name, r in json.loads(tmp.read_text()).items():
            res.setdefault(name, {})[n] = r
        tmp.unlink()
    lat = a.latency_us * 1e-6
    load = max(load, os.getloadavg()[0])
    lines = ["## Measured on this machine (one thread per rank)", "",
             f"{_cpu()}; load average before/after the runs up to {load:.1f} (other "
             "processes compete for the cores when it exceeds the ranks)", "",
             "| model | ranks | step (ms) | mean step (ms) | records/s | speed-up "
             "| work (ms) | estimated step (ms) | estimated speed-up | Allreduce in step (ms) "
             "| Allreduce alone (ms) | share of estimated step | MB per step |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, rs in res.items():
        for n, r in sorted(rs.items()):
            lines.append(
                f"| {name} | {n} | {r['step_s'] * 1e3:.2f} | {r['mean_step_s'] * 1e3:.2f} | "
                f"{r['records_per_s']:.0f} | "
                f"{rs[min(rs)]['step_s'] / r['step_s']:.2f}x | {r['work_s'] * 1e3:.2f} | "
                f"{r['estimated_step_s'] * 1e3:.2f} | "
                f"{rs[min(rs)]['estimated_step_s'] / r['estimated_step_s']:.2f}x | "
                f"{r['allreduce_in_step_s'] * 1e3:.3f} | {r['allreduce_alone_s'] * 1e3:.3f} | "
                f"{r['allreduce_alone_s'] / r['estimated_step_s']:.1%} | "
                f"{r['bytes_per_step'] / 1e6:.2f} |")
    lines += ["", f"## Model: N nodes, ring Allreduce, {a.latency_us:g} us per message", ""]
    if all(1 in rs for rs in res.values()):
        lines += scaling_tables(res, lat)
        png = plot(res, lat, out / "distributed.png")
        lines += [f"![scaling]({png.name})", ""]
    md = "\n".join(lines)
    (out / "distributed.md").write_text(md + "\n")
    (out / "distributed.json").write_text(json.dumps(
        {"cpu": _cpu(), "load_average": load, "latency_us": a.latency_us,
         "results": {m: {str(n): r for n, r in rs.items()} for m, rs in res.items()}},
        indent=1) + "\n")
    print(md)


def _cpu():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip() + f", {os.cpu_count()} cores"
    except OSError:
        pass
    return f"{os.cpu_count()} cores"


if __name__ == "__main__":
    sys.exit(main())
