from .base import Module
from .core import Dense, Dropout, Embedding, Sequential
from .recurrent import (GRU, LSTM, QRNN, SRU, Elman, Jordan, MinGRU, MinLSTM, PeepholeLSTM,
                        Recurrent)
from .tree import RecursiveNet

# every layer prints the same way: sizes, then the options that are not the default
Recurrent.__repr__ = Module.__repr__

__all__ = ["Module", "Dense", "Dropout", "Embedding", "Sequential", "Recurrent", "Elman",
           "LSTM", "GRU", "Jordan", "RecursiveNet", "PeepholeLSTM", "MinGRU", "MinLSTM", "SRU",
           "QRNN"]
