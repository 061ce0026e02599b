"""Whole models from Keras and PyTorch files: the CuDNN layouts, hard-sigmoid gates,
Keras 2 / Keras 3 files, PyTorch state dicts, and `unrolled import`.

Keras-2-layout HDF5 files are written here with h5py from known arrays (no TensorFlow);
the results are compared with the recurrent equations written out below, with Keras 3
itself (torch backend) where it is installed, and with PyTorch modules."""
import json

import numpy as np
import pytest
from helpers import rel_err

from unrolled.cells import HardSigmoidGRUCell, HardSigmoidLSTMCell
from unrolled.interop import from_keras_weights, load_keras, load_torch, read_keras
from unrolled.layers import Recurrent

h5py = pytest.importorskip("h5py")

D, H, B, T = 3, 4, 2, 5


def sig(x):
    return 1 / (1 + np.exp(-x))


def hard(slope):
    return lambda x: np.clip(slope * x + 0.5, 0, 1)


def reference(kind, kernel, rec, b_in, b_rec, X, gate=sig, reset_after=True):
    """Keras's recurrent layers from their equations: gates i|f|c|o (LSTM), z|r|h (GRU);
    ``b_in`` is added to x·kernel, ``b_rec`` to h·recurrent_kernel."""
    h = np.zeros((X.shape[0], rec.shape[0]))
    c = np.zeros_like(h)
    outs = []
    for t in range(X.shape[1]):
        x = X[:, t]
        if kind == "LSTM":
            i, f, g, o = np.split(x @ kernel + b_in + h @ rec + b_rec, 4, axis=1)
            c = gate(f) * c + gate(i) * np.tanh(g)
            h = gate(o) * np.tanh(c)
        else:
            xz, xr, xh = np.split(x @ kernel + b_in, 3, axis=1)
            Uz, Ur, Uh = np.split(rec, 3, axis=1)
            bz, br, bh = np.split(b_rec, 3)
            z = gate(xz + h @ Uz + bz)
            r = gate(xr + h @ Ur + br)
            hh = np.tanh(xh + r * (h @ Uh + bh)) if reset_after else \
                np.tanh(xh + (r * h) @ Uh + bh)
            h = z * h + (1 - z) * hh
        outs.append(h)
    return np.stack(outs, 1)


