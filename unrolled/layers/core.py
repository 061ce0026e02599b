"""Feed-forward building blocks and the Sequential container."""
import math

from .. import fused
from ..backend import get_xp
from ..checks import check_dtype_name, check_mask
from .base import Module, assign_like, make_rng


def _zero_pads(Y, mask, xp, inplace=False):
    """``Y`` with the padded steps zeroed (in place where ``inplace``: Y is ours)."""
    if mask is not None and Y.ndim == 3:
        if inplace:
            Y *= mask[:, :, None]
            return Y
        return Y * mask[:, :, None]
    return Y


def _rows(A, xp, time_major=None):
    """A (B, T, F) array as a (B*T, F) matrix of its steps, without a copy where one can
    be avoided: ``(rows, time_major)``, with the rows in batch-major order (b, t) or, for
    an array laid out time-major (a transposed (T, B, F) array), in time-major order
    (t, b). ``time_major`` given: that order, copying if need be. (B, F): itself."""
    if A.ndim == 2:
        return A, None
    F = A.shape[-1]
    At = A.transpose(1, 0, 2)
    if time_major is None:
        time_major = not A.flags.c_contiguous and At.flags.c_contiguous
    src = At if time_major else A
    return xp.ascontiguousarray(src).reshape(-1, F), time_major


def _unrows(rows, shape, time_major):
    """Inverse of :func:`_rows`: (B*T, F) rows back to a (B, T, F) array (a view)."""
    if time_major is None:
        return rows
    B, T = shape[:2]
    if time_major:
        return rows.reshape(T, B, -1).transpose(1, 0, 2)
    return rows.reshape(B, T, -1)


class Dense(Module):
    """y = x W^T + b on the last axis; (B, T, I) -> (B, T, O) or (B, I) -> (B, O).

    Initialised like PyTorch's ``nn.Linear``: U(-1/sqrt(I), 1/sqrt(I)). A sequence is
    multiplied as one (B*T, I) matrix in its own memory order, so a time-major input
    (a transposed (T, B, I) array) gives time-major outputs and gradients, and nothing
    is copied either way.
    """

    def __init__(self, in_features, out_features, bias=True, dtype="float32", seed=None):
        self.in_features, self.out_features, self.bias = int(in_features), int(out_features), bias
        self.dtype = check_dtype_name(dtype)
        rng, _ = make_rng(seed)
        b = 1.0 / math.sqrt(in_features)
        self._params = {"weight": rng.uniform(-b, b, (out_features, in_features)).astype(self.dtype)}
        if bias:
            self._params["bias"] = rng.uniform(-b, b, out_features).astype(self.dtype)

    def forward(self, X, mask=None, initial_state=None, training=False, keep_tape=True):
        xp = get_xp(X)
        if X.ndim not in (2, 3) or X.shape[-1] != self.in_features:
            raise ValueError(f"Dense: input must end with {self.in_features} features, got shape "
                             f"{tuple(X.shape)}")
        if X.dtype.name != self.dtype:
            raise TypeError(f"Dense: input is {X.dtype.name} but the layer is {self.dtype}; "
                            f"pass X.astype('{self.dtype}')")
        X2, time_major = _rows(X, xp)
        Y2 = X2 @ self._params["weight"].T  # one product over all steps
        if self.bias:
            Y2 += self._params["bias"]
        Y = _zero_pads(_unrows(Y2, X.shape, time_major), mask, xp, inplace=True)
        return Y, None, (X, mask if X.ndim == 3 else None)

    def backward(self, cache, d_out, d_state=None):
        X, mask = cache
        xp = get_xp(X)
        d = _zero_pads(d_out, mask, xp)
        X2, time_major = _rows(X, xp)
        d2, _ = _rows(d, xp, time_major)  # the rows in the order of X's
        grads = {"weight": d2.T @ X2}
        if self.bias:
            grads["bias"] = d2.sum(0)
        dX = _unrows(d2 @ self._params["weight"], X.shape, time_major)
        return grads, dX, None


