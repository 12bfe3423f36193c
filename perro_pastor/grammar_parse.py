"""GBNF text -> a byte-level grammar program (the parsing half of grammar.py).

The syntax is llama.cpp's (grammars/README.md there): ``name ::= ...`` rules, ``|`` alternation,
``( )`` groups, ``* + ?`` and ``{m}``, ``{m,}``, ``{m,n}`` repetition, ``"..."`` literals with
``\\n \\t \\r \\\\ \\" \\xHH \\uHHHH \\UHHHHHHHH`` escapes, ``[a-z]`` classes (``[^...]`` negated),
``.`` for any character, ``#`` comments; ``root`` is the start. Newlines end a rule except inside
parentheses or right after ``|``.

Terminals are Unicode code points in GBNF, but the automaton advances one *byte* at a time, so a
character whose UTF-8 bytes are split across two tokens needs no special case. Every character
class is therefore lowered here to the UTF-8 byte sequences that encode it: ``[a-z]`` is one
byte set, ``[ぁ-ゟ]`` is three (``E3 [81-82] [80-BF]``, ...). A byte set is a 256-bit ``int``.

Repetition is lowered as llama.cpp does: ``S{m,n}`` is ``S`` m times, then a chain of n-m
optional rules ``R_k ::= S R_{k-1} |``; ``S{m,}`` ends with ``R ::= S R |``.

The program (``Program``) is flat, like llama.cpp's rules: one list of symbols, each alternative
a run of symbols closed by END. A stack position is an index into that list.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import PerroPastorError
from .grammar_utf8 import MAX_CHAR, class_to_sequences

END, BYTES, REF = 0, 1, 2  # symbol kinds
MAX_REPEAT = 2000  # llama.cpp's MAX_REPETITION_THRESHOLD: {m,n} beyond this is refused


class GrammarError(PerroPastorError):
    """A grammar (GBNF text or JSON schema) cannot be parsed, compiled or followed."""


# -----------------------------------------------------------------------------
# the program

@dataclass
class Program:
    """A grammar lowered to bytes. ``kind[p]``/``value[p]``: the symbol at position p (a byte mask
    for BYTES, a rule id for REF); ``alts[r]``: the start position of each alternative of rule r."""
    kind: list[int] = field(default_factory=list)
    value: list[int] = field(default_factory=list)
    alts: list[list[int]] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    root: int = 0
    # bounded repetitions: chain id -> its optional rules R_1, R_2, ... (R_k: k items still allowed)
    chains: list[list[int]] = field(default_factory=list)


class _Parser:
    def __init__(self, text: str):
        self.src = text
        self.rules: dict[int, list[list[tuple[int, int]]]] = {}  # rule id -> alternatives
        self.names: list[str] = []
        self.ids: dict[str, int] = {}
        self.defined_at: dict[int, int] = {}
        self.first_ref: dict[int, int] = {}
        self.class_rules: dict[tuple, int] = {}
        self.chains: list[list[int]] = []

    # --- errors and positions -------------------------------------------------

    def error(self, pos: int, what: str) -> GrammarError:
        line = self.src.count("\n", 0, pos) + 1
        col = pos - (self.src.rfind("\n", 0, pos) + 1) + 1
        return GrammarError(f"grammar line {line}, column {col}: {what}")

    def where(self, pos: int) -> str:
        line = self.src.count("\n", 0, pos) + 1
        col = pos - (self.src.rfind("\n", 0, pos) + 1) + 1
        return f"line {line}, column {col}"

    def peek(self, pos: int) -> str:
        return self.src[pos] if pos < len(self.src) else ""

    # --- rule ids ------------------------------------------------------------

    def rule_id(self, name: str) -> int:
        if name not in self.ids:
            self.ids[name] = len(self.names)
            self.names.append(name)
        return self.ids[name]

    def new_rule(self, base: str) -> int:
        k = 1
        while f"{base}_{k}" in self.ids:
            k += 1
        return self.rule_id(f"{base}_{k}")

    # --- lexing --------------------------------------------------------------

    def space(self, pos: int, newline_ok: bool) -> int:
        s = self.src
        while pos < len(s) and (s[pos] in " \t#" or (newline_ok and s[pos] in "\r\n")):
            if s[pos] == "#":
                while pos < len(s) and s[pos] not in "\r\n":
                    pos += 1
            else:
                pos += 1
        return pos

    def name(self, pos: int) -> int:
        end = pos
        while end < len(self.src) and (self.src[end].isascii() and (self.src[end].isalnum() or self.src[end] in "-_")):
            end += 1
        if end == pos:
            raise self.error(pos, "expecting a rule name")
        return end

    def char(self, pos: int) -> tuple[int, int]:
        """One character of a literal or class (escapes decoded): (code point, next pos)."""
        s = self.src
        if pos >= len(s):
            raise self.error(pos, "unexpected end of grammar")
        if s[pos] != "\\":
            return ord(s[pos]), pos + 1
        e = self.peek(pos + 1)
        simple = {"n": 10, "t": 9, "r": 13, "\\": 92, '"': 34, "[": 91, "]": 93, "-": 45}
        if e in simple:
            return simple[e], pos + 2
        size = {"x": 2, "u": 4, "U": 8}.get(e)
        if size is None:
            raise self.error(pos, f"unknown escape \\{e}")
        digits = s[pos + 2:pos + 2 + size]
        if len(digits) != size or any(c not in "0123456789abcdefABCDEF" for c in digits):
            raise self.error(pos, f"expecting {size} hex digits after \\{e}")
        cp = int(digits, 16)
        if cp > MAX_CHAR:
            raise self.error(pos, f"\\{e}{digits} is beyond U+10FFFF")
        return cp, pos + 2 + size

    # --- grammar -------------------------------------------------------------

    def parse(self) -> None:
        pos = self.space(0, True)
        while pos < len(self.src):
            pos = self.rule(pos)

    def rule(self, pos: int) -> int:
        end = self.name(pos)
        name = self.src[pos:end]
        rid = self.rule_id(name)
        if rid in self.defined_at:
            raise self.error(pos, f"rule '{name}' is defined twice (first at {self.where(self.defined_at[rid])})")
        self.defined_at[rid] = pos
        p = self.space(end, False)
        if self.src[p:p + 3] != "::=":
            raise self.error(p, "expecting ::=")
        p = self.space(p + 3, True)
        p = self.alternates(p, name, rid, nested=False)
        if self.peek(p) == "\r":
            p += 2 if self.peek(p + 1) == "\n" else 1
        elif self.peek(p) == "\n":
            p += 1
        elif p < len(self.src):
            raise self.error(p, f"expecting newline or end, found {self.src[p]!r}")
        return self.space(p, True)

    def alternates(self, pos: int, name: str, rid: int, nested: bool) -> int:
        alts: list[list[tuple[int, int]]] = []
        seq, pos = self.sequence(pos, name, nested)
        alts.append(seq)
        while self.peek(pos) == "|":
            pos = self.space(pos + 1, True)
            seq, pos = self.sequence(pos, name, nested)
            alts.append(seq)
        self.rules[rid] = alts
        return pos

    def sequence(self, pos: int, name: str, nested: bool) -> tuple[list[tuple[int, int]], int]:
        out: list[tuple[int, int]] = []
        last = None  # start index in `out` of the last item, for * + ? {}
        s = self.src
        while pos < len(s):
            c = s[pos]
            if c == '"':
                last, pos = len(out), pos + 1
                while self.peek(pos) != '"':
                    if pos >= len(s):
                        raise self.error(pos, "unterminated string literal")
                    cp, pos = self.char(pos)
                    out.extend((BYTES, 1 << b) for b in chr(cp).encode("utf-8", "surrogatepass"))
                pos = self.space(pos + 1, nested)
            elif c == "[":
                start, pos = pos, pos + 1
                negated = self.peek(pos) == "^"
                pos += negated
                ranges = []
                while self.peek(pos) != "]":
                    if pos >= len(s):
                        raise self.error(start, "unterminated character class")
                    lo, pos = self.char(pos)
                    hi = lo
                    if self.peek(pos) == "-" and self.peek(pos + 1) not in ("]", ""):
                        hi, pos = self.char(pos + 1)
                        if hi < lo:
                            raise self.error(start, f"range {chr(lo)!r}-{chr(hi)!r} is reversed")
                    ranges.append((lo, hi))
                last = len(out)
                out.extend(self.char_class(ranges, negated, name, start))
                pos = self.space(pos + 1, nested)
            elif c == ".":
                last = len(out)
                out.extend(self.char_class([], True, name, pos))
                pos = self.space(pos + 1, nested)
            elif c == "(":
                sub = self.new_rule(name)
                p = self.space(pos + 1, True)
                p = self.alternates(p, name, sub, nested=True)
                if self.peek(p) != ")":
                    raise self.error(p, "expecting ')'")
                self.defined_at[sub] = pos
                last = len(out)
                out.append((REF, sub))
                pos = self.space(p + 1, nested)
            elif c == "<" or (c == "!" and self.peek(pos + 1) == "<"):
                raise self.error(pos, "token references (<...>) are not supported")
            elif c.isascii() and (c.isalnum() or c in "-_"):
                end = self.name(pos)
                rid = self.rule_id(s[pos:end])
                self.first_ref.setdefault(rid, pos)
                last = len(out)
                out.append((REF, rid))
                pos = self.space(end, nested)
            elif c in "*+?{":
                if last is None:
                    raise self.error(pos, f"'{c}' has no item before it to repeat")
                if c == "{":
                    lo, hi, pos = self.braces(pos)
                else:
                    lo, hi, pos = {"*": (0, None), "+": (1, None), "?": (0, 1)}[c] + (pos + 1,)
                item = out[last:]
                del out[last:]
                out.extend(self.repeat(item, lo, hi, name))
                last = None if not out[last:] else last
                pos = self.space(pos, nested)
            else:
                break
        return out, pos

    def braces(self, pos: int) -> tuple[int, int | None, int]:
        s = self.src

        def integer(p: int) -> tuple[int, int]:
            p = self.space(p, True)
            e = p
            while e < len(s) and s[e].isdigit():
                e += 1
            if e == p:
                raise self.error(p, "expecting an integer")
            return int(s[p:e]), self.space(e, True)

        lo, p = integer(pos + 1)
        hi: int | None = lo
        if self.peek(p) == ",":
            p = self.space(p + 1, True)
            if self.peek(p) == "}":
                hi = None
            else:
                hi, p = integer(p)
        if self.peek(p) != "}":
            raise self.error(p, "expecting '}'")
        if hi is not None and hi < lo:
            raise self.error(pos, f"repetition {{{lo},{hi}}} has max below min")
        if max(lo, hi or 0) > MAX_REPEAT:
            raise self.error(pos, f"repetition count above {MAX_REPEAT}")
        return lo, hi, p + 1

    def char_class(self, ranges, negated, name, pos) -> list[tuple[int, int]]:
        seqs = class_to_sequences(ranges, negated)
        if not seqs:
            raise self.error(pos, "character class matches no character")
        if len(seqs) == 1:
            return [(BYTES, m) for m in seqs[0]]
        key = tuple(tuple(q) for q in seqs)
        if key not in self.class_rules:  # one shared rule per distinct multi-byte class
            rid = self.new_rule("char" if name.startswith("char") else f"{name}-char")
            self.rules[rid] = [[(BYTES, m) for m in q] for q in seqs]
            self.defined_at[rid] = pos
            self.class_rules[key] = rid
        return [(REF, self.class_rules[key])]

    def repeat(self, item, lo: int, hi: int | None, name: str) -> list[tuple[int, int]]:
        out = list(item) * lo
        if hi is None:  # R ::= item R |
            r = self.new_rule(name)
            self.rules[r] = [list(item) + [(REF, r)], []]
            self.defined_at[r] = 0
            return out + [(REF, r)]
        prev, chain = None, []
        if hi > lo:
            self.chains.append(chain)
        for _ in range(hi - lo):  # R_k ::= item R_{k-1} |
            r = self.new_rule(name)
            self.rules[r] = [list(item) + ([(REF, prev)] if prev is not None else []), []]
            self.defined_at[r] = 0
            chain.append(r)
            prev = r
        return out + ([(REF, prev)] if prev is not None else [])


# -----------------------------------------------------------------------------
# checks and flattening

def _check(p: _Parser, root: str) -> None:
    for rid, pos in sorted(p.first_ref.items(), key=lambda kv: kv[1]):
        if rid not in p.rules:
            raise GrammarError(f"grammar {p.where(pos)}: undefined rule '{p.names[rid]}'")
    if root not in p.ids or p.ids[root] not in p.rules:
        raise GrammarError(f"grammar has no rule '{root}' (the start rule)")
    # nullable rules, to a fixed point
    nullable = set()
    changed = True
    while changed:
        changed = False
        for rid, alts in p.rules.items():
            if rid not in nullable and any(all(k == REF and v in nullable for k, v in a) for a in alts):
                nullable.add(rid)
                changed = True
    # left-corner edges: rule -> rule referenced after only nullable symbols. A cycle through a
    # non-tail edge would grow the stack without consuming a byte: that is left recursion.
    edges: dict[int, list[tuple[int, bool]]] = {rid: [] for rid in p.rules}
    for rid, alts in p.rules.items():
        for a in alts:
            for i, (k, v) in enumerate(a):
                if k != REF:
                    break
                edges[rid].append((v, i == len(a) - 1))
                if v not in nullable:
                    break
    for rid in p.rules:  # DFS from each target of a non-tail edge looking for its source
        for v, tail in edges[rid]:
            if tail:
                continue
            seen, todo = {v}, [v]
            while todo:
                u = todo.pop()
                if u == rid:
                    raise GrammarError(f"grammar: left recursion in rule '{_user_name(p, rid)}'")
                for w, _ in edges[u]:
                    if w not in seen:
                        seen.add(w)
                        todo.append(w)


def _user_name(p: _Parser, rid: int) -> str:
    name = p.names[rid]
    while "_" in name and name.rsplit("_", 1)[1].isdigit() and name.rsplit("_", 1)[0] in p.ids:
        name = name.rsplit("_", 1)[0]
    return name


def parse_gbnf(text: str, root: str = "root") -> Program:
    """GBNF text -> Program; GrammarError (line and column where it can) on any fault."""
    p = _Parser(text)
    p.parse()
    _check(p, root)
    prog = Program(names=list(p.names), alts=[[] for _ in p.names])
    for rid, alts in p.rules.items():
        for a in alts:
            prog.alts[rid].append(len(prog.kind))
            for k, v in a:
                prog.kind.append(k)
                prog.value.append(v)
            prog.kind.append(END)
            prog.value.append(0)
    prog.root = p.ids[root]
    prog.chains = p.chains
    return prog
