"""JSON Schema -> GBNF, for NPC replies the game can parse every time.

    grammar = Grammar.from_json_schema({"type": "object", "properties": {...}, "required": [...]})

The grammar accepts a *subset* of what the schema allows, chosen so that everything it accepts
validates: object properties come in the schema's order (required ones first, as llama.cpp's
converter does), no additional properties, compact whitespace. What cannot be expressed exactly
is refused with a one-line ``GrammarError`` naming the keyword, rather than silently loosened:
``oneOf`` whose branches may overlap, ``uniqueItems``, ``not``, ...

Supported: ``type`` (one or a list), ``properties``/``required``/``additionalProperties: false``,
``enum``, ``const``, strings with ``minLength``/``maxLength`` and simple anchored ``pattern``,
integers and numbers with ``minimum``/``maximum``/``exclusiveMinimum``/``exclusiveMaximum``
(bounded numbers are written without an exponent, ``json_number.py``),
booleans, null, arrays with ``items``/``minItems``/``maxItems``, ``anyOf``, disjoint ``oneOf``,
local ``$ref`` into ``$defs``/``definitions``. Annotations (title, description, ...) are ignored.
"""

from __future__ import annotations

import json
import math
import re
from decimal import Decimal

from .grammar_parse import GrammarError
from .json_number import Bound, int_range, decimal_range

__all__ = ["JSON_GBNF", "schema_to_gbnf"]

SPACE = 'space ::= | " " | "\\n" [ \\t]{0,20}'
PRIMITIVES = {
    "char": r'char ::= [^"\\\x7F\x00-\x1F] | [\\] (["\\/bfnrt] | "u" [0-9a-fA-F]{4})',
    "string": 'string ::= "\\"" char* "\\"" space',
    "integer": 'integer ::= "-"? ([0] | [1-9] [0-9]{0,15}) space',
    "number": 'number ::= "-"? ([0] | [1-9] [0-9]{0,15}) ("." [0-9]{1,16})? ([eE] [-+]? [1-9] [0-9]?)? space',
    "boolean": 'boolean ::= ("true" | "false") space',
    "null": 'null ::= "null" space',
    "value": "value ::= object | array | string | number | boolean | null",
    "object": 'object ::= "{" space ( string ":" space value ("," space string ":" space value)* )? "}" space',
    "array": 'array ::= "[" space ( value ("," space value)* )? "]" space',
}
DEPENDS = {"string": ["char"], "object": ["string", "value"], "array": ["value"],
           "value": ["object", "array", "string", "number", "boolean", "null"]}

# The generic grammar behind --json: any JSON value, then optional whitespace.
JSON_GBNF = "\n".join(["root ::= value"] + [PRIMITIVES[k] for k in
                      ("value", "object", "array", "string", "char", "number", "boolean", "null")] + [SPACE]) + "\n"

ANNOTATIONS = {"title", "description", "$schema", "$id", "$comment", "default", "examples",
               "deprecated", "readOnly", "writeOnly", "$defs", "definitions"}
HANDLED = {"type", "properties", "required", "additionalProperties", "enum", "const", "maxLength",
           "minLength", "pattern", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
           "items", "minItems", "maxItems", "anyOf", "oneOf", "$ref"}
NUMBER_BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")


def _lit(text: str) -> str:
    """A GBNF string literal for ``text``."""
    out = []
    for c in text:
        if c in '"\\':
            out.append("\\" + c)
        elif c == "\n":
            out.append("\\n")
        elif c == "\r":
            out.append("\\r")
        elif c == "\t":
            out.append("\\t")
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\x{ord(c):02X}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def schema_to_gbnf(schema: dict | bool) -> str:
    """GBNF for the documents ``schema`` allows (a subset, see the module doc)."""
    conv = _Converter(schema)
    expr = conv.visit(schema, "root", "root")
    if expr != "root":  # objects, arrays, ... already made a rule named root
        conv.rules["root"] = expr
    lines = [f"root ::= {conv.rules.pop('root')}"]
    lines += [f"{k} ::= {v}" for k, v in sorted(conv.rules.items())]
    need, seen = list(conv.primitives), set()
    while need:
        p = need.pop()
        if p not in seen:
            seen.add(p)
            need.extend(DEPENDS.get(p, []))
    lines += [PRIMITIVES[p] for p in sorted(seen)] + [SPACE]
    return "\n".join(lines) + "\n"


