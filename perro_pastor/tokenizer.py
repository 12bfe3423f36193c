"""Text <-> token ids, matching llama.cpp token for token.

One ``Tokenizer`` covers the two vocabulary kinds Llama-family GGUF files use:

- ``llama``: SentencePiece BPE with byte fallback (Llama 1/2, Phi-3, TinyLlama, llama2.c's
  ``tokenizer.model``), run by ``sentencepiece`` (tokenizer_spm.py);
- ``gpt2``: byte-level BPE with a named pre-tokenizer (Llama 3, SmolLM, Qwen2, GPT-2, ...): text cut
  into words by Hugging Face ``tokenizers``, words merged by tokenizer_bpe.ByteLevelBPE.

What is shared lives here: checking the vocabulary arrays, the special ids and flags with llama.cpp's
defaults, the special-token pass that runs before either engine, decoding, and ``StreamDecoder``.

Special tokens. llama.cpp first cuts the text at every occurrence of a special token's text
(longest tokens first), then tokenizes the plain text between them. User-defined tokens are always
cut out; control and unknown tokens only when ``parse_special`` is true, so a player typing
``<|im_end|>`` into a chat box can be kept from closing the turn. For SentencePiece vocabularies
the dummy-prefix space goes in front of each text piece that starts the text or follows a special
token, as llama.cpp does.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from . import tokenizer_bpe, tokenizer_spm
from .errors import TokenizerError
from .tokenizer_metadata import K, MetadataValidator
from .tokenizer_spm import BYTE, CONTROL, NORMAL, UNKNOWN, USER_DEFINED

# Token texts that end a turn (llama.cpp's end-of-generation list, the ones Llama-family chat
# models use). llama.cpp also treats them as control tokens whatever their stored type.
EOT_TEXTS = frozenset({
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>",
    "<|eom_id|>", "<EOT>", "_<EOT>", "<end_of_utterance>", "<|return|>", "<|call|>",
    "<\uff5cend\u2581of\u2581sentence\uff5c>",
})

# llama.cpp's default special ids when a file does not name them: (bos, eos, unk).
_DEFAULT_IDS = {"llama": (1, 2, 0), "gpt2": (11, 11, None)}

_SURROGATE = re.compile("[\ud800-\udfff]")


class Tokenizer:
    """Encode/decode for one vocabulary. Build it with ``from_metadata`` or ``from_sentencepiece_file``."""

    def __init__(self, *, model: str, tokens: list[str], types: list[int], engine: Any,
                 bos_id: int, eos_id: int, unk_id: int | None, pad_id: int | None,
                 add_bos: bool, add_eos: bool, add_space_prefix: bool, eot_ids: frozenset[int],
                 where: str = "tokenizer"):
        self.where = where  # the file name, for error messages
        self.model = model
        self.tokens = tokens
        self.types = types
        self._engine = engine
        self.bos_id = bos_id
        self.eos_id = eos_id
        self.unk_id = unk_id
        self.pad_id = pad_id
        self.add_bos = add_bos
        self.add_eos = add_eos
        self.add_space_prefix = add_space_prefix
        self.eot_ids = eot_ids
        # The special-token pass tries longer texts first, as llama.cpp does (stable by id).
        cut = [i for i, t in enumerate(types) if t in (CONTROL, USER_DEFINED, UNKNOWN)]
        cut.sort(key=lambda i: -len(tokens[i].encode("utf-8")))
        self._specials = [(i, tokens[i], types[i]) for i in cut]
        self._piece_cache: dict[int, bytes] = {}

    # -------------------------------------------------------------------------
    # construction

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any], path_for_errors: str,
                      metadata_types: Mapping[str, Any] | None = None) -> "Tokenizer":
        """Build from GGUF ``tokenizer.ggml.*`` keys (strings as ``str``, arrays as lists).

        ``metadata_types`` optionally maps a key to its stored GGUF type name (the element type
        for arrays, e.g. ``"FLOAT32"``); with it, arrays of the wrong element type are refused
        even where their Python values would pass.
        """
        v = MetadataValidator(metadata, str(path_for_errors), metadata_types or {})
        model = v.string("model")
        if model not in _DEFAULT_IDS:
            raise TokenizerError(f"{v.where}: {K}model = {model!r} is not supported "
                                 "(supported: 'llama' SentencePiece, 'gpt2' BPE)")
        tokens = v.tokens()
        n = len(tokens)
        types = v.token_types(n)
        default_bos, default_eos, default_unk = _DEFAULT_IDS[model]
        bos_id = v.token_id("bos_token_id", default_bos, n)
        eos_id = v.token_id("eos_token_id", default_eos, n)
        unk_id = v.token_id("unknown_token_id", default_unk, n)
        pad_id = v.token_id("padding_token_id", None, n)
        eot_meta = [v.token_id(k, None, n) for k in ("eot_token_id", "eom_token_id")]

        if model == "llama":
            scores = v.scores(n)
            engine = tokenizer_spm.build(tokens, scores, types, unk_id, v.where)
            add_bos = v.flag("add_bos_token", True)
            add_space_prefix = v.flag("add_space_prefix", True)
        else:
            pre = v.string("pre", "default")
            if "tokenizer.ggml.scores" in metadata:
                v.scores(n)  # unused by BPE, but a malformed array still means a corrupt file
            engine = tokenizer_bpe.build(tokens, v.merges(), pre, v.where)
            add_bos = v.flag("add_bos_token", pre in tokenizer_bpe.ADD_BOS_DEFAULT)
            v.flag("add_space_prefix", False)  # checked, but llama.cpp's BPE never uses it
            add_space_prefix = False
        add_eos = v.flag("add_eos_token", False)

        # End of turn: eos, the file's eot/eom ids, and tokens with a well-known end-of-turn
        # text, which llama.cpp also makes control tokens whatever their stored type.
        named = [i for i, t in enumerate(tokens) if t in EOT_TEXTS]
        types = list(types)
        for i in named:
            if types[i] in (NORMAL, 0):
                types[i] = CONTROL
        eot = {eos_id, *named, *(i for i in eot_meta if i is not None)}
        return cls(model=model, tokens=tokens, types=types, engine=engine, bos_id=bos_id,
                   eos_id=eos_id, unk_id=unk_id, pad_id=pad_id, add_bos=add_bos, add_eos=add_eos,
                   add_space_prefix=add_space_prefix, eot_ids=frozenset(eot), where=v.where)

    @classmethod
    def from_sentencepiece_file(cls, path: str | Path) -> "Tokenizer":
        """Build from a SentencePiece ``tokenizer.model`` (e.g. next to a llama2.c checkpoint)."""
        return cls.from_metadata(tokenizer_spm.metadata_from_model_file(path), str(path))

    # -------------------------------------------------------------------------
    # encoding

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    @property
    def control_texts(self) -> list[str]:
        """The texts that ``encode(parse_special=True)`` turns into control (or unknown) tokens,
        longest first: the ones a chat template's turn markers are made of."""
        return [text for _, text, ttype in self._specials if ttype != USER_DEFINED]

    def encode(self, text: str, add_bos: bool | None = None, parse_special: bool = True,
               add_eos: bool | None = None) -> list[int]:
        """Token ids for ``text``. ``add_bos``/``add_eos`` None: as the file says (llama.cpp's
        ``add_special=True``). ``parse_special``: control tokens written in the text become
        their ids; False treats them as plain text (user-defined tokens are always parsed)."""
        if not text.isascii():
            # A lone surrogate (say, from a surrogate-escaped file name) has no UTF-8 form;
            # it becomes U+FFFD rather than an exception in the middle of a game.
            text = _SURROGATE.sub("\ufffd", text)
        ids: list[int] = []
        if self.add_bos if add_bos is None else add_bos:
            ids.append(self.bos_id)
        prev_special = True
        for piece in self._split_specials(text, parse_special):
            if isinstance(piece, int):
                ids.append(piece)
                prev_special = True
                continue
            if self.model == "llama" and self.add_space_prefix and prev_special:
                piece = " " + piece
            ids.extend(self._engine.encode(piece))
            prev_special = False
        if self.add_eos if add_eos is None else add_eos:
            ids.append(self.eos_id)
        return ids

    def _split_specials(self, text: str, parse_special: bool) -> list[str | int]:
        """Cut ``text`` at special-token texts: a list of plain strings and token ids."""
        pieces: list[str | int] = [text] if text else []
        for tid, ttext, ttype in self._specials:
            if not parse_special and ttype != USER_DEFINED:
                continue
            if not any(isinstance(p, str) and ttext in p for p in pieces):
                continue
            out: list[str | int] = []
            for p in pieces:
                if isinstance(p, int) or ttext not in p:
                    out.append(p)
                    continue
                parts = p.split(ttext)
                for k, part in enumerate(parts):
                    if k:
                        out.append(tid)
                    if part:
                        out.append(part)
            pieces = out
        return pieces

    # -------------------------------------------------------------------------
    # decoding

    def is_control(self, token_id: int) -> bool:
        return 0 <= token_id < len(self.types) and self.types[token_id] == CONTROL

    def is_eot(self, token_id: int) -> bool:
        return token_id in self.eot_ids

    def token_to_bytes(self, token_id: int, special: bool = False) -> bytes:
        """The bytes this token adds to the output text. Control and unknown tokens add nothing
        unless ``special`` (then their text); unused/undefined tokens never add anything."""
        if not 0 <= token_id < len(self.tokens):
            raise TokenizerError(f"{self.where}: token id {token_id} is outside the vocabulary "
                                 f"of {len(self.tokens)} tokens")
        kind = self.types[token_id]
        if kind in (CONTROL, UNKNOWN):
            if not special:
                return b""
            if kind == UNKNOWN:
                return "\u2585".encode("utf-8")  # llama.cpp shows unknown tokens as a block
            return self.tokens[token_id].encode("utf-8")
        if kind == USER_DEFINED:
            return self.tokens[token_id].encode("utf-8")
        if kind not in (NORMAL, BYTE):
            return b""
        cached = self._piece_cache.get(token_id)
        if cached is None:
            piece = self.tokens[token_id]
            if self.model == "llama":
                cached = tokenizer_spm.piece_to_bytes(piece, kind)
            else:
                cached = tokenizer_bpe.piece_to_bytes(piece)
            self._piece_cache[token_id] = cached
        return cached

    def decode(self, ids: Sequence[int], special: bool = False) -> str:
        """Text for ``ids``; invalid UTF-8 becomes U+FFFD. For SentencePiece vocabularies the
        dummy-prefix space of the first text token is dropped, as llama.cpp and SentencePiece do."""
        data = b"".join(self.token_to_bytes(int(i), special) for i in ids)
        if self.model == "llama" and self.add_space_prefix:
            first = next((int(i) for i in ids if self.token_to_bytes(int(i), special)), None)
            if first is not None and data.startswith(b" ") and self.types[first] in (NORMAL, BYTE):
                data = data[1:]
        return data.decode("utf-8", errors="replace")

    def stream_decoder(self, special: bool = False) -> "StreamDecoder":
        return StreamDecoder(self, special)


