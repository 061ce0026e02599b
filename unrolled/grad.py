"""value_and_grad: the loss of a model on a batch and the gradient of every parameter."""


def _get_loss(loss):
    if hasattr(loss, "value_and_grad"):
        return loss
    from .losses import get_loss

    return get_loss(loss)


def loss_mask_for(outputs, mask, loss_mask=None):
    """The mask a loss is given for a model's ``outputs``.

    ``loss_mask`` when given (e.g. an element mask of the outputs' shape, False where a
    target is missing); else the step mask ``mask`` (B, T) for outputs with a time axis
    (B, T, ...); else None: a folded output (B, ...) already is each record's last valid
    step, so a step mask does not apply to it, whatever its shape.
    """
    if loss_mask is not None:
        return loss_mask
    return mask if outputs.ndim == 3 else None


def value_and_grad(model, loss, X, Y, mask=None, initial_state=None, loss_mask=None):
    """Forward in training mode, the loss, and BPTT.

    Parameters
    ----------
    model : a layer or ``Sequential``.
    loss : "mse", "cross_entropy", "bce", or an object with
        ``value_and_grad(outputs, targets, mask) -> (value, d_outputs)``.
    X : (B, T, D) floats, or (B, T) integer symbols for a model starting with ``Embedding``.
    Y : targets in the loss's form; ignored at padded steps.
    mask : (B, T) bool or None, the step mask of ``X``; it also masks the loss of
        outputs with a time axis.
    loss_mask : bool array or None, what the loss gets as its mask instead (e.g. an
        element mask of the outputs' shape that leaves missing targets out).

    Returns
    -------
    (loss_value, grads) with ``grads`` shaped like ``model.params``.
    """
    loss = _get_loss(loss)
    out, _, cache = model.forward(X, mask=mask, initial_state=initial_state, training=True)
    value, d_out = loss.value_and_grad(out, Y, loss_mask_for(out, mask, loss_mask))
    grads, _, _ = backward_params(model, cache, d_out)
    return value, grads


def backward_params(model, cache, d_out, d_state=None):
    """``model.backward`` when only the parameters' gradients are wanted: the gradient
    w.r.t. the model's input (data) is skipped where the model can skip it, which saves
    one matrix product over the whole sequence. Returns ``(grads, None, d_initial_state)``."""
    from .layers import Recurrent, Sequential

    if isinstance(model, (Recurrent, Sequential)):
        return model.backward(cache, d_out, d_state, need_input_grad=False)
    return model.backward(cache, d_out, d_state)
