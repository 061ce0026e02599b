"""Data-parallel training over the ranks of an MPI job: N ranks compute what one process
computes.

Launch any training under ``mpiexec`` (or ``srun``) and every rank runs the same program::

    mpiexec -n 4 unrolled train names --epochs 6

Every rank builds the same task, model, learner and generators from the same seed, and
draws the same *global* batch of each step (shuffling and bucketing are global). Each
rank takes its own contiguous slice of the batch's records (of its streams, for the
stateful ``text`` task), runs forward, loss and BPTT on it, and the ranks add their
gradients, loss sums and counts in one in-place ``Allreduce`` over one flat buffer. The
sum is divided by the *global* count of records, steps or tokens that the loss averages
over, so every rank then makes the update one process makes on the whole batch: the
same clipping, the same learner step, the same weights. Dropout masks are drawn for the
whole batch from the layer's generator, identical on every rank, and each rank keeps the
rows of its slice, so the masks too are those of one process.

Rank 0 writes the checkpoints, the logs, the progress bar and the reports. A checkpoint
holds the global state (the carried recurrent state of every stream is gathered), so a
run saved with N ranks resumes with any M. The parameters are broadcast from rank 0 at
the start and compared by checksum every ``check_every`` steps. An uncaught exception on
any rank aborts the whole job (``MPI_Abort``) rather than leaving the others waiting.

Everything works without mpi4py or outside ``mpiexec``: :func:`init` then describes a
job of one rank and every collective is the identity. See ``docs/distributed.md``.
"""
import contextlib
import copy
import dataclasses
import math
import os
import sys
import time
import traceback
import zlib

import numpy as np

from .train import Trainer
from .tree import tree_leaves, tree_map

__all__ = ["Context", "DistributedTrainer", "allreduce_tree", "broadcast_tree", "check_same",
           "command", "context", "distributed_class", "init", "launched", "record_slice",
           "report", "split_evaluation"]

# the job's size as the launchers say it: Hydra (MPICH, Intel MPI), Open MPI, MVAPICH
_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "PMIX_SIZE",
              "MPI_LOCALNRANKS")


def launched():
    """True when this process is one rank of a job of several (started by ``mpiexec``,
    ``mpirun`` or ``srun`` with MPI), judged from the launcher's environment variables;
    ``UNROLLED_DISTRIBUTED=0`` says False, ``1`` True."""
    force = os.environ.get("UNROLLED_DISTRIBUTED", "")
    if force in ("0", "1"):
        return force == "1"
    sizes = [os.environ.get(var, "1") for var in _SIZE_VARS]
    # srun --mpi=pmix / pmi2 starts the tasks itself and says the size as Slurm's
    if any(k.startswith(("PMIX_", "PMI_")) for k in os.environ):
        sizes.append(os.environ.get("SLURM_NTASKS", "1"))
    return any(v.isdigit() and int(v) > 1 for v in sizes)


@dataclasses.dataclass
class Context:
    """Where this process stands in the job.

    Attributes
    ----------
    rank, size : this rank and the number of ranks (0 and 1 without MPI).
    comm : the mpi4py communicator, or None for a job of one rank.
    local_size : ranks on this machine (they share its cores).
    threads : threads each rank uses for BLAS and numba.
    """

    rank: int = 0
    size: int = 1
    comm: object = None
    local_size: int = 1
    threads: int = 1

    @property
    def root(self):
        """True on rank 0, the rank that writes files and prints."""
        return self.rank == 0

    def abort(self, code=1):
        """End the whole job now with exit status ``code`` (every rank, every machine)."""
        if self.comm is not None and self.size > 1:
            # MPI_Abort kills the launcher's output forwarding with the job: give it a
            # moment to pass on what this rank just wrote (the error message)
            for f in (sys.stdout, sys.stderr):
                try:
                    f.flush()
                except (OSError, ValueError):
                    pass
            time.sleep(0.5)
            self.comm.Abort(int(code))
        sys.exit(code)


_context = []