def keras_arrays(kind, d=D, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    G = 4 if kind == "LSTM" else 3
    return (scale * rng.standard_normal((d, G * H)), scale * rng.standard_normal((H, G * H)),
            rng.standard_normal(G * H), rng.standard_normal(G * H))


def to_cudnn(kernel, rec, G):
    """Keras-layout kernels in the layout Keras 2's CuDNN layers store (the inverse of
    ``_convert_rnn_weights``: input blocks ``k.T.reshape(k.shape)`` in C order, recurrent
    blocks transposed)."""
    kc = np.hstack([k.T.reshape(k.shape) for k in np.hsplit(kernel, G)])
    rc = np.hstack([k.T for k in np.hsplit(rec, G)])
    return kc, rc


X3 = np.random.default_rng(9).standard_normal((B, T, D))


# ------------------------------------------------------------------------- CuDNN layouts

@pytest.mark.parametrize("d", [D, H])  # D == H: a square block, the layout still matters
def test_cudnn_lstm_layout(d):
    kernel, rec, b_in, b_rec = keras_arrays("LSTM", d)
    X = np.random.default_rng(1).standard_normal((B, T, d))
    ref = reference("LSTM", kernel, rec, b_in, b_rec, X)
    kc, rc = to_cudnn(kernel, rec, 4)
    stored = [kc, rc, np.concatenate([b_in, b_rec])]           # (8H,) bias: detected
    assert rel_err(from_keras_weights("LSTM", stored)(X), ref) < 1e-12
    assert rel_err(from_keras_weights("CuDNNLSTM", stored)(X), ref) < 1e-12
    two = [kc, rc, np.stack([b_in, b_rec])]                    # (2, 4H): must be named
    with pytest.raises(ValueError, match="layout='cudnn'"):
        from_keras_weights("LSTM", two)
    assert rel_err(from_keras_weights("LSTM", two, layout="cudnn")(X), ref) < 1e-12
    assert rel_err(from_keras_weights("LSTM", [kernel, rec, np.stack([b_in, b_rec])],
                                      layout="keras")(X), ref) < 1e-12
    # negative control, the mistake the layouts make easy: sum the biases, keep the kernels
    wrong = from_keras_weights("LSTM", [kc, rc, b_in + b_rec])(X)
    assert np.abs(wrong - ref).max() > 0.1
    with pytest.raises(ValueError, match="layout="):
        from_keras_weights("LSTM", stored, layout="keras")


def test_cudnn_gru_layout():
    kernel, rec, b_in, b_rec = keras_arrays("GRU")
    ref = reference("GRU", kernel, rec, b_in, b_rec, X3)
    kc, rc = to_cudnn(kernel, rec, 3)
    stored = [kc, rc, np.concatenate([b_in, b_rec])]           # (6H,)
    assert rel_err(from_keras_weights("GRU", stored)(X3), ref) < 1e-12
    assert rel_err(from_keras_weights("GRU", [kc, rc, np.stack([b_in, b_rec])],
                                      layout="cudnn")(X3), ref) < 1e-12
    with pytest.raises(ValueError, match="reset_after=True layout"):
        from_keras_weights("GRU", stored, reset_after=False)
    with pytest.raises(ValueError, match="sigmoid"):
        from_keras_weights("GRU", stored, recurrent_activation="hard_sigmoid", keras_version=2)
    # negative control: CuDNN's kernels with the bias reshaped to Keras's (2, 3H) are read
    # as a plain Keras GRU (that shape is Keras's own layout), and are wrong
    wrong = from_keras_weights("GRU", [kc, rc, np.stack([b_in, b_rec])])(X3)
    assert np.abs(wrong - ref).max() > 0.1


# ------------------------------------------------------------------------- hard sigmoid

@pytest.mark.parametrize("kind,reset_after", [("LSTM", True), ("GRU", True), ("GRU", False)])
@pytest.mark.parametrize("version,slope", [("2.2.4", 0.2), ("3.15.1", 1 / 6)])
def test_hard_sigmoid_per_keras_version(kind, reset_after, version, slope):
    kernel, rec, b_in, b_rec = keras_arrays(kind, scale=2.0)  # many gates saturate
    if kind == "GRU" and not reset_after:
        b_rec = np.zeros_like(b_rec)
    bias = np.stack([b_in, b_rec]) if kind == "GRU" and reset_after else b_in + b_rec
    layer = from_keras_weights(kind, [kernel, rec, bias], recurrent_activation="hard_sigmoid",
                               keras_version=version)
    ref = reference(kind, kernel, rec, b_in, b_rec, X3, hard(slope), reset_after)
    assert rel_err(layer(X3), ref) < 1e-12
    other = reference(kind, kernel, rec, b_in, b_rec, X3, hard(0.2 + 1 / 6 - slope),
                      reset_after)
    assert np.abs(other - ref).max() > 1e-3  # the slope matters on these weights
    with pytest.raises(ValueError, match="keras_version="):
        from_keras_weights(kind, [kernel, rec, bias], recurrent_activation="hard_sigmoid")


def _torch_hard_loop(kind, p, X, reset_after, slope):
    """PyTorch's autograd through a hand-written loop with clamp(slope x + 0.5, 0, 1)
    (not F.hardsigmoid: its backward multiplies by 1/6 rounded to float32, 3e-8 off)."""
    import torch

    class F:
        @staticmethod
        def hardsigmoid(v):
            return torch.clamp(slope * v + 0.5, 0, 1)

    t = {k: torch.tensor(v, requires_grad=True) for k, v in p.items()}
    x = torch.tensor(X, requires_grad=True)
    h = torch.zeros(X.shape[0], H, dtype=torch.float64)
    c = torch.zeros_like(h)
    outs = []
    for s in range(X.shape[1]):
        gi = x[:, s] @ t["weight_ih"].T + t["bias_ih"]
        if kind == "LSTM":
            i, f, g, o = (gi + h @ t["weight_hh"].T + t["bias_hh"]).chunk(4, 1)
            c = F.hardsigmoid(f) * c + F.hardsigmoid(i) * torch.tanh(g)
            h = F.hardsigmoid(o) * torch.tanh(c)
        else:
            Wr, Wz, Wn = t["weight_hh"].chunk(3, 0)
            br, bz, bn = t["bias_hh"].chunk(3)
            xr, xz, xn = gi.chunk(3, 1)
            r = F.hardsigmoid(xr + h @ Wr.T + br)
            z = F.hardsigmoid(xz + h @ Wz.T + bz)
            n = torch.tanh(xn + r * (h @ Wn.T + bn)) if reset_after else \
                torch.tanh(xn + (r * h) @ Wn.T + bn)
            h = (1 - z) * n + z * h
        outs.append(h)
    return torch.stack(outs, 1), t, x


@pytest.mark.parametrize("slope", [0.2, 1 / 6])
@pytest.mark.parametrize("kind,reset_after", [("LSTM", True), ("GRU", True), ("GRU", False)])
def test_hard_sigmoid_cells_against_torch_autograd(kind, reset_after, slope):
    torch = pytest.importorskip("torch")
    cell = HardSigmoidLSTMCell(slope) if kind == "LSTM" else \
        HardSigmoidGRUCell(reset_after, slope)
    layer = Recurrent(cell, D, H, dtype="float64", seed=3)
    layer.params = {"l0": {k: 3 * v for k, v in layer.params["l0"].items()}}  # saturate some
    X = 2 * X3
    out, _, cache = layer.forward(X, training=True)
    d_out = np.random.default_rng(5).standard_normal(out.shape)
    g, dX, _ = layer.backward(cache, d_out)
    ref, t, x = _torch_hard_loop(kind, layer.params["l0"], X, reset_after, slope)
    (ref * torch.tensor(d_out)).sum().backward()
    assert rel_err(out, ref.detach().numpy()) < 1e-12
    assert rel_err(dX, x.grad.numpy()) < 1e-10
    for k, v in t.items():
        assert rel_err(g["l0"][k], v.grad.numpy()) < 1e-10, k


# ------------------------------------------------------------------------- Keras 2 HDF5

def write_keras2(path, layers, version="2.1.5", with_config=True, list_config=False,
                 functional=False):
    """A Keras 2 HDF5 file as ``model.save`` (or ``save_weights``) wrote it.

    ``layers``: (class_name, config with "name", [(weight name, array)]);
    ``functional``: a ``Model`` config, each layer reading the one before."""
    with h5py.File(path, "w") as f:
        f.attrs["keras_version"] = np.bytes_(version)
        f.attrs["backend"] = np.bytes_("tensorflow")
        g = f
        if with_config:
            cfgs = [{"class_name": c, "config": cfg} for c, cfg, _ in layers]
            conf = cfgs if list_config else {"name": "sequential_1", "layers": cfgs}
            cls = "Sequential"
            if functional:
                cls, prev = "Model", "input_1"
                cfgs = [{"name": "input_1", "class_name": "InputLayer",
                         "config": {"name": "input_1"}, "inbound_nodes": []}]
                for c, cfg, _ in layers:
                    cfgs.append({"name": cfg["name"], "class_name": c, "config": cfg,
                                 "inbound_nodes": [[[prev, 0, 0, {}]]]})
                    prev = cfg["name"]
                conf = {"name": "model_1", "layers": cfgs}
            f.attrs["model_config"] = np.bytes_(json.dumps({"class_name": cls,
                                                            "config": conf}))
            g = f.create_group("model_weights")
        g.attrs["layer_names"] = [np.bytes_(c["name"]) for _, c, _ in layers]
        for _, cfg, ws in layers:
            lg = g.create_group(cfg["name"])
            names = [f"{cfg['name']}/{w}:0" for w, _ in ws]
            lg.attrs["weight_names"] = [np.bytes_(n) for n in names]
            for n, (_, a) in zip(names, ws):
                lg.create_dataset(n, data=a.astype("float32"))


def _cudnn_char_model(tmp_path, with_config=True, list_config=True, functional=False):
    V, E = 7, D
    rng = np.random.default_rng(4)
    emb = rng.standard_normal((V, E))
    k1, r1, bi1, br1 = keras_arrays("LSTM", E, seed=1)
    k2, r2, bi2, br2 = keras_arrays("GRU", H, seed=2)
    dense_k, dense_b = rng.standard_normal((H, V)), rng.standard_normal(V)
    c1, c2 = to_cudnn(k1, r1, 4), to_cudnn(k2, r2, 3)
    layers = [("Embedding", {"name": "embedding", "input_dim": V, "output_dim": E},
               [("embeddings", emb)]),
              ("CuDNNLSTM", {"name": "rnn_1", "units": H, "return_sequences": True},
               [("kernel", c1[0]), ("recurrent_kernel", c1[1]),
                ("bias", np.concatenate([bi1, br1]))]),
              ("CuDNNGRU", {"name": "rnn_2", "units": H, "return_sequences": True},
               [("kernel", c2[0]), ("recurrent_kernel", c2[1]),
                ("bias", np.concatenate([bi2, br2]))]),
              ("Dense", {"name": "output", "units": V, "activation": "softmax"},
               [("kernel", dense_k), ("bias", dense_b)])]
    path = tmp_path / "model.h5"
    write_keras2(path, layers, with_config=with_config, list_config=list_config,
                 functional=functional)
    f32 = lambda a: a.astype("float32").astype("float64")  # noqa: E731 - as stored

    def expected(ids):
        x = f32(emb)[ids]
        h1 = reference("LSTM", f32(k1), f32(r1), f32(bi1), f32(br1), x)
        h2 = reference("GRU", f32(k2), f32(r2), f32(bi2), f32(br2), h1)
        return h2, h2 @ f32(dense_k) + f32(dense_b)

    return path, expected


@pytest.mark.parametrize("list_config,functional", [(True, False), (False, False),
                                                    (False, True)])
def test_keras2_h5_with_cudnn_layers(tmp_path, list_config, functional):
    """Keras 2.1's Sequential config (a list), 2.2's (a dict), a functional Model."""
    path, expected = _cudnn_char_model(tmp_path, list_config=list_config,
                                       functional=functional)
    model, info = read_keras(path, dtype="float64")
    ids = np.random.default_rng(0).integers(0, 7, (B, T))
    assert rel_err(model(ids), expected(ids)[1]) < 1e-12
    assert [ly["class_name"] for ly in info["layers"]] == ["Embedding", "CuDNNLSTM",
                                                           "CuDNNGRU", "Dense"]
    assert any("softmax" in n for n in info["notes"])
    assert load_keras(path).dtype == "float32"


def test_keras2_weights_only_file_by_layer_names(tmp_path):
    path, expected = _cudnn_char_model(tmp_path, with_config=False)
    with pytest.raises(ValueError, match="layers="):
        load_keras(path)
    model = load_keras(path, layers=["embedding", "rnn_1", "rnn_2"], dtype="float64")
    ids = np.random.default_rng(1).integers(0, 7, (B, T))
    assert rel_err(model(ids), expected(ids)[0]) < 1e-12
    with pytest.raises(ValueError, match="no layer named"):
        load_keras(path, layers=["embedding", "rnn_3"])


def test_keras2_hard_sigmoid_defaults(tmp_path):
    """Keras 2's LSTM and GRU (reset_after=False, no such key before 2.1.6) with their
    default hard_sigmoid gates (slope 0.2)."""
    k1, r1, b1, _ = keras_arrays("LSTM", seed=3, scale=2.0)
    k2, r2, b2, _ = keras_arrays("GRU", H, seed=4, scale=2.0)
    common = {"return_sequences": True, "activation": "tanh",
              "recurrent_activation": "hard_sigmoid"}
    layers = [("LSTM", {"name": "lstm_1", "units": H, **common},
               [("kernel", k1), ("recurrent_kernel", r1), ("bias", b1)]),
              ("GRU", {"name": "gru_1", "units": H, **common},
               [("kernel", k2), ("recurrent_kernel", r2), ("bias", b2)])]
    path = tmp_path / "hard.h5"
    write_keras2(path, layers, version="2.1.5")
    model = load_keras(path, dtype="float64")
    f32 = lambda a: a.astype("float32").astype("float64")  # noqa: E731
    z = np.zeros(3 * H)
    h1 = reference("LSTM", f32(k1), f32(r1), f32(b1), 0 * f32(b1), X3, hard(0.2))
    h2 = reference("GRU", f32(k2), f32(r2), f32(b2), z, h1, hard(0.2), reset_after=False)
    assert rel_err(model(X3), h2) < 1e-12
    # the same arrays in a weights-only file: the gate activation must be named
    write_keras2(tmp_path / "w.h5", layers, with_config=False)
    with pytest.raises(ValueError, match="recurrent_activation="):
        load_keras(tmp_path / "w.h5", layers=["lstm_1", "gru_1"])
    m2 = load_keras(tmp_path / "w.h5", layers=["lstm_1", "gru_1"],
                    recurrent_activation="hard_sigmoid", dtype="float64")
    assert rel_err(m2(X3), h2) < 1e-12


def test_refusals(tmp_path):
    layers = [("Conv1D", {"name": "conv", "filters": 2}, [("kernel", np.zeros((3, 3, 2)))])]
    write_keras2(tmp_path / "c.h5", layers)
    with pytest.raises(ValueError, match=r"'conv' is a Conv1D.*layers="):
        load_keras(tmp_path / "c.h5")
    (tmp_path / "x.h5").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="neither a Keras HDF5"):
        load_keras(tmp_path / "x.h5")
    with pytest.raises(ValueError, match="no such file"):
        load_keras(tmp_path / "missing.h5")
    kernel, rec, b_in, _ = keras_arrays("LSTM")
    with pytest.raises(ValueError, match="recurrent_activation='softsign'"):
        from_keras_weights("LSTM", [kernel, rec, b_in], recurrent_activation="softsign")
    with pytest.raises(ValueError, match="layout must be"):
        from_keras_weights("LSTM", [kernel, rec, b_in], layout="CuDNN")
    with pytest.raises(ValueError, match="1024"):  # names the CuDNN bias in the message
        from_keras_weights("LSTM", [np.zeros((100, 512)), np.zeros((128, 512)),
                                    np.zeros(999)])


