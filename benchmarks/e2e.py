"""Real workloads, unrolled against PyTorch side by side: epochs as the user runs them.

Four workloads, each one task of ``unrolled train`` with its default model, batch size,
optimizer, schedule and clipping (options given below), trained by unrolled's
:class:`~unrolled.train.Trainer` after the command line's process set-up (its thread and
memory policy, whatever this checkout's ``unrolled.cli.main`` calls), and by a PyTorch
script with the same architecture and initial weights, the same batches in the same
order (both take them from the task's own ``epoch_batches`` / ``get_batch`` with the
Trainer's shuffling generator), the same optimizer, learning-rate schedule and gradient
clipping (``benchmarks/torch_tasks.py``):

    charlm   text on tinyshakespeare, --batch-size 64 (64 streams x 64 steps, state
             carried): Embedding(65, 32) -> LSTM(32, 256) -> Dense(256, 65), Adam, cosine;
             characters per second over a fixed number of steps (``max_batches``)
    names    names (bundled): Embedding -> Dropout -> bidirectional GRU(32, 128), final
             state -> Dropout -> Dense, B = 32, length buckets, masks; seconds per epoch
    tagging  tagging on hironsancorpus: Embedding(64) -> Dropout -> bidirectional
             LSTM(64, 64) -> Dropout -> Dense per token, B = 16, masks; seconds per epoch
    series   series on Beijing PM2.5 as in docs/tasks.md (14 channels, window 48,
             horizon 24, B = 64): LSTM(14, 32) -> Dense(32, 1), MSE with missing targets
             masked; seconds per epoch

Each side runs in its own worker process (the two never share a thread pool): PyTorch
with ``torch.set_num_threads(os.cpu_count())`` (its default), unrolled with the command
line's default policy; both are recorded in the JSON. Each worker first trains one
warm-up epoch (compilation, caches; not measured), then one measurement per busy mode
(``--busy 0,1,3``: that many ``while True: pass`` processes run during it and are killed
after it, also on Ctrl-C); the two sides alternate who goes first. The time of an epoch
runs from its first batch to the end of its last update (the batches are built inside
it, as in the Trainer; validation is left out on both sides: the Trainer's evaluation is
replaced by a no-op here). Both sides make exactly the same updates, so the training
losses at the end (mean over the last measured epoch) can be compared; they differ by
rounding and by dropout's random masks. The load average (``os.getloadavg()``) is
recorded beside every figure.

Afterwards unrolled trains one more epoch with clocks around its parts (data, embedding,
dropout, the recurrent layer's input projection, forward loop, backward loop and
weight/input-gradient products, dense + loss, clipping, the optimizer, the Trainer's
own bookkeeping): the profile of where an epoch's time goes. It wraps the public
methods of the layers, loss and learner, and the products of ``unrolled.unroll`` where
this checkout has them (a part shows "-" where it does not).

    python benchmarks/e2e.py --quick             # minutes (6 on a loaded 2-core machine)
    python benchmarks/e2e.py                     # the fuller run
    python benchmarks/e2e.py --workloads names,series --busy 0 --json /tmp/e2e.json

Prints a table and writes JSON (``benchmarks/results/e2e.json`` by default). The figures
depend on the machine and on its load: compare the two sides of one run, not runs.
"""
import argparse
import ast
import inspect
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"

# name -> the task and its `unrolled train` options; sizes per mode: epochs per
# measurement, and batches per epoch (0: the whole epoch)
WORKLOADS = {
    "charlm": {
        "task": "text",
        "options": {"data": str(SHARED / "tinyshakespeare" / "input.txt"), "batch_size": 64},
        "unit": "chars/s",
        "sizes": {"quick": (1, 30), "full": (1, 150), "smoke": (1, 2)},
    },
    "names": {
        "task": "names", "options": {}, "unit": "s/epoch",
        "sizes": {"quick": (1, 0), "full": (3, 0), "smoke": (1, 2)},
    },
    "tagging": {
        "task": "tagging", "options": {}, "unit": "s/epoch",
        "sizes": {"quick": (6, 0), "full": (20, 0), "smoke": (1, 2)},
    },
    "series": {
        "task": "series",
        "options": {"data": str(SHARED / "beijing-pm25" / "pollution.csv"), "target": "pm2.5",
                    "features": "DEWP,TEMP,PRES,cbwd,Iws,Is,Ir,hour", "categorical": "cbwd",
                    "window": 48, "horizon": 24, "season": 24, "batch_size": 64},
        "unit": "s/epoch",
        "sizes": {"quick": (1, 0), "full": (3, 0), "smoke": (1, 2)},
    },
}


