"""Weight exchange with other frameworks (PyTorch, Keras, ONNX; no framework is imported until used)."""
from .keras import from_keras, from_keras_weights, to_keras_weights
from .onnx import to_onnx
from .torch import from_torch, to_torch_state_dict

__all__ = ["from_torch", "to_torch_state_dict", "from_keras", "from_keras_weights",
           "to_keras_weights", "to_onnx"]
