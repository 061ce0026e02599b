"""A real pretrained Keras 2 model, read and looked inside: textgenrnn's character model.

textgenrnn 2.0.0 (Max Woolf, MIT licence; on PyPI as an sdist) ships
``textgenrnn_weights.hdf5``, saved by Keras 2.1.5 with ``save_weights`` (weights only, no
config): Embedding(465, 100) -> CuDNNLSTM(128) -> CuDNNLSTM(128) -> the concatenation of
the embedding and both LSTM outputs -> an attention layer of its own
(AttentionWeightedAverage) -> Dense(465, softmax). Its input is the last 40 characters,
pre-padded with id 0 (Keras's ``pad_sequences``; no mask), and it predicts the next one.

This script

1. downloads the sdist with pip into --dir (once) and takes the weights and the
   vocabulary out of it (nothing is added to this repository);
2. reads ``embedding``, ``rnn_1``, ``rnn_2`` with
   ``unrolled.interop.load_keras(..., layers=[...])`` (the CuDNN layout is recognised
   from the 8H biases);
3. where Keras is installed, builds the same layers in Keras 3 with the stored weights
   converted by Keras 2's own rule (written out below) and prints the largest
   difference of the rnn_2 outputs, in float64 and float32;
4. computes the attention and the Dense layer in NumPy, as textgenrnn's
   AttentionWeightedAverage does (so the next-character probabilities are the full
   model's, not an approximation), prints the loss per character on a few sentences
   (against the mistake of summing the CuDNN biases and keeping its kernels) and
   samples text as textgenrnn does;
5. writes the model with ``unrolled import`` and its ``unrolled inspect`` report.

    python examples/textgenrnn.py --dir ~/.cache/unrolled/textgenrnn --out runs/textgenrnn
"""
import argparse
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np

from unrolled.interop import from_keras_weights, load_keras

LAYERS = ["embedding", "rnn_1", "rnn_2"]
MAXLEN = 40  # textgenrnn's max_length
META = "<s>"  # textgenrnn's start (and end) token
SENTENCES = ["The best way to learn a new programming language is to write a small "
             "project in it.", "What is the most interesting thing you learned today?",
             "I made a map of every coffee shop in the city."]


def fetch(directory):
    """``(weights path, vocab path)``, downloading textgenrnn's sdist with pip once."""
    d = Path(directory).expanduser()
    weights, vocab = d / "textgenrnn_weights.hdf5", d / "textgenrnn_vocab.json"
    if weights.is_file() and vocab.is_file():
        return weights, vocab
    d.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "textgenrnn==2.0.0", "--no-deps",
                    "--no-binary", ":all:", "-d", str(d)], check=True)
    sdist = d / "textgenrnn-2.0.0.tar.gz"
    with tarfile.open(sdist) as tar:
        for name, dest in (("textgenrnn_weights.hdf5", weights),
                           ("textgenrnn_vocab.json", vocab)):
            member = tar.getmember(f"textgenrnn-2.0.0/textgenrnn/{name}")
            dest.write_bytes(tar.extractfile(member).read())
    return weights, vocab


def stored_arrays(path):
    """The arrays of the file as stored: {layer: [arrays in weight_names order]}."""
    import h5py

    out = {}
    with h5py.File(path, "r") as f:
        for name in [n.decode() for n in f.attrs["layer_names"]]:
            g = f[name]
            out[name] = [np.asarray(g[w]) for w in g.attrs["weight_names"]]
    return out


