"""The compiled loop against the readable one; no allocation per step; subnormal-safe BPTT;
the step-by-step Generator. (Every registered cell also gets tests/test_cells_contract.py.)"""
import tracemalloc

import numpy as np
import pytest
from helpers import rel_err

from unrolled import kernels, unroll
from unrolled.generate import Generator
from unrolled.layers import GRU, LSTM, Dense, Elman, Embedding

FAST = ["numba"] if kernels.numba_available() else []
LAYERS = {
    "lstm": lambda D, H, **kw: LSTM(D, H, **kw),
    "gru": lambda D, H, **kw: GRU(D, H, **kw),
    "elman": lambda D, H, **kw: Elman(D, H, **kw),
    "relu": lambda D, H, **kw: Elman(D, H, nonlinearity="relu", **kw),
}
TOL = {"float64": 1e-12, "float32": 1e-5}


def run_layer(kind, dtype, backend, mask=False, truncate=None, layers=1, bidirectional=False,
              B=4, T=9, D=3, H=5):
    """Outputs, final states and every gradient of one forward + backward."""
    rng = np.random.default_rng(0)
    m = LAYERS[kind](D, H, dtype=dtype, seed=1, truncate=truncate, num_layers=layers,
                     bidirectional=bidirectional)
    X = rng.standard_normal((B, T, D)).astype(dtype)
    M = None
    if mask:
        M = np.ones((B, T), bool)
        M[1, 6:] = False
        M[2, :3] = False
        M[3, 1:] = False
    with kernels.backend(backend):
        out, st, cache = m.forward(X, mask=M)
        d_out = rng.standard_normal(out.shape).astype(dtype)
        d_st = {k: rng.standard_normal(v.shape).astype(dtype) for k, v in st.items()}
        g, dX, ds = m.backward(cache, d_out, d_st)
    return [out, dX, *st.values(), *ds.values()] + [g[n][k] for n in g for k in sorted(g[n])]


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("kind", list(LAYERS))
@pytest.mark.parametrize("mask, truncate", [(False, None), (True, None), (True, 4)])
def test_fast_backends_agree_with_reference(kind, dtype, backend, mask, truncate):
    ref = run_layer(kind, dtype, "reference", mask, truncate)
    got = run_layer(kind, dtype, backend, mask, truncate)
    for a, b in zip(got, ref):
        assert a.dtype == b.dtype
        assert rel_err(a, b) < TOL[dtype]


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("kind", ["lstm", "gru", "elman"])
@pytest.mark.parametrize("K", [1, 3, 4])
def test_blocks_of_steps_agree_with_reference(kind, backend, K, monkeypatch):
    """Input projection, weight gradients and dX computed K steps at a time."""
    ref = run_layer(kind, "float64", "reference", True, 5, T=10)
    monkeypatch.setattr(unroll, "time_chunk", lambda T, B: K)
    got = run_layer(kind, "float64", backend, True, 5, T=10)
    for a, b in zip(got, ref):
        assert rel_err(a, b) < 1e-12


@pytest.mark.parametrize("backend", FAST)
def test_fast_backends_stacked_bidirectional(backend):
    ref = run_layer("lstm", "float64", "reference", True, None, layers=2, bidirectional=True)
    got = run_layer("lstm", "float64", backend, True, None, layers=2, bidirectional=True)
    for a, b in zip(got, ref):
        assert rel_err(a, b) < 1e-12


def test_fast_matches_torch_lstm():
    torch = pytest.importorskip("torch")
    B, T, D, H = 3, 6, 4, 5
    m = LSTM(D, H, dtype="float64", seed=3)
    tm = torch.nn.LSTM(D, H, batch_first=True).double()
    with torch.no_grad():
        for k, v in m.params["l0"].items():
            getattr(tm, f"{k}_l0").copy_(torch.from_numpy(v))
    X = np.random.default_rng(1).standard_normal((B, T, D))
    with kernels.backend(FAST[-1]):
        out, _, cache = m.forward(X)
        g, dX, _ = m.backward(cache, np.ones_like(out))
    tX = torch.from_numpy(X).requires_grad_()
    tout, _ = tm(tX)
    tout.sum().backward()
    assert rel_err(out, tout.detach().numpy()) < 1e-12
    assert rel_err(dX, tX.grad.numpy()) < 1e-12
    assert rel_err(g["l0"]["weight_hh"], tm.weight_hh_l0.grad.numpy()) < 1e-12


