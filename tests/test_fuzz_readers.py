"""Fuzzing the readers (names, text, CSV series, CTF, trees, model files) with random and
mutated inputs (seeded, so a failure repeats): every outcome is a result or a one-line
ValueError, never another exception (which the CLI would show as an internal error)."""
import numpy as np
import pytest

from unrolled import io
from unrolled.data import read_csv_series, read_names_dir, read_text
from unrolled.data.ctf import infer_ctf_streams, read_ctf
from unrolled.data.trees import parse_trees

N = 80  # inputs per reader: half random bytes, half mutations of a valid file

CSV = b"date,temp,wind\n2020-01-01,1.5,NW\n2020-01-02,,SE\n2020-01-03,2.5,NW\n2020-01-04,3,SE\n"
CTF = b"0 |x 1 2 |y 0:1\n0 |x 3 4\n1 |x 5 6 |y 1:1\n"
NAMES = "Abe\nSato\nTanaka\n".encode()
TREES = "(S (NP the cat) (VP sat))\n(S (NP a dog) (VP ran (PP away)))\n"


def mutate(seed, blob):
    """``blob`` with a few bytes flipped, cut, repeated or inserted (seeded)."""
    rng = np.random.default_rng(seed)
    b = bytearray(blob)
    for _ in range(rng.integers(1, 6)):
        op = rng.integers(4)
        i = int(rng.integers(len(b) + 1))
        if op == 0 and b:
            b[min(i, len(b) - 1)] ^= 1 << int(rng.integers(8))
        elif op == 1:
            del b[i:i + int(rng.integers(1, 8))]
        elif op == 2:
            b[i:i] = bytes(rng.choice(list(b"0123456789,.:|-\n\t ()e+nan\x00\xff"),
                                      int(rng.integers(1, 6))))
        else:
            b[i:i] = b[i:i + int(rng.integers(1, 12))]
    return bytes(b)


def inputs():
    """Seeds (mutate a valid file) and random byte strings, alternating."""
    rng = np.random.default_rng(13)
    out = []
    for k in range(N):
        out.append(k if k % 2 else rng.bytes(int(rng.integers(0, 300))))
    return out


def one_line(call):
    try:
        return call()
    except ValueError as e:
        assert "\n" not in str(e).strip(), str(e)
        assert str(e).strip(), "an empty message"
        return None


def blob_for(x, base):
    return mutate(x, base) if isinstance(x, int) else x


@pytest.mark.parametrize("x", inputs())
def test_fuzz_csv_series(tmp_path, x):
    p = tmp_path / "s.csv"
    p.write_bytes(blob_for(x, CSV))
    one_line(lambda: read_csv_series(p, categorical=["wind"], index="date"))
    one_line(lambda: read_csv_series(p))


@pytest.mark.parametrize("x", inputs())
def test_fuzz_ctf(tmp_path, x):
    p = tmp_path / "s.ctf"
    p.write_bytes(blob_for(x, CTF))
    one_line(lambda: read_ctf(p, {"x": (2, "dense"), "y": (2, "sparse")}))
    one_line(lambda: infer_ctf_streams(p))


@pytest.mark.parametrize("x", inputs())
def test_fuzz_names_and_text(tmp_path, x):
    d = tmp_path
    (d / "Japanese.txt").write_bytes(blob_for(x, NAMES))
    (d / "Other.txt").write_bytes(b"Smith\n")
    one_line(lambda: read_names_dir(d))
    one_line(lambda: read_text(d / "Japanese.txt"))


@pytest.mark.parametrize("x", inputs())
def test_fuzz_trees(x):
    text = blob_for(x, TREES.encode()).decode("utf-8", "replace")
    one_line(lambda: parse_trees(text))
    one_line(lambda: parse_trees(text, labelled=True))


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    from unrolled import layers as L

    p = tmp_path_factory.mktemp("model") / "m.npz"
    model = L.Sequential(L.GRU(3, 4, seed=0), L.Dense(4, 2, seed=1))
    io.save_model(model, p, config={"task": "names"})
    return p.read_bytes()


@pytest.mark.parametrize("x", inputs())
def test_fuzz_model_files(tmp_path, model_file, x):
    p = tmp_path / "m.npz"
    p.write_bytes(blob_for(x, model_file))
    one_line(lambda: io.load_model(p))


def task_for(name, **over):
    from unrolled.config import resolve_config
    from unrolled.tasks import get_task

    T = get_task(name)
    return T(resolve_config(T, overrides={k: str(v) for k, v in over.items()}))


SERIES_CSV = b"t,y\n" + b"".join(f"{i},{(i * 7) % 11}.5\n".encode() for i in range(40))
CTF_SEQ = b"".join(f"{k} |x {k % 3} {k % 5} |y {k % 2}:1\n{k} |x 1 0\n".encode()
                   for k in range(30))


@pytest.mark.parametrize("x", inputs()[:40])
def test_fuzz_task_loading(tmp_path, x):
    """The tasks' own checks on top of the readers: still one line."""
    names = tmp_path / "names"
    names.mkdir()
    (names / "Japanese.txt").write_bytes(blob_for(x, NAMES * 4))
    (names / "Russian.txt").write_bytes("Ivanov\nPetrov\nSidorov\nSmirnov\n".encode())
    one_line(lambda: task_for("names").load(names))
    series = tmp_path / "s.csv"
    series.write_bytes(blob_for(x, SERIES_CSV))
    one_line(lambda: task_for("series", window=3, season=0).load(series))
    ctf = tmp_path / "s.ctf"
    ctf.write_bytes(blob_for(x, CTF_SEQ))
    one_line(lambda: task_for("ctf", features="x", labels="y").load(ctf))
