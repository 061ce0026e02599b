"""The inspection page of an encoder–decoder (:class:`unrolled.seq2seq.Seq2Seq`).

:func:`write_encoder_decoder_report` decodes one source sequence greedily, then runs the
model teacher-forced on its own output and shows, on one self-contained page:

- the model drawn rolled, and unrolled over this record's lengths, forward and backward;
- what the decoder predicted at every step, with its three most likely symbols;
- the attention weights (which source steps each output step read);
- the gradient saliency: ‖∂ log p(y_t) / ∂e_j‖, how much each source symbol's
  embedding moves the probability of each output symbol, read from the model's own
  backward pass (one backward per output step);
- the states and gates of the encoder over the source, and of the decoder over its
  output (the decoder starting from the encoder's final state);
- ``arrays.npz`` with every number drawn.

``unrolled inspect MODEL --input WORD`` writes it for a model of the g2p task.
"""
import html
from pathlib import Path

import numpy as np

from .traces import flatten_traces, new_figure, plot_traces, traces

__all__ = ["encoder_decoder_views", "write_encoder_decoder_report"]


def _log_softmax(z):
    z = z.astype(np.float64)
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def encoder_decoder_views(model, source, max_len=50):
    """The numbers the page draws, for one source sequence.

    Parameters
    ----------
    model : a ``Seq2Seq``.
    source : (Ts,) int source symbols.
    max_len : longest output decoded.

    Returns
    -------
    dict with ``output`` (the greedy output symbols, ⟨eos⟩ excluded), ``steps`` (the
    decoder's output at every step: the output symbols then ⟨eos⟩), ``logp`` (Tt, V)
    log-probabilities at every step, ``attention`` (Tt, Ts) or None, ``saliency``
    (Tt, Ts): ‖∂ log p(steps_t) / ∂e_j‖, ``enc_traces`` / ``dec_traces`` (see
    :func:`unrolled.inspect.traces.traces`) and ``loss`` (mean −log p over the steps).
    """
    from ..seq2seq import Seq2Seq, shift_targets

    if not isinstance(model, Seq2Seq):
        raise ValueError(f"expected a Seq2Seq model, got {type(model).__name__}")
    src = np.asarray(source, dtype=np.int64).reshape(1, -1)
    if src.shape[1] < 1:
        raise ValueError("the source is empty: it needs at least one symbol")
    if src.min() < 0 or src.max() >= model.src_vocab:
        raise ValueError(f"source symbols must be in [0, {model.src_vocab}), got "
                         f"{src.min()}..{src.max()}")
    out = model.greedy(src, None, max_len=max_len)[0]
    tgt = np.asarray(out, dtype=np.int64).reshape(1, -1)
    tgt_in, tgt_out, mask = shift_targets(tgt, np.ones(tgt.shape, bool), model.bos, model.eos)
    logits, cache = model.forward(src, None, tgt_in, mask, training=False)
    logp = _log_softmax(logits[0])                                     # (Tt, V)
    steps = tgt_out[0]
    Tt = len(steps)
    att = cache["head"][0][3][0] if model.attention else None         # (Tt, Ts)
    sal = np.zeros((Tt, src.shape[1]))
    p = np.exp(logp)
    for t in range(Tt):  # d(-log p(y_t))/d logits_t = softmax - onehot, nothing elsewhere
        d = np.zeros(logits.shape, dtype=logits.dtype)
        d[0, t] = p[t]
        d[0, t, steps[t]] -= 1.0
        _, dE = model.backward(cache, d, source_grad=True)
        sal[t] = np.linalg.norm(np.asarray(dE[0], np.float64), axis=-1)
    E, _, _ = model.src_embed.forward(src, None)
    enc = traces(model.encoder, E)
    _, state, _ = model.encode(src)
    Y, _, _ = model.tgt_embed.forward(tgt_in, None)
    dec = traces(model.decoder, Y, initial_state=state)
    loss = float(-np.mean(logp[np.arange(Tt), steps]))
    return {"output": out, "steps": steps, "logp": logp, "attention": att,
            "saliency": sal, "enc_traces": enc, "dec_traces": dec, "loss": loss}


def _heatmap(M, rows, cols, title, cmap, vmin=None, vmax=None):
    fig = new_figure(max(4.5, 1.6 + 0.42 * len(cols)), max(2.2, 1.3 + 0.32 * len(rows)))
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(M, aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax)
    ax.set_xticks(range(len(cols)), cols)
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel("source step")
    ax.set_ylabel("output step")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, shrink=0.8)
    return fig