# ----------------------------------------------------------------------------- workers

def cli_setup():
    """Run the process set-up of ``unrolled.cli.main``: every bare call without arguments
    in its body, ``name()`` or ``name.attr()`` (today ``limit_blas_threads()`` and
    ``reuse_freed_memory()``), so the workers run under whatever thread and memory policy
    this checkout's command line has. Returns the names called."""
    from unrolled import cli

    def resolve(node):
        if isinstance(node, ast.Name):
            return getattr(cli, node.id, None), node.id
        if isinstance(node, ast.Attribute):
            base, name = resolve(node.value)
            return getattr(base, node.attr, None), f"{name}.{node.attr}"
        return None, None

    body = ast.parse(textwrap.dedent(inspect.getsource(cli.main))).body[0].body
    calls = []
    for st in body:
        if (isinstance(st, ast.Expr) and isinstance(st.value, ast.Call)
                and not st.value.args and not st.value.keywords):
            fn, name = resolve(st.value.func)
            if callable(fn):
                fn()
                calls.append(name)
    if not calls:
        print("e2e: found no process set-up in unrolled.cli.main; the library's defaults "
              "apply", file=sys.stderr)
    return calls


def thread_info(side):
    """The thread settings in effect in this worker."""
    info = {"cpu_count": os.cpu_count()}
    if hasattr(os, "sched_getaffinity"):
        info["cpus_usable"] = len(os.sched_getaffinity(0))
    if side == "torch":
        import torch

        info.update(torch_threads=torch.get_num_threads(),
                    torch_interop_threads=torch.get_num_interop_threads(),
                    torch=torch.__version__)
        return info
    from unrolled.settings import settings

    info["unrolled_settings"] = {k: v for k, v in vars(settings).items()
                                 if isinstance(v, (int, float, str, bool, type(None)))}
    try:
        from threadpoolctl import threadpool_info

        info["threadpools"] = [{k: p.get(k) for k in ("user_api", "internal_api",
                                                      "num_threads")}
                               for p in threadpool_info()]
    except ImportError:
        pass
    if "numba" in sys.modules:
        import numba

        info["numba_threads"] = numba.get_num_threads()
        info["numba_threading_layer"] = _numba_layer(numba)
    return info


def _numba_layer(numba):
    try:
        return numba.threading_layer()
    except ValueError:  # no parallel region has run yet
        return None


def load_task(name, options):
    """The task loaded as ``unrolled train NAME --key value ...`` loads it: (task, cfg)."""
    from unrolled.config import resolve_config
    from unrolled.tasks import get_task

    task_cls = get_task(name)
    overrides = {k: str(v) for k, v in options.items() if k != "data"}
    cfg = resolve_config(task_cls, None, overrides)
    data = options.get("data") or cfg.get("data")
    data = str(data) if data else str(task_cls.default_data_path())
    data = str(task_cls.resolve_data(data))
    cfg["data"] = data
    task = task_cls(cfg)
    task.load(data)
    return task, cfg


class KeyHash:
    """A running CRC of the batch keys handed out, to check both sides see the same."""

    def __init__(self):
        self.crc, self.count = 0, 0

    def add(self, key):
        import numpy as np

        self.crc = zlib.crc32(np.ascontiguousarray(np.asarray(key)).tobytes(), self.crc)
        self.count += 1


