"""GPT-2-style byte-level BPE ("gpt2" vocabularies): Hugging Face ``tokenizers`` cuts the text
into words, ``ByteLevelBPE`` merges each word (why not ``tokenizers``' own BPE: its docstring).

A GGUF stores the vocabulary (byte-level strings such as ``Ġhello``), the merge list in rank
order and one word, ``tokenizer.ggml.pre``, naming the pre-tokenizer: the regular expressions
that cut text into words before BPE runs inside each word. llama.cpp keeps a list of regexes per
pre-tokenizer name and applies them one after another, each one splitting the pieces left by the
previous one (matches and the text between them both become pieces). That is exactly a
``Sequence`` of ``Split(regex, "isolated")`` in ``tokenizers``, followed by the byte-level
mapping. The table below holds those regexes; a name not in it is refused, because a wrong
pre-tokenizer gives plausible but wrong ids and a quietly worse model.
"""

from __future__ import annotations

import heapq
from functools import lru_cache
from typing import Iterable

from tokenizers import Regex, pre_tokenizers

from .errors import TokenizerError

# -----------------------------------------------------------------------------
# pre-tokenizer regexes, by tokenizer.ggml.pre (same lists, same order as llama.cpp)

_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
# Llama 3: case-insensitive contractions, digits in runs of at most three, newlines kept apart.
_LLAMA3 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+"
           r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# Qwen2: like Llama 3 but every digit is its own word.
_QWEN2 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+"
          r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# Qwen3.5: Qwen2 with combining marks kept inside words.
_QWEN35 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+"
           r"|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# DeepSeek LLM: letters of cased scripts, ASCII/fullwidth punctuation, CJK runs, digit runs.
# Written with escapes: several of these characters have canonical decompositions, and an
# editor that normalises the file would silently turn a range like U+1FD0-U+1FD3 upside down.
_CJK = "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+"
_DEEPSEEK_LLM = [
    "[\r\n]",
    "\\s?[A-Za-z\u00b5\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u01ba\u01bc-\u01bf\u01c4-\u0293"
    "\u0295-\u02af\u0370-\u0373\u0376\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c"
    "\u038e-\u03a1\u03a3-\u03f5\u03f7-\u0481\u048a-\u052f\u0531-\u0556\u10a0-\u10c5"
    "\u13a0-\u13f5\u13f8-\u13fd\u1c90-\u1cba\u1cbd-\u1cbf\u1d00-\u1d2b\u1d6b-\u1d77"
    "\u1d79-\u1d9a\u1e00-\u1f15\u1f18-\u1f1d\u1f20-\u1f45\u1f48-\u1f4d\u1f50-\u1f57\u1f59"
    "\u1f5b\u1f5d\u1f5f-\u1f7d\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe\u1fc2-\u1fc4\u1fc6-\u1fcc"
    "\u1fd0-\u1fd3\u1fd6-\u1fdb\u1fe0-\u1fec\u1ff2-\u1ff4\u1ff6-\u1ffc\u2102\u2107"
    "\u210a-\u2113\u2115\u2119-\u211d\u2124\u2126\u2128\u212a-\u212d\u212f-\u2134\u2139"
    "\u213c-\u213f\u2145-\u2149\u214e\u2183\u2184\u2c00-\u2c7b\u2c7e-\u2ce4\u2ceb-\u2cee"
    "\u2cf2\u2cf3\ua640-\ua66d\ua680-\ua69b\ua722-\ua76f\ua771-\ua787\ua78b-\ua78e"
    "\uab70-\uabbf\ufb00-\ufb06\ufb13-\ufb17\uff21-\uff3a\uff41-\uff5a\U00010400-\U0001044f"
    "\U000104b0-\U000104d3\U000104d8-\U000104fb\U00010c80-\U00010cb2\U00010cc0-\U00010cf2"
    "\U000118a0-\U000118df\U0001e900-\U0001e943]+",
    "\\s?[!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002]+",
    r"\s+$",
    _CJK,
    r"\p{N}+",
]
_DEEPSEEK_CODER = [r"[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", _CJK, r"\p{N}"]