def test_backend_selection_and_errors():
    old = kernels.get_backend()
    with kernels.backend("reference"):
        assert kernels.get_backend() == "reference"
    assert kernels.get_backend() == old
    with pytest.raises(ValueError, match="backend must be one of"):
        kernels.set_backend("fortran")
    # with another array module the numba backend gives way to the readable loop
    assert kernels.resolve("numba" if kernels.numba_available() else "numpy", object()) == \
        "reference"
    assert kernels.resolve("numpy", np) == "reference"  # "numpy" names the readable loop


def _traced_peak(fn):
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    fn()
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    return peak


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("kind", ["lstm", "gru", "elman"])
def test_loop_allocates_nothing_per_step(kind, backend):
    """Peak memory grows with T by the tape, the outputs and dX only."""
    B, D, H = 64, 3, 8
    old = unroll.set_block_steps("auto")
    try:
        _check_no_growth(kind, backend, B, D, H)
    finally:
        unroll.set_block_steps(old)


def _check_no_growth(kind, backend, B, D, H):
    assert unroll.time_chunk(40, B) < 40  # both runs use several blocks of steps
    cell = LAYERS[kind](D, H)._cell
    m = LAYERS[kind](D, H, seed=0)
    p = m._prepared("l0", np)
    s0 = tuple(np.zeros((B, H), np.float32) for _ in m.state_sizes)
    rng = np.random.default_rng(0)
    tapes = {}

    def fwd_bwd(T):
        X = rng.standard_normal((T, B, D)).astype(np.float32)
        d_out = rng.standard_normal((T, B, H)).astype(np.float32)

        def go():
            tp = unroll.forward(cell, p, X, s0, np, backend=backend)
            tapes[T] = tp
            unroll.backward(cell, p, tp, np, d_out, backend=backend)
        go()  # warm-up (compilation, caches)
        return _traced_peak(go)

    small, large = fwd_bwd(40), fwd_bwd(240)
    tp = tapes[240]
    # what grows with T: the tape (states and caches) and dX; nothing per step beyond it
    per_step = (sum(a.nbytes for a in tp.states) + sum(a.nbytes for a in tp.tape.values())) / 241
    per_step += B * D * 4
    allowed = 200 * per_step * 1.03 + 65536  # one (B, H) array per step would be 200 * 2 KiB
    assert large - small <= allowed, (large - small, allowed)


@pytest.mark.parametrize("kind", ["elman", "gru", "lstm"])
def test_subnormal_flush_changes_gradients_by_rounding_only(kind):
    """Vanishing gradients: the flushed BPTT equals the reference to float32 rounding."""
    rng = np.random.default_rng(0)
    B, T, D, H = 4, 200, 6, 16
    m = LAYERS[kind](D, H, dtype="float32", seed=2, return_sequences=False)
    for p in m._params["l0"].values():  # small weights: the gradient shrinks every step
        p *= 0.3
    X = rng.standard_normal((B, T, D)).astype("float32")
    res = {}
    for be in ["reference"] + FAST:
        with kernels.backend(be):
            out, _, cache = m.forward(X)
            g, dX, _ = m.backward(cache, np.ones_like(out))
        res[be] = (g["l0"], dX)
    g_ref, dX_ref = res["reference"]
    assert np.abs(dX_ref[:, 0]).max() < 1e-30  # the gradient did vanish (into subnormals)
    for be in FAST:
        g, dX = res[be]
        assert np.all(np.isfinite(dX))
        assert np.abs(dX - dX_ref).max() <= 1e-5 * np.abs(dX_ref).max()
        for k in g:
            assert rel_err(g[k], g_ref[k]) < 1e-5, k
        # no subnormal number survives in the flushed gradients
        tiny = np.finfo(np.float32).tiny
        assert not np.any((dX != 0) & (np.abs(dX) < tiny))


