"""CNTK's ATIS slot-tagging recipe on a tagged corpus you can install.

Writes the corpus of the PyPI package ``hironsancorpus`` (Japanese news, IOB2 named
entities) in the layout of CNTK's ATIS files: one word per line as a sparse one-hot
stream ``S0`` over the vocabulary, its tag as a sparse one-hot stream ``S2``, and the
vocabularies as ``.wl`` files (one name per line). Then train as CNTK's tutorial does
(Embedding 150 -> bidirectional LSTM 300 -> Dense):

    python examples/ctf_slot_tagging.py --out runs/slots
    unrolled train ctf --data runs/slots/train.ctf --test runs/slots/test.ctf \\
        --features S0 --labels S2 --embedding 150 --cell lstm --hidden 300 \\
        --bidirectional true --dropout 0.2 --label-names runs/slots/slots.wl \\
        --feature-names runs/slots/words.wl --out runs/slots/model
"""
import argparse
from pathlib import Path

import numpy as np

from unrolled.data.ctf import write_ctf
from unrolled.tasks.tagging import hironsan_path, read_tagged


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder for the CTF and .wl files")
    ap.add_argument("--test-fraction", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sents = read_tagged(hironsan_path())
    words = sorted({w for toks, _ in sents for w in toks})
    tags = ["O"] + sorted({t for _, ts in sents for t in ts} - {"O"})
    (out / "words.wl").write_text("\n".join(words) + "\n", encoding="utf-8")
    (out / "slots.wl").write_text("\n".join(tags) + "\n", encoding="utf-8")
    wi, ti = {w: i for i, w in enumerate(words)}, {t: i for i, t in enumerate(tags)}
    streams = {"S0": (len(words), "sparse"), "S2": (len(tags), "sparse")}

    def records(idx):
        for k in idx:
            toks, ts = sents[k]
            yield {"S0": np.eye(len(words), dtype=np.float32)[[wi[w] for w in toks]],
                   "S2": np.eye(len(tags), dtype=np.float32)[[ti[t] for t in ts]]}

    order = np.random.default_rng(args.seed).permutation(len(sents))
    n_test = int(round(args.test_fraction * len(sents)))
    write_ctf(out / "test.ctf", records(order[:n_test]), streams)
    write_ctf(out / "train.ctf", records(order[n_test:]), streams)
    print(f"{len(sents)} sentences ({len(sents) - n_test} train, {n_test} test), "
          f"{len(words)} words, {len(tags)} tags -> {out}")


if __name__ == "__main__":
    main()
