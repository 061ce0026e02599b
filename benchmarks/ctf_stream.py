"""Stream a large generated CTF file through `read_ctf`: throughput and peak memory.

Generates a CTF file of the requested size in a temporary folder (sequences of 5-50
steps, like slot filling: a dense 20-dim feature per word, a sparse one-hot slot label
per word, one sparse intent label per sequence), reads it twice with `read_ctf`:

1. timed: sequences, rows (samples, all streams) and MB per second; the RSS of the
   process after its imports and its peak RSS while reading (Linux /proc);
2. under tracemalloc (slower): the peak of Python allocations while streaming, which
   shows memory bounded by one sequence, not by the file.

Each pass runs in a fresh child process, so its peak RSS is the reader's own; wall time
and CPU time are both reported (CPU time is steadier on a shared machine).

Prints a table, writes JSON (``--json``) and deletes the file.

    python benchmarks/ctf_stream.py --size-mb 1024 --json ctf_stream.json
"""

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from unrolled.data.ctf import read_ctf

STREAMS = {"x": (20, "dense"), "slot": (128, "sparse"), "intent": (26, "sparse")}


def generate(path, size_bytes, seed=0):
    """Write a CTF file of at least ``size_bytes`` bytes; return (sequences, rows)."""
    rng = np.random.default_rng(seed)
    # a pool of preformatted dense rows keeps generation fast; the reader sees varied text
    pool = [" ".join(f"{v:.5g}" for v in rng.standard_normal(20)) for _ in range(4096)]
    written = seqs = rows = 0
    with open(path, "w", encoding="utf-8") as f:
        while written < size_bytes:
            chunk = []
            for _ in range(256):
                T = int(rng.integers(5, 51))
                rows_x = rng.integers(0, len(pool), T)
                slots = rng.integers(0, 128, T)
                intent = int(rng.integers(0, 26))
                for t in range(T):
                    line = f"{seqs}\t|x {pool[rows_x[t]]}\t|slot {slots[t]}:1"
                    if t == 0:
                        line += f"\t|intent {intent}:1\t|# utterance {seqs}"
                    chunk.append(line + "\n")
                seqs += 1
                rows += 2 * T + 1
            text = "".join(chunk)
            f.write(text)
            written += len(text)
    return seqs, rows


def stream(path):
    """Read every sequence; return (sequences, rows)."""
    seqs = rows = 0
    for rec in read_ctf(path, STREAMS):
        seqs += 1
        rows += sum(len(a) for a in rec.values())
    return seqs, rows


def rss_mb(field):
    """VmRSS (now) or VmHWM (peak) of this process in MiB, from /proc (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak_rss():
    """Reset the peak RSS to the current RSS (Linux >= 4.0); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def read_pass(path, trace):
    """One pass in this (fresh) process: counts, times and memory as a dict."""
    # the package's imports set a high-water mark of their own: start the peak afresh
    reset = reset_peak_rss()
    rss_start = rss_mb("VmRSS")
    if trace:
        tracemalloc.start()
    t0, c0 = time.perf_counter(), time.process_time()
    seqs, rows = stream(path)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    out = {"sequences": seqs, "rows": rows, "wall_s": wall, "cpu_s": cpu,
           "rss_start_mb": rss_start, "peak_rss_mb": rss_mb("VmHWM"),
           "peak_rss_reset": reset,
           "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if trace:
        out["tracemalloc_peak_mb"] = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
    return out


def run_child(path, trace):
    """Run read_pass in a child process, so its peak RSS is the reader's alone."""
    cmd = [sys.executable, __file__, "--read", path] + (["--trace"] if trace else [])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=float, default=1024, help="file size in MiB")
    ap.add_argument("--json", default="ctf_stream.json", help="where to write results")
    ap.add_argument("--no-tracemalloc", action="store_true",
                    help="skip the (slower) tracemalloc pass")
    ap.add_argument("--dir", default=None, help="folder for the temporary file")
    ap.add_argument("--read", default=None, help=argparse.SUPPRESS)  # child mode
    ap.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.read:
        print(json.dumps(read_pass(args.read, args.trace)))
        return None

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = os.path.join(tmp, "bench.ctf")
        t0 = time.perf_counter()
        gen_seqs, gen_rows = generate(path, int(args.size_mb * 2**20))
        t_gen = time.perf_counter() - t0
        size = os.path.getsize(path)
        timed = run_child(path, trace=False)
        if (timed["sequences"], timed["rows"]) != (gen_seqs, gen_rows):
            raise RuntimeError(f"read back {timed['sequences']} sequences / "
                               f"{timed['rows']} rows, wrote {gen_seqs} / {gen_rows}")
        traced = None if args.no_tracemalloc else run_child(path, trace=True)
    # the temporary folder and the file are deleted here

    mb = size / 2**20
    res = {
        "file_mb": mb,
        "sequences": gen_seqs,
        "rows": gen_rows,
        "generate_s": t_gen,
        "read_wall_s": timed["wall_s"],
        "read_cpu_s": timed["cpu_s"],
        "rows_per_s": gen_rows / timed["wall_s"],
        "rows_per_cpu_s": gen_rows / timed["cpu_s"],
        "mb_per_s": mb / timed["wall_s"],
        "reader_rss_before_read_mb": timed["rss_start_mb"],
        "reader_peak_rss_mb": timed["peak_rss_mb"],
        "reader_peak_rss_counts_from_before_read": timed["peak_rss_reset"],
        "reader_ru_maxrss_mb": timed["ru_maxrss_mb"],
        "tracemalloc_peak_mb": traced and traced["tracemalloc_peak_mb"],
        "tracemalloc_pass_wall_s": traced and traced["wall_s"],
        "python": platform.python_version(),
        "numpy": np.__version__,
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
    }
    print(f"{'file':<34}{mb:>12.1f} MiB (generated in {t_gen:.0f} s)")
    print(f"{'sequences / rows':<34}{gen_seqs:>12,d} / {gen_rows:,d}")
    print(f"{'read time, wall / cpu':<34}{timed['wall_s']:>12.1f} / {timed['cpu_s']:.1f} s")
    print(f"{'rows/s, wall / cpu':<34}{res['rows_per_s']:>12,.0f} / {res['rows_per_cpu_s']:,.0f}")
    print(f"{'throughput (wall)':<34}{res['mb_per_s']:>12.1f} MiB/s")
    print(f"{'reader RSS before read / peak':<34}{timed['rss_start_mb']:>12.1f} / "
          f"{timed['peak_rss_mb']:.1f} MiB")
    if traced:
        print(f"{'tracemalloc peak while reading':<34}{traced['tracemalloc_peak_mb']:>12.2f} MiB"
              f"  (pass took {traced['wall_s']:.0f} s)")
    with open(args.json, "w") as f:
        json.dump(res, f, indent=2)
    print(f"wrote {args.json}")
    return res


if __name__ == "__main__":
    main()
