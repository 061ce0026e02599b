"""Trees for recursive (tree-structured) networks: parsing, printing, vocabulary, batching.

A tree is either a leaf (a token) or an inner node with an ordered tuple of children. Every
node may carry a label (SST-style sentiment on each phrase, a truth value on each
sub-expression). Three ways to write one:

- nested tuples: ``(("a", "b"), "c")`` -- a leaf is a ``str`` or ``int`` token, an inner
  node a ``tuple`` (or ``list``) of children; no labels;
- plain S-expressions: ``"((a b) c)"`` -- a bracket holds its children, a bare atom is a leaf;
- labelled (Penn / SST) brackets: ``"(3 (2 It) (4 (2 's) (3 good)))"`` -- the first atom of
  every bracket is the node's label; ``(label token)`` is a labelled leaf.

:func:`parse_tree` turns text into :class:`Tree`, :func:`format_tree` writes it back,
:class:`TreeVocab` maps leaf tokens to ids, and :func:`batch_trees` compiles many trees into
the index arrays that :class:`unrolled.layers.tree.RecursiveNet` runs level by level.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

_SPECIAL = "() \t\r\n"


@dataclass(frozen=True)
class Tree:
    """One node of a tree: a leaf holds ``token``, an inner node holds ``children``.

    Attributes:
        children: the child nodes, left to right; empty for a leaf.
        token: the leaf's token (``str`` or ``int``); ``None`` for an inner node.
        label: the node's label (``int`` class id, or a ``str`` such as ``"NP"``), or
            ``None`` where the node is unlabelled.
    """

    children: tuple = ()
    token: object = None
    label: object = None

    def __post_init__(self):
        if self.children and self.token is not None:
            raise ValueError(f"a Tree node has either children or a token, got both "
                             f"(token={self.token!r}); make the token a leaf child")
        if not self.children and self.token is None:
            raise ValueError("a Tree leaf needs a token; an inner node needs at least one child")

    @property
    def is_leaf(self) -> bool:
        """True for a leaf (a token, no children)."""
        return not self.children

    def leaves(self) -> list:
        """The leaf tokens, left to right."""
        if self.is_leaf:
            return [self.token]
        return [t for c in self.children for t in c.leaves()]

    def nodes(self) -> list:
        """All nodes in post-order (children left to right, then the node): the root is last."""
        out = []
        stack = [(self, False)]
        while stack:
            node, expanded = stack.pop()
            if expanded or node.is_leaf:
                out.append(node)
            else:
                stack.append((node, True))
                stack.extend((c, False) for c in reversed(node.children))
        return out

    def height(self) -> int:
        """0 for a leaf, else 1 + the tallest child."""
        return 0 if self.is_leaf else 1 + max(c.height() for c in self.children)

    def __len__(self) -> int:
        return len(self.nodes())

    def __str__(self) -> str:
        return format_tree(self)


# --------------------------------------------------------------------------- conversion

def as_tree(obj) -> Tree:
    """Accept a :class:`Tree`, or nested tuples/lists with ``str``/``int`` leaves.

    A string is a *leaf token*, never parsed: use :func:`parse_tree` for S-expressions.
    """
    if isinstance(obj, Tree):
        return obj
    if isinstance(obj, (str, int, np.integer)) and not isinstance(obj, bool):
        return Tree(token=obj.item() if isinstance(obj, np.integer) else obj)
    if isinstance(obj, (tuple, list)):
        if len(obj) == 0:
            raise ValueError("an inner node needs at least one child, got an empty tuple")
        return Tree(children=tuple(as_tree(c) for c in obj))
    raise TypeError(f"a tree is a Tree, a token (str or int) or a tuple of trees, got "
                    f"{type(obj).__name__}: {obj!r}")


def to_tuples(tree: Tree):
    """The inverse of :func:`as_tree` (labels are dropped): leaves become tokens."""
    tree = as_tree(tree)
    if tree.is_leaf:
        return tree.token
    return tuple(to_tuples(c) for c in tree.children)


# --------------------------------------------------------------------------- parsing

def _tokenize(text: str):
    """Yield ``(kind, value, position)`` with kind in ``"(", ")", "atom"``."""
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch in " \t\r\n":
            i += 1
        elif ch in "()":
            yield ch, ch, i
            i += 1
        else:
            j = i
            while j < n and text[j] not in _SPECIAL:
                j += 1
            yield "atom", text[i:j], i
            i = j


def _label_value(atom: str):
    """Integer-looking labels become ``int`` (SST's 0..4), others stay ``str`` (``"NP"``)."""
    try:
        return int(atom)
    except ValueError:
        return atom


def _context(text: str, pos: int) -> str:
    lo = max(0, pos - 20)
    return f"{text[lo:pos]!r} >>> {text[pos:pos + 20]!r}"


def parse_tree(text: str, labelled: bool = False) -> Tree:
    """Parse one bracketed tree.

    Args:
        text: ``"((a b) c)"`` (plain) or ``"(3 (2 It) (4 (2 's) (3 good)))"`` (labelled).
            A bare atom such as ``"word"`` is a one-leaf tree.
        labelled: if True, the first atom of every bracket is that node's label, and
            ``(label token)`` is a labelled leaf (Penn Treebank / SST). Integer labels are
            returned as ``int``. If False, brackets hold only children.

    Returns:
        Tree

    Raises:
        ValueError: unbalanced brackets (with the character position), an empty bracket,
            text after the tree, or (labelled) a bracket without a label.
    """
    if not isinstance(text, str):
        raise TypeError(f"parse_tree expects a str, got {type(text).__name__}; "
                        f"use as_tree for nested tuples")
    toks = list(_tokenize(text))
    if not toks:
        raise ValueError("cannot parse an empty string as a tree; pass an S-expression such "
                         "as '((a b) c)'")
    # stack of open brackets: [position, items]; items are Trees or (atom, position) pairs
    stack: list = []
    root = None
    for kind, value, pos in toks:
        if root is not None and kind == ")":
            raise ValueError(f"unbalanced brackets: ')' at position {pos} closes nothing "
                             f"(near {_context(text, pos)}); remove it or add a '(' before")
        if root is not None:
            raise ValueError(f"unexpected {value!r} at position {pos} after the end of the tree "
                             f"(near {_context(text, pos)}); one tree per string: split the "
                             f"input into lines, or wrap several trees in one more bracket")
        if kind == "(":
            stack.append([pos, []])
        elif kind == "atom":
            if not stack:
                if len(toks) == 1:
                    return Tree(token=value)
                raise ValueError(f"atom {value!r} at position {pos} is outside any bracket "
                                 f"(near {_context(text, pos)}); wrap the tree in brackets")
            stack[-1][1].append((value, pos))
        else:  # ")"
            if not stack:
                raise ValueError(f"unbalanced brackets: ')' at position {pos} closes nothing "
                                 f"(near {_context(text, pos)}); remove it or add a '(' before")
            open_pos, items = stack.pop()
            node = _build_node(items, open_pos, labelled, text)
            if stack:
                stack[-1][1].append(node)
            else:
                root = node
    if stack:
        pos = stack[-1][0]
        opened = ", ".join(str(b[0]) for b in stack)
        raise ValueError(f"unbalanced brackets: '(' at position {pos} is never closed "
                         f"({len(stack)} bracket(s) left open, opened at position(s) {opened}; "
                         f"near {_context(text, pos)}); add {len(stack)} ')' at the end")
    return root


def _build_node(items, open_pos, labelled, text) -> Tree:
    if not items:
        raise ValueError(f"empty bracket '()' at position {open_pos} "
                         f"(near {_context(text, open_pos)}); a node needs a child")

    def leaf(item):
        return item if isinstance(item, Tree) else Tree(token=item[0])

    if not labelled:
        return Tree(children=tuple(leaf(it) for it in items))
    head, rest = items[0], items[1:]
    head_is_atom = isinstance(head, tuple)  # (atom, position); a bracket is already a Tree
    if not head_is_atom:
        raise ValueError(f"labelled tree: the bracket at position {open_pos} starts with a "
                         f"bracket, not a label (near {_context(text, open_pos)}); give every "
                         f"node a label, or parse with labelled=False")
    label = _label_value(head[0])
    if not rest:
        raise ValueError(f"labelled tree: the bracket at position {open_pos} holds only the "
                         f"label {head[0]!r} (near {_context(text, open_pos)}); write "
                         f"'(label token)' for a leaf")
    if len(rest) == 1 and not isinstance(rest[0], Tree):
        return Tree(token=rest[0][0], label=label)  # (label token): a labelled leaf
    return Tree(children=tuple(leaf(it) for it in rest), label=label)


def parse_trees(text: str, labelled: bool = False) -> list[Tree]:
    """Parse one tree per non-empty line (the SST ``train.txt`` layout).

    Errors name the line number as well as the position in the line.
    """
    out = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(parse_tree(line, labelled=labelled))
        except ValueError as e:
            raise ValueError(f"line {lineno}: {e}") from None
    return out


def format_tree(tree, labelled: bool | None = None) -> str:
    """Write a tree as a bracketed string; the inverse of :func:`parse_tree`.

    Args:
        tree: a :class:`Tree` or nested tuples.
        labelled: write each node's label first; None (default) does so when every node of
            the tree has a label. A labelled leaf is written ``(label token)``.
    """
    tree = as_tree(tree)
    nodes = tree.nodes()
    if labelled is None:
        labelled = all(n.label is not None for n in nodes)
    if labelled:
        missing = [n for n in nodes if n.label is None]
        if missing:
            raise ValueError(f"format_tree(labelled=True): {len(missing)} node(s) have no "
                             f"label; pass labelled=False or label every node")
    for n in nodes:
        if n.is_leaf:
            tok = str(n.token)
            if tok == "" or any(ch in _SPECIAL for ch in tok):
                raise ValueError(f"leaf token {n.token!r} contains a space or a bracket (or is "
                                 f"empty), so it cannot be written as an atom; escape it "
                                 f"first (Penn Treebank writes '(' as -LRB-)")

    def write(n: Tree) -> str:
        if n.is_leaf:
            return f"({n.label} {n.token})" if labelled else str(n.token)
        inner = " ".join(write(c) for c in n.children)
        return f"({n.label} {inner})" if labelled else f"({inner})"

    return write(tree)


def binarize(tree, right: bool = True) -> Tree:
    """Turn every node with more than two children into a chain of binary nodes.

    ``(a b c)`` becomes ``(a (b c))`` (right=True) or ``((a b) c)``. The new intermediate
    nodes take the label of the node they came from. Unary nodes are kept as they are.
    """
    tree = as_tree(tree)
    if tree.is_leaf:
        return tree
    kids = [binarize(c, right) for c in tree.children]
    while len(kids) > 2:
        if right:
            kids = kids[:-2] + [Tree(children=tuple(kids[-2:]), label=tree.label)]
        else:
            kids = [Tree(children=tuple(kids[:2]), label=tree.label)] + kids[2:]
    return Tree(children=tuple(kids), label=tree.label)


# --------------------------------------------------------------------------- vocabulary

@dataclass
class TreeVocab:
    """A mapping from leaf tokens to row ids of the embedding table.

    Attributes:
        tokens: the tokens, id order; ``tokens[0]`` is ``unk`` when there is one.
        unk: the token that stands for anything unseen, or None to make unseen tokens an error.
    """

    tokens: list
    unk: object = "<unk>"
    index_: dict = field(init=False, repr=False)

    def __post_init__(self):
        self.index_ = {t: i for i, t in enumerate(self.tokens)}
        if len(self.index_) != len(self.tokens):
            dup = [t for t, c in Counter(self.tokens).items() if c > 1]
            raise ValueError(f"TreeVocab tokens must be unique, repeated: {dup[:5]}")
        if self.unk is not None and self.unk not in self.index_:
            raise ValueError(f"unk token {self.unk!r} is not among the tokens; add it, or "
                             f"pass unk=None to make unseen tokens an error")

    @classmethod
    def build(cls, trees, min_count: int = 1, unk="<unk>") -> TreeVocab:
        """Collect the leaf tokens of ``trees`` (most frequent first, ties in first-seen
        order); tokens seen fewer than ``min_count`` times map to ``unk``."""
        counts = Counter(t for tr in trees for t in as_tree(tr).leaves())
        kept = [t for t, c in counts.most_common() if c >= min_count and t != unk]
        if unk is not None:
            kept = [unk] + kept
        return cls(kept, unk=unk)

    def __len__(self) -> int:
        return len(self.tokens)

    def __contains__(self, token) -> bool:
        return token in self.index_

    def index(self, token) -> int:
        """The id of ``token``: the unk id for an unknown one, or ValueError without unk."""
        i = self.index_.get(token)
        if i is None:
            if self.unk is None:
                raise ValueError(f"unknown leaf token {token!r} (vocabulary of {len(self)} "
                                 f"tokens, no unk); build the vocabulary with unk='<unk>' or "
                                 f"add the token")
            return self.index_[self.unk]
        return i


# --------------------------------------------------------------------------- batching

@dataclass(frozen=True)
class FlatTree:
    """One tree as arrays, nodes in post-order (the root is the last node).

    Attributes:
        tokens: (n,) int64 embedding row of each leaf, -1 for an inner node.
        children: (n, A) int64 local index of each child, -1 for none (padding).
        labels: (n,) int64 class id of each node, -1 where the node is unlabelled.
    """

    tokens: np.ndarray
    children: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.tokens)