def write_encoder_decoder_report(model, source, out_dir, source_labels=None,
                                 target_names=None, title=None, notes=(), max_len=50):
    """Write the inspection page of a ``Seq2Seq`` on one source sequence.

    Parameters
    ----------
    model : a ``Seq2Seq``.
    source : (Ts,) int source symbols.
    out_dir : folder to write (created if needed).
    source_labels : Ts strings naming the source steps (e.g. the letters of a word).
    target_names : the target alphabet, one string per symbol (e.g. the phonemes).
    title : the page's title; notes : lines shown at its top.

    Returns
    -------
    Path of ``index.html``.
    """
    from .drawings import draw_encoder_decoder, draw_encoder_decoder_rolled
    from .report import _figure_html, _save, write_page

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    v = encoder_decoder_views(model, source, max_len=max_len)
    src = np.asarray(source).reshape(-1)
    Ts, Tt = len(src), len(v["steps"])
    names = (list(target_names) if target_names is not None
             else [str(i) for i in range(model.tgt_vocab)])
    slab = (list(source_labels) if source_labels is not None and len(source_labels) == Ts
            else [str(int(s)) for s in src])
    olab = [names[int(s)] for s in v["steps"]]
    files, sections = [], []

    draws = [("net_rolled", draw_encoder_decoder_rolled(model), "the encoder–decoder rolled: "
              "one encoder cell and one decoder cell, each with its loop"),
             ("net_unrolled", draw_encoder_decoder(model, T=min(Tt, 6), T_source=min(Ts, 6)),
              "the encoder–decoder unrolled (up to 6 steps each side drawn)"),
             ("net_backward", draw_encoder_decoder(model, T=min(Tt, 6), T_source=min(Ts, 6),
                                                   backward=True),
              "the backward pass: the paths the gradient of every output's loss takes")]
    sections.append("<h2>The network</h2>" + "".join(
        _figure_html(_save(f, out, stem, files), cap) for stem, f, cap in draws))

    rows = []
    for t in range(Tt):
        top = np.argsort(-v["logp"][t])[:3]
        alts = ", ".join(f"{html.escape(names[i])} {np.exp(v['logp'][t, i]):.3f}" for i in top)
        rows.append(f"<tr><td>{t + 1}</td><td>{html.escape(olab[t])}</td>"
                    f"<td>{np.exp(v['logp'][t, v['steps'][t]]):.3f}</td><td>{alts}</td></tr>")
    sections.append(
        "<h2>What the decoder said, step by step</h2>"
        f"<p>Greedy output: <b>{html.escape(' '.join(olab[:-1]))}</b> (then "
        f"{html.escape(olab[-1])}). Mean −log p of these {Tt} steps: {v['loss']:.4g}.</p>"
        "<table><tr><th>step</th><th>output</th><th>p</th><th>three most likely</th></tr>"
        + "".join(rows) + "</table>")

    figs = []
    if v["attention"] is not None:
        f = _heatmap(v["attention"], olab, slab, "attention weights α", "viridis", 0.0, 1.0)
        figs.append((_save(f, out, "attention", files), "attention weights α (each row sums "
                     "to 1): which source steps each output step read"))
    f = _heatmap(v["saliency"], olab, slab, "‖∂ log p(output) / ∂ source embedding‖", "magma")
    figs.append((_save(f, out, "saliency", files), "gradient saliency: how strongly each "
                 "source symbol moves the probability of each output symbol, from the "
                 "backward pass (one per output step)"))
    sections.append("<h2>Which source steps each output used</h2>"
                    + "".join(_figure_html(s, c) for s, c in figs))

    _save(plot_traces(v["enc_traces"], labels=slab), out, "encoder_traces", files)
    _save(plot_traces(v["dec_traces"], labels=["⟨bos⟩"] + olab[:-1]), out, "decoder_traces",
          files)
    sections.append(
        "<h2>States and gates</h2>"
        + _figure_html("encoder_traces", f"the encoder over the {Ts} source steps (units "
                       "on the vertical axis)")
        + _figure_html("decoder_traces", f"the decoder over its {Tt} steps, fed its own "
                       "previous output, from the encoder's final state"))

    arrays = {"source": src, "output_steps": v["steps"], "logp": v["logp"],
              "saliency": v["saliency"]}
    if v["attention"] is not None:
        arrays["attention"] = v["attention"]
    arrays.update(flatten_traces(v["enc_traces"], "encoder"))
    arrays.update(flatten_traces(v["dec_traces"], "decoder"))
    return write_page(out, title or f"inspect: {type(model).__name__}", notes, model,
                      sections, arrays, files)