class Job:
    """One workload on one side: the task loaded as the command line loads it, the model,
    and ``run(n)``: train ``n`` more epochs, returning (seconds of each epoch, mean
    training loss of the last one)."""

    def __init__(self, side, cmd):
        import numpy as np

        self.side = side
        per, max_batches = cmd["per"], cmd["max_batches"]
        self.per = per
        opts = dict(cmd["options"], epochs=cmd["total_epochs"], patience=0,
                    restore_best="false", progress="false", max_batches=max_batches)
        task, cfg = load_task(cmd["task"], opts)
        self.task, self.cfg = task, cfg
        model = task.build_model()
        self.keys = keys = KeyHash()
        first_x = self.first_x = []
        get_batch = task.get_batch

        def recorded_get_batch(split, key):
            b = get_batch(split, key)
            if split == "train":
                keys.add(key)
                if not first_x:
                    first_x.append(zlib.crc32(np.ascontiguousarray(b.X).tobytes()))
            return b

        task.get_batch = recorded_get_batch
        if side == "ours":
            from unrolled.train import Callback, Trainer

            class Clock(Callback):
                def __init__(self):
                    self.epochs = []

                def on_epoch_begin(self, trainer, epoch):
                    self.t0 = self.t1 = time.perf_counter()

                def on_batch_end(self, trainer, batch, logs):
                    self.t1 = time.perf_counter()

                def on_epoch_end(self, trainer, epoch, logs):
                    self.epochs.append((self.t1 - self.t0, float(logs["loss"])))

            clock = Clock()
            trainer = Trainer(task, cfg, model=model, callbacks=[clock], log=lambda msg: None)
            self.trainer = trainer
            monitor = trainer.monitor[0]
            # validation is not measured on either side: a no-op in its place
            task.evaluate = lambda model, split: {monitor: 0.0, "loss": 0.0}
            self.steps_per_epoch = trainer.steps_per_epoch
            trainer.config["epochs"] = 0

            def run(n):
                clock.epochs = []
                trainer.config["epochs"] += n
                trainer.fit()
                return [e[0] for e in clock.epochs], clock.epochs[-1][1]
        else:
            from torch_tasks import TorchTrainer

            from unrolled.train import make_schedule

            rng = np.random.default_rng(np.random.SeedSequence([int(cfg["seed"]), 1]))
            n = len(task.epoch_batches(np.random.default_rng(0)))
            self.steps_per_epoch = max(min(n, max_batches) if max_batches else n, 1)
            sched = make_schedule(cfg, self.steps_per_epoch)
            tt = TorchTrainer(task, model, cfg, sched if callable(sched) else (lambda s: sched))

            def run(n):
                times, loss = [], None
                for _ in range(n):
                    plan = task.epoch_batches(rng)
                    if max_batches:
                        plan = plan[:max_batches]
                    sec, loss = tt.run_epoch(plan)
                    times.append(sec)
                return times, loss
        self.run = run
        t = time.perf_counter()
        run(1)  # warm-up: compilation, caches, first-touch memory
        self.ready = {"warmup_seconds": time.perf_counter() - t,
                      "steps_per_epoch": self.steps_per_epoch,
                      "batch_size": int(cfg["batch_size"]),
                      "config": {k: v for k, v in cfg.items()
                                 if isinstance(v, (int, float, str, bool))}}

    def measure(self):
        times, loss = self.run(self.per)
        return {"epoch_seconds": times, "loss": loss, "batches": self.keys.count,
                "keys_crc": self.keys.crc, "first_x_crc": self.first_x[0]}

    def profile(self):
        return profile(self.trainer, self.task, self.run)


def worker(args):
    """One side (ours or torch) for the whole run: answers the orchestrator's commands
    (JSON lines on stdin: start a workload, measure, profile, end it, quit)."""
    import gc
    import traceback

    side = args.worker
    if side == "ours":  # imported first, as the command line imports it: before NumPy
        import unrolled  # noqa: F401  (it sets OpenBLAS's thread timeout; see __init__)
    # the protocol has stdout to itself: anything else printed goes to stderr
    proto = os.fdopen(os.dup(1), "w")
    sys.stdout = sys.stderr

    def send(obj):
        proto.write(json.dumps(obj) + "\n")
        proto.flush()

    setup = cli_setup() if side == "ours" else []
    if side == "torch":
        import torch

        torch.set_num_threads(args.torch_threads or os.cpu_count())
    send({"setup_calls": setup, "threads": thread_info(side)})
    job = None
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd["op"]
        if op == "quit":
            break
        try:
            if op == "start":
                job = None
                gc.collect()
                job = Job(side, cmd)
                send(dict(job.ready, threads=thread_info(side)))
            elif op == "measure":
                send(dict(job.measure(), threads=thread_info(side)))
            elif op == "profile":
                send(job.profile())
        except Exception as e:  # reported to the orchestrator, which stops the run
            traceback.print_exc()
            send({"error": f"{type(e).__name__}: {e}"})


