"""Encoder–decoder (sequence to sequence) with optional attention and beam search.

The encoder reads the source symbols into its state; the decoder starts from that
state and generates the target, one symbol per step, feeding each symbol back as the
next input::

    enc_out, s = Encoder(embed(src))                  # (B, Ts, H), final state per record
    h_t        = Decoder(embed(y_{t-1}), h_{t-1})     # h_0 = s, y_0 = <bos>
    h~_t       = tanh(W_c [c_t; h_t] + b_c)           # only with attention, c_t below
    logits_t   = W_o h~_t + b_o

Attention (Luong et al. 2015, applied to the decoder output h_t as in Luong's model) looks
at every encoder output h_s of the record and mixes them into a context vector::

    score(h_t, h_s) = h_t . h_s                    "dot"
                    = h_t . (W_a h_s)              "general" (Luong)
                    = v . tanh(W_q h_t + W_k h_s)  "additive" (Bahdanau's score)
    a_t = softmax over the valid source steps;  c_t = sum_s a_t[s] h_s

Training feeds the true previous symbol (teacher forcing), so the decoder runs over the
whole target at once on the fast time loop. Scheduled sampling (Bengio et al. 2015)
feeds, at each step and for each record, the model's own previous prediction with
probability ``sampling`` instead; the steps then depend on each other and the decoder
runs step by step, its backward walking the steps in reverse (the sampled symbols are
treated as constants, as in the paper). Every backward here is written by hand.

Decoding: :meth:`Seq2Seq.greedy` and :meth:`Seq2Seq.beam_search` (beam width, length
normalisation score / len**alpha).
"""
import math

import numpy as np

from .layers import GRU, LSTM, Dense, Elman, Embedding
from .layers.base import Module, assign_like, make_rng
from .losses import log_softmax

_CELLS = {"lstm": LSTM, "gru": GRU, "elman": Elman}
_ATTN = (None, "dot", "general", "additive")


def shift_targets(tgt, tgt_mask, bos, eos):
    """Decoder inputs and outputs from target symbols.

    Parameters
    ----------
    tgt : (B, T) int, the target symbols y_1..y_n of each record (pads anywhere after).
    tgt_mask : (B, T) bool, True at real symbols.

    Returns
    -------
    tgt_in : (B, T+1) int, ``<bos> y_1 .. y_n`` (pads after).
    tgt_out : (B, T+1) int, ``y_1 .. y_n <eos>``.
    mask : (B, T+1) bool, True at the n+1 real steps.
    """
    B, T = tgt.shape
    n = tgt_mask.sum(1)
    tgt_in = np.zeros((B, T + 1), dtype=np.int64)
    tgt_out = np.zeros((B, T + 1), dtype=np.int64)
    tgt_in[:, 0] = bos
    tgt_in[:, 1:] = np.where(tgt_mask, tgt, 0)
    tgt_out[:, :T] = np.where(tgt_mask, tgt, 0)
    tgt_out[np.arange(B), n] = eos
    mask = np.arange(T + 1)[None, :] <= n[:, None]
    return tgt_in, tgt_out, mask


def decoder_inputs(tgt_out, mask, bos):
    """The decoder inputs ``<bos> y_1 .. y_n`` from the outputs ``y_1 .. y_n <eos>`` and
    their (B, T+1) mask, as :func:`shift_targets` makes them (pads 0)."""
    tgt_in = np.zeros(tgt_out.shape, dtype=np.int64)
    tgt_in[:, 0] = bos
    tgt_in[:, 1:] = np.where(mask[:, 1:], tgt_out[:, :-1], 0)
    return tgt_in