class _Converter:
    def __init__(self, schema):
        self.root_schema = schema
        self.rules: dict[str, str] = {}
        self.primitives: set[str] = set()
        self.refs: dict[str, str] = {}

    def prim(self, name: str) -> str:
        self.primitives.add(name)
        return name

    def rule(self, name: str, body: str) -> str:
        """A named rule for ``body`` (reusing an identical one)."""
        for k, v in self.rules.items():
            if v == body:
                return k
        name = re.sub(r"[^a-zA-Z0-9-]+", "-", name).strip("-") or "r"
        base, n = name, 1
        while name in self.rules or name in PRIMITIVES or name == "space":
            n += 1
            name = f"{base}-{n}"
        self.rules[name] = body
        return name

    # --- dispatch ------------------------------------------------------------

    def visit(self, s, name: str, where: str) -> str:
        """A GBNF expression for schema ``s`` (at ``where``, for messages)."""
        if s is True or s == {}:
            return self.prim("value") + " space"
        if s is False or not isinstance(s, dict):
            raise GrammarError(f"json schema at {where}: {s!r} is not a schema this converter accepts")
        for k in s:
            if k not in HANDLED and k not in ANNOTATIONS:
                raise GrammarError(f"json schema at {where}: keyword '{k}' is not supported")
        if "$ref" in s:
            return self.ref(s["$ref"], where)
        if "const" in s:
            return self.literal_value(s["const"], s, where)
        if "enum" in s:
            if not isinstance(s["enum"], list) or not s["enum"]:
                raise GrammarError(f"json schema at {where}: 'enum' must be a non-empty list")
            return "(" + " | ".join(self.literal_value(v, s, where) for v in s["enum"]) + ")"
        if "anyOf" in s or "oneOf" in s:
            key = "anyOf" if "anyOf" in s else "oneOf"
            branches = s[key]
            if key == "oneOf":
                self.check_disjoint(branches, where)
            alts = [self.visit(b, f"{name}-{i}", f"{where}/{key}/{i}") for i, b in enumerate(branches)]
            return "(" + " | ".join(alts) + ")"
        t = s.get("type")
        if t is None:
            t = "object" if "properties" in s else "array" if "items" in s else "string" \
                if {"maxLength", "minLength", "pattern"} & set(s) else None
        if t is None:
            return self.prim("value") + " space"
        if isinstance(t, list):
            return "(" + " | ".join(self.visit({**s, "type": x}, f"{name}-{x}", where) for x in t) + ")"
        method = getattr(self, f"v_{t}", None)
        if method is None:
            raise GrammarError(f"json schema at {where}: type {t!r} is not supported")
        return method(s, name, where)

    def ref(self, ref: str, where: str) -> str:
        m = re.fullmatch(r"#/(\$defs|definitions)/([^/]+)", str(ref))
        if not m or not isinstance(self.root_schema, dict) or m[2] not in self.root_schema.get(m[1], {}):
            raise GrammarError(f"json schema at {where}: '$ref' {ref!r} is not supported (local #/$defs/NAME only)")
        if ref not in self.refs:
            name = self.refs[ref] = self.rule(m[2], "")  # reserve, so recursive refs work
            self.rules[name] = self.visit(self.root_schema[m[1]][m[2]], name, ref)
        return self.refs[ref]

    def literal_value(self, v, s, where: str) -> str:
        return _lit(json.dumps(v, ensure_ascii=False, separators=(",", ":"))) + " space"

    def check_disjoint(self, branches, where: str) -> None:
        kinds = []
        for b in branches:
            t = b.get("type") if isinstance(b, dict) else None
            if not isinstance(t, str) or "enum" in b or "const" in b or "$ref" in b:
                raise GrammarError(f"json schema at {where}: 'oneOf' is supported only when each branch "
                                   "has its own single 'type' (use 'anyOf')")
            kinds.append("number" if t == "integer" else t)
        if len(set(kinds)) != len(kinds):
            raise GrammarError(f"json schema at {where}: 'oneOf' branches may overlap; use 'anyOf'")

    # --- types ---------------------------------------------------------------

    def v_null(self, s, name, where):
        return self.prim("null")

    def v_boolean(self, s, name, where):
        return self.prim("boolean")

    def v_number(self, s, name, where):
        if not any(k in s for k in NUMBER_BOUNDS):
            return self.prim("number")
        lower = upper = None
        for k in NUMBER_BOUNDS:
            if k not in s:
                continue
            if isinstance(s[k], bool) or not isinstance(s[k], (int, float)) or not math.isfinite(s[k]):
                raise GrammarError(f"json schema at {where}: '{k}' must be a finite number")
            bound = Bound(Decimal(repr(s[k])), not k.startswith("exclusive"))
            if k.endswith("inimum") and (lower is None or (bound.value, not bound.inclusive) > (lower.value, not lower.inclusive)):
                lower = bound
            if k.endswith("aximum") and (upper is None or (bound.value, bound.inclusive) < (upper.value, upper.inclusive)):
                upper = bound
        try:
            body = decimal_range(lower, upper)
        except GrammarError as e:
            raise GrammarError(f"json schema at {where}: {e}") from None
        if body is None:
            raise GrammarError(f"json schema at {where}: no number lies between the bounds")
        return self.rule(name, f"({body}) space")

    def v_integer(self, s, name, where):
        lo, hi = -math.inf, math.inf
        for k in NUMBER_BOUNDS:
            if k in s and (isinstance(s[k], bool) or not isinstance(s[k], (int, float))):
                raise GrammarError(f"json schema at {where}: '{k}' must be a number")
        if "minimum" in s:
            lo = max(lo, math.ceil(s["minimum"]))
        if "exclusiveMinimum" in s:
            lo = max(lo, math.floor(s["exclusiveMinimum"]) + 1)
        if "maximum" in s:
            hi = min(hi, math.floor(s["maximum"]))
        if "exclusiveMaximum" in s:
            hi = min(hi, math.ceil(s["exclusiveMaximum"]) - 1)
        if lo == -math.inf and hi == math.inf:
            return self.prim("integer")
        if lo > hi:
            raise GrammarError(f"json schema at {where}: no integer lies between the bounds")
        return self.rule(name, "(" + int_range(lo, hi) + ") space")

    def v_string(self, s, name, where):
        lo, hi = int(s.get("minLength", 0)), s.get("maxLength")
        if "pattern" in s:
            if "minLength" in s or "maxLength" in s:
                raise GrammarError(f"json schema at {where}: 'pattern' together with min/maxLength is not supported")
            body = _pattern(s["pattern"], where)
            return self.rule(name, '"\\"" ' + body + ' "\\"" space')
        if hi is None and lo == 0:
            return self.prim("string")
        self.prim("char")
        rep = f"{{{lo},}}" if hi is None else f"{{{lo},{int(hi)}}}"
        if hi is not None and int(hi) < lo:
            raise GrammarError(f"json schema at {where}: maxLength is below minLength")
        return self.rule(name, f'"\\"" char{rep} "\\"" space')

    def v_array(self, s, name, where):
        if "prefixItems" in s or "uniqueItems" in s:
            raise GrammarError(f"json schema at {where}: keyword 'prefixItems'/'uniqueItems' is not supported")
        item = self.visit(s.get("items", True), f"{name}-item", f"{where}/items")
        lo, hi = int(s.get("minItems", 0)), s.get("maxItems")
        if hi is not None and int(hi) < lo:
            raise GrammarError(f"json schema at {where}: maxItems is below minItems")
        if hi == 0:
            return self.rule(name, '"[" space "]" space')
        more = f"{{{max(lo - 1, 0)},}}" if hi is None else f"{{{max(lo - 1, 0)},{int(hi) - 1}}}"
        inner = f'{item} ("," space {item}){more}'
        body = f'"[" space {inner} "]" space' if lo > 0 else f'"[" space ({inner})? "]" space'
        return self.rule(name, body)

    def v_object(self, s, name, where):
        extra = s.get("additionalProperties", False)
        if extra is not False:
            raise GrammarError(f"json schema at {where}: 'additionalProperties' other than false is not supported")
        props = s.get("properties", {})
        required = s.get("required", [])
        for r in required:
            if r not in props:
                raise GrammarError(f"json schema at {where}: required property {r!r} has no schema in 'properties'")
        kv = {}
        for k, sub in props.items():
            value = self.visit(sub, f"{name}-{k}", f"{where}/properties/{k}")
            kv[k] = self.rule(f"{name}-{k}-kv", f'{_lit(json.dumps(k, ensure_ascii=False))} space ":" space {value}')
        req = [kv[k] for k in props if k in required]
        opt = [kv[k] for k in props if k not in required]
        if req:
            body = ' "," space '.join(req) + "".join(f' ("," space {o})?' for o in opt)
        elif opt:
            alts = []
            for i, o in enumerate(opt):
                alts.append(o + "".join(f' ("," space {p})?' for p in opt[i + 1:]))
            body = "(" + " | ".join(alts) + ")?"
        else:
            body = ""
        return self.rule(name, f'"{{" space {body} "}}" space')