def profile(trainer, task, run):
    """One epoch of ``trainer`` with clocks around its parts; exclusive seconds each."""
    import unrolled.train as train_mod
    import unrolled.unroll as unroll_mod
    from unrolled.layers import Dense, Dropout, Embedding, Recurrent

    excl, stack, undo = {}, [], []
    clock = time.perf_counter

    def timed(name, fn):
        def wrapper(*a, **k):
            t = clock()
            stack.append(0.0)
            try:
                return fn(*a, **k)
            finally:
                dt = clock() - t
                child = stack.pop()
                excl[name] = excl.get(name, 0.0) + dt - child
                if stack:
                    stack[-1] += dt
        return wrapper

    def patch_attr(obj, attr, name):
        had = attr in vars(obj)
        old = getattr(obj, attr)
        setattr(obj, attr, timed(name, old))
        undo.append((obj, attr, old, had))

    kinds = ((Embedding, "embedding"), (Dropout, "dropout"), (Recurrent, None),
             (Dense, "dense + loss"))
    for layer in trainer.model.layers:
        for cls, label in kinds:
            if isinstance(layer, cls):
                if label is None:
                    patch_attr(layer, "forward", "recurrent: forward loop")
                    patch_attr(layer, "backward", "recurrent: backward loop")
                else:
                    patch_attr(layer, "forward", label)
                    patch_attr(layer, "backward", label)
                break
    found = []
    for fn, label in (("_project", "recurrent: input projection"),
                      ("_block_input_grads", "recurrent: weight and input gradients"),
                      ("_add_product", "recurrent: weight and input gradients")):
        if hasattr(unroll_mod, fn):
            patch_attr(unroll_mod, fn, label)
            found.append(fn)
    patch_attr(trainer.loss, "value_and_grad", "dense + loss")
    patch_attr(train_mod, "clip_grad_norm", "clip")
    patch_attr(trainer.optimizer, "step", "optimizer")
    patch_attr(task, "get_batch", "data (get_batch)")
    try:
        times, _ = run(1)
    finally:
        for obj, attr, old, had in reversed(undo):
            if had:
                setattr(obj, attr, old)
            else:
                delattr(obj, attr)
    total = times[-1]
    parts = {k: v for k, v in excl.items()}
    parts["trainer (the rest)"] = total - sum(parts.values())
    return {"epoch_seconds": total, "parts_seconds": parts, "unroll_hooks": found}


# ----------------------------------------------------------------------------- orchestrator

BUSY_LOOP = ("import os, sys\nparent = int(sys.argv[1])\ni = 0\nwhile True:\n    i += 1\n"
             "    if i & 0xFFFFF == 0 and os.getppid() != parent:\n        break\n")


class Busy:
    """``n`` processes spinning ``while True`` for the duration of a ``with`` block
    (they also stop by themselves if this process dies)."""

    def __init__(self, n):
        self.n, self.procs = n, []

    def __enter__(self):
        for _ in range(self.n):
            self.procs.append(subprocess.Popen([sys.executable, "-c", BUSY_LOOP,
                                                str(os.getpid())]))
        if self.n:
            time.sleep(0.5)  # let them start spinning
        return self

    def __exit__(self, *exc):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
        for p in self.procs:
            p.wait()
        self.procs = []
        return False


class Worker:
    """A worker process for one side, serving every workload of the run in turn."""

    def __init__(self, side, torch_threads=0):
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "benchmarks")]
                                            + ([env["PYTHONPATH"]] if env.get("PYTHONPATH")
                                               else []))
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", side,
               "--torch-threads", str(torch_threads)]
        self.side = side
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     env=env, text=True, cwd=str(ROOT))
        self.info = self._read()

    def _read(self):
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait()
            raise RuntimeError(f"the {self.side} worker stopped (exit code {code}); its "
                               "error is printed above")
        r = json.loads(line)
        if "error" in r:
            raise RuntimeError(f"the {self.side} worker failed: {r['error']}")
        return r

    def ask(self, op, **kw):
        self.proc.stdin.write(json.dumps(dict(kw, op=op)) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self, force=False):
        if self.proc.poll() is None and force:
            self.proc.kill()
            self.proc.wait()
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


