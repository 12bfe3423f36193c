"""history.drop_oldest_turns against the one-turn-at-a-time trim it replaces, over random
histories and prompt costs (Hypothesis)."""

from hypothesis import given, settings
from hypothesis import strategies as st

from perro_pastor.history import drop_oldest_turns

message = st.tuples(st.sampled_from(["user", "assistant", "narrator"]), st.integers(0, 40))


def one_by_one(messages, first, prompt_of, fits):
    """The reference: drop the oldest message (and an assistant line after it) until it fits."""
    kept = list(messages)
    while not fits(prompt_of(kept)):
        if len(kept) - first <= 1:
            return None
        del kept[first]
        if kept[first:first + 1] and kept[first]["role"] == "assistant":
            del kept[first]
        if len(kept) == first:
            return None
    return kept


@settings(max_examples=400, deadline=None)
@given(st.booleans(), st.lists(message, min_size=1, max_size=40), st.integers(0, 600))
def test_bisection_keeps_what_one_by_one_trimming_keeps(system, lines, limit):
    messages = ([{"role": "system", "content": "s" * 10}] if system else []) + \
        [{"role": role, "content": "x" * n} for role, n in lines]
    first = 1 if system else 0
    prompt_of = lambda ms: [0] * sum(3 + len(m["content"]) for m in ms)  # noqa: E731
    fits = lambda p: len(p) <= limit  # noqa: E731
    if fits(prompt_of(messages)):
        return  # callers only trim a prompt that does not fit
    want = one_by_one(messages, first, prompt_of, fits)
    got = drop_oldest_turns(messages, first, prompt_of, fits)
    if want is None or (want[first:first + 1] and want[first]["role"] == "assistant"):
        # the reference gave up, or kept a history starting on an assistant line (it drops one
        # assistant line per turn): bisection never keeps that, so it keeps fewer or nothing
        assert got is None or (fits(got[1]) and got[0][first]["role"] != "assistant")
        return
    assert got is not None
    assert got[0] == want and got[1] == prompt_of(want)