PRE_TOKENIZERS: dict[str, list[str]] = {
    # llama.cpp's fallback for old files without a pre-tokenizer name
    "default": [r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"],
    "gpt-2": [_GPT2],
    "mpt": [_GPT2],
    "olmo": [_GPT2],
    "phi-2": [_GPT2],
    "llama-bpe": [_LLAMA3],
    "llama3": [_LLAMA3],
    "llama-v3": [_LLAMA3],
    "dbrx": [_LLAMA3],
    "smaug-bpe": [_LLAMA3],
    "qwen2": [_QWEN2],
    "deepseek-r1-qwen": [_QWEN2],
    "stablelm2": [_QWEN2],
    "qwen35": [_QWEN35],
    # starcoder family (SmolLM included): every digit alone first, then the GPT-2 rules
    "starcoder": [r"\p{N}", _GPT2],
    "refact": [r"\p{N}", _GPT2],
    "command-r": [r"\p{N}", _GPT2],
    "smollm": [r"\p{N}", _GPT2],
    "codeshell": [r"\p{N}", _GPT2],
    "falcon": [r"[\p{P}\$\+<=>\^~\|`]+", _GPT2, r"[0-9][0-9][0-9]"],
    "deepseek-llm": _DEEPSEEK_LLM,
    "deepseek-coder": _DEEPSEEK_CODER,
}

# Pre-tokenizers for which llama.cpp skips BPE when a whole word is already a vocab entry.
IGNORE_MERGES = {"llama-bpe", "llama3", "llama-v3"}
# Pre-tokenizers for which llama.cpp adds BOS unless the file says otherwise.
ADD_BOS_DEFAULT = {"llama-bpe", "llama3", "llama-v3"}


# -----------------------------------------------------------------------------
# GPT-2 byte <-> unicode mapping: printable Latin-1 bytes stand for themselves, the other 68
# bytes are moved to U+0100.. in byte order, so every byte has a visible, non-space character.

@lru_cache(maxsize=1)
def byte_decoder() -> dict[str, int]:
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]  # '!'..'~' '¡'..'¬' '®'..'ÿ'
    table = {chr(b): b for b in printable}
    n = 0
    for b in range(256):
        if b not in printable:
            table[chr(256 + n)] = b
            n += 1
    return table


def piece_to_bytes(piece: str) -> bytes:
    """Bytes of a byte-level vocab entry; characters outside the mapping pass as UTF-8."""
    dec = byte_decoder()
    out = bytearray()
    for ch in piece:
        b = dec.get(ch)
        if b is None:
            out += ch.encode("utf-8")
        else:
            out.append(b)
    return bytes(out)


# -----------------------------------------------------------------------------
# the BPE model

# Words whose ids are remembered (text is Zipfian: most words of a prompt were seen before).
WORD_CACHE_SIZE = 10_000


