"""The cells: one time step each, written once (see :mod:`unrolled.cells.base`).

Every cell is registered by name (``REGISTRY``, :func:`get`); layers, saving and loading,
the command line, interop, the drawings and the generated tests find cells there. A new
cell is one file and one import line below (docs/cells.md, "Adding a cell").
"""
from . import ops
from .base import REGISTRY, Cell, get, register
from .elman import ElmanCell
from .gru import GRUCell
from .hard import HardSigmoidGRUCell, HardSigmoidLSTMCell
from .jordan import JordanCell
from .layernorm import LayerNormLSTMCell
from .lstm import LSTMCell, ZoneoutLSTMCell
from .lru import LRUCell
from .parallel import MinGRUCell, MinLSTMCell, SRUCell
from .peephole import PeepholeLSTMCell
from .proj import ProjLSTMCell
from .qrnn import QRNNCell

__all__ = ["Cell", "ElmanCell", "GRUCell", "HardSigmoidGRUCell", "HardSigmoidLSTMCell", "JordanCell", "LSTMCell", "LayerNormLSTMCell", "MinGRUCell",
           "MinLSTMCell", "PeepholeLSTMCell", "ProjLSTMCell", "QRNNCell", "SRUCell", "ZoneoutLSTMCell",
           "LRUCell", "REGISTRY", "get", "ops", "register"]
