"""value_and_grad: the loss of a model on a batch and the gradient of every parameter."""


def _get_loss(loss):
    if hasattr(loss, "value_and_grad"):
        return loss
    from .losses import get_loss

    return get_loss(loss)


def value_and_grad(model, loss, X, Y, mask=None, initial_state=None):
    """Forward in training mode, the loss, and BPTT.

    Parameters
    ----------
    model : a layer or ``Sequential``.
    loss : "mse", "cross_entropy", "bce", or an object with
        ``value_and_grad(outputs, targets, mask) -> (value, d_outputs)``.
    X : (B, T, D) floats, or (B, T) integer symbols for a model starting with ``Embedding``.
    Y : targets in the loss's form; ignored at padded steps.
    mask : (B, T) bool or None.

    Returns
    -------
    (loss_value, grads) with ``grads`` shaped like ``model.params``.
    """
    loss = _get_loss(loss)
    out, _, cache = model.forward(X, mask=mask, initial_state=initial_state, training=True)
    # a step mask follows the sequence; an element mask (e.g. missing targets) always applies
    m = mask if (out.ndim == 3 or (mask is not None and mask.shape == out.shape)) else None
    value, d_out = loss.value_and_grad(out, Y, m)
    grads, _, _ = model.backward(cache, d_out)
    return value, grads