def test_block_steps_setting():
    old = unroll.set_block_steps(None)
    try:
        assert unroll.time_chunk(100, 32) == 100
        unroll.set_block_steps("auto")
        assert unroll.time_chunk(100, 32) == 4 and unroll.time_chunk(100, 256) == 4
        unroll.set_block_steps(7)
        assert unroll.time_chunk(5, 1) == 5 and unroll.time_chunk(100, 1) == 7
        with pytest.raises(ValueError, match="block steps"):
            unroll.set_block_steps(0)
    finally:
        unroll.set_block_steps(old)


def test_flush_threshold():
    assert unroll.flush_threshold(np.float32) == pytest.approx(np.finfo(np.float32).tiny * 2**24)
    assert unroll.flush_threshold(np.float64) < 1e-280


# ---------------------------------------------------------------------------- generation
def _char_model(cls=LSTM, V=11, H=8, layers=1):
    return (Embedding(V, H, seed=0), cls(H, H, seed=1, num_layers=layers), Dense(H, V, seed=2))


@pytest.mark.parametrize("backend", ["reference"] + FAST)
@pytest.mark.parametrize("cls, layers", [(LSTM, 1), (GRU, 1), (Elman, 1), (LSTM, 2)])
@pytest.mark.parametrize("batch", [1, 3])
def test_generator_steps_equal_layer_forward(cls, layers, batch, backend):
    emb, rnn, out = _char_model(cls, layers=layers)
    with kernels.backend(backend):
        gen = Generator(rnn, embedding=emb, output=out, batch=batch, seed=0)
        ids = gen.sample(12, start=3, temperature=0.9)
        assert ids.shape == (batch, 12) and ids.min() >= 0 and ids.max() < 11
        seq = np.concatenate([np.full((batch, 1), 3), ids[:, :-1]], 1)
        logits = out.forward(rnn.forward(emb.forward(seq)[0])[0])[0]
        gen.reset()
        x = 3 if batch == 1 else np.full(batch, 3)
        for t in range(12):
            lg = gen.step(x)
            assert rel_err(lg, logits[:, t]) < 1e-5
            x = int(ids[0, t]) if batch == 1 else ids[:, t].copy()
        # the state the generator holds is the layer's final state
        _, st, _ = rnn.forward(emb.forward(np.concatenate([seq, ids[:, -1:]], 1)[:, :12])[0])
        for k, v in st.items():
            assert rel_err(gen.state[k], v) < 1e-5


@pytest.mark.parametrize("cls, layers", [(LSTM, 1), (GRU, 1), (Elman, 2), (LSTM, 2)])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("temperature", [0.8, 0])
def test_compiled_sampler_draws_what_the_step_loop_draws(cls, layers, batch, temperature):
    """``sample`` runs its whole token loop compiled where it can; with the same seed it
    draws the same symbols as stepping from Python (``step`` + ``draw``), and leaves the
    same state."""
    if "numba" not in FAST:
        pytest.skip("numba not installed")
    emb, rnn, out = _char_model(cls, V=13, H=16, layers=layers)
    fast = Generator(rnn, embedding=emb, output=out, batch=batch, seed=5)
    assert fast._compiled_sampler() is not None
    slow = Generator(rnn, embedding=emb, output=out, batch=batch, seed=5)
    slow._compiled_sampler = lambda: None
    a = fast.sample(60, start=2, temperature=temperature)
    b = slow.sample(60, start=2, temperature=temperature)
    assert np.mean(a == b) > 0.95 and np.array_equal(a[:, :10], b[:, :10])
    if np.array_equal(a, b):
        for k, v in slow.state.items():
            assert rel_err(fast.state[k], v) < 1e-5
    with pytest.raises(ValueError, match="temperature"):
        fast.sample(3, temperature=-1.0)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        fast.sample(3, start=13)


