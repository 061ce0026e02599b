"""ONNX export: the exported graph, run by onnxruntime, gives the layer's own outputs
(float32, 1e-5) for every cell, stacked, bidirectional, folded, masked, and inside a
Sequential with Embedding and Dense. Skipped where onnx or onnxruntime is absent."""
import subprocess
import sys

import numpy as np
import pytest

from unrolled import layers as L

CELLS = [(L.Elman, {}), (L.Elman, {"nonlinearity": "relu"}), (L.LSTM, {}), (L.GRU, {}),
         (L.GRU, {"reset_after": False}), (L.LSTM, {"peepholes": True})]
IDS = ["elman-tanh", "elman-relu", "lstm", "gru", "gru-reset-before", "lstm-peepholes"]
LENGTHS = np.array([6, 3, 1, 5])
MASK = np.arange(6)[None, :] < LENGTHS[:, None]                              # (4, 6)


def run_onnx(model, X, lengths=None, **kw):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from unrolled.interop.onnx import to_onnx

    proto = to_onnx(model, lengths=lengths is not None, **kw)
    sess = ort.InferenceSession(proto.SerializeToString(),
                                providers=["CPUExecutionProvider"])
    feed = {"input": X}
    if lengths is not None:
        feed["lengths"] = lengths.astype(np.int32)
    return sess.run(None, feed)[0]


@pytest.mark.parametrize("cls,kw", CELLS, ids=IDS)
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("return_sequences", [True, False], ids=["seq", "fold"])
def test_layer_matches_onnxruntime(cls, kw, bidirectional, return_sequences):
    layer = cls(3, 5, num_layers=2, bidirectional=bidirectional,
                return_sequences=return_sequences, seed=1, **kw)
    X = np.random.default_rng(0).standard_normal((4, 6, 3)).astype(np.float32)
    np.testing.assert_allclose(run_onnx(layer, X), layer(X), rtol=1e-5, atol=1e-5)
    # a padded batch: ONNX's sequence_lens plays the part of the mask
    got = run_onnx(layer, X, LENGTHS)
    np.testing.assert_allclose(got, layer(X, mask=MASK), rtol=1e-5, atol=1e-5)


def test_sequential_with_embedding_and_dense_per_step():
    model = L.Sequential(L.Embedding(10, 4, seed=0), L.Dropout(0.3, seed=1),
                         L.LSTM(4, 5, bidirectional=True, seed=2), L.Dropout(0.3, seed=3),
                         L.Dense(10, 3, seed=4))
    X = np.random.default_rng(1).integers(0, 10, (4, 6))
    X[~MASK] = 0
    np.testing.assert_allclose(run_onnx(model, X), model(X), rtol=1e-5, atol=1e-5)
    got = run_onnx(model, X, LENGTHS)
    want = model(X, mask=MASK)
    assert not got[~MASK].any()  # padded steps are zero, as in the model
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_sequential_fold_then_dense_and_file(tmp_path):
    onnx = pytest.importorskip("onnx")
    from unrolled.interop.onnx import to_onnx

    model = L.Sequential(L.GRU(3, 8, return_sequences=False, seed=0), L.Dense(8, 4, seed=1))
    X = np.random.default_rng(2).standard_normal((4, 6, 3)).astype(np.float32)
    np.testing.assert_allclose(run_onnx(model, X, LENGTHS), model(X, mask=MASK),
                               rtol=1e-5, atol=1e-5)
    to_onnx(model, tmp_path / "m.onnx")
    graph = onnx.load(str(tmp_path / "m.onnx")).graph
    ops = [n.op_type for n in graph.node]
    assert "GRU" in ops and "MatMul" in ops
    gru = next(n for n in graph.node if n.op_type == "GRU")
    assert {a.name: a.i for a in gru.attribute}["linear_before_reset"] == 1


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_gate_order_matters(monkeypatch, cell):
    """Negative control: PyTorch's gate order left as it is gives other outputs."""
    pytest.importorskip("onnx")
    import unrolled.interop.onnx as ox

    layer = (L.LSTM if cell == "lstm" else L.GRU)(3, 5, seed=0)
    X = np.random.default_rng(3).standard_normal((2, 6, 3)).astype(np.float32)
    monkeypatch.setitem(ox._GATE_ORDER, cell, list(range(4 if cell == "lstm" else 3)))
    assert np.abs(run_onnx(layer, X) - layer(X)).max() > 1e-3


def test_unsupported_layers_are_refused():
    pytest.importorskip("onnx")
    from unrolled.interop.onnx import to_onnx

    with pytest.raises(TypeError, match="Jordan .cell 'jordan'. has no ONNX operator"):
        to_onnx(L.Jordan(3, 4))
    for opt in ({"zoneout": 0.1}, {"layer_norm": True}, {"proj_size": 2}):
        with pytest.raises(TypeError, match="has no ONNX operator"):
            to_onnx(L.LSTM(3, 4, **opt))
    for model, msg in [(L.GRU(3, 4, initial_state="learned"), "zero initial states only"),
                       (L.Sequential(L.GRU(3, 4, return_sequences=False), L.GRU(4, 4)),
                        "after a folded one")]:
        with pytest.raises(ValueError, match=msg):
            to_onnx(model)


def test_onnx_is_imported_only_when_exporting(monkeypatch):
    code = ("import sys, unrolled.interop.onnx, unrolled; "
            "assert 'onnx' not in sys.modules and 'onnxruntime' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
    monkeypatch.setitem(sys.modules, "onnx", None)  # as if not installed
    from unrolled.interop.onnx import to_onnx

    with pytest.raises(ImportError, match="pip install onnx"):
        to_onnx(L.GRU(3, 4))
