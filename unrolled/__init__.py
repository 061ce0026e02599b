"""unrolled: recurrent neural networks from plain matrices, with exact hand-written BPTT."""
from .grad import value_and_grad
from .layers import GRU, LSTM, Dense, Dropout, Elman, Embedding, Jordan, Sequential

__version__ = "0.1.0"

__all__ = ["Elman", "LSTM", "GRU", "Jordan", "Dense", "Embedding", "Dropout", "Sequential",
           "value_and_grad"]
