"""PyTorch mirrors of unrolled models, for side-by-side benchmarks.

:func:`mirror` turns an unrolled :class:`~unrolled.layers.Sequential` made of
``Embedding``, ``Dropout``, ``LSTM`` / ``GRU`` / ``Elman`` and ``Dense`` layers into the
same PyTorch network (``nn.Embedding``, ``nn.Dropout``, ``nn.LSTM`` / ``nn.GRU`` /
``nn.RNN`` with ``batch_first=True``, ``nn.Linear``) holding the same weights. Padded
batches (a ``(B, T)`` mask, True at real steps) run as packed sequences, as a PyTorch
user writes them; a recurrent layer that returns its final state gives PyTorch's ``h_n``
of the last layer (forward next to backward), as unrolled does.

:func:`TorchTrainer` trains the mirror on the batches of an unrolled task (the task's
own ``get_batch``) with the optimizer, schedule and gradient clipping of the task's
resolved config: the loop a PyTorch script for that task would run.

Used by ``benchmarks/e2e.py`` and ``benchmarks/charlm_vs_torch.py``; needs torch and NumPy,
and imports nothing of unrolled but the layer classes it is given.
"""
import math
import time

import numpy as np
import torch
from torch import nn

__all__ = ["TorchTrainer", "mirror"]


class _Recurrent(nn.Module):
    def __init__(self, rnn, return_sequences):
        super().__init__()
        self.rnn, self.return_sequences = rnn, return_sequences

    def forward(self, x, mask=None, state=None):
        packed = mask is not None
        if packed:
            lengths = torch.from_numpy(np.asarray(mask).sum(1))
            x = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True,
                                                  enforce_sorted=False)
        y, state = self.rnn(x, state)
        if not self.return_sequences:
            h = state[0] if isinstance(state, tuple) else state  # (L * dirs, B, H)
            dirs = 2 if self.rnn.bidirectional else 1
            return torch.cat(list(h[-dirs:]), dim=-1), state
        if packed:
            y, _ = nn.utils.rnn.pad_packed_sequence(y, batch_first=True,
                                                    total_length=mask.shape[1])
        return y, state


class Mirror(nn.Module):
    """The PyTorch twin of an unrolled Sequential; ``forward(x, mask, state)`` returns
    ``(outputs, recurrent state)``."""

    def __init__(self, parts):
        super().__init__()
        self.parts = nn.ModuleList(parts)

    def forward(self, x, mask=None, state=None):
        new_state = None
        for m in self.parts:
            if isinstance(m, _Recurrent):
                x, new_state = m(x, mask, state)
            else:
                x = m(x)
        return x, new_state


def _t(a):
    return torch.from_numpy(np.array(a, copy=True))


def mirror(model):
    """A :class:`Mirror` with ``model``'s architecture and a copy of its weights."""
    from unrolled.interop import to_torch_state_dict
    from unrolled.layers import GRU, LSTM, Dense, Dropout, Elman, Embedding

    parts = []
    for layer in model.layers:
        if isinstance(layer, Embedding):
            m = nn.Embedding(layer.num_embeddings, layer.embedding_dim)
            m.weight.data = _t(layer.params["weight"])
        elif isinstance(layer, Dropout):
            m = nn.Dropout(layer.p)
        elif isinstance(layer, Dense):
            m = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias)
            m.weight.data = _t(layer.params["weight"])
            if layer.bias:
                m.bias.data = _t(layer.params["bias"])
        elif isinstance(layer, (LSTM, GRU, Elman)):
            kw = dict(num_layers=layer.num_layers, bidirectional=layer.bidirectional,
                      dropout=layer.dropout if layer.num_layers > 1 else 0.0,
                      bias=layer.bias, batch_first=True)
            if isinstance(layer, LSTM):
                rnn = nn.LSTM(layer.input_size, layer.hidden_size, **kw)
            elif isinstance(layer, GRU):
                rnn = nn.GRU(layer.input_size, layer.hidden_size, **kw)
            else:
                rnn = nn.RNN(layer.input_size, layer.hidden_size,
                             nonlinearity=getattr(layer, "nonlinearity", "tanh"), **kw)
            rnn.load_state_dict({k: _t(v) for k, v in to_torch_state_dict(layer).items()})
            m = _Recurrent(rnn, layer.return_sequences)
        else:
            raise TypeError(f"no PyTorch mirror for {type(layer).__name__}")
        parts.append(m)
    return Mirror(parts).to(torch.float32)