def _cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def init(comm=None, threads=None, abort_on_error=True):
    """Join the MPI job (once per process) and return its :class:`Context`.

    Parameters
    ----------
    comm : an mpi4py communicator (default ``MPI.COMM_WORLD``).
    threads : threads per rank for BLAS and numba; default ``UNROLLED_THREADS`` if set,
        else the machine's cores divided by the ranks on it (never oversubscribed).
    abort_on_error : install a ``sys.excepthook`` that prints the traceback with the rank
        and aborts the whole job, so that one failing rank never leaves the others
        waiting in a collective.

    Without mpi4py, or in a process not started by an MPI launcher, the context is that
    of one rank (``size`` 1) and nothing is imported.
    """
    if _context:
        return _context[0]
    ctx = Context()
    if comm is None and launched():
        try:
            from mpi4py import MPI
        except ImportError:
            raise RuntimeError("this process was started by an MPI launcher but mpi4py is "
                               "not installed; pip install 'unrolled[mpi]'") from None
        comm = MPI.COMM_WORLD
    if comm is not None:
        from mpi4py import MPI

        ctx.comm, ctx.rank, ctx.size = comm, comm.Get_rank(), comm.Get_size()
        node = comm.Split_type(MPI.COMM_TYPE_SHARED)
        ctx.local_size = node.Get_size()
        node.Free()
    env = os.environ.get("UNROLLED_THREADS")
    ctx.threads = int(threads or env or max(1, _cores() // ctx.local_size))
    if ctx.size > 1 or threads:  # one rank alone keeps the process's own setting
        _set_threads(ctx.threads)
    if abort_on_error and ctx.size > 1:
        _install_excepthook(ctx)
    _context.append(ctx)
    return ctx


def context():
    """The context of :func:`init`, or that of one rank if it was never called."""
    return _context[0] if _context else Context()


def _set_threads(n):
    from .settings import settings

    settings.threads = n  # the compiled loop's threads
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(n)
    except ImportError:
        pass
    try:
        import numba

        numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))
    except (ImportError, ValueError):
        pass


def _install_excepthook(ctx):
    previous = sys.excepthook

    def hook(kind, value, tb):
        sys.stderr.write(f"rank {ctx.rank} of {ctx.size} failed; aborting the job\n")
        previous(kind, value, tb)
        sys.stderr.flush()
        ctx.abort(1)

    sys.excepthook = hook


# -------------------------------------------------------------------------- collectives

def _leaves(tree):
    return [x for x in tree_leaves(tree) if x is not None]


def allreduce_tree(tree, scalars=(), ctx=None):
    """Sum a tree of arrays, and a few numbers, over every rank.

    The leaves and the numbers are packed into one flat contiguous buffer of the leaves'
    dtype, reduced by one in-place ``Allreduce``, and unpacked: the arrays returned are
    views of that buffer. None leaves stay None.

    Returns ``(summed tree, list of summed numbers)``; with one rank, the tree itself.
    """
    ctx = ctx or context()
    scalars = [float(v) for v in scalars]
    if ctx.size == 1:
        return tree, scalars
    leaves = _leaves(tree)
    dtype = np.result_type(*leaves) if leaves else np.float64
    n = sum(x.size for x in leaves)
    buf = np.empty(n + len(scalars), dtype=dtype)
    i = 0
    for x in leaves:
        buf[i:i + x.size] = x.ravel()
        i += x.size
    buf[n:] = scalars
    from mpi4py import MPI

    ctx.comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
    pos = [0]

    def take(x):
        if x is None:
            return None
        out = buf[pos[0]:pos[0] + x.size].reshape(x.shape)
        pos[0] += x.size
        return out

    return tree_map(take, tree), [float(v) for v in buf[n:]]


def broadcast_tree(tree, root=0, ctx=None):
    """Overwrite every leaf of ``tree`` (in place) with rank ``root``'s values: one
    ``Bcast`` of one flat buffer. Returns ``tree``."""
    ctx = ctx or context()
    if ctx.size == 1:
        return tree
    leaves = _leaves(tree)
    if not leaves:
        return tree
    dtype = np.result_type(*leaves)
    buf = np.concatenate([x.ravel().astype(dtype, copy=False) for x in leaves])
    ctx.comm.Bcast(buf, root=root)
    i = 0
    for x in leaves:
        np.copyto(x, buf[i:i + x.size].reshape(x.shape))
        i += x.size
    return tree


def checksum(tree):
    """A CRC-32 of the bytes of every leaf of ``tree``, in order."""
    c = 0
    for x in _leaves(tree):
        c = zlib.crc32(np.ascontiguousarray(x).view(np.uint8), c)
    return c