def flatten_tree(tree, vocab=None, max_arity: int = 2, label_map=None) -> FlatTree:
    """Compile one tree into a :class:`FlatTree`.

    Args:
        tree: a :class:`Tree` or nested tuples.
        vocab: a :class:`TreeVocab` (or any mapping token -> id); None means the leaf
            tokens already are ``int`` ids.
        max_arity: the most children a node may have; more is an error (see :func:`binarize`).
        label_map: a dict label -> class id for non-integer labels (``{"neg": 0, ...}``).
    """
    tree = as_tree(tree)
    tokens, labels, kids = [], [], []
    # post-order walk that numbers each *visit*: a Tree object used twice in one tree (a
    # shared subtree) becomes two nodes, so every node keeps exactly one parent
    done = []  # indices of finished subtrees, the children of the next parent on top
    stack = [(tree, False)]
    while stack:
        node, expanded = stack.pop()
        if not node.is_leaf and not expanded:
            if len(node.children) > max_arity:
                raise ValueError(f"a node has {len(node.children)} children but max_arity="
                                 f"{max_arity}; raise max_arity (children are zero-padded up to "
                                 f"it) or binarize the trees (unrolled.data.trees.binarize)")
            stack.append((node, True))
            stack.extend((c, False) for c in reversed(node.children))
            continue
        if node.is_leaf:
            tokens.append(_token_id(node.token, vocab))
            kids.append(())
        else:
            k = len(node.children)
            tokens.append(-1)
            kids.append(tuple(done[-k:]))
            del done[-k:]
        labels.append(-1 if node.label is None else _label_id(node.label, label_map))
        done.append(len(tokens) - 1)
    n = len(tokens)
    children = np.full((n, max_arity), -1, dtype=np.int64)
    for i, ch in enumerate(kids):
        children[i, :len(ch)] = ch
    tokens = np.asarray(tokens, dtype=np.int64)
    labels = np.asarray(labels, dtype=np.int64)
    return FlatTree(tokens, children, labels)


