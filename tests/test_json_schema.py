"""JSON Schema -> GBNF: llama.cpp's integer-bound vectors, random sentences of each grammar (a seeded
walk of its automaton) validated by the ``jsonschema`` package, invalid documents rejected, and
unsupported keywords refused by name."""

import json
from collections import deque

import numpy as np
import pytest

from perro_pastor.grammar import Grammar, GrammarError
from perro_pastor.json_schema import JSON_GBNF, schema_to_gbnf

jsonschema = pytest.importorskip("jsonschema")


# -----------------------------------------------------------------------------
# a seeded random walk: sentences the grammar accepts

def _row(g, sid):
    g.step(sid, 0)  # fills the whole row of transitions
    return g.trans[sid]


def _path_to_end(g, sid, limit=50000):
    """Bytes of a shortest way from ``sid`` to an accepting state (BFS over states)."""
    prev = {sid: None}
    todo = deque([sid])
    while todo and len(prev) < limit:
        s = todo.popleft()
        if g.accepting(s):
            out = bytearray()
            while prev[s] is not None:
                s, b = prev[s]
                out.append(b)
            return bytes(reversed(out))
        row = _row(g, s)
        for b in np.nonzero(row >= 0)[0]:
            t = int(row[b])
            if t not in prev:
                prev[t] = (s, int(b))
                todo.append(t)
    raise AssertionError("no accepting state reachable")


def random_sentence(g, seed, soft_len=80, stop_p=0.2):
    rng = np.random.default_rng(seed)
    sid, out = g.start, bytearray()
    while len(out) < soft_len:
        if g.accepting(sid) and rng.random() < stop_p:
            return bytes(out)
        row = _row(g, sid)
        nxt = sorted(set(int(t) for t in row if t >= 0))
        if not nxt:
            break
        t = nxt[rng.integers(len(nxt))]  # a successor state first, so ASCII is not drowned out
        bs = np.nonzero(row == t)[0]
        out.append(int(bs[rng.integers(len(bs))]))
        sid = t
    return bytes(out) + _path_to_end(g, sid)


NPC = {
    "type": "object",
    "properties": {
        "say": {"type": "string", "maxLength": 200},
        "action": {"enum": ["none", "give_item", "open_door", "follow_player", "wait", "flee"]},
        "mood": {"enum": ["happy", "neutral", "angry", "afraid"]},
    },
    "required": ["say", "action", "mood"],
    "additionalProperties": False,
}

SCHEMAS = [
    NPC,
    {"type": "object",
     "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 12},
                    "age": {"type": "integer", "minimum": 0, "maximum": 150},
                    "tags": {"type": "array", "items": {"type": "string", "pattern": "^[a-z]+(-[a-z]+)*$"},
                             "minItems": 1, "maxItems": 3},
                    "pos": {"type": "object", "properties": {"x": {"type": "number"}, "y": {"type": "number"}},
                            "required": ["x"]},
                    "alive": {"type": "boolean"},
                    "note": {"anyOf": [{"type": "null"}, {"type": "string", "maxLength": 5}]}},
     "required": ["name", "age"]},
    {"type": "array", "items": {"oneOf": [{"type": "integer", "exclusiveMinimum": -5, "maximum": 1000},
                                          {"type": "string"}, {"type": "null"}]}, "maxItems": 4},
    {"type": "object", "properties": {"a": {"const": {"k": [1, "é"]}}, "b": {"type": ["integer", "null"]},
                                      "c": {"$ref": "#/$defs/item"}},
     "$defs": {"item": {"type": "object", "properties": {"id": {"type": "integer", "minimum": 1}}, "required": ["id"]}}},
    {"type": "string", "pattern": "^(yes|no|[A-Z]\\d{2,3})$"},
    {},
    {"type": "object", "properties": {"mood": {"type": "number", "minimum": -1, "maximum": 1},
                                      "price": {"type": "number", "exclusiveMinimum": 0.5, "maximum": 12.25},
                                      "temp": {"type": "number", "exclusiveMaximum": -3.75}},
     "required": ["mood", "price", "temp"]},
]


@pytest.mark.parametrize("k", range(len(SCHEMAS)))
def test_random_sentences_validate(k):
    schema = SCHEMAS[k]
    g = Grammar.from_json_schema(schema)
    for seed in range(40):
        text = random_sentence(g, seed).decode("utf-8")
        doc = json.loads(text)
        jsonschema.validate(doc, schema)


