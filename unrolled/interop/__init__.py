"""Weight exchange with other frameworks (PyTorch, Keras, ONNX; no framework is imported until used)."""
from .keras import (from_keras, from_keras_dense, from_keras_embedding, from_keras_weights,
                    to_keras_weights)
from .keras_file import load_keras, read_keras
from .onnx import to_onnx
from .torch import from_torch, load_torch, to_torch_state_dict

__all__ = ["from_torch", "to_torch_state_dict", "load_torch", "from_keras", "from_keras_weights",
           "from_keras_dense", "from_keras_embedding", "to_keras_weights", "load_keras",
           "read_keras", "to_onnx"]
