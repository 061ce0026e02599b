"""The layer protocol shared by every building block.

A layer owns its parameters (``.params``, a nested dict of arrays) and has two methods
written by hand, a forward that leaves a cache and a backward that consumes it:

    out, state, cache = layer.forward(X, mask=None, initial_state=None, training=False)
    grads, dX, d_initial_state = layer.backward(cache, d_out, d_state=None)

``grads`` has the tree structure of ``.params``. Calling a layer runs the forward in
inference mode and keeps no tape.
"""
import numpy as np

from ..backend import get_xp
from ..tree import tree_flatten, tree_structure


class Module:
    """Base of every layer: the protocol above, ``params`` assignment and calling."""

    recurrent = False  # True for layers that take an initial state and return one

    def forward(self, X, mask=None, initial_state=None, training=False, keep_tape=True):
        """``(out, state, cache)``: the outputs, the final recurrent state (None for a
        feed-forward layer) and what :meth:`backward` needs.

        ``X`` is (B, T, D) or (B, D) (or (B, T) integer symbols for an embedding),
        ``mask`` (B, T) bool; ``training`` turns dropout on."""
        raise NotImplementedError

    def backward(self, cache, d_out, d_state=None):
        """``(grads, dX, d_initial_state)`` from the ``cache`` of :meth:`forward` and the
        gradient of the loss w.r.t. its outputs (and its final state)."""
        raise NotImplementedError

    def __call__(self, X, mask=None, initial_state=None, return_state=False):
        out, state, _ = self.forward(X, mask=mask, initial_state=initial_state,
                                     training=False, keep_tape=False)
        return (out, state) if return_state else out

    @property
    def params(self):
        """The parameter tree; assigning one checks its keys, shapes and copies it."""
        return self._params

    @params.setter
    def params(self, tree):
        self._params = assign_like(self._params, tree, type(self).__name__)

    def num_params(self):
        """The number of scalar parameters."""
        return sum(int(np.prod(v.shape)) for v in tree_flatten(self.params).values())

    # -- how the layer prints (see unrolled.layers.describe) ---------------------------
    def extra_repr(self):
        """The inside of ``Name(...)``: the sizes, then every option that is not the
        constructor's default."""
        from .describe import extra_repr

        return extra_repr(self)

    def named_children(self):
        """``(name, layer)`` of the layers inside this one (none for a plain layer)."""
        return []

    def __repr__(self):
        from .describe import module_repr

        return module_repr(self)

    def summary(self):
        """A table of the layers: output shape, parameters and bytes of tape per record
        and per step, as Keras's ``model.summary()`` (``print(model.summary())``)."""
        from .describe import summary

        return summary(self)


def assign_like(old, new, who):
    """A copy of ``new`` checked against the structure, shapes and dtype of ``old``."""
    if not isinstance(new, dict):
        raise TypeError(f"{who}.params must be assigned a nested dict of arrays, "
                        f"got {type(new).__name__}")
    fo, fn = tree_flatten(old), tree_flatten(new)
    if set(fo) != set(fn):
        missing, extra = sorted(set(fo) - set(fn)), sorted(set(fn) - set(fo))
        raise ValueError(f"{who}.params: the new tree has a different structure (missing "
                         f"{missing}, unexpected {extra}); expected {tree_structure(old)}")
    out = {}
    for k, v in old.items():
        if isinstance(v, dict):
            out[k] = assign_like(v, new[k], f"{who}/{k}")
            continue
        a = new[k]
        if tuple(getattr(a, "shape", ())) != tuple(v.shape):
            raise ValueError(f"{who}.params['{k}'] has shape {tuple(getattr(a, 'shape', ()))}, "
                             f"expected {tuple(v.shape)}")
        out[k] = get_xp(v).array(a, dtype=v.dtype, copy=True)  # on v's device
    return out


def make_rng(seed):
    """Two independent generators from one seed: parameters, and dropout at run time."""
    ss = np.random.SeedSequence(seed)
    a, b = ss.spawn(2)
    return np.random.default_rng(a), np.random.default_rng(b)