def check_same(tree, what="the parameters", ctx=None):
    """Raise RuntimeError on every rank unless ``tree`` is bit for bit the same on all."""
    ctx = ctx or context()
    if ctx.size == 1:
        return
    sums = ctx.comm.allgather(checksum(tree))
    if len(set(sums)) > 1:
        odd = [r for r, s in enumerate(sums) if s != sums[0]]
        raise RuntimeError(f"{what} differ between ranks (ranks {odd} differ from rank 0); "
                           "the ranks must run the same program on the same data")


# -------------------------------------------------------------------------- batches

def record_slice(n, ctx=None):
    """``(lo, hi)``: the records ``lo:hi`` of a batch of ``n`` that this rank takes
    (contiguous blocks, sizes differing by at most one; the last rank is never empty)."""
    ctx = ctx or context()
    return n * ctx.rank // ctx.size, n * (ctx.rank + 1) // ctx.size


def slice_batch(batch, lo, hi):
    """The records ``lo:hi`` of a :class:`unrolled.tasks.base.Batch` (every array whose
    first axis holds the records is cut; ``size`` becomes ``hi - lo``)."""
    B = batch.size

    def cut(a, name):
        if a is None:
            return None
        if getattr(a, "shape", ())[:1] != (B,):
            raise ValueError(f"cannot split the batch over ranks: its {name} has no "
                             f"first axis of its {B} records")
        return a[lo:hi]

    return dataclasses.replace(batch, X=cut(batch.X, "X"), Y=cut(batch.Y, "Y"),
                               mask=cut(batch.mask, "mask"),
                               loss_mask=cut(batch.loss_mask, "loss_mask"), size=hi - lo)


class _SlicedGenerator:
    """A layer's random generator that draws each array for the whole batch and hands
    back the rows of this rank's records, so the draws (and the generator's state) are
    those of one process."""

    def __init__(self, gen, axis, full, lo, hi):
        self._gen, self._axis, self._full, self._lo, self._hi = gen, axis, full, lo, hi

    def random(self, size=None, dtype=np.float64, out=None):
        shape = list(np.atleast_1d(size)) if size is not None else []
        local = self._hi - self._lo
        axes = [a for a, s in enumerate(shape) if s == local]
        if not axes:
            raise ValueError(f"a random draw of shape {tuple(shape)} has no axis of the "
                             f"rank's {local} records")
        ax = self._axis if self._axis in axes else axes[0]
        shape[ax] = self._full
        full = self._gen.random(tuple(shape), dtype=dtype)
        return full[(slice(None),) * ax + (slice(self._lo, self._hi),)]

    def __getattr__(self, name):
        return getattr(self._gen, name)


def _batch_axis(layer):
    """The axis of the records in the arrays a layer draws masks for: 0 for inputs
    (B, T, D) or (B, D), 1 for the time-major outputs (T, B, H) of recurrent layers."""
    from .layers import Recurrent

    return 1 if isinstance(layer, Recurrent) else 0


def _loss_parts(loss):
    """A copy of ``loss`` that sums instead of averaging, and a list that receives the
    count (or weight sum) each call would have divided by."""
    if getattr(loss, "reduction", None) != "mean" or not hasattr(loss, "_scale"):
        return None, None
    summed = copy.copy(loss)
    summed.reduction = "sum"
    counts = []

    def scale(n):
        counts.append(float(n))
        return 1.0

    summed._scale = scale
    return summed, counts


# -------------------------------------------------------------------------- validation

@contextlib.contextmanager
def split_evaluation(task, ctx=None):
    """Within the block, ``task.evaluate`` (and what uses it, such as ``task.report``)
    splits its work over the ranks and adds up the sums; every rank must call it.

    - ``names``, ``digits`` (many-to-one classification): each rank computes the logits
      of some of the evaluation batches; the logits are added up, and the task scores
      them as one process does.
    - ``text``: each rank reads some of the evaluation streams (the same stretches of
      text, with the state carried the same way, as in one process); the loss and
      accuracy sums are added up.
    - other tasks: unchanged (every rank evaluates everything, with the same result).
    """
    from .tasks.base import SequenceClassification as SC
    from .tasks.text import TextTask

    ctx = ctx or context()
    patch = {}
    if ctx.size > 1:
        if (isinstance(task, SC) and type(task).evaluate is SC.evaluate
                and type(task).logits is SC.logits):
            patch["logits"] = lambda model, split, batch_size=256: _split_logits(
                task, model, split, batch_size, ctx)
        elif isinstance(task, TextTask) and type(task).evaluate is TextTask.evaluate:
            patch["evaluate"] = lambda model, split: _split_stream_metrics(task, model, split,
                                                                           ctx)
    for name, fn in patch.items():
        setattr(task, name, fn)
    try:
        yield task
    finally:
        for name in patch:
            delattr(task, name)


