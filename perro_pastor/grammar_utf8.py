"""Character classes of code points lowered to the UTF-8 byte sequences that encode them (the
grammar automaton reads bytes): ``[a-z]`` is one byte set, ``[ぁ-ゟ]`` three. A byte set is a
256-bit ``int``."""

from __future__ import annotations

MAX_CHAR = 0x10FFFF


def _utf8_len(cp: int) -> int:
    return 1 if cp < 0x80 else 2 if cp < 0x800 else 3 if cp < 0x10000 else 4


def _utf8_split(lo: int, hi: int) -> list[list[tuple[int, int]]]:
    """Byte-range sequences encoding exactly the code points lo..hi (same UTF-8 length, no
    surrogates). Each sequence is [(first_lo, first_hi), ...]: the classic split used by regex
    engines, cutting the range until every byte position varies independently."""
    n = _utf8_len(lo)
    if n == 1:
        return [[(lo, hi)]]
    for i in range(1, n):
        m = (1 << (6 * i)) - 1
        if lo & ~m != hi & ~m:
            if lo & m:
                return _utf8_split(lo, lo | m) + _utf8_split((lo | m) + 1, hi)
            if hi & m != m:
                return _utf8_split(lo, (hi & ~m) - 1) + _utf8_split(hi & ~m, hi)
    a, b = chr(lo).encode("utf-8"), chr(hi).encode("utf-8")
    return [list(zip(a, b))]


def class_to_sequences(ranges: list[tuple[int, int]], negated: bool) -> list[list[int]]:
    """Code point ranges (a GBNF class) -> sequences of byte masks. Surrogates never match."""
    ranges = sorted((lo, hi) for lo, hi in ranges if lo <= hi)
    merged: list[list[int]] = []
    for lo, hi in ranges:
        if merged and lo <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    if negated:
        comp, nxt = [], 0
        for lo, hi in merged:
            if lo > nxt:
                comp.append([nxt, lo - 1])
            nxt = hi + 1
        if nxt <= MAX_CHAR:
            comp.append([nxt, MAX_CHAR])
        merged = comp
    pieces: list[tuple[int, int]] = []
    for lo, hi in merged:  # cut at UTF-8 length boundaries and around the surrogates
        for blo, bhi in ((0, 0x7F), (0x80, 0x7FF), (0x800, 0xD7FF), (0xE000, 0xFFFF), (0x10000, MAX_CHAR)):
            a, b = max(lo, blo), min(hi, bhi)
            if a <= b:
                pieces.append((a, b))
    one_byte = 0
    seqs: list[list[int]] = []
    for lo, hi in pieces:
        for seq in _utf8_split(lo, hi):
            masks = [((1 << (b + 1)) - 1) ^ ((1 << a) - 1) for a, b in seq]
            if len(masks) == 1:
                one_byte |= masks[0]
            else:
                seqs.append(masks)
    return ([[one_byte]] if one_byte else []) + seqs
