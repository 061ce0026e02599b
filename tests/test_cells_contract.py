"""Generated contract tests: every registered cell, every backend that can run it.

A cell registered in :mod:`unrolled.cells` gets all of these by registering: central
finite differences in float64 (with a negative control), the compiled loop equal to the
readable one (float64 1e-12, float32 1e-5), padding on either side, truncation,
checkpointing, stacked and bidirectional layers, blocks of steps, saving and loading,
and PyTorch as the oracle where it has the cell.
"""
import dataclasses
import importlib
import os

import numpy as np
import pytest
from helpers import check_layer_grads, rel_err

import unrolled as u
from unrolled import cells, kernels, unroll
from unrolled.layers import Recurrent

# cells defined outside the library join the generated tests by naming their modules:
# UNROLLED_CELL_MODULES=my_cells python -m pytest tests/test_cells_contract.py
for _mod in filter(None, os.environ.get("UNROLLED_CELL_MODULES", "").split(",")):
    importlib.import_module(_mod.strip())

D, H, B, T = 3, 4, 3, 6
NAMES = sorted(cells.REGISTRY)
# configurations of the registered cells worth testing apart (the default config first)
CONFIGS = {"elman": [{}, {"nonlinearity": "relu"}], "gru": [{}, {"reset_after": False}],
           "jordan": [{"output_size": 2}], "proj_lstm": [{"proj_size": 2}],
           "hard_sigmoid_gru": [{}, {"reset_after": False}]}
CASES = [(n, kw) for n in NAMES for kw in CONFIGS.get(n, [{}])]
IDS = [n + "".join(f"-{v}" for v in kw.values()) for n, kw in CASES]
COMPILED = kernels.numba_available()


def layer(name, kw, dtype="float64", seed=0, **lk):
    return Recurrent(cells.get(name)(**kw), D, H, dtype=dtype, seed=seed, **lk)


def compiles(name, kw):
    return COMPILED and cells.get(name)(**kw).compiles()


def data(dtype="float64", b=B, t=T, seed=0):
    return np.random.default_rng(seed).standard_normal((b, t, D)).astype(dtype)


def masks(t=T):
    right = np.arange(t)[None, :] < np.array([t, 2, 4])[:, None]
    left = np.arange(t)[None, :] >= t - np.array([t, 3, 1])[:, None]
    return {"right": right, "left": left}


def run(m, X, mask=None, backend=None, seed=1):
    """Outputs, final states and every gradient of one forward + backward."""
    rng = np.random.default_rng(seed)
    with kernels.backend(backend or "auto"):
        out, st, cache = m.forward(X, mask=mask, training=True)
        d_out = rng.standard_normal(out.shape).astype(X.dtype)
        d_st = {k: rng.standard_normal(v.shape).astype(X.dtype) for k, v in st.items()}
        g, dX, ds = m.backward(cache, d_out, d_st)
    return [out, dX, *st.values(), *ds.values()] + [g[n][k] for n in g for k in sorted(g[n])]


def test_registry_has_the_built_in_cells():
    assert {"elman", "lstm", "gru", "jordan", "peephole_lstm"} <= set(cells.REGISTRY)
    with pytest.raises(ValueError, match="unknown cell 'nope'; registered cells"):
        cells.get("nope")


@pytest.mark.parametrize("name, kw", CASES, ids=IDS)
def test_finite_differences(name, kw):
    check_layer_grads(layer(name, kw), data())


@pytest.mark.parametrize("name, kw", CASES, ids=IDS)
def test_finite_differences_negative_control(name, kw):
    """A gradient off by a little in one parameter is caught."""
    def wrong(grads):
        g = grads["l0"]["weight_ih"]
        g.flat[0] += 1e-3 * (1 + abs(g.flat[0]))
    with pytest.raises(AssertionError, match="weight_ih"):
        check_layer_grads(layer(name, kw), data(), wrong=wrong, check_input=False)


@pytest.mark.parametrize("name, kw", CASES, ids=IDS)
@pytest.mark.parametrize("side", ["right", "left"])
def test_finite_differences_masked_stacked_bidirectional(name, kw, side):
    m = layer(name, kw, num_layers=2, bidirectional=True)
    check_layer_grads(m, data(), mask=masks()[side])