def _token_id(token, vocab) -> int:
    if vocab is None:
        if isinstance(token, (int, np.integer)) and not isinstance(token, bool):
            return int(token)
        raise TypeError(f"leaf token {token!r} is not an int id; pass a vocabulary "
                        f"(TreeVocab.build(trees)) to map tokens to ids")
    if isinstance(vocab, TreeVocab):
        return vocab.index(token)
    try:
        return int(vocab[token])
    except KeyError:
        raise ValueError(f"unknown leaf token {token!r}; add it to the vocabulary") from None


def _label_id(label, label_map) -> int:
    if label_map is not None:
        if label not in label_map:
            raise ValueError(f"label {label!r} is not in label_map ({sorted(label_map)[:10]}); "
                             "add it to label_map")
        return int(label_map[label])
    if isinstance(label, (int, np.integer)) and not isinstance(label, bool):
        if label < 0:
            raise ValueError(f"labels must be class ids >= 0, got {label}")
        return int(label)
    raise TypeError(f"label {label!r} is not an int class id; pass label_map={{label: id}}")


@dataclass(frozen=True)
class TreeBatch:
    """Many trees compiled for level-by-level evaluation.

    Nodes are stored twice over: the *batch order* is tree by tree, each tree in post-order
    (what users see: outputs and node labels come in this order); the *row order* sorts the
    nodes by height (leaves first), so that every height is one contiguous block of rows
    whose children all sit in earlier blocks. The network computes one block per matrix
    product.

    Attributes:
        num_trees: B.
        num_nodes: N, over all trees.
        leaf_tokens: (L,) embedding row of each leaf; leaves are rows 0..L-1.
        levels: per height h >= 1, ``(start, stop, children)`` with ``children`` (n_h, A)
            the rows of each node's children, padded with row N (a zero state).
        rows: (N,) the row of each node in batch order.
        roots: (B,) the batch-order index of each tree's root.
        labels: (N,) class id per node in batch order, -1 where unlabelled.
        sizes: (B,) number of nodes of each tree.
        max_arity: A.
    """

    num_trees: int
    num_nodes: int
    leaf_tokens: np.ndarray
    levels: tuple
    rows: np.ndarray
    roots: np.ndarray
    labels: np.ndarray
    sizes: np.ndarray
    max_arity: int

    @property
    def root_labels(self) -> np.ndarray:
        """(B,) the label of each tree's root, -1 where unlabelled."""
        return self.labels[self.roots]

    @property
    def depth(self) -> int:
        """The height of the tallest tree (number of levels above the leaves)."""
        return len(self.levels)


