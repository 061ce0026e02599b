"""The packed product of the compiled loop's steps (unrolled.kernels.microkernel)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from unrolled.kernels import microkernel as mk

needs = pytest.mark.skipif(not mk.available(), reason="no AVX2/AVX-512 with FMA here")


@needs
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("M", [1, 2, 3, 5, 7, 8, 9, 15, 16, 17, 33])
@pytest.mark.parametrize("K,N", [(1, 1), (5, 7), (64, 256), (33, 100), (256, 64)])
def test_matmul_equals_numpy(dtype, M, K, N):
    rng = np.random.default_rng(M * 1000 + K + N)
    A = rng.standard_normal((M, K)).astype(dtype)
    W = rng.standard_normal((K, N)).astype(dtype)
    C0 = rng.standard_normal((M, N)).astype(dtype)
    f = mk.matmul32 if dtype == np.float32 else mk.matmul64
    Wp = mk.pack(W)
    assert Wp.shape == (-(-N // mk.panel(dtype)), K, mk.panel(dtype))
    tol = 1e-4 * np.sqrt(K) if dtype == np.float32 else 1e-12 * np.sqrt(K)
    C = C0.copy()
    f(A, Wp, C, dtype(0))
    np.testing.assert_allclose(C, A @ W, rtol=tol, atol=tol)
    C = C0.copy()
    f(A, Wp, C, dtype(1))
    np.testing.assert_allclose(C, A @ W + C0, rtol=tol, atol=tol)
    # negative control: the product against a W with one entry changed differs there
    W2 = W.copy()
    W2[K - 1, N - 1] += 1
    C = C0.copy()
    f(A, mk.pack(W2), C, dtype(0))
    assert np.abs(C[:, N - 1] - (A @ W)[:, N - 1]).max() > 0.1 * np.abs(A[:, K - 1]).max()


@needs
def test_rows_do_not_depend_on_the_block():
    """A row's sums run in k order in every tile height: the same bits alone or in a block."""
    rng = np.random.default_rng(0)
    A = rng.standard_normal((13, 96)).astype(np.float32)
    W = mk.pack(rng.standard_normal((96, 70)).astype(np.float32))
    C = np.empty((13, 70), np.float32)
    mk.matmul32(A, W, C, np.float32(0))
    for b in range(13):
        c = np.empty((1, 70), np.float32)
        mk.matmul32(A[b:b + 1], W, c, np.float32(0))
        assert np.array_equal(c[0], C[b])


def test_pack_leaves_what_it_cannot_pack():
    W = np.ones((4, 6), np.int64)
    assert mk.pack(W) is W
    if not mk.available():
        Wf = np.ones((4, 6), np.float32)
        assert mk.pack(Wf) is Wf


_SCRIPT = r"""
import json, sys
import numpy as np
import unrolled
from unrolled.layers import LSTM
from unrolled.kernels import microkernel
m = LSTM(5, 7, seed=0, dtype="float64")
X = np.random.default_rng(1).standard_normal((3, 11, 5))
out, _, cache = m.forward(X, training=True)
g, dX, _ = m.backward(cache, np.ones_like(out))
print(json.dumps({"on": microkernel.available(), "bytes": microkernel.VECTOR_BYTES,
                  "out": out.ravel().tolist(),
                  "dX": dX.ravel().tolist(), "dW": g["l0"]["weight_hh"].ravel().tolist()}))
"""


@needs
def test_loop_with_and_without_the_packed_product(tmp_path):
    """The compiled loop on packed weights (the host's vectors, and AVX2's 32-byte form)
    equals the loop on BLAS (switched off by UNROLLED_MICROKERNEL=0) to rounding, in
    float64."""
    runs = []
    for flag in ("auto", "0", "avx2"):
        env = dict(os.environ, UNROLLED_MICROKERNEL=flag, UNROLLED_CACHE_DIR=str(tmp_path))
        r = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, capture_output=True,
                           text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        runs.append(json.loads(r.stdout.strip().splitlines()[-1]))
    assert runs[0]["on"] and not runs[1]["on"] and runs[2]["on"]
    assert runs[2]["bytes"] == 32
    for k in ("out", "dX", "dW"):
        np.testing.assert_allclose(runs[0][k], runs[1][k], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(runs[2][k], runs[1][k], rtol=1e-12, atol=1e-12)
    # the tiles themselves in AVX2's form, every height and an edge panel, float32
    env = dict(os.environ, UNROLLED_MICROKERNEL="avx2", UNROLLED_CACHE_DIR=str(tmp_path))
    r = subprocess.run([sys.executable, "-c", _TILES], env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok 6"), r.stderr[-2000:]


_TILES = r"""
import numpy as np
import unrolled
from unrolled.kernels import microkernel as mk
rng = np.random.default_rng(0)
for M in range(1, 15):
    A = rng.standard_normal((M, 40)).astype(np.float32)
    W = rng.standard_normal((40, 37)).astype(np.float32)
    C = rng.standard_normal((M, 37)).astype(np.float32)
    want = A @ W + C
    mk.matmul32(A, mk.pack(W), C, np.float32(1))
    assert np.abs(C - want).max() < 1e-4, M
print("ok", mk.MR)
"""