@pytest.mark.parametrize("name, kw", CASES, ids=IDS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("opts", [{}, {"mask": "right"}, {"mask": "left", "truncate": 3},
                                  {"stacked": True},
                                  {"mask": "left", "truncate": 3, "rows": True}],
                         ids=["plain", "mask", "trunc", "stack", "rowblocks"])
def test_compiled_equals_readable(name, kw, dtype, opts, monkeypatch):
    """``rowblocks``: the compiled loop's parallel form, every row a block, on 3 threads."""
    if opts.get("rows"):
        monkeypatch.setattr(unroll, "MIN_BLOCK_ROWS", 1)
        monkeypatch.setattr(u.settings, "threads", 3)
    if not compiles(name, kw):
        pytest.skip("no compiled loop for this cell here")
    lk = {"truncate": opts.get("truncate")}
    if opts.get("stacked"):
        lk.update(num_layers=2, bidirectional=True)
    m = layer(name, kw, dtype=dtype, **lk)
    X = data(dtype)
    M = masks()[opts["mask"]] if "mask" in opts else None
    ref = run(m, X, M, "reference")
    got = run(m, X, M, "numba")
    tol = 1e-12 if dtype == "float64" else 1e-5
    assert len(got) == len(ref)
    for a, b in zip(got, ref):
        assert a.dtype == b.dtype
        assert rel_err(a, b) < tol


@pytest.mark.parametrize("name, kw", CASES, ids=IDS)
def test_compiled_loop_runs_when_it_can(name, kw):
    """The plan names the compiled loop for every cell with a per-unit definition."""
    cell = cells.get(name)(**kw)
    path = kernels.plan(cell, np, np.float32, "auto", warn=False)
    assert path.compiled == compiles(name, kw), path


@pytest.mark.parametrize("name, kw", CASES, ids=IDS)
def test_padding_invariance(name, kw):
    """A record padded on the right (or left) gives the same outputs and gradients as the
    record alone."""
    m = layer(name, kw, return_sequences=False)
    X = data(b=1, t=4)
    alone = run(m, X)
    for side in ("right", "left"):
        Xp = np.zeros((1, 7, D))
        M = np.zeros((1, 7), bool)
        sl = slice(0, 4) if side == "right" else slice(3, 7)
        Xp[:, sl], M[:, sl] = X, True
        got = run(m, Xp, M)
        assert rel_err(got[0], alone[0]) < 1e-12
        # parameter gradients (after out, dX, states) agree; dX at valid steps
        for a, b in zip(got[-len(m.params["l0"]):], alone[-len(m.params["l0"]):]):
            assert rel_err(a, b) < 1e-12
        assert rel_err(got[1][:, sl], alone[1]) < 1e-12


@pytest.mark.parametrize("name, kw", CASES, ids=IDS)
def test_truncation(name, kw):
    """truncate=k equals full BPTT over the last k steps with the earlier states given."""
    if getattr(cells.get(name), "window", 1) > 1:
        pytest.skip("the input window reaches back one step before the cut")
    k = 3
    m = layer(name, kw, truncate=k)
    X = data()
    rng = np.random.default_rng(5)
    out, _, cache = m.forward(X, training=True)
    R = rng.standard_normal(out.shape)
    R[:, :-k] = 0  # the loss sees the last k steps only
    g, _, _ = m.backward(cache, R)
    # the same, as a full BPTT of the last k steps from the state before them
    full = layer(name, kw)
    full.params = m.params
    _, st, _ = full.forward(X[:, :-k])
    o2, _, c2 = full.forward(X[:, -k:], initial_state=st)
    g2, _, _ = full.backward(c2, R[:, -k:])
    for key in g["l0"]:
        assert rel_err(g["l0"][key], g2["l0"][key]) < 1e-12, key


@pytest.mark.parametrize("name, kw", CASES, ids=IDS)
def test_checkpointing_equals_full(name, kw):
    X = data(t=9)
    ref = run(layer(name, kw), X)
    got = run(layer(name, kw, memory="checkpoint"), X)
    for a, b in zip(got, ref):
        assert rel_err(a, b) < 1e-12


@pytest.mark.parametrize("name, kw", CASES, ids=IDS)
@pytest.mark.parametrize("K", [1, 4])
def test_blocks_of_steps(name, kw, K):
    X = data(t=9)
    ref = run(layer(name, kw), X, masks(9)["right"])
    with u.settings.override(block_steps=K):
        got = run(layer(name, kw), X, masks(9)["right"])
    for a, b in zip(got, ref):
        assert rel_err(a, b) < 1e-12


@pytest.mark.parametrize("name, kw", CASES, ids=IDS)
def test_save_and_load(name, kw, tmp_path):
    m = layer(name, kw, dtype="float32", num_layers=2)
    u.save_model(m, tmp_path / "m.npz")
    m2, _ = u.load_model(tmp_path / "m.npz")
    assert m2._cell == m._cell
    X = data("float32")
    assert np.array_equal(m.forward(X)[0], m2.forward(X)[0])


def test_torch_oracle_peephole_free_cells():
    """PyTorch has LSTM, GRU and Elman: the generic layer over each registered cell of
    those names equals torch's module to 1e-12 in float64."""
    torch = pytest.importorskip("torch")
    mods = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "elman": torch.nn.RNN}
    X = data()
    for name, Mod in mods.items():
        m = layer(name, {})
        tm = Mod(D, H, batch_first=True).double()
        with torch.no_grad():
            for k, v in m.params["l0"].items():
                getattr(tm, f"{k}_l0").copy_(torch.from_numpy(v))
        out = run(m, X)[0]
        tout, _ = tm(torch.from_numpy(X))
        assert rel_err(out, tout.detach().numpy()) < 1e-12, name