def batch_trees(trees, vocab=None, max_arity: int = 2, label_map=None) -> TreeBatch:
    """Compile a list of trees (or of :class:`FlatTree`) into one :class:`TreeBatch`.

    The work is vectorised over the whole batch: flatten each tree once
    (:func:`flatten_tree`) and re-batch the :class:`FlatTree` objects each epoch.
    """
    if isinstance(trees, (Tree, FlatTree)):
        raise TypeError("batch_trees expects a list of trees; wrap a single tree in a list")
    flats = [t if isinstance(t, FlatTree) else flatten_tree(t, vocab, max_arity, label_map)
             for t in trees]
    if not flats:
        raise ValueError("batch_trees needs at least one tree, got an empty list")
    for f in flats:
        if f.children.shape[1] != max_arity:
            raise ValueError(f"a FlatTree was built with max_arity={f.children.shape[1]}, "
                             f"batch_trees got max_arity={max_arity}; use the same value")
    sizes = np.array([len(f) for f in flats], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    N = int(sizes.sum())
    tokens = np.concatenate([f.tokens for f in flats])
    labels = np.concatenate([f.labels for f in flats])
    # children as batch-order indices, -1 kept for padding
    local = np.concatenate([f.children for f in flats])  # (N, A)
    shift = np.repeat(offsets, sizes)[:, None]
    kids = np.where(local >= 0, local + shift, -1)
    # heights in batch order: post-order means children come first, so one pass suffices,
    # but it is done level-synchronously with NumPy instead of a Python loop per node
    height = np.zeros(N, dtype=np.int64)
    inner = np.flatnonzero(tokens < 0)
    k_inner = kids[inner]
    while True:
        h_kids = np.where(k_inner >= 0, height[np.maximum(k_inner, 0)], -1)
        new = h_kids.max(axis=1) + 1
        if np.array_equal(new, height[inner]):
            break
        height[inner] = new
    # row order: stable sort by height, so leaves (height 0) come first in batch order
    order = np.argsort(height, kind="stable")  # row -> batch index
    rows = np.empty(N, dtype=np.int64)
    rows[order] = np.arange(N)  # batch index -> row
    h_sorted = height[order]
    bounds = np.searchsorted(h_sorted, np.arange(h_sorted[-1] + 2))
    L = int(bounds[1])
    kid_rows = np.where(kids >= 0, rows[np.maximum(kids, 0)], N)  # pad -> zero row N
    levels = []
    for h in range(1, int(h_sorted[-1]) + 1):
        start, stop = int(bounds[h]), int(bounds[h + 1])
        levels.append((start, stop, kid_rows[order[start:stop]]))
    roots = offsets + sizes - 1
    return TreeBatch(len(flats), N, tokens[order[:L]], tuple(levels), rows, roots,
                     labels, sizes, max_arity)