class TeacherForcing:
    """The trainer's batch policy for a :class:`Seq2Seq` (see
    :class:`unrolled.train.BatchPolicy`).

    A batch holds the source symbols ``X`` (B, Ts) with their mask, the decoder's outputs
    ``Y = y_1 .. y_n <eos>`` (B, Tt) and their mask as ``loss_mask`` (see
    :func:`shift_targets`). The decoder is fed ``<bos> y_1 .. y_n`` (teacher forcing) or,
    with probability ``sampling``, its own previous prediction (scheduled sampling).

    Parameters
    ----------
    sampling : float, or a function of the trainer's step (updates done) giving the
        probability, e.g. ``lambda step: 1 - inverse_sigmoid_decay(step, 500)``.
    sample : "argmax" or "sample", what the model feeds back (see :meth:`Seq2Seq.forward`).

    The coin flips draw from the model's own generator, which checkpoints save.
    """

    carry = None

    def __init__(self, sampling=0.0, sample="argmax"):
        self.sampling, self.sample = sampling, sample

    def start_epoch(self):
        pass

    def forward(self, trainer, batch):
        model = trainer.model
        if batch.loss_mask is None:
            raise ValueError("a sequence-to-sequence batch needs the targets' mask as "
                             "its loss_mask")
        p = self.sampling(trainer.step) if callable(self.sampling) else self.sampling
        tgt_in = decoder_inputs(batch.Y, batch.loss_mask, model.bos)
        return model.forward(batch.X, batch.mask, tgt_in, batch.loss_mask, sampling=float(p),
                             sample=self.sample, training=True)

    def backward(self, trainer, cache, d_out):
        return trainer.model.backward(cache, d_out)


def inverse_sigmoid_decay(step, k=1000.0):
    """Bengio et al.'s schedule: the probability of feeding the TRUE symbol,
    k / (k + exp(step / k)), from ~1 down to 0. ``sampling = 1 - this``."""
    return k / (k + math.exp(min(step / k, 700.0)))


# -- attention: forward and hand-written backward ----------------------------------------
def _masked_softmax(s, mask):
    """Softmax over the last axis (source steps); masked steps get exactly 0."""
    if mask is not None:
        s = np.where(mask[:, None, :], s, -np.inf)
    s = s - s.max(-1, keepdims=True)
    e = np.exp(s)
    return e / e.sum(-1, keepdims=True)


def attention_forward(p, kind, Q, K, mask):
    """Attentional outputs h~ (B, Tq, A) for decoder outputs Q (B, Tq, H) over the encoder
    outputs K (B, Ts, He) with the source mask (B, Ts); returns (h~, cache)."""
    if kind == "dot":
        P = None
        s = Q @ K.transpose(0, 2, 1)                                   # (B, Tq, Ts)
    elif kind == "general":
        P = Q @ p["W_a"]                                               # (B, Tq, He)
        s = P @ K.transpose(0, 2, 1)
    else:  # additive
        Qp, Kp = Q @ p["W_q"].T, K @ p["W_k"].T                        # (B, Tq, A), (B, Ts, A)
        P = np.tanh(Qp[:, :, None, :] + Kp[:, None, :, :])             # (B, Tq, Ts, A)
        s = P @ p["v"]
    alpha = _masked_softmax(s, mask)                                   # (B, Tq, Ts)
    ctx = alpha @ K                                                    # (B, Tq, He)
    cq = np.concatenate([ctx, Q], -1)                                  # (B, Tq, He+H)
    out = np.tanh(cq @ p["W_c"].T + p["b_c"])
    return out, (Q, K, P, alpha, cq, out)


def attention_backward(p, kind, cache, d_out):
    """Gradients of the attention parameters, of Q and of K from d_out (B, Tq, A)."""
    Q, K, P, alpha, cq, out = cache
    He = K.shape[-1]
    dz = d_out * (1 - out * out)                                       # through tanh
    g = {"W_c": np.einsum("bta,btk->ak", dz, cq), "b_c": dz.sum((0, 1))}
    dcq = dz @ p["W_c"]
    dctx, dQ = dcq[..., :He], dcq[..., He:].copy()
    d_alpha = dctx @ K.transpose(0, 2, 1)                              # (B, Tq, Ts)
    dK = alpha.transpose(0, 2, 1) @ dctx                               # ctx = alpha K
    # softmax backward: ds = alpha * (d_alpha - sum_s alpha d_alpha); 0 where masked
    ds = alpha * (d_alpha - (alpha * d_alpha).sum(-1, keepdims=True))
    if kind == "dot":
        dQ += ds @ K
        dK += ds.transpose(0, 2, 1) @ Q
    elif kind == "general":
        dP = ds @ K                                                    # (B, Tq, He)
        dQ += dP @ p["W_a"].T
        g["W_a"] = np.einsum("bth,bte->he", Q, dP)
        dK += ds.transpose(0, 2, 1) @ P
    else:
        g["v"] = np.einsum("bts,btsa->a", ds, P)
        dpre = ds[..., None] * p["v"] * (1 - P * P)                    # (B, Tq, Ts, A)
        dQp, dKp = dpre.sum(2), dpre.sum(1)
        g["W_q"] = np.einsum("bta,bth->ah", dQp, Q)
        g["W_k"] = np.einsum("bsa,bse->ae", dKp, K)
        dQ += dQp @ p["W_q"]
        dK += dKp @ p["W_k"]
    return {k: g[k] for k in p}, dQ, dK