def _optimizer(cfg, params):
    name = cfg["optimizer"]
    wd = cfg.get("weight_decay", 0.0) or 0.0
    if name == "adam":
        return torch.optim.Adam(params, lr=cfg["lr"], weight_decay=wd)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=cfg["lr"], weight_decay=wd)
    if name == "sgd":
        return torch.optim.SGD(params, lr=cfg["lr"], weight_decay=wd)
    raise ValueError(f"no PyTorch mirror of optimizer {name!r}; use adam, adamw or sgd")


class TorchTrainer:
    """Train :func:`mirror` of ``model`` on ``task``'s batches, as unrolled's Trainer does.

    ``lr_at(step)`` gives the learning rate of each update (the unrolled schedule, a pure
    function); ``cfg`` is the task's resolved config (optimizer, weight decay, clip).
    With ``stateful`` tasks the recurrent state is carried from batch to batch (detached)
    and reset at the start of every epoch.
    """

    def __init__(self, task, model, cfg, lr_at):
        self.task, self.cfg, self.lr_at = task, cfg, lr_at
        self.net = mirror(model)
        self.opt = _optimizer(cfg, self.net.parameters())
        from unrolled.losses import get_loss

        loss = get_loss(task.loss)
        self.loss_name = loss.name
        weight = getattr(loss, "weight", None)
        if self.loss_name == "cross_entropy" and weight is not None:
            self.weight = torch.as_tensor(np.asarray(weight), dtype=torch.float32)
        else:
            self.weight = None
        self.step = 0
        self.state = None

    def _loss(self, out, batch):
        if self.loss_name == "mse":
            Y = torch.from_numpy(np.asarray(batch.Y, dtype=np.float32))
            m = batch.loss_mask
            if m is None:
                return ((out - Y) ** 2).mean()
            mt = torch.from_numpy(np.asarray(m))
            return ((out - Y)[mt] ** 2).mean()
        Y = torch.from_numpy(np.asarray(batch.Y))
        if out.ndim == 3:  # a label per step: the valid steps only
            m = batch.loss_mask if batch.loss_mask is not None else batch.mask
            if m is not None:
                mt = torch.from_numpy(np.asarray(m))
                return nn.functional.cross_entropy(out[mt], Y[mt], weight=self.weight)
            out, Y = out.reshape(-1, out.shape[-1]), Y.reshape(-1)
        return nn.functional.cross_entropy(out, Y, weight=self.weight)

    def train_step(self, batch):
        """One update; returns the loss value."""
        X = torch.from_numpy(np.asarray(batch.X))
        state = None
        if self.task.stateful and self.state is not None:
            state = (tuple(s.detach() for s in self.state) if isinstance(self.state, tuple)
                     else self.state.detach())
        out, new_state = self.net(X, batch.mask, state)
        self.state = new_state if self.task.stateful else None
        loss = self._loss(out, batch)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.get("clip"):
            nn.utils.clip_grad_norm_(self.net.parameters(), self.cfg["clip"])
        lr = self.lr_at(self.step)
        for g in self.opt.param_groups:
            g["lr"] = lr
        self.opt.step()
        self.step += 1
        value = loss.item()
        if not math.isfinite(value):
            raise ValueError(f"the PyTorch loss became {value} at step {self.step}")
        if self.loss_name == "cross_entropy":  # the running accuracy, as the Trainer keeps
            with torch.no_grad():
                (out.argmax(-1) == torch.from_numpy(np.asarray(batch.Y))).sum().item()
        return value

    def run_epoch(self, keys):
        """Train on the batches ``keys`` of the task's training split; returns
        ``(seconds, mean loss per record)``."""
        self.net.train()
        self.state = None  # a new epoch starts from the zero state
        total, n = 0.0, 0
        t0 = time.perf_counter()
        for key in keys:
            batch = self.task.get_batch("train", key)
            total += self.train_step(batch) * batch.size
            n += batch.size
        return time.perf_counter() - t0, total / max(n, 1)