def test_generic_json_grammar_sentences_parse():
    g = Grammar(JSON_GBNF)
    assert g.accepts('{"a": [1, 2.5e-3, "x\\u00e9 ü", {"b": null}], "c": true}\n')
    for seed in range(40):
        json.loads(random_sentence(g, seed).decode("utf-8"))
    for bad in ['{"a":}', "[1,]", "{'a': 1}", '"\x01"', "01", "tru", '{"a" 1}']:
        assert not g.accepts(bad), bad


def test_invalid_documents_rejected():
    g = Grammar.from_json_schema(NPC)
    assert g.accepts('{"say": "Hola", "action": "open_door", "mood": "happy"}')
    bad = [
        '{"say": "Hola", "action": "dance", "mood": "happy"}',            # not in the enum
        '{"say": "Hola", "action": "open_door"}',                          # a required key missing
        '{"say": "%s", "action": "wait", "mood": "happy"}' % ("x" * 201),  # maxLength
        '{"say": "Hola", "action": "wait", "mood": "happy", "x": 1}',      # additional property
        '{"say": 5, "action": "wait", "mood": "happy"}',                   # wrong type
        '{"say": "a\nb", "action": "wait", "mood": "happy"}',              # raw control char
    ]
    for doc in bad:
        assert not g.accepts(doc), doc
    m = g.matcher()
    m.advance_bytes(b'{"say": "Hola", "action": "')
    assert m.accepts_bytes(b"follow") and not m.accepts_bytes(b"dance")


# llama.cpp tests/test-grammar-integration.cpp, integer bounds: (schema, passing, failing)
INTEGER_VECTORS = [
    ({"minimum": 0}, ["0", "10", "12", "10000"], ["-1", "-10", "-10000", "-1" + "0" * 32, "1" + "0" * 32, "00", "01", "-0"]),
    ({"minimum": 2}, ["2", "3", "4", "10", "20", "1234567890000000"], ["0", "1", "-1", "-100", "01", "02", "12345678900000000"]),
    ({"minimum": 456}, ["456", "4560", "457", "460", "500"], ["455", "356", "50", "050", "-1", "-456"]),
    ({"minimum": -123}, ["-123", "-122", "-11", "-1", "0", "1", "123", "1234", "2345"], ["-1234", "-124"]),
    ({"maximum": 9999}, ["-99999", "0", "9999"], ["10000", "99991"]),
    ({"maximum": -9999}, ["-10000", "-9999"], ["-9998", "0", "9999"]),
    ({"minimum": 5, "maximum": 30}, ["5", "10", "30"], ["05", "4", "-1", "31", "123", "0123"]),
    ({"exclusiveMinimum": 0, "maximum": 900719925474091}, ["1", "2", "10", "900719925474090", "900719925474091"],
     ["0", "01", "900719925474092", "9007199254740910"]),
    ({"minimum": -1, "maximum": 1}, ["-1", "0", "1"], ["-11", "-10", "-2", "2", "10", "11"]),
    ({"minimum": -123, "maximum": 42}, ["-123", "-122", "-13", "-11", "-2", "-1", "0", "1", "5", "10", "39", "40", "42"],
     ["-0123", "-124", "-1123", "-200", "43", "123", "0123"]),
    ({"exclusiveMinimum": 0, "exclusiveMaximum": 10000}, ["1", "9999"], ["0", "01", "10000", "99999"]),
]


@pytest.mark.parametrize("bounds,good,bad", INTEGER_VECTORS)
def test_llama_cpp_integer_vectors(bounds, good, bad):
    g = Grammar.from_json_schema({"type": "integer", **bounds})
    assert [s for s in good if not g.accepts(s)] == []
    assert [s for s in bad if g.accepts(s)] == []


@pytest.mark.parametrize("schema,keyword", [
    ({"type": "string", "format": "email"}, "format"),
    ({"not": {"type": "string"}}, "not"),
    ({"type": "array", "uniqueItems": True}, "uniqueItems"),
    ({"type": "number", "minimum": float("inf")}, "minimum"),
    ({"type": "object", "additionalProperties": True}, "additionalProperties"),
    ({"type": "string", "pattern": "abc"}, "pattern"),
    ({"type": "string", "pattern": "^(?=a)b$"}, "pattern"),
    ({"oneOf": [{"type": "integer"}, {"type": "number"}]}, "oneOf"),
    ({"$ref": "https://example.com/s.json"}, "$ref"),
    ({"type": "object", "patternProperties": {}}, "patternProperties"),
])
def test_unsupported_refused_by_name(schema, keyword):
    with pytest.raises(GrammarError) as e:
        schema_to_gbnf(schema)
    assert f"'{keyword}'" in str(e.value) and "\n" not in str(e.value)


