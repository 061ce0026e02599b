"""The compiled loop's threads: blocks of batch rows shared out, with no wait per step.

The rows of a batch are independent sequences, so the compiled loop cuts the batch into
row blocks and each block runs all of its steps alone (``forward_blocks`` and
``backward_blocks`` of the generated module; see :mod:`.compiled`). :func:`run_blocks`
runs such a function on the calling thread and on helper threads kept from call to call:
every thread takes the next block from one atomic counter as it finishes one.

Why not one thread per block and a join (OpenMP, ``numba.prange``): on a machine busy
with other work, a thread may wait several milliseconds for a core, and a join waits for
the latest one even when the others have done its share. Here the caller waits only for
blocks some thread has started: a helper that wakes up after the work is gone finds no
block and goes back to sleep, and a thread whose core is busy takes fewer blocks.
"""
import os
import threading

import numpy as np


class _Pool:
    def __init__(self, helpers):
        self.cond = threading.Condition()
        self.busy = threading.Lock()  # one parallel run at a time; others run alone
        self.job = None               # (fn, args, counter, active helpers)
        self.gen = 0                  # counts the jobs posted
        self.finished = 0             # blocks done in the current job
        self.error = None             # an exception raised on a helper thread
        self.pid = os.getpid()
        self.threads = [threading.Thread(target=self._serve, args=(i,), daemon=True,
                                         name=f"unrolled-rows-{i}") for i in range(helpers)]
        for t in self.threads:
            t.start()

    def _serve(self, idx):
        seen = 0
        while True:
            with self.cond:
                while self.gen == seen:
                    self.cond.wait()
                seen = self.gen
                fn, args, counter, active = self.job
            if idx >= active:
                fn = args = None
                continue
            try:
                got = fn(*args, counter)  # compiled with nogil: runs beside the caller
            except BaseException as e:  # never expected; the caller must not wait forever
                with self.cond:
                    self.error = e
                    self.cond.notify_all()
                continue
            finally:  # no reference kept to the job's arrays while waiting for the next
                fn = args = None
            if got:
                with self.cond:
                    self.finished += got
                    self.cond.notify_all()


_POOL = []


def _pool(helpers):
    pool = _POOL[0] if _POOL else None
    if pool is None or pool.pid != os.getpid() or len(pool.threads) < helpers:
        pool = _Pool(helpers)  # first use, a forked child, or more threads asked for
        _POOL[:] = [pool]
    return pool


def run_blocks(fn, args, blocks, threads):
    """Run ``fn(*args, counter)`` on ``threads`` threads (the caller and ``threads - 1``
    helpers) until the ``blocks`` blocks behind ``counter`` are done."""
    counter = np.zeros(1, np.int64)
    if threads < 2:
        fn(*args, counter)
        return
    pool = _pool(threads - 1)
    if not pool.busy.acquire(blocking=False):  # the pool serves another Python thread
        fn(*args, counter)
        return
    try:
        with pool.cond:
            pool.finished, pool.error = 0, None
            pool.job = (fn, args, counter, threads - 1)
            pool.gen += 1
            pool.cond.notify_all()
        got = fn(*args, counter)
        with pool.cond:
            pool.finished += got
            while pool.finished < blocks and pool.error is None:
                pool.cond.wait()
            if pool.error is not None:
                raise RuntimeError("a thread of the compiled loop failed") from pool.error
    finally:
        # nothing for a helper that wakes up late, and no reference kept to the arrays of
        # this job (they may be large buffers the caller frees next)
        with pool.cond:
            pool.job = (None, (), None, 0)
        pool.busy.release()