def test_sampler_refuses_an_output_vocabulary_larger_than_the_embedding():
    emb, rnn = Embedding(5, 6, seed=0), LSTM(6, 6, seed=1)
    gen = Generator(rnn, embedding=emb, output=Dense(6, 40, seed=2), batch=2, seed=0)
    with pytest.raises(ValueError, match="40 symbols and the embedding has 5"):
        gen.sample(10)


@pytest.mark.parametrize("rnn_dtype, dense_dtype", [("float64", "float32"),
                                                    ("float32", "float64")])
def test_sampler_with_an_output_layer_of_another_dtype(rnn_dtype, dense_dtype):
    """The output layer's weights are taken in the generator's dtype: the compiled sampler
    and the step loop draw the same symbols."""
    emb = Embedding(9, 8, seed=0, dtype=rnn_dtype)
    rnn = LSTM(8, 8, seed=1, dtype=rnn_dtype)
    out = Dense(8, 9, seed=2, dtype=dense_dtype)
    fast = Generator(rnn, embedding=emb, output=out, batch=2, seed=3)
    slow = Generator(rnn, embedding=emb, output=out, batch=2, seed=3)
    slow._compiled_sampler = lambda: None
    for t in (0, 0.9):
        fast.reset(), slow.reset()
        assert np.array_equal(fast.sample(30, 1, t), slow.sample(30, 1, t))


def test_generator_greedy_and_distribution():
    emb, rnn, out = _char_model(V=5)
    gen = Generator(rnn, embedding=emb, output=out, batch=1, seed=0)
    logits = np.array([[0.0, 2.0, 1.0, -1.0, 0.5]], np.float32)
    assert gen.draw(logits.copy(), temperature=0)[0] == 1
    counts = np.zeros(5)
    for _ in range(4000):
        counts[gen.draw(logits.copy(), 1.0)[0]] += 1
    p = np.exp(logits[0]) / np.exp(logits[0]).sum()
    assert np.abs(counts / 4000 - p).max() < 0.03


def test_generator_no_allocation_per_token():
    emb, rnn, out = _char_model(V=30, H=32)
    gen = Generator(rnn, embedding=emb, output=out, batch=1, seed=0)
    gen.sample(5)  # warm-up
    gen.reset()

    def steps(n):
        x = 1
        for _ in range(n):
            x = int(gen.draw(gen.step(x), 0.8)[0])
    small, large = _traced_peak(lambda: steps(10)), _traced_peak(lambda: steps(400))
    assert large - small < 2048


def test_generator_errors():
    emb, rnn, out = _char_model()
    with pytest.raises(ValueError, match="bidirectional"):
        Generator(LSTM(8, 8, bidirectional=True), embedding=emb)
    with pytest.raises(ValueError, match="batch"):
        Generator(rnn, batch=0)
    with pytest.raises(ValueError, match="embedding_dim"):
        Generator(rnn, embedding=Embedding(11, 4))
    gen = Generator(rnn)
    with pytest.raises(ValueError, match="sample needs"):
        gen.sample(3)
    gen = Generator(rnn, embedding=emb, output=out)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        gen.step(99)
    with pytest.raises(ValueError, match="temperature"):
        gen.draw(np.zeros((1, 11), np.float32), -1.0)


# ---------------------------------------------------------------------------- CuPy (GPU)
def _cupy():
    cp = pytest.importorskip("cupy")
    try:
        if cp.cuda.runtime.getDeviceCount() < 1:
            pytest.skip("no GPU")
    except cp.cuda.runtime.CUDARuntimeError:  # no driver or no device
        pytest.skip("no GPU")
    return cp