def test_peephole_zero_is_lstm():
    """With its peephole weights at zero the peephole LSTM is the LSTM, bit for bit."""
    pl = layer("peephole_lstm", {})
    ls = layer("lstm", {})
    for k in ("peephole_i", "peephole_f", "peephole_o"):
        pl.params["l0"][k][:] = 0
    for k in ls.params["l0"]:
        ls.params["l0"][k][:] = pl.params["l0"][k]
    X = data()
    a, b = run(pl, X), run(ls, X)
    assert rel_err(a[0], b[0]) == 0


def test_a_subclass_runs_its_own_arithmetic():
    """A cell that changes only its per-unit math runs that math on every backend (no
    silent fallback to its parent's)."""
    @dataclasses.dataclass(frozen=True)
    class Leaky(cells.ElmanCell):
        name = "leaky_test"

        def forward(self, x, r, s, u):
            return (0.5 * s[0] + 0.5 * cells.ops.tanh(x[0] + r[0]),), ()

        def backward(self, d, s, new, c, u):
            a = 2 * new[0] - s[0]  # tanh(x + r)
            da = 0.5 * d[0] * (1 - a * a)
            return (da,), (da,), (0.5 * d[0],), ()

    m = Recurrent(Leaky(), D, H, dtype="float64", seed=0)
    plain = Recurrent(cells.ElmanCell(), D, H, dtype="float64", seed=0)
    X = data()
    got = run(m, X)
    assert rel_err(got[0], run(plain, X)[0]) > 1e-3  # not the parent's arithmetic
    assert rel_err(got[0], run(m, X, backend="reference")[0]) < 1e-12
    check_layer_grads(m, X)


def test_explain_says_which_loop_and_why():
    txt = u.explain(u.LSTM(3, 8), batch=4, steps=10)
    assert "compiled" in txt if COMPILED else "readable" in txt
    j = u.explain(u.Jordan(3, 8), batch=4, steps=10)
    assert "readable" in j and "per-unit" in j
    with u.settings.override(backend="reference"):
        assert "readable" in u.explain(u.LSTM(3, 8))


def test_trace_refuses_a_branch_on_a_value():
    @dataclasses.dataclass(frozen=True)
    class Branchy(cells.ElmanCell):
        name = "branchy_test"

        def forward(self, x, r, s, u):
            a = x[0] + r[0]
            return ((a if a > 0 else 0 * a),), ()

    from unrolled.kernels import compiled
    with pytest.raises(TypeError, match="cannot branch on a value"):
        compiled.traced(Branchy())