def keras2_cudnn_to_lstm(kernel, rec, bias):
    """Keras 2's ``_convert_rnn_weights`` (keras/engine/saving.py) from CuDNNLSTM to LSTM:
    each input-kernel gate block k -> k.T.reshape(k.shape, order="F"), each recurrent
    block transposed, the two halves of the bias summed."""
    k = np.hstack([b.T.reshape(b.shape, order="F") for b in np.hsplit(kernel, 4)])
    r = np.hstack([b.T for b in np.hsplit(rec, 4)])
    return [k, r, bias[:bias.size // 2] + bias[bias.size // 2:]]


def windows(ids_list):
    """(N, 40) int windows: the last 40 ids of each list, pre-padded with 0."""
    X = np.zeros((len(ids_list), MAXLEN), dtype=np.int64)
    for i, ids in enumerate(ids_list):
        ids = ids[-MAXLEN:]
        X[i, MAXLEN - len(ids):] = ids
    return X


def next_char_probs(model, arrays, X):
    """textgenrnn's head on unrolled's layers: concat(embedding, rnn_1, rnn_2) ->
    AttentionWeightedAverage (logits x·W over time, softmax, weighted sum) -> Dense
    softmax. Returns (N, 465) float64."""
    emb = model.layers[0](X)
    h1 = model.layers[1](emb)
    h2 = model.layers[2](h1)
    seq = np.concatenate([emb, h1, h2], axis=-1).astype(np.float64)     # (N, 40, 356)
    W = arrays["attention"][0].astype(np.float64)                       # (356, 1)
    logits = (seq @ W)[..., 0]
    a = np.exp(logits - logits.max(axis=1, keepdims=True))
    a = a / (a.sum(axis=1, keepdims=True) + 1e-7)                       # K.epsilon()
    pooled = (seq * a[..., None]).sum(axis=1)
    kernel, bias = (x.astype(np.float64) for x in arrays["output"])
    z = pooled @ kernel + bias
    p = np.exp(z - z.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True)


def nats_per_char(model, arrays, vocab, sentences):
    total, n = 0.0, 0
    for s in sentences:
        ids = [vocab[META]] + [vocab[c] for c in s if c in vocab] + [vocab[META]]
        X = windows([ids[:i] for i in range(1, len(ids))])
        p = next_char_probs(model, arrays, X)
        total -= float(np.log(p[np.arange(len(X)), ids[1:]]).sum())
        n += len(X)
    return total / n


def sample(model, arrays, vocab, seed, length, temperature):
    """textgenrnn_generate: start from <s>, sample (never the padding id 0), stop at <s>."""
    chars = {i: c for c, i in vocab.items()}
    rng = np.random.default_rng(seed)
    ids = [vocab[META]]
    while len(ids) < length:
        p = next_char_probs(model, arrays, windows([ids]))[0]
        logp = np.log(p + 1e-7) / temperature
        q = np.exp(logp - logp.max())
        nxt = int(rng.choice(len(q), p=q / q.sum()))
        if nxt == 0:
            nxt = int(np.argsort(q)[-2])
        ids.append(nxt)
        if nxt == vocab[META]:
            break
    return "".join(chars[i] for i in ids[1:] if i != vocab[META])


def keras_check(arrays, model64, model32, X):
    """Largest |unrolled - Keras 3| of the rnn_2 outputs, float64 and float32."""
    os.environ.setdefault("KERAS_BACKEND", "torch")
    try:
        import keras
    except ImportError:
        return None
    out, refs = {}, {}
    for dtype, ours in (("float64", model64), ("float32", model32)):
        k = keras.Sequential([keras.Input((MAXLEN,), dtype="int32"),
                              keras.layers.Embedding(465, 100, dtype=dtype),
                              keras.layers.LSTM(128, return_sequences=True, dtype=dtype),
                              keras.layers.LSTM(128, return_sequences=True, dtype=dtype)])
        # converted in the layer's precision (the bias halves summed in float32 would be
        # off by float32 rounding from the float64 sum unrolled does)
        w = {n: [a.astype(dtype) for a in arrays[n]] for n in LAYERS}
        k.layers[0].set_weights(w["embedding"])
        k.layers[1].set_weights(keras2_cudnn_to_lstm(*w["rnn_1"]))
        k.layers[2].set_weights(keras2_cudnn_to_lstm(*w["rnn_2"]))
        ref = np.asarray(k(X).detach().cpu().numpy(), dtype=np.float64)
        refs[dtype] = ref
        out[dtype] = float(np.abs(ours(X).astype(np.float64) - ref).max())
    # float32 rounding on each side, measured against the float64 computation
    out["keras32_vs_64"] = float(np.abs(refs["float32"] - refs["float64"]).max())
    out["ours32_vs_64"] = float(np.abs(model32(X).astype(np.float64) - refs["float64"]).max())
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", default="~/.cache/unrolled/textgenrnn",
                    help="where the sdist and the two files are kept")
    ap.add_argument("--out", default="runs/textgenrnn", help="model directory and report")
    ap.add_argument("--length", type=int, default=200, help="characters per sample")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--temperature", type=float, default=0.5)
    args = ap.parse_args(argv)

    weights, vocab_path = fetch(args.dir)
    vocab = json.loads(vocab_path.read_text(encoding="utf-8"))
    arrays = stored_arrays(weights)
    model64 = load_keras(weights, layers=LAYERS, dtype="float64")
    model32 = load_keras(weights, layers=LAYERS)
    print(f"read {weights.name}: {model32!r}".replace("\n", "\n  "))

    ids = [[vocab[META]] + [vocab[c] for c in s if c in vocab] for s in SENTENCES]
    X = windows([i[:k] for i in ids for k in (10, 25, 41)])
    diff = keras_check(arrays, model64, model32, X)
    if diff is None:
        print("Keras is not installed: the comparison with Keras 3 is skipped")
    else:
        print(f"rnn_2 outputs, max |unrolled - Keras 3| over {X.shape[0]} windows of "
              f"{MAXLEN}: float64 {diff['float64']:.2g}, float32 {diff['float32']:.2g} (each "
              f"float32 result against float64: Keras {diff['keras32_vs_64']:.2g}, unrolled "
              f"{diff['ours32_vs_64']:.2g})")

    good = nats_per_char(model64, arrays, vocab, SENTENCES)
    wrong = model64.layers[:1] + [from_keras_weights(
        "LSTM", [k, r, b[:b.size // 2] + b[b.size // 2:]], layout="keras",
        dtype="float64", return_sequences=True) for k, r, b in (arrays["rnn_1"],
                                                                arrays["rnn_2"])]
    from unrolled.layers import Sequential

    bad = nats_per_char(Sequential(*wrong), arrays, vocab, SENTENCES)
    print(f"loss on {len(SENTENCES)} sentences: {good:.3f} nats/char read as CuDNN layout; "
          f"{bad:.3f} with the summed-bias mistake (CuDNN kernels kept as if Keras's)")

    for seed in args.seeds:
        text = sample(model32, arrays, vocab, seed, args.length, args.temperature)
        print(f"sample (seed {seed}, temperature {args.temperature}): {text!r}")

    from unrolled.cli import main as cli

    out = Path(args.out)
    rc = cli(["import", str(weights), "--layers", ",".join(LAYERS), "--vocab",
              str(vocab_path), "--out", str(out / "model"), "--force"])
    rc = rc or cli(["inspect", str(out / "model"), "--input", "Hello world",
                    "--out", str(out / "inspect")])
    return rc


if __name__ == "__main__":
    sys.exit(main())
