"""The vocabulary's byte strings as a trie, stored level by level, so a grammar mask
(grammar.py) walks every token at once in NumPy instead of testing 49k tokens one by one."""

from __future__ import annotations

import weakref

import numpy as np

_TEXT_TYPES = (1, 6)  # NORMAL, BYTE (tokenizer_spm): tokens that add text


class _Level:
    __slots__ = ("offset", "byte", "child_start", "child_count")


class TokenTrie:
    """The vocabulary's byte strings as a trie, stored level by level for NumPy walks.

    Level k holds the distinct k-byte prefixes, sorted, so the children of one node of level k-1
    are a contiguous run of level k (``child_start``/``child_count``). ``token_node[t]`` is the
    global node where token t ends, or ``n_nodes`` (never alive) for tokens that add no text.
    Build it with ``TokenTrie.for_tokenizer``: one per tokenizer, shared by all its matchers."""

    _cache: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()

    @classmethod
    def for_tokenizer(cls, tokenizer) -> "TokenTrie":
        trie = cls._cache.get(tokenizer)
        if trie is None:
            pieces = [tokenizer.token_to_bytes(t) if tokenizer.types[t] in _TEXT_TYPES else b""
                      for t in range(tokenizer.vocab_size)]
            trie = cls._cache[tokenizer] = cls(pieces)
        return trie

    def __init__(self, pieces: list[bytes]):
        self.vocab_size = len(pieces)
        self.pieces = pieces
        depth = max((len(p) for p in pieces), default=0)
        self.levels: list[_Level] = []
        index: list[dict[bytes, int]] = []
        offset = 0
        longer = list(pieces)
        for k in range(depth + 1):
            longer = [p for p in longer if len(p) >= k]
            prefixes = sorted({p[:k] for p in longer})
            pos = {p: i for i, p in enumerate(prefixes)}
            lv = _Level()
            lv.offset = offset
            lv.byte = np.array([p[-1] if p else 0 for p in prefixes], dtype=np.int64)
            if k:
                parent = np.array([index[k - 1][p[:-1]] for p in prefixes], dtype=np.int64)
                prev = self.levels[k - 1]
                n_prev = len(index[k - 1])
                prev.child_start = np.searchsorted(parent, np.arange(n_prev)).astype(np.int64)
                prev.child_count = np.bincount(parent, minlength=n_prev).astype(np.int64)
            self.levels.append(lv)
            index.append(pos)
            offset += len(prefixes)
        last = self.levels[-1]
        last.child_start = np.zeros(len(index[-1]), dtype=np.int64)
        last.child_count = np.zeros(len(index[-1]), dtype=np.int64)
        self.n_nodes = offset
        self.token_node = np.array([self.levels[len(p)].offset + index[len(p)][p] if p else offset
                                    for p in pieces], dtype=np.int64)
