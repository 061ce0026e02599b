from .base import Module
from .core import ActivationRegularization, Dense, Dropout, Embedding, Sequential
from .recurrent import (GRU, LRU, LSTM, QRNN, SRU, Elman, Jordan, MinGRU, MinLSTM, PeepholeLSTM,
                        Recurrent)
from .tree import RecursiveNet

__all__ = ["Module", "ActivationRegularization", "Dense", "Dropout", "Embedding", "Sequential", "Recurrent", "Elman",
           "LSTM", "GRU", "Jordan", "RecursiveNet", "PeepholeLSTM", "MinGRU", "MinLSTM", "SRU",
           "QRNN", "LRU"]
