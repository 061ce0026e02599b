"""unrolled: recurrent neural networks from plain matrices, with exact hand-written BPTT."""
import os as _os

# OpenBLAS's idle threads spin for about 2**28 cycles after every product before they
# sleep; the compiled loop's row blocks run on threads of their own right after the input
# projection, and a spinning BLAS thread takes the core the second block needs (an LSTM
# step, B=64, H=256: 68 ms on one thread, 79 on two with the spin, 54 without it).
# OpenBLAS reads this once, when NumPy loads it: it must come before `import numpy`.
_os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "16")
from .grad import value_and_grad
from . import data, interop
from .layers import (GRU, LRU, LSTM, QRNN, SRU, Dense, Dropout, Elman, Embedding, Jordan, MinGRU,
                     MinLSTM, PeepholeLSTM, RecursiveNet, Recurrent, Sequential)
from . import metrics
from .io import load_model, save_model
from .train import Callback, History, Trainer
from .generate import Generator
from .kernels import backend, get_backend, set_backend
from .settings import settings
from .explain import explain
from . import cells
from .memory import MemoryPlanError, plan_memory
from .online import RTRL, UORO
from .streams import TBPTT, evaluate_stream
from .patterns import Fold, Recurrence, RecurrenceFrom, UnfoldFrom
from .seq2seq import Seq2Seq
from .losses import BCE, MSE, CrossEntropy, get_loss
from .optim import (SGD, Adagrad, Adam, AdamW, CosineLR, RMSprop, StepLR, WarmupLR,
                    clip_grad_norm, clip_grad_value, get_optimizer)

__version__ = "0.1.0"

__all__ = ["Elman", "LSTM", "GRU", "Jordan", "Dense", "Embedding", "Dropout", "Sequential",
           "RecursiveNet",
           "value_and_grad", "CrossEntropy", "MSE", "BCE", "get_loss", "SGD", "Adagrad",
           "RMSprop", "Adam", "AdamW", "StepLR", "CosineLR", "WarmupLR", "clip_grad_norm",
           "clip_grad_value", "get_optimizer", "Trainer", "Callback", "History", "save_model",
           "load_model", "metrics", "data", "interop", "Recurrence", "Fold", "RecurrenceFrom",
           "UnfoldFrom", "Seq2Seq", "plan_memory", "MemoryPlanError", "TBPTT", "evaluate_stream",
           "RTRL", "UORO", "Generator", "set_backend", "get_backend", "backend",
           "settings", "explain", "cells", "Recurrent", "PeepholeLSTM", "MinGRU", "MinLSTM", "LRU",
           "SRU", "QRNN"]