def measure(worker, busy):
    before = os.getloadavg()
    t = time.perf_counter()
    r = worker.ask("measure")
    r["wall_seconds"] = time.perf_counter() - t
    r["load_before"], r["load_after"] = before, os.getloadavg()
    r["busy"] = busy
    r["seconds_per_epoch"] = statistics.median(r["epoch_seconds"])
    return r


def run_workload(name, mode, busy_modes, workers, log):
    spec = WORKLOADS[name]
    per, max_batches = spec["sizes"][mode]
    options = dict(spec["options"])
    if mode == "smoke" and "data" in options:
        options["data"] = ""  # the task's bundled data: the smoke test needs no data sets
        if name == "series":
            options = {}
    if name == "tagging":
        import importlib.util

        if importlib.util.find_spec("hironsan") is None:
            log(f"{name}: skipped (the hironsancorpus package is not installed)")
            return {"skipped": "pip install hironsancorpus"}
    for k, v in options.items():
        if k == "data" and v and not Path(v).exists():
            raise SystemExit(f"{name}: {v} is missing; pass --data-dir with the shared data "
                             "sets (tinyshakespeare, beijing-pm25)")
    total = 1 + per * len(busy_modes)
    res = {"task": spec["task"], "options": options, "unit": spec["unit"],
           "epochs_per_measurement": per, "max_batches": max_batches, "runs": []}
    job = {"task": spec["task"], "options": options, "per": per,
           "max_batches": max_batches, "total_epochs": total}
    ready = {}
    for side in ("ours", "torch"):
        ready[side] = workers[side].ask("start", **job)
        res[side] = {"warmup_seconds": ready[side]["warmup_seconds"],
                     "setup_calls": workers[side].info["setup_calls"],
                     "threads": ready[side]["threads"]}
    info = ready["ours"]
    res["steps_per_epoch"], res["batch_size"] = info["steps_per_epoch"], info["batch_size"]
    res["config"] = info["config"]
    if ready["torch"]["steps_per_epoch"] != info["steps_per_epoch"]:
        raise RuntimeError(f"{name}: the two sides plan different epochs")
    for j, busy in enumerate(busy_modes):
        order = ("ours", "torch") if j % 2 == 0 else ("torch", "ours")
        run = {"busy": busy, "order": list(order)}
        with Busy(busy):
            for side in order:
                run[side] = measure(workers[side], busy)
        o, t = run["ours"], run["torch"]
        run["same_batches"] = (o["keys_crc"] == t["keys_crc"] and o["batches"] == t["batches"]
                               and o["first_x_crc"] == t["first_x_crc"])
        run["ratio_torch_over_ours"] = t["seconds_per_epoch"] / o["seconds_per_epoch"]
        if spec["unit"] == "chars/s":
            chars = res["steps_per_epoch"] * res["batch_size"] * int(
                res["config"].get("chunk", 64))
            for side in ("ours", "torch"):
                run[side]["chars_per_s"] = chars / run[side]["seconds_per_epoch"]
        res["runs"].append(run)
        log(_row(name, spec["unit"], run))
    res["final_loss"] = {"ours": res["runs"][-1]["ours"]["loss"],
                         "torch": res["runs"][-1]["torch"]["loss"],
                         "after_updates": res["steps_per_epoch"] * total}
    with Busy(0):
        before = os.getloadavg()
        res["profile"] = workers["ours"].ask("profile")
        res["profile"]["load_before"] = before
        res["profile"]["load_after"] = os.getloadavg()
    return res


def _fmt_speed(unit, r):
    if unit == "chars/s":
        return f"{r['chars_per_s'] / 1e3:8.1f}k ch/s"
    return f"{r['seconds_per_epoch']:9.3f} s/ep"


def _row(name, unit, run):
    o, t = run["ours"], run["torch"]
    load = max(o["load_before"][0], t["load_before"][0])
    same = "" if run["same_batches"] else "  BATCHES DIFFER"
    return (f"{name:8} {run['busy']:>4}  {_fmt_speed(unit, o):>15}  {_fmt_speed(unit, t):>15}"
            f"  {run['ratio_torch_over_ours']:10.2f}  {load:8.2f}  "
            f"{o['loss']:.4f} / {t['loss']:.4f}{same}")