def _c_kernel(params, body, tmp_path, name):
    """The GPU kernel's printed source compiled for the CPU (T = double), as a function of
    (n, params...) looping i over [0, n): the arithmetic CUDA runs, checked here."""
    import ctypes
    import shutil
    import subprocess

    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    from unrolled.kernels.cells_cupy import _FLUSH

    args, kinds = [], []
    for p in ", ".join(params).split(", "):
        words = p.split()
        if words[0] == "raw":
            args.append(f"T* {words[2]}")
            kinds.append("array")
        elif words[0] == "int32":
            args.append(f"int {words[1]}")
            kinds.append("int")
        else:
            args.append(f"T {words[1]}")
            kinds.append("T")
    src = ("#include <math.h>\ntypedef double T;\n#define __device__ static\n"
           "#define atomicAdd(p, v) (*(p) += (v))\n" + _FLUSH +
           f"void {name}(long n, {', '.join(args)}) {{\n for (long i = 0; i < n; i++) {{\n"
           + body + "\n }\n}\n")
    (tmp_path / f"{name}.c").write_text(src)
    so = tmp_path / f"{name}.so"
    subprocess.run([cc, "-O1", "-shared", "-fPIC", "-o", str(so), str(tmp_path / f"{name}.c"),
                    "-lm"], check=True)
    fn = getattr(ctypes.CDLL(str(so)), name)

    def call(n, *vals):
        cv = [ctypes.c_long(n)]
        for k, v in zip(kinds, vals):
            if k == "array":
                assert v.flags.c_contiguous and v.dtype == np.float64
                cv.append(ctypes.c_void_p(v.ctypes.data))
            else:
                cv.append(ctypes.c_int(v) if k == "int" else ctypes.c_double(v))
        fn(*cv)
    return call


@pytest.mark.parametrize("name, kw", [c for c in CASES if cells.get(c[0])(**c[1]).compiles()],
                         ids=[i for c, i in zip(CASES, IDS) if cells.get(c[0])(**c[1]).compiles()])
def test_gpu_kernel_source_equals_readable_step(name, kw, tmp_path):
    """The CUDA C printed from the cell's definition computes the readable step (forward
    and backward, float64), compiled here for the CPU."""
    from unrolled.kernels.cells_cupy import kernel_sources

    cell = cells.get(name)(**kw)
    (fi, fo, fb), (bi, bo, bb) = kernel_sources(cell)
    fwd = _c_kernel([fi, fo], fb, tmp_path, "fwd")
    bwd = _c_kernel([bi, bo], bb, tmp_path, "bwd")
    m = layer(name, kw)
    p = m._prepared("l0", np)
    rng = np.random.default_rng(3)
    Bn, G = 5, cell.gates
    NX = G + len(cell.noise)  # the gates' blocks, then any noise blocks (masks in [0, 1])
    xw = rng.standard_normal((Bn, NX * H))
    xw[:, G * H:] = rng.random((Bn, (NX - G) * H)) < 0.5
    prev = tuple(rng.standard_normal((Bn, H)) for _ in cell.state)
    new, cache = cell.step(p, xw, prev, np)
    # the kernel's inputs: xw with the folded biases and the bare recurrent product
    xk = xw.copy()
    xk[:, :G * H] += p["bias_x"] - p["bias_ih"]
    z = np.ascontiguousarray(prev[0] @ p["W_hhT"] if cell.recurrent
                             else np.zeros((Bn, G * H)))
    br = np.ascontiguousarray(p["bias_r"] if p["bias_r"] is not None else np.zeros(0))
    U = np.ascontiguousarray(np.stack([p[k] for k in cell.units]) if cell.units
                             else np.zeros((0, H)))
    outs = [np.zeros((Bn, H)) for _ in range(len(cell.state) + len(cell.cache))]
    fwd(Bn * H, z, xk, br, *prev, U, H, G, *outs)
    for a, b in zip(outs, list(new) + [cache[k] for k in cell.cache]):
        assert rel_err(a, b) < 1e-14
    d = tuple(rng.standard_normal((Bn, H)) for _ in cell.state)
    dxw, dprev, saved = cell.step_back(p, cache, prev, new, d, np)
    dx, dr = np.zeros((Bn, G * H)), np.zeros((Bn, G * H))
    pk = [np.zeros((Bn, H)) for _ in cell.state]
    DU = np.zeros((len(cell.units), H))
    bwd(Bn * H, *d, *prev, *new, *[np.ascontiguousarray(cache[k]) for k in cell.cache], U, 0.0,
        H, G, dx, dx if cell.tied else dr, *pk, DU)
    assert rel_err(dx, dxw) < 1e-14
    rows = dx if cell.tied else dr
    if cell.recurrent:  # the product the GPU loop adds after the kernel
        pk[0] = pk[0] + rows @ p["weight_hh"]
    for a, b in zip(pk, dprev):
        assert rel_err(a, b) < 1e-13
    for k, name_ in enumerate(cell.units):
        assert rel_err(DU[k], saved["d_" + name_].sum(0)) < 1e-13
