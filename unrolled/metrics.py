"""Metrics as plain functions of NumPy arrays: accuracy, macro-F1, the confusion matrix,
bits per character, RMSE and MAE. Every result is a float fraction (not a percent)."""
import math

import numpy as np

__all__ = ["accuracy", "bits_per_char", "confusion_matrix", "format_confusion", "macro_f1",
           "mae", "per_class_f1", "plot_confusion", "rmse", "softmax", "top_k"]


def softmax(logits, axis=-1):
    """Row-wise softmax, stable for large logits."""
    z = logits - logits.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def accuracy(y_true, y_pred):
    """Fraction of predictions equal to the truth; ``y_*`` are (N,) class ids."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.size == 0:
        raise ValueError("accuracy of an empty set is undefined; pass at least one record")
    return float(np.mean(y_true == y_pred))


def confusion_matrix(y_true, y_pred, n_classes):
    """(n_classes, n_classes) counts; row = true class, column = predicted class."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true and y_pred must have the same shape, got {y_true.shape} and "
                         f"{y_pred.shape}; pass one predicted class per record")
    both = np.concatenate([y_true.ravel(), y_pred.ravel()])
    if both.size and (both.min() < 0 or both.max() >= n_classes):
        raise ValueError(f"class ids must lie in 0..{n_classes - 1}, got {both.min()}.."
                         f"{both.max()}; pass n_classes = the number of classes")
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


def per_class_f1(cm):
    """(C,) F1 of each class from a confusion matrix (0 where a class has no support and
    no predictions)."""
    tp = np.diag(cm).astype(float)
    pred, true = cm.sum(0), cm.sum(1)
    denom = pred + true
    return np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)


def macro_f1(y_true, y_pred, n_classes=None):
    """Unweighted mean of the per-class F1 over the classes present in ``y_true`` or
    ``y_pred``: every language counts the same, however few names it has."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.size == 0:
        raise ValueError("macro-F1 of an empty set is undefined; pass at least one record")
    n = n_classes or int(max(y_true.max(), y_pred.max())) + 1
    cm = confusion_matrix(y_true, y_pred, n)
    present = (cm.sum(0) + cm.sum(1)) > 0
    return float(per_class_f1(cm)[present].mean())


def bits_per_char(mean_nats):
    """Cross-entropy in bits per symbol from the mean in nats (divide by ln 2)."""
    return float(mean_nats / math.log(2))


def rmse(y_true, y_pred, mask=None):
    """Root mean squared error over the entries where ``mask`` is True (all if None)."""
    d = _masked_diff(y_true, y_pred, mask)
    return float(np.sqrt(np.mean(d * d)))


def mae(y_true, y_pred, mask=None):
    """Mean absolute error over the entries where ``mask`` is True (all if None)."""
    return float(np.mean(np.abs(_masked_diff(y_true, y_pred, mask))))


def _masked_diff(y_true, y_pred, mask):
    d = np.asarray(y_pred, dtype=np.float64) - np.asarray(y_true, dtype=np.float64)
    if mask is not None:
        d = d[np.asarray(mask, dtype=bool)]
    if d.size == 0:
        raise ValueError("no values to compare (every target is missing or masked); pass "
                         "at least one unmasked value")
    return d


def top_k(probs, k):
    """(indices, probabilities) of the ``k`` largest entries of a 1-D array, largest first."""
    idx = np.argsort(-probs, kind="stable")[:k]
    return idx, probs[idx]


def format_confusion(cm, classes, width=None):
    """A confusion matrix as text: rows are the true classes, columns the predicted ones
    (abbreviated to 3 letters), with per-class recall and F1 on the right."""
    classes = list(classes)
    w = width or max(3, len(str(int(cm.max())) if cm.size else "0"))
    head = " " * 12 + " ".join(f"{c[:3]:>{w}}" for c in classes) + "  recall     f1"
    lines = [head]
    f1 = per_class_f1(cm)
    for i, c in enumerate(classes):
        support = cm[i].sum()
        rec = cm[i, i] / support if support else 0.0
        row = " ".join(f"{v:>{w}}" for v in cm[i])
        lines.append(f"{c[:11]:<11} {row}  {rec:6.3f} {f1[i]:6.3f}")
    return "\n".join(lines)


def plot_confusion(cm, classes, path, title="Confusion matrix"):
    """Save the row-normalised confusion matrix as a PNG (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    n = len(classes)
    # cells big enough for their counts to be read at a glance
    digits = len(str(int(cm.max()))) if cm.size else 1
    fontsize = 10 if digits <= 2 else 9 if digits == 3 else 8
    fig, ax = plt.subplots(figsize=(0.6 * n + 3, 0.6 * n + 2.5))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), classes, rotation=90)
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for i in range(n):
        for j in range(n):
            if cm[i, j]:
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=fontsize,
                        color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