# ------------------------------------------------------------------------- Keras 3 itself

def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_keras3_files_against_keras(keras, tmp_path, suffix):
    L = keras.layers
    V = 9
    model = keras.Sequential([
        keras.Input((None,), dtype="int32"),
        L.Embedding(V, 3, mask_zero=True),
        L.Bidirectional(L.LSTM(4, return_sequences=True, recurrent_activation="hard_sigmoid"),
                        merge_mode="sum"),
        L.Bidirectional(L.GRU(3, return_sequences=True, reset_after=False), merge_mode="ave"),
        L.Dropout(0.3),
        L.Bidirectional(L.SimpleRNN(2, return_sequences=True)),
        L.TimeDistributed(L.Dense(V, activation="softmax"))])
    rng = np.random.default_rng(0)
    model.set_weights([3 * rng.standard_normal(w.shape) for w in model.get_weights()])
    path = tmp_path / f"m{suffix}"
    model.save(path)
    ids = rng.integers(1, V, (3, 6))
    ids[1, :2] = 0  # pad_sequences pre-padding, masked by mask_zero
    ids[2, :4] = 0
    ref = np.asarray(model.predict(ids, verbose=0))
    ours, info = read_keras(path, dtype="float64")
    assert info["mask_zero"]
    got = _softmax(ours(ids, mask=ids != 0))
    valid = ids != 0  # Keras's outputs at masked steps are not defined the same way
    assert rel_err(got[valid], ref[valid]) < 1e-5