# -----------------------------------------------------------------------------
# bounded numbers: exact against Decimal comparison

NUMBER_VECTORS = [  # (bounds, accepted, refused)
    ({"minimum": 0, "maximum": 1}, ["0", "0.5", "1", "1.0", "1.000", "0.999"],
     ["1.0001", "-0.1", "2", "-1", "01", "1.", "-0.0", "1e0"]),
    ({"exclusiveMinimum": 0, "exclusiveMaximum": 1}, ["0.5", "0.0001", "0.99"], ["0", "0.0", "1", "1.0", "-0.5"]),
    ({"minimum": -2.5, "maximum": 3.25}, ["-2.5", "-2.49", "-2", "0", "3.25", "3.2", "3.249"],
     ["-2.51", "-3", "3.251", "3.3", "4"]),
    ({"exclusiveMaximum": -3.75}, ["-3.76", "-4", "-100.5"], ["-3.75", "-3.7", "0", "3"]),
    ({"minimum": 0.1}, ["0.1", "0.10", "0.2", "5", "123456.789"], ["0.09", "0.099999", "0", "-1"]),
    ({"minimum": 7, "maximum": 7}, ["7", "7.0", "7.00"], ["7.01", "6.99", "8"]),
]


@pytest.mark.parametrize("bounds,good,bad", NUMBER_VECTORS)
def test_number_bounds_vectors(bounds, good, bad):
    g = Grammar.from_json_schema({"type": "number", **bounds})
    assert [x for x in good if not g.accepts(x)] == []
    assert [x for x in bad if g.accepts(x)] == []


def _decimal_strings(rng, n):
    """Decimals written as the bounded grammar writes them (no exponent, canonical integer part)."""
    out = []
    for _ in range(n):
        whole = str(int(rng.choice([0, 1, 2, 3, 9, 10, 11, 99, 100, 101, 123, 1000])))
        frac = "".join(str(int(d)) for d in rng.integers(0, 10, size=int(rng.integers(0, 5))))
        out.append(("-" if rng.random() < 0.4 else "") + whole + ("." + frac if frac else ""))
    return out


def test_number_bounds_accept_exactly_the_decimals_inside():
    from decimal import Decimal
    rng = np.random.default_rng(11)
    values = [0, 0.5, 1, 1.25, 2, 9.99, 10, 10.5, 100.125, 101]
    for trial in range(60):
        bounds, lo, hi = {}, None, None
        if rng.random() < 0.8:
            v = float(rng.choice(values)) * (-1 if rng.random() < 0.4 else 1)
            key = "minimum" if rng.random() < 0.5 else "exclusiveMinimum"
            bounds[key], lo = v, (Decimal(repr(v)), key == "minimum")
        if rng.random() < 0.8:
            v = float(rng.choice(values)) * (-1 if rng.random() < 0.3 else 1)
            key = "maximum" if rng.random() < 0.5 else "exclusiveMaximum"
            bounds[key], hi = v, (Decimal(repr(v)), key == "maximum")
        if not bounds:
            continue  # the unbounded number is the generic grammar's (tested above)
        schema = {"type": "number", **bounds}
        try:
            g = Grammar.from_json_schema(schema)
        except GrammarError as e:
            assert "no number lies between" in str(e)
            assert lo and hi and (lo[0] > hi[0] or (lo[0] == hi[0] and not (lo[1] and hi[1])))
            continue
        for text in _decimal_strings(rng, 60):
            x = Decimal(text)
            inside = (lo is None or x > lo[0] or (x == lo[0] and lo[1])) and \
                     (hi is None or x < hi[0] or (x == hi[0] and hi[1]))
            inside = inside and not (text.startswith("-") and x == 0)  # zero is written "0"
            assert g.accepts(text) == inside, (schema, text)
        for seed in range(10):
            jsonschema.validate(json.loads(random_sentence(g, seed)), schema)
