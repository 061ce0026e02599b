"""Data: readers for the input formats, a character vocabulary, and batching
(padding with masks, length buckets, truncated-BPTT streams, forecasting windows)."""

# ruff: noqa: F401  (re-exports)
from .batching import (
    bucket_batches,
    one_hot,
    pad,
    sliding_windows,
    split_indices,
    stream_batches,
)
from .readers import (
    CSVSeries,
    bundled_path,
    read_csv_series,
    read_names_dir,
    read_optdigits,
    read_text,
)
from .vocab import Vocab
from .ctf import CTFBatch, ctf_minibatches, infer_ctf_streams, read_ctf, write_ctf
from .trees import (
    FlatTree,
    Tree,
    TreeBatch,
    TreeVocab,
    as_tree,
    batch_trees,
    binarize,
    flatten_tree,
    format_tree,
    parse_tree,
    parse_trees,
    to_tuples,
)
