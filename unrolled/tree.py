"""Parameter trees: nested dicts whose leaves are arrays.

Parameters, gradients, optimizer state and saved models all share this shape, so
optimizers, clipping, saving and interop walk trees and never need to know which layer
a leaf belongs to.
"""


def tree_map(fn, tree, *rest):
    """Apply ``fn`` leaf by leaf to one tree, or to several trees of the same structure."""
    if isinstance(tree, dict):
        return {k: tree_map(fn, tree[k], *(r[k] for r in rest)) for k in tree}
    return fn(tree, *rest)


def tree_leaves(tree):
    """The leaves of ``tree`` in a fixed order (dict insertion order, depth first)."""
    if isinstance(tree, dict):
        return [leaf for k in tree for leaf in tree_leaves(tree[k])]
    return [tree]


def tree_flatten(tree, sep="/", prefix=""):
    """``{"a": {"b": x}}`` -> ``{"a/b": x}``."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    out = {}
    for k, v in tree.items():
        key = f"{prefix}{sep}{k}" if prefix else str(k)
        out.update(tree_flatten(v, sep, key))
    return out


def tree_unflatten(flat, sep="/"):
    """Inverse of :func:`tree_flatten`."""
    tree = {}
    for key, v in flat.items():
        parts = key.split(sep)
        node = tree
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = v
    return tree


def tree_structure(tree):
    """The keys and shapes of a tree, for comparing two trees in error messages."""
    return {k: tuple(getattr(v, "shape", ())) for k, v in tree_flatten(tree).items()}