@pytest.mark.parametrize("backend", ["numpy", "cupy", "reference"])
@pytest.mark.parametrize("kind", ["lstm", "gru", "elman"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_cupy_arrays_agree_with_numpy(kind, dtype, backend):
    cp = _cupy()
    rng = np.random.default_rng(0)
    B, T, D, H = 4, 9, 3, 5
    m = LAYERS[kind](D, H, dtype=dtype, seed=1)
    X = rng.standard_normal((B, T, D)).astype(dtype)
    M = np.ones((B, T), bool)
    M[1, 6:] = False
    with kernels.backend("reference"):
        out, _, cache = m.forward(X, mask=M)
        g, dX, _ = m.backward(cache, np.ones_like(out))
    m._params = {n: {k: cp.asarray(v) for k, v in p.items()} for n, p in m._params.items()}
    with kernels.backend(backend):
        gout, _, gcache = m.forward(cp.asarray(X), mask=cp.asarray(M))
        gg, gdX, _ = m.backward(gcache, cp.ones_like(gout))
    assert rel_err(cp.asnumpy(gout), out) < TOL[dtype]
    assert rel_err(cp.asnumpy(gdX), dX) < TOL[dtype]
    for k in g["l0"]:
        assert rel_err(cp.asnumpy(gg["l0"][k]), g["l0"][k]) < TOL[dtype], k


def test_cupy_generator():
    cp = _cupy()
    emb, rnn, out = _char_model()
    ref = Generator(rnn, embedding=emb, output=out, batch=2, seed=0)
    gen = Generator(rnn, embedding=emb, output=out, batch=2, seed=0, xp=cp)
    x = np.array([1, 4])
    for _ in range(5):
        a, b = ref.step(x), gen.step(cp.asarray(x))
        assert rel_err(cp.asnumpy(b), a) < 1e-5
        x = ref.draw(a.copy(), 0).copy()


@pytest.mark.parametrize("kind", ["lstm", "gru", "elman", "relu"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("rs", [False, True])
def test_cuda_graph_loop_agrees_with_numpy_over_training_steps(kind, dtype, rs):
    """Plain batches (no mask): eager, recorded and replayed graphs all give NumPy's results,
    also after the weights change in place between steps."""
    cp = _cupy()
    from unrolled.kernels import loop_cupy

    rng = np.random.default_rng(0)
    B, T, D, H = 4, 9, 3, 5
    m = LAYERS[kind](D, H, dtype=dtype, seed=1, return_sequences=rs)
    g_m = LAYERS[kind](D, H, dtype=dtype, seed=1, return_sequences=rs)
    g_m._params = {n: {k: cp.asarray(v) for k, v in p.items()} for n, p in m._params.items()}
    X = rng.standard_normal((B, T, D)).astype(dtype)
    gX = cp.asarray(X)
    # float32 after several steps: cuBLAS and OpenBLAS sum the weight gradients in other
    # orders, and the weights have grown (float64 holds these results to 1e-12)
    tol = {"float64": 1e-12, "float32": 1e-4}[dtype]
    before = dict(loop_cupy.stats)
    for it in range(6):
        with kernels.backend("numpy"):
            out, _, cache = m.forward(X, training=True)
            g, dX, _ = m.backward(cache, np.ones_like(out))
        with kernels.backend("cupy"):
            gout, _, gcache = g_m.forward(gX, training=True)
            gg, gdX, _ = g_m.backward(gcache, cp.ones_like(gout))
        assert rel_err(cp.asnumpy(gout), out) < tol, it
        assert rel_err(cp.asnumpy(gdX), dX) < tol, it
        for k in g["l0"]:
            assert rel_err(cp.asnumpy(gg["l0"][k]), g["l0"][k]) < tol, (it, k)
        for k in m._params["l0"]:  # an SGD step, copied in place into the GPU's weights
            m._params["l0"][k] -= 0.1 * g["l0"][k]
            g_m._params["l0"][k][...] = cp.asarray(m._params["l0"][k])
        del gout, gcache, gg, gdX  # as a training loop does: the next step reuses the memory
    assert loop_cupy.stats["replayed"] > before["replayed"]  # the graphs did run


def test_reuse_freed_memory_removes_page_faults():
    """After reuse_freed_memory(), a freed tape-sized array comes back without page faults."""
    import resource
    import sys

    from unrolled.backend import reuse_freed_memory

    if not sys.platform.startswith("linux"):
        pytest.skip("glibc only")
    if not reuse_freed_memory():
        pytest.skip("no mallopt in this C library")

    def faults_of_a_step():
        r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        a = np.ones(8 << 20, np.uint8)  # 8 MiB, touched: 2048 pages if they were fresh
        a.sum()
        del a
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0

    faults_of_a_step()
    assert faults_of_a_step() < 200


@pytest.mark.parametrize("kind", list(LAYERS))
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_batch_of_one_agrees_with_reference(kind, dtype):
    """B = 1: the compiled loop's products are matrix-vector products."""
    ref = run_layer(kind, dtype, "reference", B=1, T=7)
    for backend in FAST:
        got = run_layer(kind, dtype, backend, B=1, T=7)
        for a, b in zip(got, ref):
            assert rel_err(a, b) < TOL[dtype]


def test_compiled_loop_switch():
    """settings.compiled_loop=False runs the readable loop in its place: same results."""
    if "numba" not in FAST:
        pytest.skip("numba not installed")
    from unrolled import settings

    for kind in LAYERS:
        a = run_layer(kind, "float64", "numba", True, 4)
        with settings.override(compiled_loop=False):
            assert kernels.plan(LAYERS[kind](3, 5)._cell, np, np.float64).name == "readable"
            b = run_layer(kind, "float64", "numba", True, 4)
        for x, y in zip(a, b):
            assert rel_err(x, y) < 1e-12


def test_compiled_backward_reads_a_strided_tape():
    """A tape whose states are strided views (made elsewhere) gives the same gradients."""
    rng = np.random.default_rng(0)
    m = LSTM(3, 5, dtype="float64", seed=0)
    cell, p = m._cell, m._prepared("l0", np)
    X = rng.standard_normal((7, 4, 3))
    s0 = (np.zeros((4, 5)), np.zeros((4, 5)))
    d = rng.standard_normal((7, 4, 5))
    for backend in FAST:
        tp = unroll.forward(cell, p, X, s0, np, backend=backend)
        g1, _, _ = unroll.backward(cell, p, tp, np, d, backend=backend)
        wide = [np.zeros(s.shape[:2] + (2 * s.shape[2],)) for s in tp.states]
        for w, s in zip(wide, tp.states):
            w[..., ::2] = s
        strided = unroll.Tape(tp.X, tuple(w[..., ::2] for w in wide), tp.tape, tp.mask)
        g2, _, _ = unroll.backward(cell, p, strided, np, d, backend=backend)
        for k in g1:
            assert rel_err(g2[k], g1[k]) < 1e-12, (backend, k)


def test_compiled_kernels_load_from_the_disk_cache_in_a_new_process(tmp_path):
    """A second process compiles nothing: numba's cache key of every kernel and loop is the
    same from one process to the next (it had held per-process ids and a set's order)."""
    if "numba" not in FAST:
        pytest.skip("numba not installed")
    import os
    import subprocess
    import sys

    code = ("import numpy as np\n"
            "from unrolled.layers import LSTM, GRU\n"
            "for cls in (LSTM, GRU):\n"
            "    m = cls(3, 4, seed=0)\n"
            "    X = np.ones((2, 5, 3), np.float32)\n"
            "    out, _, c = m.forward(X, training=True)\n"
            "    m.backward(c, out)\n")
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path), NUMBA_DEBUG_CACHE="1",
               UNROLLED_BACKEND="numba", UNROLLED_CACHE_DIR=str(tmp_path / "generated"))

    def saved():
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, check=True)
        return sum("index saved" in line for line in (out.stdout + out.stderr).splitlines())

    assert saved() > 0   # the first process compiles and writes the cache
    assert saved() == 0  # the second loads it all


@pytest.mark.parametrize("kind", list(LAYERS))
@pytest.mark.parametrize("opts", [dict(), dict(mask=True, truncate=4),
                                  dict(layers=2, bidirectional=True, mask=True),
                                  dict(B=1), dict(B=13, T=5)])
def test_row_blocks_equal_one_thread(kind, opts, monkeypatch):
    """The compiled loop's parallel form (row blocks on several threads, B not a multiple
    of the block) equals it on one thread, float64 to 1e-12."""
    if "numba" not in FAST:
        pytest.skip("numba not installed")
    from unrolled import settings

    monkeypatch.setattr(unroll, "MIN_BLOCK_ROWS", 2)
    monkeypatch.setattr(unroll, "SHARE_ROWS", 2)  # B = 13: 6 blocks on 3 threads
    kw = dict(B=7, T=8) | opts
    with settings.override(threads=1):
        one = run_layer(kind, "float64", "numba", **kw)
    with settings.override(threads=3):
        if kw["B"] > 1:
            assert unroll.row_blocks(kw["B"]) is not None
        many = run_layer(kind, "float64", "numba", **kw)
    for a, b in zip(many, one):
        assert rel_err(a, b) < 1e-12


@pytest.mark.parametrize("opts", [dict(recurrent_dropout=0.3), dict(zoneout=0.2),
                                  dict(peepholes=True)])
def test_row_blocks_with_masks_and_noise(opts, monkeypatch):
    """Recurrent dropout masks, zoneout's per-step noise and per-unit parameter gradients
    (summed over the blocks) through the parallel form, against one thread and against
    the readable loop."""
    if "numba" not in FAST:
        pytest.skip("numba not installed")
    from unrolled import settings

    monkeypatch.setattr(unroll, "MIN_BLOCK_ROWS", 2)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((9, 6, 3))
    M = rng.random((9, 6)) > 0.2

    def run(backend, threads):
        m = LSTM(3, 5, dtype="float64", seed=1, **opts)
        with kernels.backend(backend), settings.override(threads=threads):
            out, _, c = m.forward(X, mask=M, training=True)
            g, dX, _ = m.backward(c, np.cos(out))
        return [out, dX] + [g[n][k] for n in g for k in sorted(g[n])]

    ref, one, many = run("reference", 1), run("numba", 1), run("numba", 2)
    for a, b, c in zip(many, one, ref):
        assert rel_err(a, b) < 1e-12 and rel_err(a, c) < 1e-12


def test_row_block_policy():
    """One block per thread of at least min_block_rows() rows, up to BLOCKS_PER_THREAD per
    thread where each keeps SHARE_ROWS; one thread or too small a batch: no blocks."""
    from unrolled.kernels import microkernel

    n, share, per = unroll.min_block_rows(), unroll.SHARE_ROWS, unroll.BLOCKS_PER_THREAD
    assert n == (4 if microkernel.available() else 16)
    assert unroll.row_blocks(64 * share, 1) is None
    assert unroll.row_blocks(2 * n - 1, 2) is None
    b = unroll.row_blocks(2 * n, 2)
    assert b == [0, n, 2 * n]
    b = unroll.row_blocks(64 * share, 2)
    assert len(b) == 2 * per + 1 and b[0] == 0 and b[-1] == 64 * share
    b = unroll.row_blocks(3 * n + 1, 2)
    assert np.all(np.diff(b) >= n) and b[-1] == 3 * n + 1


def test_threads_setting_defaults_to_every_core():
    from unrolled.settings import Settings, cores

    assert Settings().threads == cores()
    assert Settings.from_environment({"UNROLLED_THREADS": "1"}).threads == 1
    assert Settings.from_environment({"UNROLLED_THREADS": "auto"}).threads == cores()
    with pytest.raises(ValueError, match="UNROLLED_THREADS='0'"):
        Settings.from_environment({"UNROLLED_THREADS": "0"})


def test_block_pool_serves_several_python_threads(monkeypatch):
    """Two Python threads running parallel loops at once: one gets the pool, the other
    runs its blocks alone; both results are right."""
    if "numba" not in FAST:
        pytest.skip("numba not installed")
    import threading

    from unrolled import settings

    monkeypatch.setattr(unroll, "MIN_BLOCK_ROWS", 2)
    with settings.override(threads=1):
        want = run_layer("lstm", "float64", "numba", B=8, T=30)
    got = {}

    def work(i):
        got[i] = run_layer("lstm", "float64", "numba", B=8, T=30)

    with settings.override(threads=2):
        ts = [threading.Thread(target=work, args=(i,)) for i in range(3)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    for i in range(3):
        for a, b in zip(got[i], want):
            assert rel_err(a, b) < 1e-12
