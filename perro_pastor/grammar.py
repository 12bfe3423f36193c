"""Grammar-constrained generation: a GBNF grammar as a byte automaton, and token masks for it.

    grammar = Grammar(open("npc.gbnf").read())          # or Grammar.from_json_schema(schema)
    m = grammar.matcher(model.tokenizer)                 # one per reply
    logits[~m.allowed_tokens()] = -inf                   # before sampling
    m.advance(token)                                      # after sampling

The automaton is llama.cpp's pushdown one (a set of stacks of grammar positions), but it reads
bytes, not code points (grammar_parse.py lowers every character class to UTF-8 byte sets).
A *state* is the frozen set of stacks; each state gets an id and a lazily filled row of 256
transitions, shared by every matcher of the grammar: replies repeat states (inside a string,
between fields), so after a few replies most steps are table look-ups.

The mask walks a byte trie of the vocabulary (``TokenTrie``, built once per tokenizer) level by
level, in NumPy: the children of every still-alive trie node take one transition, dead ones are
dropped, and a token is allowed iff its node is alive. Masks are cached per state.

Special tokens (control, unknown, unused) are never allowed; end-of-turn ids only where the
grammar accepts.
"""

from __future__ import annotations


import numpy as np

from .grammar_parse import BYTES, END, GrammarError, Program, parse_gbnf
from .grammar_trie import TokenTrie
from .json_schema import JSON_GBNF, schema_to_gbnf

__all__ = ["Grammar", "GrammarMatcher", "GrammarError", "TokenTrie"]

_TEXT_TYPES = (1, 6)  # NORMAL, BYTE (tokenizer_spm): tokens that add text
_DEAD = -1
_UNKNOWN = -2
# Automaton states a grammar may grow to (each: a row of 256 transitions, 1 KB, and its stacks).
# A game keeps one Grammar for hours; a recursive grammar fed ever deeper nesting ("[[[[...")
# would otherwise grow without end. Past it, the reply ends with a GrammarError.
MAX_STATES = 1 << 16


# -----------------------------------------------------------------------------
# automaton

