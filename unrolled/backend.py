"""The array module as a parameter.

Cells and the time loop never import NumPy for array math; they receive ``xp`` (NumPy by
default, CuPy or any module with NumPy's API on request) and work with it.
"""
import numpy as np


def get_xp(*arrays):
    """The array module of the first array that is not a NumPy array, else NumPy."""
    for a in arrays:
        mod = type(a).__module__
        if mod.startswith("cupy"):
            import cupy

            return cupy
    return np


def to_numpy(a):
    """A NumPy copy of any array (CuPy arrays are brought to the host)."""
    if hasattr(a, "get"):
        return a.get()
    return np.asarray(a)