def test_keras3_bidirectional_classifier_with_masks(keras, tmp_path):
    """return_sequences=False: each direction's last valid step, pre-padded records."""
    L = keras.layers
    model = keras.Sequential([keras.Input((None,), dtype="int32"),
                              L.Embedding(9, 3, mask_zero=True), L.Bidirectional(L.GRU(4)),
                              L.Dense(2)])
    rng = np.random.default_rng(2)
    model.set_weights([rng.standard_normal(w.shape) for w in model.get_weights()])
    model.save(tmp_path / "b.keras")
    ids = rng.integers(1, 9, (3, 6))
    ids[1, :2] = 0
    ids[2, :4] = 0
    ref = np.asarray(model.predict(ids, verbose=0))
    ours = load_keras(tmp_path / "b.keras", dtype="float64")
    assert rel_err(ours(ids, mask=ids != 0), ref) < 1e-5


def test_keras3_functional_chain_and_classifier(keras, tmp_path):
    L = keras.layers
    inp = keras.Input((None, D))
    x = L.LSTM(4, return_sequences=True)(inp)
    x = L.GRU(4)(x)
    model = keras.Model(inp, L.Dense(2)(x))
    rng = np.random.default_rng(1)
    model.set_weights([rng.standard_normal(w.shape) for w in model.get_weights()])
    model.save(tmp_path / "f.keras")
    X = rng.standard_normal((B, T, D)).astype("float32")
    ref = np.asarray(model.predict(X, verbose=0))
    assert rel_err(load_keras(tmp_path / "f.keras", dtype="float64")(X.astype("float64")),
                   ref) < 1e-5
    # a branching model is not a chain
    a = L.LSTM(2, return_sequences=True)(inp)
    b = L.LSTM(2, return_sequences=True)(inp)
    keras.Model(inp, L.Concatenate()([a, b])).save(tmp_path / "branch.keras")
    with pytest.raises(ValueError, match="layers="):
        load_keras(tmp_path / "branch.keras")


