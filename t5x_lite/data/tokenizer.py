"""SentencePiece tokenizer with the reserved ids every objective relies on.

Layout of a vocabulary trained here (``vocab_size`` V, byte fallback on)::

    id 0 <pad> | 1 </s> (eos) | 2 <s> (bos) | 3 <unk> | 4 [CLS] | 5 [SEP] | 6 [MASK]
    7 [NLU] | 8 [NLG] | 9 [S2S]  (UL2 mode tokens) | 10..265 <0x00>..<0xFF> (bytes)
    266 .. V-101 learned pieces | V-100 .. V-1 <extra_id_99> .. <extra_id_0>

so ``sentinel_id(0) == V - 1`` as in T5. ``V`` is ``data.tokenizer_vocab_size`` (default
``model.vocab_size``); a model with more embedding rows than ``V`` leaves the rest
unused, and the sentinels stay at the top of the *tokenizer's* ids. Normalisation is
the identity and whitespace is kept, so any Unicode string round-trips:
``decode(encode(s)) == s``.

An existing ``.model`` file is accepted as is: it must pad with id 0 and have an EOS
piece; reserved pieces it lacks ([CLS], sentinels, ...) get ids above its own pieces
(sentinels at the very top, as T5 does for its 32000-piece model), and ``decode`` shows
them, although ``encode`` does not produce them from text.

    >>> tok = Tokenizer("kjv-bpe-2048.model")          # doctest: +SKIP
    >>> tok.encode("In the beginning")                  # doctest: +SKIP
    [412, 268, 1297]
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from t5x_lite import paths
from t5x_lite.config import ConfigError

SPECIAL_PIECES = ("[CLS]", "[SEP]", "[MASK]", "[NLU]", "[NLG]", "[S2S]")
MODE_PIECES = {"R": "[NLU]", "X": "[NLG]", "S": "[S2S]"}
NUM_SENTINELS = 100
# Lines longer than this many bytes would be dropped silently by SentencePiece's
# default (4192); documents are split into sentences first, so this is a safety margin.
MAX_SENTENCE_BYTES = 1 << 20


def sentinel_piece(i: int) -> str:
    return f"<extra_id_{i}>"


class Tokenizer:
    """A loaded SentencePiece model plus the reserved ids of t5x_lite.

    Attributes: ``path``, ``vocab_size``, ``pad_id`` (0), ``eos_id``, ``bos_id``,
    ``unk_id``, ``cls_id``, ``sep_id``, ``mask_id``, ``mode_ids`` ({"R", "S", "X"} ->
    id), ``num_sentinels``, ``sha256`` (of the model file).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        import sentencepiece as spm

        self.path = str(path)
        source = paths.path(self.path)  # a local file or an object (gs://...)
        if not source.is_file():
            raise ConfigError(f"tokenizer file {self.path} does not exist")
        data = source.read_bytes()
        self.sha256 = hashlib.sha256(data).hexdigest()
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(data)
        except Exception as e:  # sentencepiece raises plain RuntimeError / OSError
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(
                f"tokenizer file {self.path} is not a SentencePiece model: {first}"
            ) from None
        sp = self._sp
        base = sp.get_piece_size()
        if sp.pad_id() != 0:
            raise ConfigError(
                f"tokenizer file {self.path}: pad id is {sp.pad_id()}, t5x_lite pads with id 0"
            )
        if sp.eos_id() < 0:
            raise ConfigError(f"tokenizer file {self.path} has no EOS piece")
        self.pad_id = 0
        self.eos_id = sp.eos_id()
        self.unk_id = sp.unk_id()
        # Reserved pieces missing from the model become ids above its pieces.
        extras: list[str] = []

        def lookup(piece: str) -> int:
            i = sp.piece_to_id(piece)
            if i != self.unk_id or piece == sp.id_to_piece(self.unk_id):
                return i
            extras.append(piece)
            return base + len(extras) - 1

        self.bos_id = sp.bos_id() if sp.bos_id() >= 0 else lookup("<s>")
        self.cls_id, self.sep_id, self.mask_id = (lookup(p) for p in SPECIAL_PIECES[:3])
        self.mode_ids = {k: lookup(p) for k, p in MODE_PIECES.items()}
        self.num_sentinels = NUM_SENTINELS
        present = [sp.piece_to_id(sentinel_piece(i)) for i in range(NUM_SENTINELS)]
        if all(p != self.unk_id for p in present):
            self._sentinels = present
        else:  # T5's convention: extra ids on top, <extra_id_0> highest
            top = base + len(extras) + NUM_SENTINELS - 1
            self._sentinels = [top - i for i in range(NUM_SENTINELS)]
            extras.extend(sentinel_piece(i) for i in reversed(range(NUM_SENTINELS)))
        self._extras = extras
        self._base = base
        self.vocab_size = base + len(extras)
        self._tables()

    # ------------------------------------------------------------------ ids
    def sentinel_id(self, i: int) -> int:
        """Id of T5's ``<extra_id_i>``; ``sentinel_id(0)`` is the highest sentinel."""
        if not 0 <= i < self.num_sentinels:
            raise ValueError(f"sentinel index {i} outside [0, {self.num_sentinels})")
        return self._sentinels[i]

    @property
    def sentinel_ids(self) -> np.ndarray:
        """``[num_sentinels]`` int32: ``sentinel_ids[i] == sentinel_id(i)``."""
        return np.asarray(self._sentinels, dtype=np.int32)

    def id_to_piece(self, i: int) -> str:
        if i >= self._base:
            return self._extras[i - self._base]
        return self._sp.id_to_piece(int(i))

    def _tables(self) -> None:
        sp, v = self._sp, self.vocab_size
        # special[i]: never selected by MLM or noise; word_start[i]: begins a word.
        special = np.zeros(v, dtype=bool)
        word_start = np.zeros(v, dtype=bool)
        normal = np.zeros(v, dtype=bool)
        for i in range(self._base):
            if sp.is_control(i) or sp.is_unknown(i):
                special[i] = True
            elif sp.is_byte(i):
                pass
            elif sp.IdToPiece(i) in SPECIAL_PIECES or sp.IdToPiece(i).startswith("<extra_id_"):
                special[i] = True
            else:
                normal[i] = True
                word_start[i] = sp.IdToPiece(i).startswith("\u2581")
        for i in [self.cls_id, self.sep_id, self.mask_id, self.bos_id, *self.mode_ids.values()]:
            special[i], normal[i] = True, False
        special[self.sentinel_ids] = True
        normal[self.sentinel_ids] = False
        special[self._base :] = True
        word_start |= special
        self.special_mask = special  # [V] bool
        self.word_start_mask = word_start  # [V] bool
        self.normal_ids = np.flatnonzero(normal).astype(np.int32)  # random-replacement pool

    # ------------------------------------------------------------------ text
    def encode(self, text: str) -> list[int]:
        return list(self._sp.encode(text))

    def encode_batch(self, texts: Sequence[str], num_threads: int = -1) -> list[list[int]]:
        return self._sp.encode(list(texts), num_threads=num_threads)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``; pad/eos/bos decode to nothing, extra ids to their piece."""
        out: list[str] = []
        run: list[int] = []
        for i in ids:
            i = int(i)
            if i >= self._base:
                out.append(self._sp.decode(run))
                run = []
                out.append(self._extras[i - self._base])
            else:
                run.append(i)
        out.append(self._sp.decode(run))
        return "".join(out)

    def __repr__(self) -> str:
        return f"Tokenizer({self.path!r}, vocab_size={self.vocab_size})"


def train_sentencepiece(
    sentences: Iterable[str],
    vocab_size: int,
    model_type: str,
    out_path: str | os.PathLike,
    corpus: str,
    field: str = "model.vocab_size",
) -> Tokenizer:
    """Train a model of exactly ``vocab_size`` ids (sentinels included) and save it.

    The file appears atomically (written beside ``out_path`` then renamed), so an
    interrupted run leaves no model behind. A vocabulary the corpus cannot support is a
    one-line ConfigError naming ``data.corpus`` and ``field`` (the config field the size
    came from: ``model.vocab_size`` or ``data.tokenizer_vocab_size``), e.g.
    ``data.corpus='kjv' cannot train a SentencePiece vocabulary of
    data.tokenizer_vocab_size=50257: ... Please set it to a value <= 34546.
    (data.tokenizer_vocab_size <= 34646 with the sentinels)``.
    """
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as pb

    min_size = 4 + len(SPECIAL_PIECES) + 256 + NUM_SENTINELS + 1
    if vocab_size < min_size:
        raise ConfigError(
            f"{field}={vocab_size} is too small for a tokenizer with 256 byte pieces, "
            f"{NUM_SENTINELS} sentinels and {4 + len(SPECIAL_PIECES)} reserved ids "
            f"(minimum {min_size})"
        )
    buf = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences),
            model_writer=buf,
            vocab_size=vocab_size - NUM_SENTINELS,
            model_type=model_type,
            pad_id=0,
            eos_id=1,
            bos_id=2,
            unk_id=3,
            user_defined_symbols=list(SPECIAL_PIECES),
            byte_fallback=True,
            character_coverage=1.0,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            split_digits=True,
            max_sentence_length=MAX_SENTENCE_BYTES,
            input_sentence_size=2_000_000,
            shuffle_input_sentence=True,
            num_threads=max(1, min(8, os.cpu_count() or 1)),
            minloglevel=2,
        )
    except RuntimeError as e:
        msg = " ".join(str(e).split())
        limit = re.search(r"value <= (\d+)", msg)  # SentencePiece counts pieces, not sentinels
        hint = f" ({field} <= {int(limit[1]) + NUM_SENTINELS} with the sentinels)" if limit else ""
        raise ConfigError(
            f"data.corpus={corpus!r} cannot train a SentencePiece vocabulary of "
            f"{field}={vocab_size}: {msg[-200:]}{hint}"
        ) from None
    model = pb.ModelProto()
    model.ParseFromString(buf.getvalue())
    for i in reversed(range(NUM_SENTINELS)):  # <extra_id_0> ends up with the top id
        model.pieces.add(
            piece=sentinel_piece(i), score=0.0, type=pb.ModelProto.SentencePiece.USER_DEFINED
        )
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(model.SerializeToString())
    os.replace(tmp, out_path)
    return Tokenizer(out_path)
