"""Model files: round trips, and refusal of crafted, corrupt, truncated and newer files."""
import json
import zipfile

import numpy as np
import pytest

import unrolled as u
from unrolled import io


def models():
    yield u.Sequential(u.Embedding(11, 4, seed=1), u.Dropout(0.2, seed=1),
                       u.LSTM(4, 6, num_layers=2, bidirectional=True, return_sequences=False,
                              forget_bias=1.0, seed=2),
                       u.Dense(12, 3, seed=3))
    yield u.Sequential(u.Elman(3, 5, nonlinearity="relu", initial_state="learned", seed=4),
                       u.Dense(5, 2, bias=False, seed=5))
    yield u.GRU(3, 4, reset_after=False, dtype="float64", truncate=3, seed=6)
    yield u.Jordan(3, 4, output_size=2, seed=7)


@pytest.mark.parametrize("model", list(models()), ids=lambda m: type(m).__name__)
def test_save_load_round_trip_gives_the_same_outputs(tmp_path, model):
    rng = np.random.default_rng(0)
    first = model.layers[0] if hasattr(model, "layers") else model
    if isinstance(first, u.Embedding):
        X = rng.integers(0, 11, (2, 5))
    else:
        X = rng.standard_normal((2, 5, 3)).astype(first.dtype)
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=bool)
    path = io.save_model(model, tmp_path / "m", config={"a": 1}, task_state={"b": [1, 2]})
    assert path == tmp_path / "m" / "model.npz"
    assert json.loads((tmp_path / "m" / "config.json").read_text())["config"] == {"a": 1}
    loaded, meta = io.load_model(tmp_path / "m")
    assert meta["task_state"] == {"b": [1, 2]} and meta["version"] == io.FORMAT_VERSION
    np.testing.assert_array_equal(loaded(X, mask=mask), model(X, mask=mask))
    # a negative control: another initialisation gives other outputs
    other = io.build_model(io.model_spec(model), seed=123)
    assert not np.array_equal(other(X, mask=mask), model(X, mask=mask))


def saved(tmp_path):
    model = u.Sequential(u.GRU(3, 4, return_sequences=False, seed=1), u.Dense(4, 2, seed=1))
    return io.save_model(model, tmp_path / "m")


def rewrite(src, dst, change_meta=None, extra=None, drop=()):
    """Copy a model file, editing its metadata or adding arrays (with pickle allowed)."""
    with np.load(src) as z:
        arrays = {k: z[k] for k in z.files if k not in drop}
    meta = json.loads(arrays["__meta__"].tobytes())
    if change_meta:
        change_meta(meta)
    arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    arrays.update(extra or {})
    np.savez(dst, **arrays)
    return dst


class Payload:
    """Unpickling this object would create a file: the proof that code ran."""

    def __init__(self, flag):
        self.flag = flag

    def __reduce__(self):
        return (open, (self.flag, "w"))


def test_pickled_object_array_is_refused_and_never_run(tmp_path):
    src = saved(tmp_path)
    flag = tmp_path / "pwned"
    evil = np.empty(1, dtype=object)
    evil[0] = Payload(str(flag))
    bad = rewrite(src, tmp_path / "evil.npz", extra={"params/0/l0/weight_ih": evil})
    with pytest.raises(ValueError, match="pickled Python objects"):
        io.load_model(bad)
    assert not flag.exists()
    # the control: numpy would run it if pickles were allowed
    with np.load(bad, allow_pickle=True) as z:
        z["params/0/l0/weight_ih"]
    assert flag.exists()


def test_newer_and_unknown_formats_are_refused(tmp_path):
    src = saved(tmp_path)
    newer = rewrite(src, tmp_path / "new.npz", lambda m: m.update(version=io.FORMAT_VERSION + 1))
    with pytest.raises(ValueError, match="newer than this unrolled reads.*upgrade"):
        io.load_model(newer)
    other = rewrite(src, tmp_path / "other.npz", lambda m: m.update(format="something-else"))
    with pytest.raises(ValueError, match="not an 'unrolled-model' file"):
        io.load_model(other)
    nometa = rewrite(src, tmp_path / "nometa.npz")
    with np.load(nometa) as z:
        arrays = {k: z[k] for k in z.files if k != "__meta__"}
    np.savez(tmp_path / "plain.npz", **arrays)
    with pytest.raises(ValueError, match="no metadata"):
        io.load_model(tmp_path / "plain.npz")


def test_truncated_and_corrupt_files_give_clear_errors(tmp_path):
    src = saved(tmp_path)
    data = src.read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        io.load_model(tmp_path / "cut.npz")
    flipped = bytearray(data)
    with zipfile.ZipFile(src) as z:  # flip a byte inside the first stored array
        info = z.infolist()[0]
    flipped[info.header_offset + 30 + len(info.filename) + 100] ^= 0xFF
    (tmp_path / "flip.npz").write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match="corrupt|truncated"):
        io.load_model(tmp_path / "flip.npz")
    missing = rewrite(src, tmp_path / "missing.npz", drop=("params/1/bias",))
    with pytest.raises(ValueError, match="do not fit the architecture"):
        io.load_model(missing)
    (tmp_path / "empty.npz").write_bytes(b"")
    with pytest.raises(ValueError, match="corrupt or truncated"):
        io.load_model(tmp_path / "empty.npz")
    with pytest.raises(ValueError, match="no such model file"):
        io.load_model(tmp_path / "nope.npz")


def test_failed_write_leaves_the_previous_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "ck.npz"
    io.save_arrays(path, {"w": np.arange(3.0)}, {"format": io.CHECKPOINT_FORMAT, "version": 1})
    before = path.read_bytes()

    def boom(f, **arrays):
        f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", boom)
    with pytest.raises(OSError, match="disk full"):
        io.save_arrays(path, {"w": np.zeros(3)}, {"format": io.CHECKPOINT_FORMAT, "version": 1})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ck.npz"]  # no temporary file left
    arrays, _ = io.load_arrays(path, io.CHECKPOINT_FORMAT)
    np.testing.assert_array_equal(arrays["w"], np.arange(3.0))


def test_object_arrays_are_not_saved(tmp_path):
    with pytest.raises(TypeError, match="only numeric"):
        io.save_arrays(tmp_path / "x.npz", {"a": np.array(["s"], dtype=object)},
                       {"format": io.MODEL_FORMAT, "version": 1})
