"""Every engine switch in one place.

    import unrolled
    unrolled.settings.backend = "reference"          # for the rest of the process
    with unrolled.settings.override(block_steps="auto", threads=2):
        ...                                           # for a block only

Fields (the environment variable that sets each, read once when unrolled is imported):

``backend`` (``UNROLLED_BACKEND``)
    "auto" (default: the compiled loop where it can run, else the readable one),
    "reference" (the readable loop; "numpy" is the same), "numba" (the compiled CPU
    loop), "cupy" (the GPU loop, for CuPy arrays).
``compiled_loop`` (``UNROLLED_COMPILED_LOOP``, default True)
    False runs the readable loop where the compiled one would run (for comparisons).
``block_steps`` (``UNROLLED_BLOCK_STEPS``)
    steps per block of the sequence-sized products: None (the whole sequence), "auto"
    (K*B >= 128 rows) or an int; see :func:`unrolled.unroll.time_chunk`.
``cuda_graphs`` (``UNROLLED_CUDA_GRAPHS``, default True)
    record the GPU loop as CUDA graphs.
``max_bytes`` (``UNROLLED_MAX_BYTES``)
    refuse a full BPTT planned above this many bytes (None: 80 % of available RAM).
``threads`` (``UNROLLED_THREADS``, default: every core this process may run on)
    threads of the compiled loop (its parallel form over blocks of batch rows, see
    docs/performance.md) and, through :func:`unrolled.backend.limit_blas_threads` (the
    command line calls it), of BLAS's products over all steps. With several processes on
    one machine give each its share (``unrolled.distributed.init`` does, per MPI rank).
``scan`` (``UNROLLED_SCAN``, default "sequential")
    "parallel": cells whose state is a linear recurrence of their input (MinGRU, MinLSTM)
    run over all steps at once (:mod:`unrolled.scan`) instead of step by step.
``debug`` (``UNROLLED_DEBUG``)
    the command line shows the traceback behind an error message.

Which loop runs for a given layer, and why: :func:`unrolled.explain`.
"""
import contextlib
import os
from dataclasses import dataclass, field, fields

BACKENDS = ("auto", "reference", "numpy", "numba", "cupy")


def _bool(v):
    return str(v).strip().lower() not in ("0", "false", "no", "off", "")


def _block(v):
    if v is None:
        return None
    if isinstance(v, str):
        v = v.strip().lower()
        if v in ("", "none", "0"):
            return None
        if v == "auto":
            return "auto"
        v = int(v)
    if v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
        return v
    raise ValueError(f"block steps must be None, 'auto' or a positive int, got {v!r}")


def _backend(v):
    v = str(v).strip().lower()
    if v not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {v!r}")
    if v == "numba":
        import importlib.util

        if importlib.util.find_spec("numba") is None:
            raise ValueError("backend 'numba' needs the numba package: pip install numba, "
                             "or choose 'reference'")
    return v


def _max_bytes(v):
    if v is None or v == "":
        return None
    n = int(float(v))
    if n < 1:
        raise ValueError(f"max_bytes must be a positive number of bytes or None, got {v!r}")
    return n


def _scan(v):
    v = str(v).strip().lower()
    if v not in ("sequential", "parallel"):
        raise ValueError(f"scan must be 'sequential' or 'parallel', got {v!r}")
    return v


def cores():
    """The cores this process may run on (its CPU affinity, else the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _threads(v):
    if isinstance(v, str) and v.strip().lower() in ("auto", "all"):
        return cores()
    n = int(v)
    if n < 1:
        raise ValueError(f"threads must be a positive integer, got {v!r}")
    return n


_CHECK = {"backend": _backend, "compiled_loop": _bool, "block_steps": _block,
          "cuda_graphs": _bool, "max_bytes": _max_bytes, "threads": _threads,
          "debug": _bool, "scan": _scan}


@dataclass
class Settings:
    backend: str = "auto"
    compiled_loop: bool = True
    block_steps: object = None
    cuda_graphs: bool = True
    max_bytes: object = None
    threads: int = field(default_factory=cores)
    debug: bool = False
    scan: str = "sequential"

    def __setattr__(self, key, value):
        if key not in _CHECK:
            raise AttributeError(f"unrolled.settings has no {key!r}; its fields are "
                                 f"{', '.join(_CHECK)}")
        object.__setattr__(self, key, _CHECK[key](value))

    @contextlib.contextmanager
    def override(self, **changes):
        """``with settings.override(backend="reference"): ...``: the changes hold inside
        the block only."""
        old = {k: getattr(self, k) for k in changes}
        try:
            for k, v in changes.items():
                setattr(self, k, v)
            yield self
        finally:
            for k, v in old.items():
                object.__setattr__(self, k, v)

    @classmethod
    def from_environment(cls, env=None):
        env = os.environ if env is None else env
        s = cls()
        for f in fields(cls):
            v = env.get(f"UNROLLED_{f.name.upper()}")
            if v is not None and v.strip() != "":
                try:
                    setattr(s, f.name, v)
                except ValueError as e:
                    raise ValueError(f"UNROLLED_{f.name.upper()}={v!r}: {e}") from None
        return s


settings = Settings.from_environment()
