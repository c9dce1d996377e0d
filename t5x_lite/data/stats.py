"""Statistics and readable renderings of batches, computed from the arrays alone.

Used by the inspection CLI (``python -m t5x_lite.data``) and by the tests; nothing
here looks at how a batch was made, only at what it contains.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from t5x_lite.data.tokenizer import MODE_PIECES, Tokenizer


def _cat(batches: Sequence[dict[str, np.ndarray]], key: str) -> np.ndarray:
    return np.concatenate([b[key] for b in batches], axis=0)


def _frac(num: float, den: float) -> float:
    return float(num) / float(den) if den else float("nan")


def non_pad_mask(batch: dict[str, np.ndarray]) -> np.ndarray:
    """``[B, T]`` bool: positions holding a real token (encoder side for enc-dec)."""
    if "segment_ids" in batch:
        return batch["segment_ids"] > 0
    return batch["attention_mask"] > 0


def batch_stats(
    batches: Sequence[dict[str, np.ndarray]], tokenizer: Tokenizer
) -> dict[str, float | int | dict]:
    """Fill, MLM, span-corruption, sentence-pair and UL2 statistics of ``batches``.

    MLM fractions are of the selected tokens (``loss_weights > 0``): ``mask_rate`` =
    selected / non-special tokens, then ``mask_token_fraction`` (shown as [MASK]),
    ``random_token_fraction`` (shown as another token), ``unchanged_fraction``.
    Span corruption: ``noise_density`` = target tokens that are neither sentinel nor
    EOS over those plus the input tokens that are neither sentinel, EOS nor mode
    token; ``mean_noise_span_length`` = noise tokens per sentinel. Encoder-decoder rows
    may be packed (UL2): ``denoiser_fractions`` and ``examples_per_row`` count segments
    by their first token, and S (prefix LM) segments are left out of the span figures.
    """
    out: dict[str, float | int | dict] = {}
    ids = _cat(batches, "input_ids")
    real = np.concatenate([non_pad_mask(b) for b in batches], axis=0)
    out["rows"] = int(ids.shape[0])
    out["non_pad_fraction"] = _frac(real.sum(), real.size)
    if "decoder_input_ids" in batches[0]:
        labels = _cat(batches, "labels")
        dreal = _cat(batches, "decoder_segment_ids") > 0
        out["target_non_pad_fraction"] = _frac(dreal.sum(), dreal.size)
        sentinel = np.isin(labels, tokenizer.sentinel_ids)
        mode_ids = np.array(list(tokenizer.mode_ids.values()))
        # Packed rows (UL2): each segment starts with its mode token; S segments have no spans.
        pos = _cat(batches, "positions")
        seg = _cat(batches, "segment_ids")
        start = np.arange(ids.shape[1]) - pos  # [B, T] column of each token's segment start
        lead = np.take_along_axis(ids, np.maximum(start, 0), axis=1)
        first = real & (pos == 0)
        out["examples_per_row"] = _frac(first.sum(), ids.shape[0])
        lead_of = np.zeros((ids.shape[0], int(seg.max()) + 1), dtype=ids.dtype)  # [B, S+1]
        lead_of[np.nonzero(first)[0], seg[first]] = ids[first]
        dseg = _cat(batches, "decoder_segment_ids")
        dlead = np.take_along_axis(lead_of, dseg, axis=1)
        s_id = tokenizer.mode_ids["S"]
        kinds = {
            k: _frac((ids[first] == i).sum(), first.sum()) for k, i in tokenizer.mode_ids.items()
        }
        if any(kinds.values()):
            out["denoiser_fractions"] = kinds
        noise = dreal & ~sentinel & (labels != tokenizer.eos_id) & (dlead != s_id)
        in_sent = np.isin(ids, tokenizer.sentinel_ids) | np.isin(ids, mode_ids)
        kept = real & ~in_sent & (ids != tokenizer.eos_id) & (lead != s_id)
        spans = (sentinel & (dlead != s_id)).sum()
        out["noise_density"] = _frac(noise.sum(), noise.sum() + kept.sum())
        out["mean_noise_span_length"] = _frac(noise.sum(), spans)
        out["noise_tokens"] = int(noise.sum())
    elif "token_type_ids" in batches[0]:  # MLM (packed or sentence pairs)
        labels = _cat(batches, "labels")
        weights = _cat(batches, "loss_weights") > 0
        candidate = real & ~tokenizer.special_mask[labels]
        sel = weights
        shown_mask = sel & (ids == tokenizer.mask_id)
        unchanged = sel & (ids == labels)
        out["selected_tokens"] = int(sel.sum())
        out["mask_rate"] = _frac(sel.sum(), candidate.sum())
        out["mask_token_fraction"] = _frac(shown_mask.sum(), sel.sum())
        out["random_token_fraction"] = _frac((sel & ~shown_mask & ~unchanged).sum(), sel.sum())
        out["unchanged_fraction"] = _frac(unchanged.sum(), sel.sum())
        out["special_selected"] = int((sel & tokenizer.special_mask[labels]).sum())
    if "loss_weights" in batches[0]:
        weights = _cat(batches, "loss_weights")
        out["loss_weight_fraction"] = _frac((weights > 0).sum(), weights.size)
    if "next_sentence_label" in batches[0]:
        labels = _cat(batches, "next_sentence_label")
        out["positive_fraction"] = _frac((labels == 0).sum(), len(labels))
    return out


def render(ids: Sequence[int], tokenizer: Tokenizer) -> str:
    """Text of ``ids`` with padding dropped and EOS/BOS shown as ``</s>``/``<s>``
    ([CLS], [MASK], sentinels, ... decode to their names).

    >>> render([4, 412, 6, 5, 1, 0, 0], tok)            # doctest: +SKIP
    '[CLS] In[MASK][SEP]</s>'
    """
    marks = {tokenizer.eos_id: "</s>", tokenizer.bos_id: "<s>"}
    parts: list[str] = []
    run: list[int] = []
    for i in ids:
        i = int(i)
        if i == tokenizer.pad_id:
            continue
        if i in marks:
            parts += [tokenizer.decode(run), marks[i]]
            run = []
        else:
            run.append(i)
    parts.append(tokenizer.decode(run))
    return "".join(parts)


# What next_sentence_label means (Hugging Face's convention, as BertForPreTraining):
# 0 = B is A's true continuation, in order; 1 = B is random (NSP) or swapped (SOP).
SENTENCE_LABELS = {
    "nsp": ("B follows A", "B is from another document"),
    "sop": ("A then B, in order", "A and B swapped"),
}


def show_row(
    batch: dict[str, np.ndarray], i: int, tokenizer: Tokenizer, sentence_objective: str = "nsp"
) -> str:
    """A multi-line description of row ``i``: segments, masks, targets, labels
    (``next_sentence_label: 1 (B is from another document)`` for NSP, as
    :data:`SENTENCE_LABELS` says for ``sentence_objective``)."""
    ids = batch["input_ids"][i]
    lines = [f"--- row {i}"]
    if "segment_ids" in batch and "decoder_input_ids" not in batch:
        seg = batch["segment_ids"][i]
        for s in np.unique(seg[seg > 0]):
            lines.append(f"segment {s}: {render(ids[seg == s], tokenizer)!r}")
    else:
        lines.append(f"input: {render(ids, tokenizer)!r}")
    if "token_type_ids" in batch and "next_sentence_label" in batch:
        label = int(batch["next_sentence_label"][i])
        meaning = SENTENCE_LABELS.get(sentence_objective, SENTENCE_LABELS["nsp"])[label]
        lines.append(f"next_sentence_label: {label} ({meaning})")
    if "decoder_input_ids" in batch:
        lines.append(f"target: {render(batch['labels'][i], tokenizer)!r}")
        mode = {v: MODE_PIECES[k] for k, v in tokenizer.mode_ids.items()}.get(int(ids[0]))
        if mode:
            lines.append(f"denoiser: {mode}")
    elif "prefix_mask" in batch:
        p = int(batch["prefix_mask"][i].sum())
        lines.append(f"prefix ({p} tokens): {render(ids[:p], tokenizer)!r}")
    elif "token_type_ids" in batch:
        w = batch["loss_weights"][i] > 0
        pairs = [
            f"{tokenizer.id_to_piece(a)}->{tokenizer.id_to_piece(b)}"
            for a, b in zip(ids[w], batch["labels"][i][w])
        ]
        lines.append(f"masked ({len(pairs)}): {' '.join(pairs[:24])}")
    return "\n".join(lines)