class Grammar:
    """A compiled grammar: the program, its states and their transitions (grown as used)."""

    def __init__(self, gbnf: str, root: str = "root"):
        self.gbnf = gbnf
        self.program: Program = parse_gbnf(gbnf, root)
        self._kind, self._value = self.program.kind, self.program.value
        self._succ: dict[tuple, frozenset] = {}
        self._stacks: list[frozenset] = []       # state id -> its stacks
        self._ids: dict[frozenset, int] = {}
        self._accepting: list[bool] = []
        self.trans = np.full((64, 256), _UNKNOWN, dtype=np.int32)  # state x byte -> state
        self._done = np.zeros(64, dtype=bool)                          # state's row is filled
        self._masks: dict[tuple[int, int], np.ndarray] = {}          # (trie id, key) -> packed
        self._mask_key: dict[tuple[int, int], int] = {}               # (horizon, state) -> key
        self._canon: dict[int, list[int]] = {}                        # horizon -> position map
        self._keys: dict[frozenset, int] = {}
        start: set = set()
        for a in self.program.alts[self.program.root]:
            self._expand((a,), start)
        self.start = self._intern(frozenset(start))

    @classmethod
    def from_json_schema(cls, schema: dict | bool) -> "Grammar":
        return cls(schema_to_gbnf(schema))

    @classmethod
    def json(cls) -> "Grammar":
        """Any JSON value (the grammar behind ``--json``)."""
        return cls(JSON_GBNF)

    def matcher(self, tokenizer=None, eos_ids=None) -> "GrammarMatcher":
        return GrammarMatcher(self, tokenizer, eos_ids)

    @property
    def n_states(self) -> int:
        return len(self._stacks)

    # --- stacks --------------------------------------------------------------

    def _expand(self, stack: tuple, out: set) -> None:
        """Add to ``out`` every stack reachable from ``stack`` without reading a byte whose top
        is a byte set, and () when the grammar can end here. Positions on a stack below the top
        are return points; a rule called last in its alternative leaves none (a tail call), so
        ``x*`` loops do not grow the stack and nullable loops end in ``seen``."""
        kind, value, alts = self._kind, self._value, self.program.alts
        todo, seen = [stack], set()
        while todo:
            st = todo.pop()
            if st in seen:
                continue
            seen.add(st)
            if not st:
                out.add(st)
                continue
            pos = st[-1]
            k = kind[pos]
            if k == BYTES:
                out.add(st)
            elif k == END:
                todo.append(st[:-1])
            else:  # REF
                rest = st[:-1] if kind[pos + 1] == END else st[:-1] + (pos + 1,)
                for a in alts[value[pos]]:
                    todo.append(rest + (a,))

    def _successors(self, stack: tuple) -> frozenset:
        """The stacks after ``stack``'s top byte set has matched a byte."""
        got = self._succ.get(stack)
        if got is None:
            out: set = set()
            self._expand(stack[:-1] + (stack[-1] + 1,), out)
            got = self._succ[stack] = frozenset(out)
        return got

    def _intern(self, stacks: frozenset) -> int:
        sid = self._ids.get(stacks)
        if sid is None:
            if len(self._stacks) >= MAX_STATES:
                raise GrammarError(f"the grammar's automaton grew past {MAX_STATES} states (a recursive rule "
                                   f"nested too deep?); refusing to grow further")
            sid = self._ids[stacks] = len(self._stacks)
            self._stacks.append(stacks)
            self._accepting.append(() in stacks)
            if sid >= len(self.trans):
                grown = np.full((2 * len(self.trans), 256), _UNKNOWN, dtype=np.int32)
                grown[:len(self.trans)] = self.trans
                self.trans = grown
                self._done = np.concatenate([self._done, np.zeros(len(self._done), dtype=bool)])
        return sid

    def _fill_row(self, sid: int) -> None:
        """All 256 transitions out of state ``sid`` at once: a stack's successors do not depend
        on which byte of its top set matched, so each stack is advanced once."""
        per_byte: dict[int, set] = {}
        for st in self._stacks[sid]:
            if not st:
                continue
            mask, nxt = self._value[st[-1]], self._successors(st)
            b = 0
            while mask:
                if mask & 1:
                    per_byte.setdefault(b, set()).update(nxt)
                mask >>= 1
                b += 1
        row = np.full(256, _DEAD, dtype=np.int32)
        for b, stacks in per_byte.items():
            row[b] = self._intern(frozenset(stacks)) if stacks else _DEAD
        self.trans[sid] = row
        self._done[sid] = True

    def step(self, sid: int, byte: int) -> int:
        """The state after ``byte``, or -1 (dead)."""
        nxt = self.trans[sid, byte]
        if nxt == _UNKNOWN:
            self._fill_row(sid)
            nxt = self.trans[sid, byte]
        return int(nxt)

    def walk(self, sid: int, data: bytes) -> int:
        for b in data:
            if sid < 0:
                break
            sid = self.step(sid, b)
        return sid

    def accepting(self, sid: int) -> bool:
        return sid >= 0 and self._accepting[sid]

    def can_continue(self, sid: int) -> bool:
        return sid >= 0 and any(self._stacks[sid])

    def accepts(self, text: str | bytes) -> bool:
        """True when the whole of ``text`` is a sentence of the grammar."""
        data = text.encode("utf-8") if isinstance(text, str) else text
        return self.accepting(self.walk(self.start, data))

    # --- masks ---------------------------------------------------------------

    def _min_lengths(self) -> list[float]:
        """Fewest bytes each rule can match (a fixed point; inf for rules that never end)."""
        prog, inf = self.program, float("inf")
        best = [inf] * len(prog.alts)
        changed = True
        while changed:
            changed = False
            for r, alts in enumerate(prog.alts):
                for a in alts:
                    n, p = 0, a
                    while prog.kind[p] != END:
                        n += 1 if prog.kind[p] == BYTES else best[prog.value[p]]
                        p += 1
                    if n < best[r]:
                        best[r], changed = n, True
        return best

    def _canon_map(self, horizon: int) -> list[int]:
        """Positions renamed so that states differing only in how many items a long bounded
        repetition still allows share one mask. From R_k (k items of at least one byte still
        allowed) no token of fewer than ``horizon`` bytes can reach the chain's end when
        k >= horizon, so R_k behaves as R_horizon for every token: ``"say": char{0,200}`` then
        needs about 80 masks instead of 200."""
        canon = self._canon.get(horizon)
        if canon is None:
            prog = self.program
            canon = list(range(len(prog.kind)))
            shortest = self._min_lengths()
            for chain in prog.chains:
                if len(chain) <= horizon:
                    continue
                item = prog.alts[chain[0]][0]  # R_1 ::= item |
                item_len = sum(1 if prog.kind[p] == BYTES else shortest[prog.value[p]]
                               for p in range(item, _end(prog, item)))
                if item_len < 1:
                    continue
                target = prog.alts[chain[horizon - 1]]
                for r in chain[horizon:]:
                    for a, t in zip(prog.alts[r], target):
                        for i in range(_end(prog, a) - a + 1):
                            canon[a + i] = t + i
            self._canon[horizon] = canon
        return canon

    def _key(self, horizon: int, sid: int) -> int:
        key = self._mask_key.get((horizon, sid))
        if key is None:
            canon = self._canon_map(horizon)
            stacks = frozenset(tuple(canon[p] for p in st) for st in self._stacks[sid])
            key = self._mask_key[(horizon, sid)] = self._keys.setdefault(stacks, len(self._keys))
        return key

    def _mask(self, trie: "TokenTrie", sid: int) -> np.ndarray:
        """Tokens whose bytes all advance from ``sid`` (bool, vocab-sized, specials False)."""
        key = (id(trie), self._key(len(trie.levels), sid))
        packed = self._masks.get(key)
        if packed is not None:
            return np.unpackbits(packed, count=trie.vocab_size).view(bool)
        alive = np.zeros(trie.n_nodes + 1, dtype=bool)  # +1: the node of excluded tokens
        p_idx = np.zeros(1, dtype=np.int64)   # alive nodes of the previous level (level-local)
        p_state = np.array([sid], dtype=np.int32)
        for k in range(1, len(trie.levels)):
            start, count = trie.levels[k - 1].child_start, trie.levels[k - 1].child_count
            counts = count[p_idx]
            total = int(counts.sum())
            if total == 0:
                break
            todo = ~self._done[p_state]
            if todo.any():  # rows are filled whole, the first time a state is reached
                for s in np.unique(p_state[todo]):
                    self._fill_row(int(s))
            # children of the alive parents, as one index array: parent i's run starts[i]..+counts[i]
            offs = np.cumsum(counts) - counts
            idx = np.repeat(start[p_idx] - offs, counts) + np.arange(total)
            states = self.trans[np.repeat(p_state, counts), trie.levels[k].byte[idx]]
            keep = states >= 0
            p_idx, p_state = idx[keep], states[keep]
            if not len(p_idx):
                break
            alive[trie.levels[k].offset + p_idx] = True
        mask = alive[trie.token_node]
        if len(self._masks) >= 4096:  # bounded: about 6 KB a state on a 49k vocabulary
            self._masks.clear()
        self._masks[key] = np.packbits(mask)
        return mask