def _split_logits(task, model, split, batch_size, ctx):
    from mpi4py import MPI

    from .data import bucket_batches

    out = np.zeros((len(task.records[split]), len(task.classes)), dtype=np.float64)
    batches = bucket_batches(task._lengths(split), batch_size, shuffle=False)
    for idx in batches[ctx.rank::ctx.size]:  # the batches of one process, dealt out
        b = task.get_batch(split, idx)
        out[idx] = model(b.X, mask=b.mask)
    ctx.comm.Allreduce(MPI.IN_PLACE, out, op=MPI.SUM)
    return out


def _split_stream_metrics(task, model, split, ctx):
    from .tasks.text import TextTask, stream_loss

    ids = np.asarray(task.splits.get(split, ()))
    S = max(1, min(int(task.config["eval_streams"]), (len(ids) - 1) // 2))
    L = (len(ids) - 1) // S  # steps per stream, as stream_batches cuts them
    if split not in task.splits or L < 2 or S < ctx.size:
        return TextTask.evaluate(task, model, split)
    lo, hi = record_slice(S, ctx)
    m = stream_loss(model, ids[lo * L:hi * L + 1], hi - lo)
    _, (total, correct, count) = allreduce_tree(
        {}, (m["loss"] * m["chars"], m["accuracy"] * m["chars"], m["chars"]), ctx)
    loss = total / count
    return {"loss": loss, "bits_per_char": loss / math.log(2), "accuracy": correct / count}


def report(task, model, out_dir, ctx=None):
    """``task.report(model, out_dir)`` on every rank, its evaluation split over them
    (:func:`split_evaluation`); rank 0 writes the files and returns what the task
    returns, the other ranks write into a scratch directory and return ``{}``."""
    import tempfile

    ctx = ctx or context()
    with split_evaluation(task, ctx):
        if ctx.root:
            return task.report(model, out_dir)
        with tempfile.TemporaryDirectory() as scratch:
            task.report(model, scratch)
        return {}


# -------------------------------------------------------------------------- the trainer

class DistributedTrainer(Trainer):
    """:class:`unrolled.train.Trainer` over the ranks of an MPI job (see the module
    docstring); made by ``Trainer(..., distributed=True)``. With one rank it trains as
    the plain trainer does.

    Extra attributes: ``check_every`` (default 100), the steps between two checksum
    comparisons of the parameters across ranks (0: only at the start and the end);
    ``comm_seconds``, the time this rank spent in the gradient's ``Allreduce`` (the
    transfer and the wait for the slowest rank).
    """

    check_every = 100

    def __init__(self, task, config=None, out_dir=None, model=None, callbacks=(), log=None,
                 distributed=True, optimizer=None, policy=None):
        self.ctx = init()
        self._stop_request = False
        self._stop_agreed = False
        self._carry_size = None
        self._checkpoint_due = False
        self.comm_seconds = 0.0
        super().__init__(task, config, out_dir, model, callbacks, log, optimizer=optimizer,
                         policy=policy)
        if not self.ctx.root:
            self.log = lambda msg: None
            self.config["progress"] = False
        self._sum_loss, self._counts = _loss_parts(self.loss)

    # -- Ctrl-C / SIGTERM: every rank stops at the same batch
    @property
    def _interrupted(self):
        return self._stop_agreed

    @_interrupted.setter
    def _interrupted(self, value):
        # the request travels with the next Allreduce; every rank stops after that step
        self._stop_request = bool(value)
        if not value or self.ctx.size == 1:
            self._stop_agreed = bool(value)

    # -- checkpoints by time (--checkpoint-seconds): rank 0's clock decides for every rank
    @property
    def _last_checkpoint(self):
        # the trainer reads it only to ask whether a checkpoint is due; with several
        # ranks it gets the answer agreed in the last Allreduce, as a time that gives it
        if self.ctx.size == 1:
            return self._checkpoint_time
        return -math.inf if self._checkpoint_due else math.inf

    @_last_checkpoint.setter
    def _last_checkpoint(self, t):
        self._checkpoint_time = t
        self._checkpoint_due = False

    def _due_by_time(self):
        secs = self.config.get("checkpoint_seconds", 0)
        return bool(self.ctx.root and secs
                    and time.monotonic() - self._checkpoint_time >= secs)

    # -- one step
    def _gradients(self, batch):
        ctx, B = self.ctx, batch.size
        if self.task.stateful and B != self._carry_size:
            self.carry = None  # a batch of another global size starts from the zero state
        lo, hi = record_slice(B, ctx)
        grads, value, denom, correct, count = None, 0.0, 0.0, 0, 0
        if hi > lo:
            local = slice_batch(batch, lo, hi) if ctx.size > 1 else batch
            layers = self._rng_layers()
            saved = [ly.rng for ly in layers]
            for ly in layers:
                ly.rng = _SlicedGenerator(ly.rng, _batch_axis(ly), B, lo, hi)
            try:
                if self._sum_loss is not None:
                    del self._counts[:]
                    value, grads, correct, count = self._forward_backward(local, self._sum_loss)
                    denom = sum(self._counts)
                else:  # a loss without a count to divide by: weigh by records
                    value, grads, correct, count = self._forward_backward(local, self.loss)
                    value, denom = value * (hi - lo), float(hi - lo)
                    grads = tree_map(lambda g: None if g is None else g * (hi - lo), grads)
            finally:
                for ly, gen in zip(layers, saved):
                    ly.rng = gen
        else:
            grads = tree_map(np.zeros_like, self.model.params)
        if ctx.size > 1 and B < ctx.size:  # some ranks drew nothing: share the generators
            states = ctx.comm.bcast([ly.rng.bit_generator.state for ly in self._rng_layers()],
                                    root=ctx.size - 1)
            for ly, st in zip(self._rng_layers(), states):
                ly.rng.bit_generator.state = st
        t0 = time.perf_counter()
        grads, (value, denom, correct, count, stop, due) = allreduce_tree(
            grads, (value, denom, correct, count, self._stop_request, self._due_by_time()),
            ctx)
        self.comm_seconds += time.perf_counter() - t0
        self._stop_agreed = self._stop_agreed or stop > 0
        self._checkpoint_due = due > 0
        self._carry_size = B
        if not denom > 0:
            raise ValueError("a training batch has no valid step to score")
        scale = 1.0 / denom
        if ctx.size > 1:  # views of the reduced buffer, ours alone: scaled in place
            for g in _leaves(grads):
                g *= g.dtype.type(scale)
        else:
            grads = tree_map(lambda g: None if g is None else g * g.dtype.type(scale), grads)
        return value / denom, grads, int(round(correct)), int(round(count))

    def _rng_layers(self):
        from .train import _rng_layers

        return _rng_layers(self.model)

    def train_step(self, batch):
        out = super().train_step(batch)
        if self.check_every and self.step % self.check_every == self.check_every - 1:
            check_same(self.model.params, f"the parameters after step {self.step + 1}",
                       self.ctx)
        return out

    # -- validation: split over the ranks, the sums added up
    def evaluate(self, split):
        with split_evaluation(self.task, self.ctx):
            return super().evaluate(split)

    # -- start, files
    def fit(self, resume=False):
        """As :meth:`unrolled.train.Trainer.fit`, on every rank; the parameters are
        broadcast from rank 0 first and compared at the end."""
        found = bool(resume and self.checkpoint_path is not None
                     and self.checkpoint_path.exists())
        seen = self.ctx.comm.allgather(found) if self.ctx.size > 1 else [found]
        if any(seen) and not all(seen):
            raise ValueError(f"{self.checkpoint_path}: only ranks "
                             f"{[r for r, f in enumerate(seen) if f]} see the checkpoint; "
                             "put --out on a file system that every rank sees")
        if found:
            self.load_checkpoint()
            resume = False
            self.log(f"resumed from {self.checkpoint_path} at epoch {self.epoch + 1}, batch "
                     f"{self.batch_in_epoch} (step {self.step}) on {self.ctx.size} ranks")
        ctx = self.ctx
        if ctx.size > 1:  # which process is which rank, to read the launcher's messages
            import socket

            where = ctx.comm.gather((os.getpid(), socket.gethostname()), root=0)
            self.log(f"data-parallel on {ctx.size} ranks, {ctx.threads} thread(s) each: "
                     + ", ".join(f"rank {r} pid {p} on {h}" for r, (p, h) in
                                 enumerate(where or ())))
        broadcast_tree(self.model.params, 0, ctx)
        check_same(self.optimizer.state_dict()["state"], "the learner's state", ctx)
        history = super().fit(resume=False)
        check_same(self.model.params, "the parameters at the end", self.ctx)
        return history

    def load_checkpoint(self, path=None):
        meta = super().load_checkpoint(path)
        if self.carry is not None:  # the checkpoint holds every stream: keep ours
            B = next(iter(self.carry.values())).shape[1]
            lo, hi = record_slice(B, self.ctx)
            self.carry = {k: np.array(v[:, lo:hi]) for k, v in self.carry.items()}
            self._carry_size = B
        return meta

    def save_checkpoint(self, path=None):
        carry = self.carry
        if self.ctx.size > 1 and self.task.stateful:  # rank 0 saves every rank's streams
            parts = [c for c in self.ctx.comm.gather(carry, root=0) or () if c is not None]
            self.carry = {k: np.concatenate([c[k] for c in parts], axis=1)
                          for k in parts[0]} if parts else None
        try:
            if self.ctx.root:
                return super().save_checkpoint(path)
            return None
        finally:
            self.carry = carry
            self._last_checkpoint = time.monotonic()  # on every rank

    def write_logs(self):
        if self.ctx.root:
            super().write_logs()


_classes = {}


def distributed_class(cls):
    """The trainer class that ``cls(..., distributed=True)`` makes: DistributedTrainer
    for Trainer, and for a subclass of Trainer a class with both (its own methods run
    under the distributed ones)."""
    if issubclass(cls, DistributedTrainer):
        return cls
    if cls is Trainer:
        return DistributedTrainer
    if cls not in _classes:
        _classes[cls] = type(f"Distributed{cls.__name__}", (DistributedTrainer, cls),
                             {"__module__": cls.__module__})
    return _classes[cls]


# -------------------------------------------------------------------------- the command line

@contextlib.contextmanager
def command(name):
    """Run the body of the command ``name`` on every rank of an MPI job.

    Yields None outside an MPI job of several ranks (the command runs as usual), else the
    :class:`Context`. Ranks other than 0 print nothing on stdout. An exception on any
    rank prints ``unrolled NAME: error on rank R of N: ...`` and aborts the whole job
    with exit status 2 (1 for an unexpected exception, with its traceback), so that no
    rank waits forever for one that has failed. A rank other than 0 waits a moment
    before aborting (3 s), so an error that every rank meets is usually reported once, by
    rank 0.
    """
    if not launched():
        yield None
        return
    ctx = init(abort_on_error=True)
    if ctx.size == 1:
        yield None
        return
    stdout = sys.stdout
    if not ctx.root:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - closed below
    try:
        yield ctx
    except KeyboardInterrupt:  # every rank has it: the launcher passes Ctrl-C to all
        raise
    except SystemExit as e:
        if e.code not in (None, 0):
            ctx.abort(e.code if isinstance(e.code, int) else 1)
        raise
    except Exception as e:  # noqa: BLE001 - every failure must end the whole job
        expected = isinstance(e, (ValueError, TypeError, OSError))
        if expected and not os.environ.get("UNROLLED_DEBUG"):
            msg = " ".join(str(e).split("\n"))
            # one write of the whole line: mpiexec merges the ranks' streams, and a line
            # written in two pieces can be cut by another rank's
            line = f"unrolled {name}: error on rank {ctx.rank} of {ctx.size}: {msg}\n"
            sys.stderr.flush()
            try:
                os.write(sys.stderr.fileno(), line.encode("utf-8", "replace"))
            except (AttributeError, OSError, ValueError):  # a stream with no descriptor
                print(line, end="", file=sys.stderr, flush=True)
        else:
            print(f"unrolled {name}: rank {ctx.rank} of {ctx.size} failed:", file=sys.stderr)
            traceback.print_exc()
            sys.stderr.flush()
        if not ctx.root:
            time.sleep(3.0)
        ctx.abort(2 if expected else 1)
    finally:
        if sys.stdout is not stdout:
            sys.stdout.close()
            sys.stdout = stdout
