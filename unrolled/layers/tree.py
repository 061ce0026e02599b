"""Recursive (tree-structured) network: one composition applied over a tree.

A recurrent network copies one cell along a chain; a recursive network copies one
composition function over a tree ("unrolled in space"; Pollack 1990, Goller & Kuechler
1996, Socher et al. 2011):

    leaf:        h_n = E[token_n]                                   E: (V, D)
    inner node:  h_n = act(W [h_c1; h_c2; ...; h_cA] + b)           W: (D, A*D), b: (D,)
    classifier:  o_n = U h_n + c    (at the root, or at every node) U: (C, D), c: (C,)

Nodes with fewer than A (``max_arity``) children are padded with zero states, so a unary
node reads only the first D columns of W; more than A children is an error (binarize the
tree). Training is backpropagation through structure (BPTS): the error term of a node,
delta_n = dL/dh_n * act'(a_n), is passed down to its children through W, and the weight
gradients are sums over all inner nodes, dW = sum_n delta_n [h_c1; ...; h_cA]^T.

Batching: the trees of a batch are compiled (:func:`unrolled.data.trees.batch_trees`) so
that all nodes of one *height* across the whole batch form one contiguous block of rows;
the forward pass is one gather and one matrix product per height, and the backward pass
walks the heights in reverse. The Python loop runs over the height of the tallest tree,
never over nodes.
"""
from __future__ import annotations

import numpy as np

from ..data.trees import TreeBatch, TreeVocab, batch_trees
from ..losses import log_softmax
from ..tree import tree_map
from .base import Module

_ACTIVATIONS = ("tanh", "relu")


def _act(name, a):
    if name == "tanh":
        return np.tanh(a)
    return np.maximum(a, 0)


def _act_grad(name, h):
    """act'(a) written in terms of the output h = act(a)."""
    if name == "tanh":
        return 1 - h * h
    return (h > 0).astype(h.dtype)


def softmax_cross_entropy(logits, labels):
    """Mean softmax cross-entropy over rows and its gradient.

    Args:
        logits: (M, C) array.
        labels: (M,) int class ids.

    Returns:
        loss (float), dlogits (M, C) -- the gradient of the mean loss.
    """
    M = logits.shape[0]
    logp = log_softmax(logits, axis=1)  # (M, C)
    loss = -logp[np.arange(M), labels].mean()
    dlogits = np.exp(logp)
    dlogits[np.arange(M), labels] -= 1  # softmax - one_hot
    return float(loss), dlogits / M


