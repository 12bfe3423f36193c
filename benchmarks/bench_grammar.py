"""Grammar mask cost per token on the default model's vocabulary (issue 22: median <= 0.5 ms).

    .venv/bin/python benchmarks/bench_grammar.py [--json out.json]

For the generic JSON grammar and an NPC-action schema, documents a game would get are tokenized
and walked token by token; each step times ``allowed_tokens()`` (the mask) and then advances.
"cold" is the first reply with a freshly compiled grammar (every state new: rows and masks
computed); "warm" is later replies with the same Grammar object, as a game keeps one per schema.
"""

import argparse
import json
import time

import numpy as np

from perro_pastor.formats import open_model_file
from perro_pastor.grammar import Grammar, TokenTrie
from perro_pastor.paths import default_model_path
from perro_pastor.tokenizer import Tokenizer

NPC_SCHEMA = {
    "type": "object",
    "properties": {
        "say": {"type": "string", "maxLength": 200},
        "action": {"enum": ["none", "give_item", "open_door", "follow_player", "wait", "flee"]},
        "mood": {"enum": ["happy", "neutral", "angry", "afraid"]},
    },
    "required": ["say", "action", "mood"],
}

NPC_REPLIES = [
    {"say": "Ah, a traveller! The old door to the cellar sticks, let me open it for you.", "action": "open_door", "mood": "happy"},
    {"say": "Take this lantern; the woods are dark after sunset and the wolves are hungry.", "action": "give_item", "mood": "neutral"},
    {"say": "I won't go another step with you until you pay what you owe me!", "action": "wait", "mood": "angry"},
    {"say": "Follow? Yes, yes, I'll come along, but keep that torch close, por favor.", "action": "follow_player", "mood": "afraid"},
    {"say": "Nothing to see here, friend. Move along.", "action": "none", "mood": "neutral"},
    {"say": "¡Corre! The bridge is burning — run while you still can!", "action": "flee", "mood": "afraid"},
]

JSON_DOCS = [
    {"name": "Mirela", "level": 7, "inventory": ["rope", "bread", {"item": "key", "door": 3}], "hp": 41.5, "alive": True},
    {"quest": {"id": "q-12", "steps": [{"goal": "find the miller", "done": False}, {"goal": "return", "done": False}]}, "reward": None},
    {"npc": "Brann", "lines": ["Well met.", "The forge is cold today.", "Come back at dawn."], "mood": "tired", "gold": 120},
]


def load_tokenizer():
    path = default_model_path()
    f = open_model_file(path)
    try:
        return Tokenizer.from_metadata(f.metadata, str(path))
    finally:
        f.close()


def walk(grammar, tok, docs):
    times = []
    for doc in docs:
        m = grammar.matcher(tok)
        for t in tok.encode(json.dumps(doc, ensure_ascii=False), add_bos=False):
            t0 = time.perf_counter()
            mask = m.allowed_tokens()
            times.append(time.perf_counter() - t0)
            assert mask[t], (doc, tok.token_to_bytes(t))
            m.advance(t)
        assert m.can_end()
    return np.array(times) * 1e3


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="write the figures here too")
    args = ap.parse_args()
    tok = load_tokenizer()
    t0 = time.perf_counter()
    TokenTrie.for_tokenizer(tok)
    trie_s = time.perf_counter() - t0
    print(f"vocabulary {tok.vocab_size} tokens; trie built once in {trie_s * 1e3:.0f} ms")
    out = {"vocab": tok.vocab_size, "trie_ms": round(trie_s * 1e3, 1)}
    for name, make, docs in [("json", Grammar.json, JSON_DOCS),
                             ("npc_schema", lambda: Grammar.from_json_schema(NPC_SCHEMA), NPC_REPLIES)]:
        g = make()
        cold = walk(g, tok, docs[:1])            # first reply: nothing cached yet
        warm = walk(g, tok, docs[1:] + docs[:1])  # later replies, same grammar object
        both = np.concatenate([cold, warm])
        for label, arr in (("cold (1st reply)", cold), ("warm (later)", warm), ("all", both)):
            med, p99 = np.percentile(arr, 50), np.percentile(arr, 99)
            print(f"{name:11s} {label:17s} {len(arr):4d} steps  median {med:7.3f} ms  p99 {p99:7.3f} ms  max {arr.max():7.3f} ms")
            out[f"{name}_{label.split()[0]}"] = {"steps": len(arr), "median_ms": round(med, 4),
                                                 "p99_ms": round(p99, 4), "max_ms": round(float(arr.max()), 4)}
        print(f"{name:11s} states {g.n_states}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