class Embedding(Module):
    """Integer symbols (B, T) -> vectors (B, T, E); initialised N(0, 1) like PyTorch.

    ``dropout=p``: embedding dropout (Gal & Ghahramani; Merity et al. 2018's AWD-LSTM):
    in training, whole rows of the table (every use of a symbol) are zeroed with
    probability p, the rest scaled by 1/(1-p); one mask per forward, from ``seed``, held
    for the backward."""

    def __init__(self, num_embeddings, embedding_dim, dtype="float32", seed=None,
                 dropout=0.0):
        if not 0 <= dropout < 1:
            raise ValueError(f"Embedding: dropout must be in [0, 1), got {dropout}")
        self.num_embeddings, self.embedding_dim = int(num_embeddings), int(embedding_dim)
        self.dtype = check_dtype_name(dtype)
        self.dropout = float(dropout)
        rng, self.rng = make_rng(seed)
        self._params = {"weight": rng.standard_normal((num_embeddings, embedding_dim))
                        .astype(self.dtype)}

    def forward(self, X, mask=None, initial_state=None, training=False, keep_tape=True):
        xp = get_xp(X)
        if not hasattr(X, "dtype") or X.dtype.kind not in "iu":
            raise TypeError("Embedding: input must be integer symbols of shape (batch, time); "
                            "encode text with a vocabulary first")
        if X.ndim != 2:
            raise ValueError(f"Embedding: input must have shape (batch, time), got "
                             f"{tuple(X.shape)}")
        mask = check_mask(mask, X.shape[0], X.shape[1], "Embedding")
        idx = X if mask is None else xp.where(mask, X, 0)  # pads may hold anything
        if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= self.num_embeddings):
            v = int(idx[(idx < 0) | (idx >= self.num_embeddings)][0])
            raise ValueError(f"Embedding: symbol {v} is outside the vocabulary of "
                             f"{self.num_embeddings}; rebuild the vocabulary or the layer")
        Y = _zero_pads(self._params["weight"][idx], mask, xp, inplace=True)
        scale = None
        if training and self.dropout > 0:  # whole rows of the table, one mask per forward
            keep = self.rng.random(self.num_embeddings) >= self.dropout
            scale = xp.asarray(keep.astype(self.dtype) / (1 - self.dropout))
            Y *= scale[idx][..., None]
        return Y, None, (idx, mask, scale)

    def backward(self, cache, d_out, d_state=None):
        idx, mask = cache[:2]
        scale = cache[2] if len(cache) > 2 else None
        xp = get_xp(d_out)
        d = _zero_pads(d_out, mask, xp)
        dW = xp.zeros_like(self._params["weight"])
        idx, d = idx.reshape(-1), d.reshape(-1, self.embedding_dim)
        if fused.use_compiled(xp):  # np.add.at as one loop, in its order: the same bits
            fused.kernel("scatter_add")(dW, idx, d)
        else:
            xp.add.at(dW, idx, d)
        if scale is not None:
            dW *= scale[:, None]
        return {"weight": dW}, None, None


class Dropout(Module):
    """Inverted dropout: zero each value with probability ``p`` during training only."""

    _repr_always = ("p",)

    def __init__(self, p=0.5, seed=None):
        if not 0 <= p < 1:
            raise ValueError(f"Dropout: p must be in [0, 1), got {p}")
        self.p = float(p)
        _, self.rng = make_rng(seed)
        self._params = {}

    def forward(self, X, mask=None, initial_state=None, training=False, keep_tape=True):
        if not training or self.p == 0:
            return X, None, None
        xp = get_xp(X)
        keep = xp.asarray(self.rng.random(X.shape) >= self.p).astype(X.dtype) / (1 - self.p)
        return X * keep, None, keep

    def backward(self, cache, d_out, d_state=None):
        return {}, (d_out if cache is None else d_out * cache), None


