"""unrolled against PyTorch on the CPU, side by side in one run.

Each side runs in its own worker process; the cases are timed in interleaved rounds
(unrolled, PyTorch, PyTorch, unrolled, ... so neither always goes first) and the median
over rounds is reported. Both workers get the same thread count (``--threads``) for
their BLAS and for PyTorch's intra-op pool, fixed before NumPy or PyTorch loads; the BLAS
kernel in use is read with threadpoolctl and printed.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/speed.py
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/speed.py --quick

Workloads (float32, one layer, D = H): a training step is forward over T steps + a
squared-error loss on the last output + full BPTT + an SGD update; inference is the
forward over all T steps without a tape. Generation is batch-1 character sampling
(embedding -> LSTM -> dense -> softmax -> draw), in microseconds per token, against a
``torch.nn.LSTMCell`` loop. Memory is the peak of one training step in a fresh process.
Writes a markdown table (``--md``) and JSON (``--json``); never fails for a slow machine.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CELLS = ("lstm", "gru", "elman")


def _same_malloc():
    """Both sides keep freed heap blocks for reuse (unrolled's trainer and CLI do this,
    :func:`unrolled.backend.reuse_freed_memory`; it is applied to PyTorch's worker too, so
    that both run under the same C library settings)."""
    # the tree under test (``--base``), not this one: whatever imports ``unrolled`` first
    # fixes the package for the whole worker
    sys.path.insert(0, os.environ.get("UNROLLED_BENCH_TREE") or str(ROOT))
    from unrolled.backend import reuse_freed_memory

    return reuse_freed_memory()


def _pin_threads(n):
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)


# ----------------------------------------------------------------------------- workers
class UnrolledSide:
    name = "unrolled"

    def __init__(self, threads, backend):
        import numpy as np

        sys.path.insert(0, os.environ.get("UNROLLED_BENCH_TREE") or str(ROOT))
        from unrolled import kernels, settings

        self.np = np
        if backend:
            kernels.set_backend(backend)
        if "threads" in getattr(settings, "__dataclass_fields__", {}):
            settings.threads = threads  # the compiled loop's threads, as many as PyTorch's
        self.backend = kernels.get_backend()

    def versions(self):
        import numpy
        from threadpoolctl import threadpool_info

        info = [{k: d.get(k) for k in ("internal_api", "version", "architecture",
                                        "num_threads", "threading_layer")}
                for d in threadpool_info()]
        import unrolled

        v = {"numpy": numpy.__version__, "backend": self.backend, "blas": info,
             "unrolled": os.path.dirname(unrolled.__file__)}
        try:
            import numba

            v["numba"] = numba.__version__
        except ImportError:
            pass
        return v

    def setup(self, c):
        np = self.np
        from unrolled.layers import GRU, LSTM, Elman

        cls = {"lstm": LSTM, "gru": GRU, "elman": Elman}[c["cell"]]
        rng = np.random.default_rng(0)
        B, T, H = c["B"], c["T"], c["H"]
        if c["kind"] == "gen":
            return self._setup_gen(c)
        m = cls(H, H, return_sequences=False, seed=0)
        X = rng.standard_normal((B, T, H)).astype("float32")
        Y = rng.standard_normal((B, H)).astype("float32")
        if c["kind"] == "infer":
            return lambda: m.forward(X, keep_tape=False)
        lr = np.float32(1e-3)

        def train():
            out, _, cache = m.forward(X, training=True)
            g, _, _ = m.backward(cache, out - Y, need_input_grad=False)  # as PyTorch: X is data
            for name, p in m._params.items():  # SGD in place, no temporary (as torch's)
                for k, v in p.items():
                    gk = g[name][k]
                    gk *= lr
                    v -= gk
        return train

    def _setup_gen(self, c):
        from unrolled.generate import Generator
        from unrolled.layers import LSTM, Dense, Embedding

        V, H = c["V"], c["H"]
        emb, rnn, out = Embedding(V, H, seed=0), LSTM(H, H, seed=1), Dense(H, V, seed=2)
        gen = Generator(rnn, embedding=emb, output=out, batch=c["B"], seed=0)
        n = c["tokens"]
        return lambda: gen.sample(n, start=0, temperature=0.8)


class TorchSide:
    name = "torch"

    def __init__(self, threads, backend):
        import torch

        torch.set_num_threads(threads)
        self.torch = torch

    def versions(self):
        t = self.torch
        return {"torch": t.__version__, "threads": t.get_num_threads(),
                "mkldnn": t.backends.mkldnn.is_available()}

    def setup(self, c):
        torch = self.torch
        nn = torch.nn
        torch.manual_seed(0)
        B, T, H = c["B"], c["T"], c["H"]
        if c["kind"] == "gen":
            return self._setup_gen(c)
        cls = {"lstm": nn.LSTM, "gru": nn.GRU, "elman": nn.RNN}[c["cell"]]
        m = cls(H, H, batch_first=True)
        X = torch.randn(B, T, H)
        Y = torch.randn(B, H)
        if c["kind"] == "infer":
            def infer():
                with torch.inference_mode():
                    m(X)
            return infer
        params = list(m.parameters())

        def train():
            out, _ = m(X)
            loss = 0.5 * ((out[:, -1] - Y) ** 2).sum()
            loss.backward()
            with torch.no_grad():
                for p in params:
                    p.add_(p.grad, alpha=-1e-3)  # in place, as torch.optim.SGD
                    p.grad = None
        return train

    def _setup_gen(self, c):
        torch = self.torch
        nn = torch.nn
        V, H, B, n = c["V"], c["H"], c["B"], c["tokens"]
        emb, cell, lin = nn.Embedding(V, H), nn.LSTMCell(H, H), nn.Linear(H, V)
        gen = torch.Generator().manual_seed(0)

        def sample():
            with torch.inference_mode():
                h = torch.zeros(B, H)
                s = torch.zeros(B, H)
                idx = torch.zeros(B, dtype=torch.long)
                for _ in range(n):
                    h, s = cell(emb(idx), (h, s))
                    p = torch.softmax(lin(h) / 0.8, -1)
                    idx = torch.multinomial(p, 1, generator=gen)[:, 0]
        return sample


def worker(side, threads, backend):
    """Serve timing requests (one JSON object per line) on stdin/stdout."""
    _same_malloc()
    impl = {"unrolled": UnrolledSide, "torch": TorchSide}[side](threads, backend)
    from threadpoolctl import threadpool_limits

    threadpool_limits(threads)
    fns = {}
    out = sys.stdout
    for line in sys.stdin:
        req = json.loads(line)
        if req.get("versions"):
            out.write(json.dumps(impl.versions()) + "\n")
            out.flush()
            continue
        c = req["case"]
        key = json.dumps(c, sort_keys=True)
        if key not in fns:
            fns[key] = impl.setup(c)
            fns[key]()  # warm-up (and compilation, where there is any)
        fn = fns[key]
        times = []
        t_end = time.perf_counter() + req["min_time"]
        while True:  # repeat for at least min_time; report the median repetition
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
            if time.perf_counter() >= t_end and len(times) >= req.get("min_reps", 1):
                break
        times.sort()
        out.write(json.dumps({"t": times[len(times) // 2], "reps": len(times)}) + "\n")
        out.flush()


# ------------------------------------------------------------------------------ memory
def memory_probe(side, cell, H, B, T, backend):
    """Peak bytes of one training step in this fresh process (printed as JSON)."""
    import resource

    threads = 1
    impl = {"unrolled": UnrolledSide, "torch": TorchSide}[side](threads, backend)
    c = {"kind": "train", "cell": cell, "H": H, "B": B, "T": T}
    step = impl.setup(c)
    res = {}
    if side == "unrolled":
        import tracemalloc

        step()  # warm-up: compile kernels, first allocations
        from unrolled.layers import GRU, LSTM, Elman
        np = impl.np
        cls = {"lstm": LSTM, "gru": GRU, "elman": Elman}[cell]
        m = cls(H, H, return_sequences=False, seed=0)
        X = np.random.default_rng(0).standard_normal((B, T, H)).astype("float32")
        out, _, cache = m.forward(X, training=True)
        tp = cache["tapes"]["l0"]
        tape = sum(a.nbytes for a in tp.states) + sum(a.nbytes for a in tp.tape.values())
        params = sum(v.nbytes for p in m._params.values() for v in p.values())
        del out, cache, tp
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        step()
        peak = tracemalloc.get_traced_memory()[1] - base
        tracemalloc.stop()
        res.update(tape=tape, params=params, grads=params, peak_step=peak,
                   needed=tape + params + params, peak_total=peak + params)
    else:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        step()
        res["rss_step"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    print(json.dumps(res))


def measure_memory(cells, sizes, B, T, backend):
    rows = []
    for cell in cells:
        for H in sizes:
            r = {"cell": cell, "H": H, "B": B, "T": T}
            for side in ("unrolled", "unrolled_blocks", "torch"):
                env = dict(os.environ)
                if side == "unrolled_blocks":  # the products over blocks of steps
                    env["UNROLLED_BLOCK_STEPS"] = "auto"
                cmd = [sys.executable, __file__, "--memory-probe", side.split("_")[0], cell,
                       str(H), str(B), str(T)] + (["--backend", backend] if backend else [])
                out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
                if out.returncode != 0:
                    r[side] = {"error": out.stderr.strip().splitlines()[-1:]}
                    continue
                r[side] = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(r)
            print(_mem_line(r), flush=True)
    return rows


def _mem_line(r):
    u, t = r.get("unrolled", {}), r.get("torch", {})
    if "peak_total" not in u:
        return f"{r['cell']} H={r['H']}: {u} {t}"
    return (f"{r['cell']:5s} H={r['H']:<4d} peak {u['peak_total'] / 2**20:7.1f} MiB  needed "
            f"{u['needed'] / 2**20:7.1f} MiB  ratio {u['peak_total'] / u['needed']:.2f}  "
            f"(torch step adds {t.get('rss_step', 0) / 2**20:.1f} MiB RSS)")


# --------------------------------------------------------------------------- the runner
def grid(quick):
    if quick:
        main = [(c, k, H, 32, 100) for c in CELLS for k in ("train", "infer") for H in (64, 256)]
        extra = [("lstm", "train", 128, 1, 300), ("lstm", "train", 128, 256, 20)]
    else:
        main = [(c, k, H, 32, 100) for c in CELLS for k in ("train", "infer")
                for H in (64, 128, 256, 512)]
        extra = [(c, k, H, B, T) for (B, T) in ((1, 1000), (256, 50)) for c in CELLS
                 for k in ("train", "infer") for H in (64, 256)]
    cases = [{"cell": c, "kind": k, "H": H, "B": B, "T": T} for c, k, H, B, T in main + extra]
    gens = [{"cell": "lstm", "kind": "gen", "H": H, "B": B, "V": 65, "T": 0,
             "tokens": 200 if quick else 500}
            for H, B in ((128, 1), (256, 1), (512, 1), (256, 32))]
    if quick:
        gens = gens[1:2]
    return cases + gens


class Worker:
    def __init__(self, side, threads, backend, tree=None):
        cmd = [sys.executable, __file__, "--worker", side, "--threads", str(threads)]
        if backend:
            cmd += ["--backend", backend]
        env = dict(os.environ)
        if tree:  # the same side from another checkout (before/after, side by side)
            env["UNROLLED_BENCH_TREE"] = str(Path(tree).resolve())
        self.p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  text=True, env=env)

    def ask(self, req):
        self.p.stdin.write(json.dumps(req) + "\n")
        self.p.stdin.flush()
        line = self.p.stdout.readline()
        if not line:
            raise RuntimeError("a benchmark worker died; run it alone to see why")
        return json.loads(line)

    def close(self):
        self.p.stdin.close()
        self.p.wait()


def _label(c):
    if c["kind"] == "gen":
        return f"generate B={c['B']}"
    return c["kind"]


def run(args):
    cases = grid(args.quick)
    if args.only:
        cases = [c for c in cases if c["cell"] in args.only.split(",")]
    sides = ("unrolled", "torch") + (("base",) if args.base else ())
    workers = {s: Worker(s.replace("base", "unrolled"), args.threads, args.backend,
                         args.base if s == "base" else None) for s in sides}
    versions = {s: w.ask({"versions": True}) for s, w in workers.items()}
    print(json.dumps(versions, indent=1), flush=True)
    busy = _busy(args.busy)
    times = {i: {s: [] for s in sides} for i in range(len(cases))}
    load = []
    for r in range(args.rounds):
        order = sides if r % 2 == 0 else sides[::-1]
        for i, c in enumerate(cases):
            for s in order:
                times[i][s].append(workers[s].ask({"case": c, "min_time": args.min_time})["t"])
        load.append(round(os.getloadavg()[0], 2))
        print(f"round {r + 1}/{args.rounds} done (load average {load[-1]})", flush=True)
    for w in workers.values():
        w.close()
    for b in busy:
        b.kill()
    rows = []
    for i, c in enumerate(cases):
        u, t = (sorted(times[i][s])[len(times[i][s]) // 2] for s in ("unrolled", "torch"))
        row = {**c, "unrolled_s": u, "torch_s": t, "ratio": t / u,
               "rounds": {s: times[i][s] for s in sides}}
        if args.base:
            row["base_s"] = sorted(times[i]["base"])[len(times[i]["base"]) // 2]
            row["ratio_base"] = t / row["base_s"]
        if c["kind"] == "gen":
            row["unrolled_us_per_token"] = u / c["tokens"] * 1e6
            row["torch_us_per_token"] = t / c["tokens"] * 1e6
        rows.append(row)
    mem = [] if args.no_memory else measure_memory(
        CELLS, (256,) if args.quick else (256, 512), 32, 100, args.backend)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": f"{platform.processor() or platform.machine()}, {_cpu_name()}, "
                       f"{os.cpu_count()} CPUs",
            "python": platform.python_version(), "threads": args.threads,
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
            "load_average_per_round": load, "busy_processes": args.busy,
            "base_tree": args.base,
            "versions": versions, "rounds": args.rounds,
            "env_unset": [v for v in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
                          if v not in os.environ]}
    md = to_markdown(rows, mem, meta)
    print(md)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows, "memory": mem},
                                              indent=1))
    if args.md:
        Path(args.md).write_text(md)


def _busy(n):
    """``n`` processes spinning on the CPU beside the benchmark (other work's stand-in)."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def _cpu_name():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def to_markdown(rows, mem, meta):
    out = [(f"Measured {meta['date']} on {meta['machine']}; Python {meta['python']}, "
           f"{meta['threads']} threads each side, median of {meta['rounds']} interleaved "
           f"rounds; load average at the end {meta['load_average_at_end']} (other work shared "
           "the machine). Ratio = PyTorch time / unrolled time (> 1: unrolled is faster)."
           + (f" {meta['busy_processes']} busy process(es) ran beside both sides."
              if meta.get("busy_processes") else "")
           + (f" 'before': the checkout {meta['base_tree']}, in the same rounds."
              if meta.get("base_tree") else "")), "",
           "| cell | work | B | T | H | unrolled ms | PyTorch ms | ratio |"
           + (" before ms | ratio before |" if meta.get("base_tree") else ""),
           "|---|---|---:|---:|---:|---:|---:|---:|"
           + ("---:|---:|" if meta.get("base_tree") else "")]
    for r in rows:
        if r["kind"] == "gen":
            continue
        out.append(f"| {r['cell']} | {r['kind']} | {r['B']} | {r['T']} | {r['H']} | "
                   f"{r['unrolled_s'] * 1e3:.2f} | {r['torch_s'] * 1e3:.2f} | "
                   f"{r['ratio']:.2f} |" + (f" {r['base_s'] * 1e3:.2f} | {r['ratio_base']:.2f} |"
                                           if "base_s" in r else ""))
    gens = [r for r in rows if r["kind"] == "gen"]
    if gens:
        out += ["", ("Generation (embedding -> LSTM -> dense -> softmax -> sample, V = 65), "
                "µs per token:"), "",
                "| B | H | unrolled µs/token | torch LSTMCell loop µs/token | ratio |",
                "|---:|---:|---:|---:|---:|"]
        for r in gens:
            out.append(f"| {r['B']} | {r['H']} | {r['unrolled_us_per_token']:.1f} | "
                       f"{r['torch_us_per_token']:.1f} | {r['ratio']:.2f} |")
    if mem:
        out += ["", ("Peak memory of one training step (B = 32, T = 100, float32): unrolled's "
                "peak (tracemalloc, parameters included) against what BPTT needs (tape + "
                "parameters + gradients); PyTorch's growth of peak RSS in one step."), "",
                ("| cell | H | unrolled peak MiB | needed MiB | ratio | ratio, blocks of steps "
                "| PyTorch step RSS MiB |"),
                "|---|---:|---:|---:|---:|---:|---:|"]
        for r in mem:
            u, t = r.get("unrolled", {}), r.get("torch", {})
            if "peak_total" not in u:
                continue
            ub = r.get("unrolled_blocks", {})
            rb = ub["peak_total"] / ub["needed"] if "peak_total" in ub else float("nan")
            out.append(f"| {r['cell']} | {r['H']} | {u['peak_total'] / 2**20:.1f} | "
                       f"{u['needed'] / 2**20:.1f} | {u['peak_total'] / u['needed']:.2f} | "
                       f"{rb:.2f} | {t.get('rss_step', float('nan')) / 2**20:.1f} |")
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a small grid (a few minutes)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--min-time", type=float, default=None,
                    help="seconds each side repeats a case per round (default 0.3, quick 0.15)")
    ap.add_argument("--backend", default=None, help="unrolled backend: numpy, numba, reference")
    ap.add_argument("--only", default=None, help="comma-separated cells, e.g. lstm,gru")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--base", default=None,
                    help="another checkout of unrolled timed in the same rounds (before/after)")
    ap.add_argument("--busy", type=int, default=0,
                    help="processes spinning on the CPU beside the benchmark")
    ap.add_argument("--json", default=None)
    ap.add_argument("--md", default=None)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--memory-probe", nargs=5, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rounds is None:
        args.rounds = 3 if args.quick else 5
    if args.min_time is None:
        args.min_time = 0.15 if args.quick else 0.3
    if args.worker:
        worker(args.worker, args.threads, args.backend)
    elif args.memory_probe:
        side, cell, H, B, T = args.memory_probe
        memory_probe(side, cell, int(H), int(B), int(T), args.backend)
    else:
        run(args)


if __name__ == "__main__":
    # thread counts must be fixed before NumPy or PyTorch loads
    _threads = 2
    for _i, _a in enumerate(sys.argv):
        if _a == "--threads" and _i + 1 < len(sys.argv):
            _threads = int(sys.argv[_i + 1])
    if "--memory-probe" in sys.argv:
        _threads = 1
    _pin_threads(_threads)
    main()