class RecursiveNet:
    """A recursive neural network over batches of trees, with hand-written BPTS.

    Args:
        vocab: number of leaf tokens V (leaves must then be int ids), or a
            :class:`~unrolled.data.trees.TreeVocab` that maps tokens to ids.
        hidden_size: D, the size of every node's state (leaves included).
        num_classes: C for a classifier ``o = U h + c`` on top, or None for none.
        max_arity: A, the most children a node may have; fewer are zero-padded.
        activation: ``"tanh"`` (default) or ``"relu"``.
        dtype: ``"float32"`` (default) or ``"float64"``.
        seed: seed of the initial weights.
        label_map: dict from non-integer labels (``"NP"``, ``"neg"``) to class ids.

    Attributes:
        params: ``{"embedding": (V, D), "W": (D, A*D), "b": (D,),
            "out": {"weight": (C, D), "bias": (C,)}}`` (``"out"`` only with num_classes).
            Assignable: a new tree must have the same keys and shapes.

    Example:
        >>> net = RecursiveNet(vocab=5, hidden_size=4, num_classes=2, dtype="float64")
        >>> logits, cache = net.forward([((0, 1), 2), (3, 4)])
        >>> logits.shape
        (2, 2)
        >>> loss, grads = net.value_and_grad([((0, 1), 2), (3, 4)], labels=[0, 1])
        >>> grads["W"].shape
        (4, 8)
    """

    def __init__(self, vocab, hidden_size, num_classes=None, max_arity=2, activation="tanh",
                 dtype="float32", seed=0, label_map=None):
        if isinstance(vocab, TreeVocab):
            self.vocab, V = vocab, len(vocab)
        elif isinstance(vocab, (int, np.integer)) and vocab > 0:
            self.vocab, V = None, int(vocab)
        else:
            raise TypeError(f"vocab must be a positive int (number of token ids) or a "
                            f"TreeVocab, got {vocab!r}")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {_ACTIVATIONS}, got {activation!r}")
        if np.dtype(dtype) not in (np.float32, np.float64):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
        if not (isinstance(max_arity, int) and max_arity >= 1):
            raise ValueError(f"max_arity must be an int >= 1, got {max_arity!r}")
        self.vocab_size = V
        self.hidden_size = int(hidden_size)
        self.num_classes = num_classes
        self.max_arity = max_arity
        self.activation = activation
        self.dtype = np.dtype(dtype)
        self.seed = seed
        self.label_map = label_map
        self._params = self.init_params(np.random.default_rng(seed))

    def init_params(self, rng):
        """Fresh parameters: N(0, 1/sqrt(D)) leaves, Glorot-uniform W and U, zero biases."""
        V, D, A, C = self.vocab_size, self.hidden_size, self.max_arity, self.num_classes
        lim = np.sqrt(6.0 / (A * D + D))
        p = {
            "embedding": rng.normal(0.0, 1.0 / np.sqrt(D), (V, D)),
            "W": rng.uniform(-lim, lim, (D, A * D)),
            "b": np.zeros(D),
        }
        if C is not None:
            lim = np.sqrt(6.0 / (D + C))
            p["out"] = {"weight": rng.uniform(-lim, lim, (C, D)), "bias": np.zeros(C)}
        return tree_map(lambda a: a.astype(self.dtype), p)

    # the parameter tree, assigned as every layer's is: same keys and shapes required,
    # values copied and cast to the network's dtype
    params = Module.params
    num_params = Module.num_params

    def get_config(self):
        """The constructor arguments as JSON-able values (a TreeVocab becomes its tokens);
        :meth:`from_config` inverts it, and the weights go in :attr:`params`."""
        vocab = self.vocab_size if self.vocab is None else {"tokens": list(self.vocab.tokens),
                                                            "unk": self.vocab.unk}
        return {"vocab": vocab, "hidden_size": self.hidden_size,
                "num_classes": self.num_classes, "max_arity": self.max_arity,
                "activation": self.activation, "dtype": self.dtype.name, "seed": self.seed,
                "label_map": self.label_map}

    @classmethod
    def from_config(cls, config):
        """Rebuild a network (fresh weights) from :meth:`get_config`."""
        config = dict(config)
        if isinstance(config.get("vocab"), dict):
            config["vocab"] = TreeVocab(**config["vocab"])
        return cls(**config)

    def __call__(self, trees, all_nodes=False):
        """Outputs only (logits or states), no cache: inference."""
        return self.forward(trees, all_nodes=all_nodes)[0]

    def __repr__(self):
        return (f"RecursiveNet(vocab={self.vocab_size}, hidden_size={self.hidden_size}, "
                f"num_classes={self.num_classes}, max_arity={self.max_arity}, "
                f"activation={self.activation!r}, dtype={self.dtype.name!r})")

    # ------------------------------------------------------------------ batching

    def compile(self, trees) -> TreeBatch:
        """Compile trees (Tree objects or nested tuples) once, to reuse across calls."""
        if isinstance(trees, TreeBatch):
            if trees.max_arity != self.max_arity:
                raise ValueError(f"the batch was compiled with max_arity={trees.max_arity}, "
                                 f"this network has max_arity={self.max_arity}; compile "
                                 "the trees with this network's compile()")
            return trees
        batch = batch_trees(trees, self.vocab, self.max_arity, self.label_map)
        if batch.leaf_tokens.size and (batch.leaf_tokens.min() < 0
                                       or batch.leaf_tokens.max() >= self.vocab_size):
            bad = batch.leaf_tokens[(batch.leaf_tokens < 0)
                                    | (batch.leaf_tokens >= self.vocab_size)][0]
            raise ValueError(f"leaf token id {bad} is outside 0..{self.vocab_size - 1}; "
                             f"raise vocab or map tokens through a TreeVocab")
        return batch

    # ------------------------------------------------------------------ forward

    def forward(self, trees, all_nodes=False):
        """Run the network over a batch of trees.

        Args:
            trees: a list of trees (:class:`~unrolled.data.trees.Tree` or nested tuples),
                or a :class:`~unrolled.data.trees.TreeBatch` from :meth:`compile`.
            all_nodes: return an output for every node (batch order: tree by tree, each in
                post-order, root last) instead of one per tree (its root).

        Returns:
            outputs: logits (B, C) -- or (N, C) with all_nodes -- when the network has a
                classifier, else hidden states (B, D) / (N, D).
            cache: what :meth:`backward` needs (the batch, every node state, the selection).
        """
        batch = self.compile(trees)
        p, act = self._params, self.activation
        N, D, A = batch.num_nodes, self.hidden_size, self.max_arity
        # H holds every node state in row order (leaves first, then by height) plus a zero
        # row N that stands for a missing child
        H = np.zeros((N + 1, D), dtype=self.dtype)  # (N+1, D)
        L = len(batch.leaf_tokens)
        H[:L] = p["embedding"][batch.leaf_tokens]  # leaves: h = E[token]
        X = []  # the gathered children of each level, kept for dW
        for start, stop, kids in batch.levels:
            x = H[kids].reshape(stop - start, A * D)  # (n_h, A*D) = [h_c1; ...; h_cA]
            H[start:stop] = _act(act, x @ p["W"].T + p["b"])  # (n_h, D)
            X.append(x)
        sel = batch.rows if all_nodes else batch.rows[batch.roots]  # rows of the outputs
        hs = H[sel]  # (B or N, D)
        out = hs @ p["out"]["weight"].T + p["out"]["bias"] if "out" in p else hs
        cache = {"batch": batch, "H": H, "X": X, "sel": sel, "hs": hs}
        return out, cache

    # ------------------------------------------------------------------ backward

    def backward(self, cache, d_outputs):
        """Backpropagation through structure.

        Args:
            cache: from :meth:`forward`.
            d_outputs: dL/d(outputs), the shape of forward's outputs.

        Returns:
            grads: a tree with the structure of :attr:`params`.
        """
        p, act = self._params, self.activation
        batch, H, X, sel, hs = (cache[k] for k in ("batch", "H", "X", "sel", "hs"))
        D = self.hidden_size
        d_outputs = np.asarray(d_outputs, dtype=self.dtype)
        want = hs.shape if "out" not in p else (hs.shape[0], self.num_classes)
        if d_outputs.shape != want:
            raise ValueError(f"d_outputs must have the shape of the outputs {want}, got "
                             f"{d_outputs.shape}")
        grads = tree_map(np.zeros_like, p)
        # dH[r] = dL/dh of the node in row r; row N is the zero padding and collects junk
        dH = np.zeros_like(H)  # (N+1, D)
        if "out" in p:
            # backprop into the classifier o = U h + c
            grads["out"]["weight"] += d_outputs.T @ hs  # (C, D)
            grads["out"]["bias"] += d_outputs.sum(axis=0)
            dH[sel] += d_outputs @ p["out"]["weight"]  # (M, D); rows in sel are distinct
        else:
            dH[sel] += d_outputs
        # walk the heights top down: a node's dH is complete once all its ancestors are done
        for (start, stop, kids), x in zip(reversed(batch.levels), reversed(X)):
            delta = dH[start:stop] * _act_grad(act, H[start:stop])  # (n_h, D) error terms
            grads["W"] += delta.T @ x  # (D, A*D), summed over the level's nodes
            grads["b"] += delta.sum(axis=0)
            dx = (delta @ p["W"]).reshape(-1, D)  # (n_h*A, D) error passed to each child
            # each node has one parent, so real child rows are distinct and fancy += is
            # exact; repeats occur only for the padding row N, whose value is never read
            dH[kids.reshape(-1)] += dx
        # leaves: E[token] was copied, so its gradient is a scatter-add (tokens repeat)
        L = len(batch.leaf_tokens)
        np.add.at(grads["embedding"], batch.leaf_tokens, dH[:L])
        return grads

    # ------------------------------------------------------------------ loss

    def value_and_grad(self, trees, labels=None, all_nodes=False):
        """Softmax cross-entropy and its gradient.

        Args:
            trees: a list of trees or a compiled TreeBatch.
            labels: root mode (all_nodes=False): (B,) class ids, default the roots' labels.
                All-nodes mode (SST-style): (N,) class ids in batch order with -1 for
                unlabelled nodes, default the nodes' own labels.
            all_nodes: the loss is the mean over every labelled node instead of over roots.

        Returns:
            loss (float, mean over the labelled roots or nodes), grads (tree like params).
        """
        if "out" not in self._params:
            raise ValueError("value_and_grad needs a classifier: build the network with "
                             "num_classes=C")
        batch = self.compile(trees)
        n = batch.num_nodes if all_nodes else batch.num_trees
        if labels is None:
            labels = batch.labels if all_nodes else batch.root_labels
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        if labels.shape != (n,):
            what = "nodes (N)" if all_nodes else "trees (B)"
            raise ValueError(f"labels must have one entry per {what} = {n}, got {labels.shape}")
        keep = np.flatnonzero(labels >= 0)
        if keep.size == 0:
            raise ValueError("no labelled node: give labels, or trees parsed with "
                             "labelled=True")
        if not all_nodes and keep.size != n:
            raise ValueError(f"{n - keep.size} tree(s) have no root label; every root needs "
                             f"a class id >= 0")
        if labels.max() >= self.num_classes:
            raise ValueError(f"label {labels.max()} is outside 0..{self.num_classes - 1}; "
                             "build the network with more num_classes or fix the labels")
        logits, cache = self.forward(batch, all_nodes=all_nodes)
        loss, dsub = softmax_cross_entropy(logits[keep], labels[keep])
        dlogits = np.zeros_like(logits)
        dlogits[keep] = dsub
        return loss, self.backward(cache, dlogits)

    def predict(self, trees, all_nodes=False):
        """Class ids, (B,) at the roots or (N,) at every node (needs num_classes)."""
        if "out" not in self._params:
            raise ValueError("predict needs a classifier: build the network with num_classes=C")
        logits, _ = self.forward(trees, all_nodes=all_nodes)
        return logits.argmax(axis=1)