class ActivationRegularization(Module):
    """AR and TAR (Merity et al. 2018) as a layer: the identity on a recurrent layer's
    outputs (B, T, H) whose backward adds the gradient of
    ``alpha·mean(h²) + beta·mean((h_t − h_(t−1))²)`` (over the valid steps) in training,
    so a model of layers trains on its loss plus these terms
    (:func:`unrolled.losses.activation_regularization`). The terms' value is not part of
    the reported loss. Evaluation: the identity, nothing kept."""

    _repr_always = ("alpha", "beta")

    def __init__(self, alpha=0.0, beta=0.0, seed=None):  # seed: unused (no randomness)
        for what, v in (("alpha", alpha), ("beta", beta)):
            if not v >= 0:
                raise ValueError(f"ActivationRegularization: {what} must be >= 0, got {v}")
        self.alpha, self.beta = float(alpha), float(beta)
        self._params = {}

    def forward(self, X, mask=None, initial_state=None, training=False, keep_tape=True):
        if not training or not (self.alpha or self.beta) or X.ndim != 3:
            return X, None, None
        return X, None, (X, mask)

    def backward(self, cache, d_out, d_state=None):
        if cache is None:
            return {}, d_out, None
        from ..losses import activation_regularization

        X, mask = cache
        _, g = activation_regularization(X, self.alpha, self.beta, mask)
        return {}, (g if d_out is None else d_out + g), None


class Sequential(Module):
    """Layers applied one after the other; ``params`` is ``{"0": ..., "1": ..., ...}``.

    The mask follows the sequence until a layer folds it to one vector per record.
    ``initial_state`` goes to the first recurrent layer; the state returned is that of the
    last recurrent layer.
    """

    def __init__(self, *layers):
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        if not layers:
            raise ValueError("Sequential needs at least one layer")
        self.layers = list(layers)

    @property
    def params(self):
        return {str(i): layer.params for i, layer in enumerate(self.layers)}

    @params.setter
    def params(self, tree):
        new = assign_like(self.params, tree, "Sequential")  # checked copies
        for i, layer in enumerate(self.layers):
            if isinstance(layer, Sequential):  # has no _params of its own
                layer.params = new[str(i)]
            else:
                layer._params = new[str(i)]

    @property
    def dtype(self):
        """The dtype of the first layer that has one (``"float32"`` if none has)."""
        return next((ly.dtype for ly in self.layers if hasattr(ly, "dtype")), "float32")

    def forward(self, X, mask=None, initial_state=None, training=False, keep_tape=True):
        caches, state, first = [], None, True
        for layer in self.layers:
            s0 = None
            if layer.recurrent and first:
                s0, first = initial_state, False
            X, st, c = layer.forward(X, mask=mask, initial_state=s0, training=training,
                                     keep_tape=keep_tape)
            caches.append((c, mask))
            if st is not None:
                state = st
            if X.ndim == 2:
                mask = None  # folded: one vector per record from here on
        return X, state, caches

    def backward(self, cache, d_out, d_state=None, need_input_grad=True):
        """Backward through the layers in reverse; ``need_input_grad=False`` lets a
        recurrent first layer skip the gradient w.r.t. the model's input (data)."""
        from .recurrent import Recurrent

        grads = [None] * len(self.layers)
        last_rec = max((i for i, ly in enumerate(self.layers) if ly.recurrent), default=None)
        d, d0 = d_out, None
        for i in reversed(range(len(self.layers))):
            layer = self.layers[i]
            ds = d_state if i == last_rec else None
            if i == 0 and not need_input_grad and isinstance(layer, Recurrent):
                g, d, dsi = layer.backward(cache[i][0], d, ds, need_input_grad=False)
            else:
                g, d, dsi = layer.backward(cache[i][0], d, ds)
            grads[i] = g
            if layer.recurrent:
                d0 = dsi
        return {str(i): g for i, g in enumerate(grads)}, d, d0

    def named_children(self):
        return [(str(i), ly) for i, ly in enumerate(self.layers)]

    def extra_repr(self):
        return ""
