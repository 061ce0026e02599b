"""Weight exchange with other frameworks (PyTorch here; no framework is imported until used)."""
from .torch import from_torch, to_torch_state_dict

__all__ = ["from_torch", "to_torch_state_dict"]