def _end(prog: Program, a: int) -> int:
    """The END position of the alternative starting at ``a``."""
    while prog.kind[a] != END:
        a += 1
    return a


# -----------------------------------------------------------------------------
# per-reply matcher

class GrammarMatcher:
    """Where one reply stands in a grammar. ``allowed_tokens`` before sampling, ``advance`` after.

    ``eos_ids``: the ids that end the reply (default: the tokenizer's end-of-turn ids); they are
    allowed only where the grammar accepts. Without a tokenizer only the byte methods work."""

    def __init__(self, grammar: Grammar, tokenizer=None, eos_ids=None):
        self.grammar = grammar
        self.tokenizer = tokenizer
        self.trie = TokenTrie.for_tokenizer(tokenizer) if tokenizer is not None else None
        if eos_ids is None:
            eos_ids = sorted(tokenizer.eot_ids) if tokenizer is not None else []
        self.eos_ids = np.array(sorted(set(int(i) for i in eos_ids)), dtype=np.int64)
        self.state = grammar.start
        self.ended = False        # an end-of-turn token was accepted
        self.text = bytearray()   # what the grammar has read so far, for messages

    def clone(self) -> "GrammarMatcher":
        other = GrammarMatcher.__new__(GrammarMatcher)
        other.__dict__.update(self.__dict__)
        other.text = bytearray(self.text)
        return other

    def accepts_bytes(self, data: bytes) -> bool:
        """True when ``data`` can follow what was read so far (the parse stays alive)."""
        return not self.ended and self.grammar.walk(self.state, data) >= 0

    def advance_bytes(self, data: bytes) -> None:
        nxt = self.grammar.walk(self.state, data) if not self.ended else -1
        if nxt < 0:
            raise GrammarError(f"grammar does not allow {data!r} after {self._tail()!r}")
        self.state = nxt
        self.text += data

    def advance(self, token_id: int) -> None:
        """Read one sampled token; GrammarError when the mask would have refused it."""
        token_id = int(token_id)
        if token_id in self.eos_ids:
            if not self.can_end():
                raise GrammarError(f"end of turn before the grammar is complete, after {self._tail()!r}")
            self.ended = True
            return
        data = self.trie.pieces[token_id] if 0 <= token_id < self.trie.vocab_size else b""
        if not data:
            raise GrammarError(f"token {token_id} adds no text and is not an end of turn")
        self.advance_bytes(data)

    def allowed_tokens(self) -> np.ndarray:
        """(vocab_size,) bool: the tokens that keep the parse alive, plus end-of-turn ids where the
        grammar accepts. A fresh array: callers may change it."""
        if self.ended:
            return np.zeros(self.trie.vocab_size, dtype=bool)
        mask = self.grammar._mask(self.trie, self.state)
        if len(self.eos_ids):
            mask[self.eos_ids] = self.can_end()
        return mask

    def can_end(self) -> bool:
        """The text so far is a complete sentence of the grammar (end of turn is allowed)."""
        return not self.ended and self.grammar.accepting(self.state)

    def is_dead(self) -> bool:
        """Nothing can follow and the reply may not end here: sampling must stop."""
        return self.ended or (not self.can_end() and not self.grammar.can_continue(self.state))

    def why_stopped(self) -> str:
        """One line for a reply that ends with finish reason ``grammar``."""
        if self.ended:
            return "the grammar's reply is complete"
        if self.trie is not None and not self.allowed_tokens().any():
            return f"no token of the vocabulary can continue the grammar after {self._tail()!r}"
        return f"the grammar cannot continue after {self._tail()!r}"

    def _tail(self) -> str:
        return bytes(self.text[-40:]).decode("utf-8", errors="replace")