class Seq2Seq(Module):
    """Encoder–decoder over symbols, with optional attention.

    Parameters
    ----------
    src_vocab, tgt_vocab : int, sizes of the source and target alphabets. The target
        alphabet must hold the ``bos`` and ``eos`` symbols.
    embed_size, hidden_size : int
    cell : "lstm" (default), "gru" or "elman"; the same cell for encoder and decoder, so
        the encoder's final state is the decoder's initial state.
    num_layers : int, stacked layers in each.
    attention : None, "dot", "general" or "additive".
    attn_size : int, width of h~ and of the additive score (default hidden_size).
    bos, eos : int, the start and end symbols of the target alphabet.
    dropout : float, between stacked layers.
    dtype : "float32" or "float64". seed : int or None.

    ``params`` is ``{"src_embed", "encoder", "tgt_embed", "decoder", ["attention"], "readout"}``.
    """

    recurrent = False

    def __init__(self, src_vocab, tgt_vocab, embed_size=32, hidden_size=64, cell="lstm",
                 num_layers=1, attention=None, attn_size=None, bos=1, eos=2, dropout=0.0,
                 dtype="float32", seed=None):
        if cell not in _CELLS:
            raise ValueError(f"cell must be one of {list(_CELLS)}, got {cell!r}")
        if attention not in _ATTN:
            raise ValueError(f"attention must be one of {_ATTN}, got {attention!r}")
        for what, v in (("bos", bos), ("eos", eos)):
            if not 0 <= v < tgt_vocab:
                raise ValueError(f"{what}={v} is outside the target alphabet of {tgt_vocab}")
        self.src_vocab, self.tgt_vocab = int(src_vocab), int(tgt_vocab)
        self.embed_size, self.hidden_size, self.cell = embed_size, hidden_size, cell
        self.num_layers, self.attention, self.bos, self.eos = num_layers, attention, bos, eos
        self.dtype = dtype
        ss = np.random.SeedSequence(seed)
        seeds = [int(s.generate_state(1)[0]) for s in ss.spawn(6)]
        R = _CELLS[cell]
        kw = {"num_layers": num_layers, "dropout": dropout, "dtype": dtype}
        self.src_embed = Embedding(src_vocab, embed_size, dtype=dtype, seed=seeds[0])
        self.encoder = R(embed_size, hidden_size, seed=seeds[1], **kw)
        self.tgt_embed = Embedding(tgt_vocab, embed_size, dtype=dtype, seed=seeds[2])
        self.decoder = R(embed_size, hidden_size, seed=seeds[3], **kw)
        H = hidden_size
        A = int(attn_size or H)
        self.attn_size = A
        if attention is not None:
            rng, _ = make_rng(seeds[4])
            u = lambda *shape, fan: rng.uniform(-1 / math.sqrt(fan), 1 / math.sqrt(fan),
                                                shape).astype(dtype)
            p = {"W_c": u(A, 2 * H, fan=2 * H), "b_c": u(A, fan=2 * H)}
            if attention == "general":
                p["W_a"] = u(H, H, fan=H)
            elif attention == "additive":
                p.update(W_q=u(A, H, fan=H), W_k=u(A, H, fan=H), v=u(A, fan=A))
            self._attn = p
        self.readout = Dense(A if attention else H, tgt_vocab, dtype=dtype, seed=seeds[5])
        _, self.rng = make_rng(seed)

    # -- parameters -------------------------------------------------------------------
    @property
    def params(self):
        p = {"src_embed": self.src_embed.params, "encoder": self.encoder.params,
             "tgt_embed": self.tgt_embed.params, "decoder": self.decoder.params}
        if self.attention:
            p["attention"] = self._attn
        p["readout"] = self.readout.params
        return p

    @params.setter
    def params(self, tree):
        new = assign_like(self.params, tree, "Seq2Seq")
        for k in ("src_embed", "encoder", "tgt_embed", "decoder", "readout"):
            getattr(self, k)._params = new[k]
        if self.attention:
            self._attn = new["attention"]

    # -- encoder ----------------------------------------------------------------------
    def encode(self, src, src_mask=None, training=False):
        """Encoder outputs (B, Ts, H), final state {"h": (L, B, H)[, "c"]} and the cache."""
        E, _, ce = self.src_embed.forward(src, src_mask)
        enc_out, state, cr = self.encoder.forward(E, src_mask, training=training)
        return enc_out, state, (ce, cr)

    def _head(self, dec_out, enc_out, src_mask):
        """Logits from decoder outputs (B, T, H); returns (logits, cache)."""
        if self.attention:
            z, ca = attention_forward(self._attn, self.attention, dec_out, enc_out, src_mask)
        else:
            z, ca = dec_out, None
        logits, _, cd = self.readout.forward(z)
        return logits, (ca, cd)

    def _head_back(self, cache, d_logits):
        ca, cd = cache
        g_out, dz, _ = self.readout.backward(cd, d_logits)
        if not self.attention:
            return g_out, None, dz, None
        g_att, dQ, dK = attention_backward(self._attn, self.attention, ca, dz)
        return g_out, g_att, dQ, dK

    # -- training forward and backward ------------------------------------------------
    def forward(self, src, src_mask, tgt_in, tgt_mask=None, sampling=0.0, sample="argmax",
                training=True, rng=None):
        """Decoder logits for every target step.

        Parameters
        ----------
        src : (B, Ts) int source symbols; src_mask : (B, Ts) bool or None.
        tgt_in : (B, Tt) int decoder inputs (``<bos> y_1 ..``, see :func:`shift_targets`).
        tgt_mask : (B, Tt) bool or None.
        sampling : float in [0, 1], the probability of feeding the model's own previous
            prediction instead of ``tgt_in[:, t]`` (scheduled sampling); 0 is teacher forcing.
        sample : "argmax" (the most likely symbol) or "sample" (drawn from the softmax).
        rng : numpy Generator for the coin flips (default: the model's own).

        Returns
        -------
        logits : (B, Tt, V); cache for :meth:`backward` (``cache["inputs"]`` holds the
        symbols actually fed to the decoder).
        """
        if not 0 <= sampling <= 1:
            raise ValueError(f"sampling must be a probability in [0, 1], got {sampling}")
        if sample not in ("argmax", "sample"):
            raise ValueError(f"sample must be 'argmax' or 'sample', got {sample!r}")
        rng = self.rng if rng is None else rng
        enc_out, state, c_enc = self.encode(src, src_mask, training)
        cache = {"enc": c_enc, "src_mask": src_mask, "enc_out": enc_out, "tgt_mask": tgt_mask}
        if sampling == 0:
            # teacher forcing: the whole target at once, on the fast time loop
            Y, _, c_emb = self.tgt_embed.forward(tgt_in, tgt_mask)
            dec_out, _, c_dec = self.decoder.forward(Y, tgt_mask, initial_state=state,
                                                     training=training)
            logits, c_head = self._head(dec_out, enc_out, src_mask)
            cache.update(mode="teacher", emb=c_emb, dec=c_dec, head=c_head, inputs=tgt_in)
            return logits, cache
        # scheduled sampling: step by step, each input chosen after the previous output
        B, T = tgt_in.shape
        fed = np.empty_like(tgt_in)
        fed[:, 0] = tgt_in[:, 0]
        steps, out = [], []
        for t in range(T):
            if t > 0:
                prev = out[-1][:, 0]
                if sample == "argmax":
                    guess = prev.argmax(-1)
                else:
                    pr = np.exp(prev - prev.max(-1, keepdims=True))
                    pr /= pr.sum(-1, keepdims=True)
                    guess = (pr.cumsum(-1) > rng.random((B, 1))).argmax(-1)
                own = rng.random(B) < sampling
                fed[:, t] = np.where(own, guess, tgt_in[:, t])
            Y, _, c_emb = self.tgt_embed.forward(fed[:, t:t + 1])
            h, state, c_dec = self.decoder.forward(Y, None, initial_state=state,
                                                   training=training)
            logits_t, c_head = self._head(h, enc_out, src_mask)
            steps.append((c_emb, c_dec, c_head))
            out.append(logits_t)
        cache.update(mode="sampled", steps=steps, inputs=fed)
        return np.concatenate(out, 1), cache

    def backward(self, cache, d_logits, d_state=None, source_grad=False):
        """Gradients of every parameter (a tree shaped like ``params``) from d_logits;
        with ``source_grad``, also the gradient w.r.t. the embedded source (B, Ts, E):
        ``(grads, dE)``."""
        enc_out = cache["enc_out"]
        g_att = None
        if cache["mode"] == "teacher":
            g_out, g_att, dQ, dK = self._head_back(cache["head"], d_logits)
            g_dec, dY, d_s = self.decoder.backward(cache["dec"], dQ)
            g_temb, _, _ = self.tgt_embed.backward(cache["emb"], dY)
        else:
            T = len(cache["steps"])
            g_out = g_dec = g_temb = None
            dK, d_s = None, None
            add = lambda a, b: b if a is None else add_tree(a, b)
            for t in reversed(range(T)):
                c_emb, c_dec, c_head = cache["steps"][t]
                go, ga, dQ, dKt = self._head_back(c_head, d_logits[:, t:t + 1])
                gd, dY, d_s = self.decoder.backward(c_dec, dQ, d_s)
                ge, _, _ = self.tgt_embed.backward(c_emb, dY)
                g_out, g_dec, g_temb = add(g_out, go), add(g_dec, gd), add(g_temb, ge)
                if self.attention:
                    g_att = add(g_att, ga)
                    dK = dKt if dK is None else dK + dKt
        if dK is None:
            dK = np.zeros_like(enc_out)
        c_semb, c_enc = cache["enc"]
        if cache["src_mask"] is not None:
            dK = dK * cache["src_mask"][:, :, None]
        g_enc, dE, _ = self.encoder.backward(c_enc, dK, d_s)
        g_semb, _, _ = self.src_embed.backward(c_semb, dE)
        g = {"src_embed": g_semb, "encoder": g_enc, "tgt_embed": g_temb, "decoder": g_dec}
        if self.attention:
            g["attention"] = g_att
        g["readout"] = g_out
        return (g, dE) if source_grad else g

    def loss_and_grad(self, src, src_mask, tgt, tgt_mask, sampling=0.0, sample="argmax",
                      rng=None):
        """Mean cross-entropy per target symbol (``<eos>`` included) and its gradients.

        ``tgt`` (B, Tt) holds y_1..y_n without ``<bos>``/``<eos>``; they are added here.
        """
        from .losses import CrossEntropy

        tgt_in, tgt_out, mask = shift_targets(tgt, tgt_mask, self.bos, self.eos)
        logits, cache = self.forward(src, src_mask, tgt_in, mask, sampling, sample, rng=rng)
        loss, d = CrossEntropy().value_and_grad(logits, tgt_out, mask)
        return loss, self.backward(cache, d)

    # -- decoding ---------------------------------------------------------------------
    def _step(self, y_prev, state, enc_out, src_mask):
        """One decoder step for symbols y_prev (N,): log-probabilities (N, V), new state."""
        Y, _, _ = self.tgt_embed.forward(y_prev[:, None], keep_tape=False)
        h, state, _ = self.decoder.forward(Y, None, initial_state=state, keep_tape=False)
        logits, _ = self._head(h, enc_out, src_mask)
        return log_softmax(logits[:, 0].astype(np.float64)), state

    def greedy(self, src, src_mask=None, max_len=50):
        """The most likely symbol at every step until ``<eos>``: a list of B id lists."""
        enc_out, state, _ = self.encode(src, src_mask)
        B = src.shape[0]
        y = np.full(B, self.bos, dtype=np.int64)
        out, done = [[] for _ in range(B)], np.zeros(B, bool)
        for _ in range(max_len):
            logp, state = self._step(y, state, enc_out, src_mask)
            y = logp.argmax(-1)
            for b in np.flatnonzero(~done):
                if y[b] == self.eos:
                    done[b] = True
                else:
                    out[b].append(int(y[b]))
            if done.all():
                break
        return out

    def beam_search(self, src, src_mask=None, beam_width=5, max_len=50, alpha=1.0,
                    return_scores=False):
        """Beam search: keep the ``beam_width`` best prefixes (sum of log-probabilities) at
        every step; a prefix ending in ``<eos>`` is finished and keeps its score. The answer
        is the finished hypothesis with the best normalised score ``logp / len**alpha``
        (len counts ``<eos>``; ``alpha=0`` is no normalisation, 1 the per-symbol mean).

        Returns a list of B id lists (and their normalised scores if ``return_scores``).
        """
        if beam_width < 1:
            raise ValueError(f"beam_width must be >= 1, got {beam_width}")
        K, V = int(beam_width), self.tgt_vocab
        enc_out, state, _ = self.encode(src, src_mask)
        B = src.shape[0]
        # every record's encoder outputs and state repeated K times: rows b*K .. b*K+K-1
        enc_k = np.repeat(enc_out, K, 0)
        mask_k = None if src_mask is None else np.repeat(src_mask, K, 0)
        state = {k: np.repeat(v, K, 1) for k, v in state.items()}
        y = np.full(B * K, self.bos, dtype=np.int64)
        score = np.full((B, K), -np.inf)
        score[:, 0] = 0.0                      # K identical beams at first: keep only one
        hist = np.zeros((B, K, 0), dtype=np.int64)
        length = np.zeros((B, K), dtype=np.int64)
        done = np.zeros((B, K), bool)
        for _ in range(max_len):
            logp, state = self._step(y, state, enc_k, mask_k)
            logp = logp.reshape(B, K, V)
            # a finished beam can only "continue" with <eos> at no cost: it stays as it is
            frozen = np.full(V, -np.inf)
            frozen[self.eos] = 0.0
            logp = np.where(done[..., None], frozen, logp)
            cand = (score[..., None] + logp).reshape(B, K * V)
            top = np.argsort(-cand, axis=1, kind="stable")[:, :K]        # (B, K)
            beam, sym = top // V, top % V
            score = np.take_along_axis(cand, top, 1)
            hist = np.concatenate([np.take_along_axis(hist, beam[..., None], 1),
                                   sym[..., None]], 2)
            was_done = np.take_along_axis(done, beam, 1)
            length = np.take_along_axis(length, beam, 1) + ~was_done
            done = was_done | (sym == self.eos)
            rows = (np.arange(B)[:, None] * K + beam).reshape(-1)
            state = {k: v[:, rows] for k, v in state.items()}
            y = sym.reshape(-1)
            if done[np.isfinite(score)].all():
                break
        norm = np.where(np.isfinite(score), score / np.maximum(length, 1) ** alpha, -np.inf)
        # an unfinished beam (max_len reached) competes with its score so far
        best = norm.argmax(1)
        out, scores = [], []
        for b in range(B):
            seq = hist[b, best[b]].tolist()
            out.append(seq[:seq.index(self.eos)] if self.eos in seq else seq)
            scores.append(float(norm[b, best[b]]))
        return (out, scores) if return_scores else out

    def sequence_logprob(self, src, src_mask, tgt, tgt_mask):
        """log p(y_1..y_n <eos> | src) per record (B,), by teacher forcing."""
        tgt_in, tgt_out, mask = shift_targets(tgt, tgt_mask, self.bos, self.eos)
        logits, _ = self.forward(src, src_mask, tgt_in, mask, training=False)
        logp = log_softmax(logits.astype(np.float64))
        lp = np.take_along_axis(logp, tgt_out[..., None], -1)[..., 0]
        return (lp * mask).sum(1)

    def named_children(self):
        return [("src_embed", self.src_embed), ("encoder", self.encoder),
                ("tgt_embed", self.tgt_embed), ("decoder", self.decoder),
                ("readout", self.readout)]

    def extra_repr(self):
        extra = f", attention={self.attention!r}, attn_size={self.attn_size}" \
            if self.attention else ""
        return (f"{self.src_vocab} -> {self.tgt_vocab}, cell={self.cell!r}, "
                f"hidden_size={self.hidden_size}{extra}, bos={self.bos}, eos={self.eos}")


def add_tree(a, b):
    """a + b for two gradient trees (or arrays) of one structure."""
    if isinstance(a, dict):
        return {k: add_tree(a[k], b[k]) for k in a}
    return a + b


def sequence_metrics(pred, ref):
    """Sequence accuracy and symbol error rate of predicted id lists against references.

    ``ref`` items are one id list, or a list of id lists (several correct answers: the
    closest one counts). Symbol error rate = total edit distance / total reference length.
    """
    exact, errs, total = 0, 0, 0
    for p, r in zip(pred, ref):
        refs = r if r and isinstance(r[0], (list, tuple)) else [r]
        d = [edit_distance(p, x) for x in refs]
        i = int(np.argmin(d))
        exact += d[i] == 0
        errs += d[i]
        total += len(refs[i])
    return {"sequence_accuracy": exact / max(len(pred), 1),
            "symbol_error_rate": errs / max(total, 1)}


def edit_distance(a, b):
    """Levenshtein distance between two sequences (insertions, deletions, substitutions)."""
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]