class StreamDecoder:
    """Feed ids one at a time; get back only complete UTF-8 text.

    A character can span several byte tokens (an emoji is four ``<0xXX>`` tokens in Llama 2, or
    two byte-level pieces in GPT-2 vocabularies). The tail bytes of an incomplete character are
    held until the character is complete, so a game never prints half a character.
    """

    def __init__(self, tokenizer: Tokenizer, special: bool = False):
        self.tokenizer = tokenizer
        self.special = special
        self._pending = b""

    def feed(self, token_id: int) -> str:
        self._pending += self.tokenizer.token_to_bytes(int(token_id), self.special)
        cut = _complete_prefix_len(self._pending)
        text, self._pending = self._pending[:cut], self._pending[cut:]
        return text.decode("utf-8", errors="replace")

    def flush(self) -> str:
        """Whatever is still held (a broken character comes out as U+FFFD)."""
        text, self._pending = self._pending, b""
        return text.decode("utf-8", errors="replace")


def _complete_prefix_len(data: bytes) -> int:
    """Length of ``data`` without a trailing, possibly still incomplete UTF-8 sequence."""
    n = len(data)
    for back in range(1, min(4, n) + 1):
        b = data[n - back]
        if b & 0xC0 == 0x80:  # continuation byte: keep looking for the lead byte
            continue
        need = 2 if b & 0xE0 == 0xC0 else 3 if b & 0xF0 == 0xE0 else 4 if b & 0xF8 == 0xF0 else 1
        return n - back if need > back else n
    return n  # only continuation bytes: malformed either way, let the decoder replace them