def test_keras3_mul_merge_refused(keras, tmp_path):
    L = keras.layers
    model = keras.Sequential([keras.Input((None, D)),
                              L.Bidirectional(L.LSTM(2), merge_mode="mul")])
    model.save(tmp_path / "mul.keras")
    with pytest.raises(ValueError, match="merge_mode='mul'"):
        load_keras(tmp_path / "mul.keras")


# ------------------------------------------------------------------------- PyTorch

class _Net:
    @staticmethod
    def build(torch, kind, **kw):
        class Net(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.emb = torch.nn.Embedding(11, 5)
                rnn = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[kind]
                self.rnn = rnn(5, 6, batch_first=True, **kw)
                out = kw.get("proj_size") or 6
                self.head = torch.nn.Linear(out * (2 if kw.get("bidirectional") else 1), 11)

            def forward(self, x):
                return self.head(self.rnn(self.emb(x))[0])

        torch.manual_seed(0)
        return Net().double().eval()


@pytest.mark.parametrize("kind,kw,spec", [
    ("lstm", {"num_layers": 2, "bidirectional": True},
     "embedding(11,5) lstm(5,6,num_layers=2,bidirectional=True,batch_first=True) "
     "linear(12,11)"),
    ("gru", {"num_layers": 2}, "embedding(11,5) gru(5,6,num_layers=2) linear(6,11)"),
    ("rnn", {"nonlinearity": "relu"}, "embedding(11,5) rnn(5,6,nonlinearity=relu) linear(6,11)"),
    ("lstm", {"proj_size": 3}, "embedding(11,5) lstm(5,6,proj_size=3) linear(3,11)"),
])
def test_load_torch_against_modules(kind, kw, spec):
    torch = pytest.importorskip("torch")
    net = _Net.build(torch, kind, **kw)
    ids = np.random.default_rng(0).integers(0, 11, (B, T))
    ref = net(torch.from_numpy(ids)).detach().numpy()
    assert rel_err(load_torch(net.state_dict(), spec)(ids), ref) < 1e-12


def test_load_torch_file_and_spec_forms(tmp_path):
    torch = pytest.importorskip("torch")
    net = _Net.build(torch, "gru")
    path = tmp_path / "sd.pt"
    torch.save(net.state_dict(), path)
    ids = np.random.default_rng(1).integers(0, 11, (B, T))
    ref = net(torch.from_numpy(ids)).detach().numpy()
    for spec in ("emb=embedding(11,5) rnn=gru(5,6) head=linear(6,11)",
                 ["embedding(11,5)", {"layer": "gru", "input_size": 5, "hidden_size": 6},
                  "dropout(0.1)", "linear(6,11)"],
                 {"emb": "embedding(11,5)", "rnn": "gru(5,6)", "head": "linear(6,11)"}):
        assert rel_err(load_torch(str(path), spec)(ids), ref) < 1e-12
    with pytest.raises(ValueError, match=r"missing \[.*'rnn.weight_ih_l1'"):
        load_torch(path, "embedding(11,5) gru(5,6,num_layers=2) linear(6,11)")
    with pytest.raises(ValueError, match="3 modules with weights"):
        load_torch(path, "embedding(11,5) gru(5,6)")
    with pytest.raises(ValueError, match="does not fit gru 'rnn'"):
        load_torch(path, "embedding(11,5) gru(5,7) linear(6,11)")
    with pytest.raises(ValueError, match="unknown layer 'conv1d'"):
        load_torch(path, "embedding(11,5) conv1d(5,6) linear(6,11)")
    torch.save(torch.nn.GRU(5, 6), tmp_path / "whole.pt")  # a pickled module: refused
    with pytest.raises(ValueError, match="weights_only=True"):
        load_torch(tmp_path / "whole.pt", "gru(5,6)")


# ------------------------------------------------------------------------- unrolled import

def test_cli_import_character_model(keras, tmp_path, capsys):
    from unrolled.cli import main

    L = keras.layers
    text = "the cat sat on the mat. the dog sat on the log. " * 4
    symbols = sorted(set(text))
    V = len(symbols)
    model = keras.Sequential([keras.Input((None,), dtype="int32"), L.Embedding(V, 4),
                              L.LSTM(8, return_sequences=True), L.Dense(V)])
    model.save(tmp_path / "char.keras")
    (tmp_path / "vocab.json").write_text(json.dumps(symbols))
    (tmp_path / "held.txt").write_text(text[:60])
    out = str(tmp_path / "m")
    assert main(["import", str(tmp_path / "char.keras"), "--out", out, "--vocab",
                 str(tmp_path / "vocab.json")]) == 0
    assert "text task" in capsys.readouterr().out
    assert main(["info", out]) == 0
    assert "vocabulary: " in capsys.readouterr().out
    assert main(["predict", out, "the c"]) == 0
    assert "next:" in capsys.readouterr().out
    assert main(["generate", out, "--length", "20", "--seed", "1", "--prime", "the "]) == 0
    assert capsys.readouterr().out.startswith("the ")
    assert main(["evaluate", out, "--data", str(tmp_path / "held.txt")]) == 0
    assert "bits_per_char" in capsys.readouterr().out
    assert main(["inspect", out, "--input", "the cat", "--out", str(tmp_path / "r")]) == 0
    assert (tmp_path / "r" / "index.html").is_file()
    # the same function: Keras's logits from the saved model
    from unrolled.io import load_model

    ours, _ = load_model(out)
    ids = np.array([[symbols.index(c) for c in "the cat"]])
    assert rel_err(ours(ids), np.asarray(model.predict(ids, verbose=0))) < 1e-5
    assert main(["import", str(tmp_path / "char.keras"), "--out", out]) == 2
    assert "--force" in capsys.readouterr().err


def test_cli_import_torch_and_errors(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    from unrolled.cli import main

    net = _Net.build(torch, "lstm")
    torch.save(net.state_dict(), tmp_path / "sd.pt")
    out = str(tmp_path / "t")
    assert main(["import", str(tmp_path / "sd.pt"), "--out", out, "--spec",
                 "embedding(11,5) lstm(5,6) linear(6,11)"]) == 0
    assert "imported task" in capsys.readouterr().out
    assert main(["inspect", out, "--input", "abc", "--out", str(tmp_path / "r")]) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert main(["import", str(tmp_path / "sd.pt"), "--out", str(tmp_path / "u")]) == 2
    err = capsys.readouterr().err
    assert "--spec" in err and err.count("\n") == 1
    # a model of real-valued inputs: windows of numbers, one row per step
    seq = torch.nn.Sequential(torch.nn.LSTM(3, 4, batch_first=True))
    torch.save(seq.state_dict(), tmp_path / "num.pt")
    out = str(tmp_path / "n")
    assert main(["import", str(tmp_path / "num.pt"), "--out", out, "--spec", "lstm(3,4)"]) == 0
    assert main(["predict", out, "0.1,0.2,0.3;0.4,0.5,0.6"]) == 0
    assert "output at the last step" in capsys.readouterr().out
    assert main(["inspect", out, "--input", "0.1,0.2,0.3;0.4,0.5,0.6", "--out",
                 str(tmp_path / "rn")]) == 0
    assert (tmp_path / "rn" / "index.html").is_file()
    assert main(["evaluate", out, "--data", str(tmp_path / "num.pt")]) == 2
    assert "no data reader" in capsys.readouterr().err


def test_read_vocab_forms(tmp_path):
    from unrolled.interop.cli import read_vocab

    (tmp_path / "d.json").write_text(json.dumps({"a": 1, "b": 2, "<s>": 3}))
    assert read_vocab(tmp_path / "d.json").symbols == ("<id 0>", "a", "b", "<s>")
    (tmp_path / "l.json").write_text(json.dumps(["x", "y"]))
    assert read_vocab(tmp_path / "l.json").symbols == ("x", "y")
    (tmp_path / "bad.json").write_text(json.dumps({"a": 1, "b": 1}))
    with pytest.raises(ValueError, match="distinct"):
        read_vocab(tmp_path / "bad.json")


def test_from_keras_objects(keras):
    """Keras 3 layer objects: hard_sigmoid gates (Keras 3's slope), Embedding, Dense
    (no hand transpose), TimeDistributed(Dense), Bidirectional(merge_mode="ave")."""
    from unrolled.interop import from_keras

    L = keras.layers
    rng = np.random.default_rng(7)
    X = rng.standard_normal((B, T, D)).astype("float32")
    for kl, x in ((L.LSTM(H, return_sequences=True, recurrent_activation="hard_sigmoid"), X),
                  (L.Bidirectional(L.GRU(H, return_sequences=True), merge_mode="ave"), X),
                  (L.Dense(D), X), (L.TimeDistributed(L.Dense(5)), X),
                  (L.Embedding(6, 3), rng.integers(0, 6, (B, T)))):
        kl(x)
        kl.set_weights([2 * rng.standard_normal(w.shape) for w in kl.get_weights()])
        ref = np.asarray(kl(x).detach().cpu().numpy())
        assert rel_err(from_keras(kl)(x), ref) < 1e-5, type(kl).__name__
    dense = L.Dense(D, activation="relu")
    dense(X)
    with pytest.raises(ValueError, match="Dense is linear"):
        from_keras(dense)