HEADER = (f"{'workload':8} {'busy':>4}  {'unrolled':>15}  {'PyTorch':>15}  {'torch/ours':>10}"
          f"  {'load 1m':>8}  loss ours / torch")


def print_profile(name, prof):
    parts = prof["parts_seconds"]
    total = prof["epoch_seconds"]
    print(f"\n{name}: one epoch of unrolled, {total:.3f} s (load {prof['load_before'][0]:.2f})")
    for k in PROFILE_ORDER + [k for k in parts if k not in PROFILE_ORDER]:
        if k in parts:
            print(f"  {k:40} {parts[k]:8.3f} s  {100 * parts[k] / total:5.1f} %")
        elif k in PROFILE_ORDER:
            print(f"  {k:40} {'-':>8}")


PROFILE_ORDER = ["data (get_batch)", "embedding", "dropout", "recurrent: input projection",
                 "recurrent: forward loop", "recurrent: backward loop",
                 "recurrent: weight and input gradients", "dense + loss", "clip", "optimizer",
                 "trainer (the rest)"]


def markdown(out):
    """The run's table and profiles as Markdown (for benchmarks/RESULTS.md)."""
    th = out.get("threads", {})
    end = out.get("load_end", [float("nan")])[0]
    lines = [f"`{out['mode']}` run of {out['started']} UTC on {out['cpu_count']} cores, "
             f"checkout `{(out.get('git') or '?').split()[0]}`; load average at the start "
             f"{out['load_start'][0]:.2f}, at the end {end:.2f}; "
             f"PyTorch threads {th.get('torch', {}).get('torch_threads')}, unrolled BLAS "
             f"threads {[p.get('num_threads') for p in th.get('ours', {}).get('threadpools', [])]}"
             f" (numba {th.get('ours', {}).get('numba_threads')}).", "",
             "| workload | busy | unrolled | PyTorch | PyTorch time / ours | load 1 min "
             "(ours, torch) | final loss ours / torch |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in out["workloads"].items():
        if "runs" not in r:
            continue
        for run in r["runs"]:
            o, t = run["ours"], run["torch"]
            if r["unit"] == "chars/s":
                a, b = f"{o['chars_per_s']:,.0f} chars/s", f"{t['chars_per_s']:,.0f} chars/s"
            else:
                a, b = f"{o['seconds_per_epoch']:.3f} s", f"{t['seconds_per_epoch']:.3f} s"
            lines.append(f"| {name} | {run['busy']} | {a} | {b} | "
                         f"{run['ratio_torch_over_ours']:.2f} | {o['load_before'][0]:.1f}, "
                         f"{t['load_before'][0]:.1f} | {o['loss']:.4f} / {t['loss']:.4f} |")
    profs = {n: r["profile"] for n, r in out["workloads"].items() if "profile" in r}
    if profs:
        lines += ["", "Where one epoch of unrolled goes (seconds, % of the epoch; no busy "
                  "processes started):", "",
                  "| part | " + " | ".join(profs) + " |",
                  "|---|" + "---:|" * len(profs)]
        for part in PROFILE_ORDER:
            cells = []
            for p in profs.values():
                v = p["parts_seconds"].get(part)
                cells.append("–" if v is None else
                             f"{v:.3f} ({100 * v / p['epoch_seconds']:.0f} %)")
            lines.append(f"| {part} | " + " | ".join(cells) + " |")
        lines.append("| **epoch** | " + " | ".join(
            f"**{p['epoch_seconds']:.3f}** (load {p['load_before'][0]:.1f})"
            for p in profs.values()) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short measurements (minutes)")
    ap.add_argument("--smoke", action="store_true",
                    help="2 batches per workload on the bundled data (a test that it runs)")
    ap.add_argument("--busy", default=None,
                    help="comma-separated numbers of busy processes (default 0,1,3; smoke 0)")
    ap.add_argument("--workloads", default=",".join(WORKLOADS),
                    help=f"comma-separated, of {', '.join(WORKLOADS)}")
    ap.add_argument("--data-dir", default=str(SHARED),
                    help="directory holding tinyshakespeare/ and beijing-pm25/")
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "e2e.json"))
    ap.add_argument("--md", help="also write the table and profiles as Markdown here")
    ap.add_argument("--render", metavar="JSON",
                    help="print the Markdown of an earlier run's JSON and exit")
    ap.add_argument("--torch-threads", type=int, default=0,
                    help="PyTorch's threads (default 0: all cores, its default)")
    ap.add_argument("--worker", choices=("ours", "torch"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args)
    if args.render:
        sys.stdout.write(markdown(json.loads(Path(args.render).read_text(encoding="utf-8"))))
        return 0

    # no torch, no NumPy in this process: it stays single-threaded, so a signal reaches
    # the thread that waits for the workers
    import importlib.metadata
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        print("e2e: PyTorch is not installed; nothing to compare against (pip install torch)",
              file=sys.stderr)
        return 2
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    busy_text = args.busy if args.busy is not None else ("0" if args.smoke else "0,1,3")
    try:
        busy_modes = [int(b) for b in busy_text.split(",") if b.strip()]
    except ValueError:
        ap.error(f"--busy takes comma-separated integers, got {busy_text!r}")
    if not busy_modes or min(busy_modes) < 0:
        ap.error("--busy needs at least one number >= 0")
    names = [w.strip() for w in args.workloads.split(",") if w.strip()]
    unknown = [w for w in names if w not in WORKLOADS]
    if unknown:
        ap.error(f"unknown workload(s) {unknown}; choose from {', '.join(WORKLOADS)}")
    if args.data_dir != str(SHARED):
        d = Path(args.data_dir)
        WORKLOADS["charlm"]["options"]["data"] = str(d / "tinyshakespeare" / "input.txt")
        WORKLOADS["series"]["options"]["data"] = str(d / "beijing-pm25" / "pollution.csv")

    def stop(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, stop)

    out = {"mode": mode, "busy_modes": busy_modes, "tree": str(ROOT),
           "git": _git_head(), "python": platform.python_version(),
           "numpy": importlib.metadata.version("numpy"), "machine": platform.machine(),
           "cpu_count": os.cpu_count(), "load_start": os.getloadavg(),
           "started": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()), "workloads": {}}
    t0 = time.perf_counter()
    print(f"e2e ({mode}): {', '.join(names)}; busy processes {busy_modes}; "
          f"{os.cpu_count()} cores; load {out['load_start'][0]:.2f}")
    print(HEADER, flush=True)

    def log(line):
        print(line, flush=True)

    def write(final):
        if not args.json:
            return
        out["complete"] = final
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")

    workers, interrupted = {}, False
    try:
        for side in ("ours", "torch"):
            workers[side] = Worker(side, args.torch_threads)
        for name in names:
            out["workloads"][name] = run_workload(name, mode, busy_modes, workers, log)
            write(False)  # what is measured so far survives an interruption
    except KeyboardInterrupt:
        interrupted = True
        print("interrupted: the busy processes and workers are stopped"
              + (f"; the workloads done are in {args.json}" if args.json else ""),
              file=sys.stderr)
        return 130
    finally:
        for w in workers.values():
            w.close(force=interrupted)
    out["seconds"] = time.perf_counter() - t0
    out["load_end"] = os.getloadavg()
    first = next((r for r in out["workloads"].values() if "ours" in r), None)
    if first:
        th = first["ours"]["threads"]
        out["threads"] = {"ours": th, "torch": first["torch"]["threads"]}
        print(f"\nthreads: PyTorch {first['torch']['threads'].get('torch_threads')}; unrolled "
              f"after {first['ours']['setup_calls']}: BLAS "
              f"{[p.get('num_threads') for p in th.get('threadpools', [])]}, numba "
              f"{th.get('numba_threads')}")
    for name, r in out["workloads"].items():
        if "profile" in r:
            print_profile(name, r["profile"])
    print(f"\n{out['seconds']:.0f} s in all; load average at the end "
          f"{' '.join(f'{x:.2f}' for x in out['load_end'])}")
    write(True)
    if args.md:
        Path(args.md).write_text(markdown(out), encoding="utf-8")
    if args.json:
        print(f"wrote {args.json}")
    return 0


def _git_head():
    try:
        return subprocess.run(["git", "-C", str(ROOT), "log", "-1", "--format=%h %s"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


if __name__ == "__main__":
    sys.exit(main())