class ByteLevelBPE:
    """Encodes text to ids: ``tokenizers`` cuts it into byte-level words, then each word is merged
    here, in Python, by the ranks of the merge list.

    Why not ``tokenizers.models.BPE``, which does the same merges in Rust: its constructor is one
    call that holds the GIL for ~115 ms on a 49k vocabulary (``from_file`` and ``from_str`` too),
    so a game loading a model on a worker thread lost a frame to it. Built here, the tables are
    plain Python loops, which hand the GIL back every switch interval. They map ints to ints
    (a pair of ids packed as ``left * vocab_size + right``), objects the garbage collector does
    not track: tuple keys made a full collection take ~30 ms, holding the GIL too.
    Encoding a word is llama.cpp's (and ``tokenizers``') rule: merge the adjacent pair of lowest
    rank, the leftmost of equals, until no pair has a rank. Words are cached; the GPL-3 text
    (35 kB) takes ~0.1 s. The llama.cpp test vectors check it, and a test compares it with
    ``tokenizers.models.BPE`` on random text and on one 20k-character word.
    """

    def __init__(self, vocab: dict[str, int], merges: Iterable[tuple[str, str]], pre: str, ignore_merges: bool):
        """``merges`` in rank order; a pair whose halves or result are not in ``vocab`` can never
        apply and is skipped; a pair listed twice keeps its later rank, as ``tokenizers`` does."""
        self.vocab = vocab
        self.n = n = max(vocab.values(), default=0) + 1
        self.rank: dict[int, int] = {}  # packed pair -> rank
        self.merged: dict[int, int] = {}  # packed pair -> the id of the two pieces joined
        for rank, (a, b) in enumerate(merges):
            left, right, joined = vocab.get(a), vocab.get(b), vocab.get(a + b)
            if left is not None and right is not None and joined is not None:
                self.rank[left * n + right] = rank
                self.merged[left * n + right] = joined
        self.ignore_merges = ignore_merges  # a word that is a whole vocab entry skips merging
        self.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in PRE_TOKENIZERS[pre]]
            + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        self._words: dict[str, tuple[int, ...]] = {}

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for word, _ in self.pre_tokenizer.pre_tokenize_str(text):
            word_ids = self._words.get(word)
            if word_ids is None:
                word_ids = self._merge(word)
                if len(self._words) < WORD_CACHE_SIZE:
                    self._words[word] = word_ids
            ids.extend(word_ids)
        return ids

    def _merge(self, word: str) -> tuple[int, ...]:
        vocab, rank_of, n = self.vocab, self.rank, self.n
        if self.ignore_merges and word in vocab:
            return (vocab[word],)
        ids: list = [vocab[ch] for ch in word if ch in vocab]  # a byte missing from the vocab is dropped
        # The pieces form a linked list (merged-away ones become None); candidate merges wait in
        # a heap by (rank, position), so a word of any length costs O(n log n), as in tokenizers.
        # An entry is stale once either piece has changed: the pair then has another rank.
        nxt = list(range(1, len(ids))) + [-1]
        prev = list(range(-1, len(ids) - 1))
        heap = [(rank, i) for i in range(len(ids) - 1) if (rank := rank_of.get(ids[i] * n + ids[i + 1])) is not None]
        heapq.heapify(heap)
        while heap:
            rank, i = heapq.heappop(heap)
            j = nxt[i]
            if ids[i] is None or j < 0 or rank_of.get(ids[i] * n + ids[j]) != rank:
                continue
            ids[i], ids[j] = self.merged[ids[i] * n + ids[j]], None
            nxt[i] = k = nxt[j]
            if k >= 0:
                prev[k] = i
                if (right := rank_of.get(ids[i] * n + ids[k])) is not None:
                    heapq.heappush(heap, (right, i))
            if (h := prev[i]) >= 0 and (left := rank_of.get(ids[h] * n + ids[i])) is not None:
                heapq.heappush(heap, (left, h))
        return tuple(t for t in ids if t is not None)


def build(tokens: list[str], merges: list[str], pre: str, where: str) -> ByteLevelBPE:
    """The BPE encoder of a GGUF vocabulary. Special tokens are split off before it is called
    (see tokenizer.Tokenizer.encode); decoding uses the vocab pieces (``piece_to_bytes``)."""
    if pre not in PRE_TOKENIZERS:
        raise TokenizerError(
            f"{where}: tokenizer.ggml.pre = {pre!r} is not a supported pre-tokenizer "
            f"(supported: {', '.join(sorted(PRE_TOKENIZERS))})")
    vocab = {t: i for i, t in enumerate(tokens)}
    # llama.cpp splits a merge at the first space after position 0; an entry without one can
    # never apply.
    pairs = ((m[:cut], m[cut + 1:]) for m in merges if (cut := m.find(" ", 1)) > 0)
    return ByteLevelBPE(vocab, pairs, pre, ignore_merges=pre in IGNORE_MERGES)