# -----------------------------------------------------------------------------
# simple patterns: literals, classes, '.', groups, '|', quantifiers, anchored ^...$

_SAFE_CLASS = re.compile(r"\[\^?(?:[^\]\\\"]|\\[\]\[\-\\dws.^])+\]")


def _pattern(pat: str, where: str) -> str:
    def refuse(why: str) -> GrammarError:
        return GrammarError(f"json schema at {where}: 'pattern' {pat!r} is not supported ({why})")

    if not (isinstance(pat, str) and pat.startswith("^") and pat.endswith("$") and not pat.endswith("\\$")):
        raise refuse("it must start with ^ and end with $")
    s, i = pat[1:-1], 0
    out: list[str] = []

    def alt() -> str:
        nonlocal i
        seqs = [seq()]
        while i < len(s) and s[i] == "|":
            i += 1
            seqs.append(seq())
        return " | ".join(x or '""' for x in seqs)

    def seq() -> str:
        nonlocal i
        items: list[str] = []
        while i < len(s) and s[i] not in "|)":
            c = s[i]
            if c == "(":
                i += 1
                if s.startswith("?:", i):
                    i += 2
                elif s.startswith("?", i):
                    raise refuse("lookarounds and named groups")
                inner = alt()
                if i >= len(s) or s[i] != ")":
                    raise refuse("unbalanced parentheses")
                i += 1
                items.append(f"({inner})")
            elif c == "[":
                m = _SAFE_CLASS.match(s, i)
                if not m:
                    raise refuse("character class with quotes or escapes")
                body = m[0][1:-1].replace("\\d", "0-9").replace("\\w", "a-zA-Z0-9_").replace("\\s", " ")
                if body.startswith("^"):
                    body += '"\\\\\\x00-\\x1F\\x7F'
                items.append(f"[{body}]")
                i = m.end()
            elif c == ".":
                items.append(r'[^"\\\x00-\x1F\x7F]')
                i += 1
            elif c in "*+?{":
                if not items:
                    raise refuse("quantifier with nothing before it")
                if c == "{":
                    m = re.compile(r"\{(\d+)(,(\d*))?\}").match(s, i)
                    if not m:
                        raise refuse("malformed {m,n}")
                    items[-1] += m[0]
                    i = m.end()
                else:
                    items[-1] += c
                    i += 1
                if i < len(s) and s[i] in "?+":
                    raise refuse("lazy or possessive quantifiers")
            elif c == "\\":
                e = s[i + 1:i + 2]
                cls = {"d": "[0-9]", "w": "[a-zA-Z0-9_]", "s": '" "'}.get(e)
                if cls:
                    items.append(cls)
                elif e and e in ".^$*+?()[]{}|-/\\":
                    items.append(_lit(json.dumps(e)[1:-1]))
                else:
                    raise refuse(f"escape \\{e}")
                i += 2
            elif c in "^$":
                raise refuse("anchors inside the pattern")
            else:
                items.append(_lit(json.dumps(c, ensure_ascii=False)[1:-1]))
                i += 1
        return " ".join(items)

    body = alt()
    if i != len(s):
        raise refuse("unbalanced parentheses")
    out.append(body)
    return "(" + out[0] + ")"
