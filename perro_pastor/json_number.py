"""Bounded JSON numbers as GBNF: every integer or decimal between two bounds, and nothing else.

``{"type": "number", "minimum": 0, "exclusiveMaximum": 1.5}`` becomes a grammar for the decimals
written without an exponent (the subset a grammar can bound exactly): an optional minus, an
integer part without leading zeros (at most 16 digits), an optional fraction of up to 16 digits.

An integer range is a union of digit patterns, one per length (``_same_len`` splits lo..hi of one
length at its first differing digit). A fraction is walked digit by digit, as one compares two
decimals by hand: while the digits written so far equal the lower bound's, the next may not be
smaller; once one is larger, the rest is free; the upper bound likewise, mirrored. A fraction may
end where the value lies inside the bounds (ending exactly on an exclusive bound is refused).
Negative values are the same walk on the absolute value, after a minus sign.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal

from .grammar_parse import GrammarError

MAX_DIGITS = 16  # of the integer part and of the fraction, as in the generic number grammar
ANY_FRACTION = f'("." [0-9]{{1,{MAX_DIGITS}}})?'


@dataclass(frozen=True)
class Bound:
    value: Decimal
    inclusive: bool


# -----------------------------------------------------------------------------
# integers

def _same_len(lo: str, hi: str) -> str:
    """Digit strings of equal length, lo..hi inclusive."""
    if not lo:
        return '""'
    if lo[0] == hi[0]:
        rest = _same_len(lo[1:], hi[1:]) if len(lo) > 1 else ""
        return f'"{lo[0]}"' + (f" {rest}" if rest else "")
    n = len(lo) - 1
    if set(lo[1:]) <= {"0"} and set(hi[1:]) <= {"9"}:
        return f"[{lo[0]}-{hi[0]}]" + (f" [0-9]{{{n}}}" if n else "")
    alts = [f'"{lo[0]}" ' + _same_len(lo[1:], "9" * n)]
    if int(hi[0]) - int(lo[0]) > 1:
        alts.append(f"[{int(lo[0]) + 1}-{int(hi[0]) - 1}] [0-9]{{{n}}}")
    alts.append(f'"{hi[0]}" ' + _same_len("0" * n, hi[1:]))
    return "(" + " | ".join(alts) + ")"


def _nonneg(lo: int, hi: float) -> str:
    """Non-negative integers lo..hi (hi may be inf), without leading zeros."""
    alts = []
    a = str(lo)
    top = len(str(int(hi))) if hi != math.inf else len(a)
    for n in range(len(a), top + 1):
        start = a if n == len(a) else "1" + "0" * (n - 1)
        end = "9" * n if hi == math.inf or n < top else str(int(hi))
        alts.append(_same_len(start, end))
    if hi == math.inf:
        alts.append(f"[1-9] [0-9]{{{len(a)},15}}")
    return " | ".join(f"({x})" for x in alts)


def int_range(lo: float, hi: float) -> str:
    parts = []
    if lo < 0:  # negative part: "-" then |n| in -min(hi,-1)..-lo
        parts.append('"-" (' + _nonneg(int(max(-hi, 1)), -lo) + ")")
    if hi >= 0:
        parts.append(_nonneg(int(max(lo, 0)), hi))
    return " | ".join(parts)


# -----------------------------------------------------------------------------
# decimals

def decimal_range(lower: Bound | None, upper: Bound | None) -> str | None:
    """GBNF alternatives for the decimals between ``lower`` and ``upper`` (None: unbounded),
    or None when no decimal lies between them."""
    zero = Decimal(0)
    parts = []
    if lower is None or lower.value < 0:  # negative values: "-" then the absolute value
        low = Bound(-upper.value, upper.inclusive) if upper is not None and upper.value < 0 else Bound(zero, False)
        high = None if lower is None else Bound(-lower.value, lower.inclusive)
        negative = _nonneg_decimals(low, high)
        if negative:
            parts.append(f'"-" ({negative})')
    if upper is None or upper.value > 0 or (upper.value == 0 and upper.inclusive):
        low = lower if lower is not None and lower.value >= 0 else Bound(zero, True)
        positive = _nonneg_decimals(low, upper)
        if positive:
            parts.append(positive)
    return " | ".join(f"({p})" for p in parts) or None


def _nonneg_decimals(low: Bound, high: Bound | None) -> str | None:
    if high is not None and high.value >= 10 ** MAX_DIGITS:
        high = None  # the grammar writes at most 16 integer digits anyway
    if low.value >= 10 ** MAX_DIGITS:
        raise GrammarError(f"a number bound of {low.value} has more than {MAX_DIGITS} integer digits")
    if high is not None and (high.value < low.value or
                             (high.value == low.value and not (low.inclusive and high.inclusive))):
        return None
    ia, fa = _split(low.value)
    alts = []
    if high is not None and _split(high.value)[0] == ia:
        alts.append(_with_fraction(ia, _fraction(fa, low.inclusive, _split(high.value)[1], high.inclusive)))
    else:
        alts.append(_with_fraction(ia, _fraction(fa, low.inclusive, None, True)))
        top = math.inf if high is None else _split(high.value)[0] - 1
        if ia + 1 <= top:
            alts.append(f"({_nonneg(ia + 1, top)}) {ANY_FRACTION}")
        if high is not None:
            ib, fb = _split(high.value)
            alts.append(_with_fraction(ib, _fraction(None, True, fb, high.inclusive)))
    return " | ".join(a for a in alts if a) or None


def _split(value: Decimal) -> tuple[int, str]:
    """A non-negative decimal as (integer part, fraction digits without trailing zeros)."""
    whole = int(value)
    digits = format(value - whole, "f").partition(".")[2].rstrip("0")
    if len(digits) > MAX_DIGITS:
        raise GrammarError(f"a number bound of {value} has more than {MAX_DIGITS} fraction digits")
    return whole, digits


def _with_fraction(whole: int, fraction: str | None) -> str | None:
    if fraction is None:
        return None
    return f'"{whole}"' + (f" {fraction}" if fraction else "")


def _fraction(lo: str | None, lo_incl: bool, hi: str | None, hi_incl: bool) -> str | None:
    """The fraction part ("." digits, or nothing) after an integer part equal to the bounds'
    (``lo``/``hi``: the bound's fraction digits while it still binds, None once it does not).
    "" when only no fraction fits, None when nothing does."""
    can_end, alts = _digits(0, lo, lo_incl, hi, hi_incl)
    if not alts:
        return "" if can_end else None
    body = '"." ' + (alts[0] if len(alts) == 1 else "(" + " | ".join(alts) + ")")
    return f"({body})?" if can_end else body


def _digits(i: int, lo, lo_incl, hi, hi_incl) -> tuple[bool, list[str]]:
    """Whether the fraction may end after ``i`` digits, and the ways it may go on (each starts
    with a digit class)."""
    can_end = _inside(i, lo, lo_incl, lower=True) and _inside(i, hi, hi_incl, lower=False)
    if i == MAX_DIGITS:
        return can_end, []
    if lo is None and hi is None:
        return True, [f"[0-9]{{1,{MAX_DIGITS - i}}}"]
    ld, hd = _digit(lo, i), _digit(hi, i)
    first, last = (0 if lo is None else ld), (9 if hi is None else hd)
    cuts = {first, last + 1}
    cuts |= set() if lo is None else {ld, ld + 1}
    cuts |= set() if hi is None else {hd, hd + 1}
    cuts = sorted(c for c in cuts if first <= c <= last + 1)
    alts = []
    for a, b in zip(cuts, cuts[1:]):  # digits a..b-1 lead to the same state
        nlo = lo if lo is not None and a == ld else None
        nhi = hi if hi is not None and a == hd else None
        more_end, more = _digits(i + 1, nlo, lo_incl, nhi, hi_incl)
        if not more and not more_end:
            continue
        rest = "" if not more else (more[0] if len(more) == 1 else "(" + " | ".join(more) + ")")
        if rest and more_end:
            rest = f"({rest})?"
        digit = f"[{a}]" if b - a == 1 else f"[{a}-{b - 1}]"
        alts.append(f"{digit} {rest}".strip())
    return can_end, alts


def _digit(bound: str | None, i: int) -> int:
    return int(bound[i]) if bound is not None and i < len(bound) else 0


def _inside(i: int, bound: str | None, inclusive: bool, lower: bool) -> bool:
    """Ending after ``i`` fraction digits that so far equal ``bound``'s: still within it?"""
    if bound is None:
        return True
    if bound[i:].strip("0"):  # digits still owed: the value is below the bound
        return not lower
    return inclusive  # exactly the bound
