"""Trimming a conversation to fit a context: which oldest turns to drop.

A session's history is a list of chat messages (``{"role", "content"}``), the system prompt
first when there is one. When the rendered prompt no longer fits the context, the oldest turns go
(never the system prompt, never the newest message), whole turns only: the kept history never
starts on an assistant line. Rendering a prompt costs a template render and an encode, so the cut
is found by bisection, a few renders however long the history (400 lines trimmed one turn at a
time took seconds)."""

from __future__ import annotations

from typing import Callable, Sequence

Messages = Sequence[dict]


def cut_points(messages: Messages, first: int) -> list[int]:
    """Where the kept history may start: indices after ``first`` (the kept system prompt) that
    are not an assistant line, leaving at least the newest message."""
    return [i for i in range(first + 1, len(messages)) if messages[i]["role"] != "assistant"]


def drop_oldest_turns(messages: Messages, first: int, prompt_of: Callable[[list[dict]], list[int]],
                      fits: Callable[[list[int]], bool]) -> tuple[list[dict], list[int]] | None:
    """The longest history that fits, as (messages, its prompt): ``messages[:first]`` plus the
    newest turns. None when even the newest message alone does not fit.

    Assumes fewer turns never make a longer prompt (true of every chat template)."""
    head, cuts, best = list(messages[:first]), cut_points(messages, first), None
    lo, hi = 0, len(cuts) - 1
    while lo <= hi:
        mid = (lo + hi) // 2
        kept = head + list(messages[cuts[mid]:])
        prompt = prompt_of(kept)
        if fits(prompt):
            best, hi = (kept, prompt), mid - 1
        else:
            lo = mid + 1
    return best
