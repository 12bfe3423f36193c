"""GBNF grammars: llama.cpp's own example grammars and test vectors, error messages, byte-level
matching across token boundaries, and token masks checked against brute force on the default
model's vocabulary."""

import re

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from perro_pastor.grammar import Grammar, GrammarError, GrammarMatcher, TokenTrie

# Copied from llama.cpp grammars/*.gbnf (MIT licence), as shipped in llama-cpp-python 0.3.36.
LLAMA_CPP_GRAMMARS = {
    "json": r'''root   ::= object
value  ::= object | array | string | number | ("true" | "false" | "null") ws

object ::=
  "{" ws (
            string ":" ws value
    ("," ws string ":" ws value)*
  )? "}" ws

array  ::=
  "[" ws (
            value
    ("," ws value)*
  )? "]" ws

string ::=
  "\"" (
    [^"\\\x7F\x00-\x1F] |
    "\\" (["\\bfnrt] | "u" [0-9a-fA-F]{4}) # escapes
  )* "\"" ws

number ::= ("-"? ([0-9] | [1-9] [0-9]{0,15})) ("." [0-9]+)? ([eE] [-+]? [0-9] [1-9]{0,15})? ws

# Optional space: by convention, applied in this grammar after literal chars when allowed
ws ::= | " " | "\n" [ \t]{0,20}
''',
    "arithmetic": r'''root  ::= (expr "=" ws term "\n")+
expr  ::= term ([-+*/] term)*
term  ::= ident | num | "(" ws expr ")" ws
ident ::= [a-z] [a-z0-9_]* ws
num   ::= [0-9]+ ws
ws    ::= [ \t\n]*
''',
    "list": r'''root ::= item+

# Excludes various line break characters
item ::= "- " [^\r\n\x0b\x0c\x85\u2028\u2029]+ "\n"
''',
    "chess": r'''# Specifies chess moves as a list in algebraic notation, using PGN conventions

# Force first move to "1. ", then any 1-2 digit number after, relying on model to follow the pattern
root    ::= "1. " move " " move "\n" ([1-9] [0-9]? ". " move " " move "\n")+
move    ::= (pawn | nonpawn | castle) [+#]?

# piece type, optional file/rank, optional capture, dest file & rank
nonpawn ::= [NBKQR] [a-h]? [1-8]? "x"? [a-h] [1-8]

# optional file & capture, dest file & rank, optional promotion
pawn    ::= ([a-h] "x")? [a-h] [1-8] ("=" [NBKQR])?

castle  ::= "O-O" "-O"?
''',
    "japanese": r'''# A probably incorrect grammar for Japanese
root        ::= jp-char+ ([ \t\n] jp-char+)*
jp-char     ::= hiragana | katakana | punctuation | cjk
hiragana    ::= [ぁ-ゟ]
katakana    ::= [ァ-ヿ]
punctuation ::= [、-〾]
cjk         ::= [一-鿿]
''',
    "c": r'''root ::= (declaration)*

declaration ::= dataType identifier "(" parameter? ")" "{" statement* "}"

dataType  ::= "int" ws | "float" ws | "char" ws
identifier ::= [a-zA-Z_] [a-zA-Z_0-9]*

parameter ::= dataType identifier

statement ::=
    ( dataType identifier ws "=" ws expression ";" ) |
    ( identifier ws "=" ws expression ";" ) |
    ( identifier ws "(" argList? ")" ";" ) |
    ( "return" ws expression ";" ) |
    ( "while" "(" condition ")" "{" statement* "}" ) |
    ( "for" "(" forInit ";" ws condition ";" ws forUpdate ")" "{" statement* "}" ) |
    ( "if" "(" condition ")" "{" statement* "}" ("else" "{" statement* "}")? ) |
    ( singleLineComment ) |
    ( multiLineComment )

forInit ::= dataType identifier ws "=" ws expression | identifier ws "=" ws expression
forUpdate ::= identifier ws "=" ws expression

condition ::= expression relationOperator expression
relationOperator ::= ("<=" | "<" | "==" | "!=" | ">=" | ">")

expression ::= term (("+" | "-") term)*
term ::= factor(("*" | "/") factor)*

factor ::= identifier | number | unaryTerm | funcCall | parenExpression
unaryTerm ::= "-" factor
funcCall ::= identifier "(" argList? ")"
parenExpression ::= "(" ws expression ws ")"

argList ::= expression ("," ws expression)*

number ::= [0-9]+

singleLineComment ::= "//" [^\n]* "\n"
multiLineComment ::= "/*" ( [^*] | ("*" [^/]) )* "*/"

ws ::= ([ \t\n]+)
''',
}

EXAMPLES = {  # (accepted, rejected) sentences for each example grammar
    "json": (['{"a": [1, 2.5, "x\\u00e9 ü"], "b": null}', '{}', '{"k": {"n": -0.5e3}}\n'],
             ['[]', '{"a":}', '{"a": 01}', "{'a': 1}", '{"a": "x\ny"}']),
    "arithmetic": (["1+2=3\n", "(a *b)=c\nx=1\n"], ["1+2=3", "=3\n", "1++2=3\n"]),
    "list": (["- apples\n- pears\n", "- ñandú\n"], ["- \n", "apples\n", "- a\u2028b\n"]),
    "chess": (["1. e4 e5\n2. Nf3 Nc6\n", "1. d4 d5\n2. c4 dxc4\n3. O-O-O Qxd8#\n"],
              ["1. e4 e5\n", "1. e9 e5\n2. Nf3 Nc6\n"]),
    "japanese": (["こんにちは 世界", "カタカナ、ひらがな"], ["hello", "こんにちは  世界", ""]),
    "c": (["int main(){return 0;}", "int f(int x){int y = x*2;return y;}"], ["int main{}", "main(){}"]),
}


@pytest.mark.parametrize("name", sorted(LLAMA_CPP_GRAMMARS))
def test_llama_cpp_example_grammars(name):
    g = Grammar(LLAMA_CPP_GRAMMARS[name])
    good, bad = EXAMPLES[name]
    for s in good:
        assert g.accepts(s), (name, s)
    for s in bad:
        assert not g.accepts(s), (name, s)


# Vectors from llama.cpp tests/test-grammar-integration.cpp: (grammar, passing, failing).
INTEGRATION = [
    ('root ::= expr\nexpr ::= term ("+" term)*\nterm ::= number\nnumber ::= [0-9]+',
     ["42", "1+2+3+4+5", "123+456"], ["+", "/ 3", "1+2+3+4+5+", "12a45"]),
    ('''root ::= expression
        expression ::= term ws (("+"|"-") ws term)*
        term ::= factor ws (("*"|"/") ws factor)*
        factor ::= number | variable | "(" expression ")" | function-call
        number ::= [0-9]+
        variable ::= [a-zA-Z_][a-zA-Z0-9_]*
        function-call ::= variable ws "(" (expression ("," ws expression)*)? ")"
        ws ::= [ \\t\\n\\r]?''',
     ["42", "1*2*3*4*5", "x", "x+10", "(a+b)*(c-d)", "func()", "func(x,y+2)", "f(g(x),h(y,z))",
      "x + 10", "a * (b + c) - d / e", "123*456*789-123/456+789*123"],
     ["+", "/ 3x", "x + + y", "a * / b", "func(,)", "func(x y)", "(a + b", "x + y)", "42 +",
      "f(g(x), h(y, z)", "func(x, y + 2"]),
    ('root ::= ... "abc" ...', ["abcabcabc", "aaaabcccc", "🔵🟠✅abc❌🟠🔵"],
     ["aaabcccc", "aaaaabcccc", "aaaabccc", "aaaabccccc", "🔵🟠✅❌abc❌✅🟠🔵", "🔵🟠abc🟠🔵"]),
    ('root ::= "a"*', ["", "a", "aaaaa", "a" * 62], ["b", "ab", "aab", "ba", "a" * 62 + "b"]),
    ('root ::= "a"+', ["a", "aaaaa", "a" * 62], ["", "b", "ab", "aab", "ba", "a" * 62 + "b"]),
    ('root ::= "a"?', ["", "a"], ["b", "ab", "aa", "ba"]),
    ('''root ::= cons+ vowel* cons? (vowel cons)*
        vowel ::= [aeiouy]
        cons ::= [bcdfghjklmnpqrstvwxyz]''',
     ["yes", "no", "noyes", "crwth", "four", "bryyyy"], ["yess", "yesno", "forty", "catyyy"]),
    ("root ::= [ab]{4}", ["aaaa", "bbbb", "abab"], ["a", "b", "aaaaa"]),
    ("root ::= [ab]{4,}", ["aaaa", "aaaaab", "bbbb", "ababab"], ["", "aba"]),
    ("root ::= [ab]{0,4}", ["", "a", "aa", "aaa", "aaab"], ["aaaaa"]),
    ('root ::= ("0x" [A-F0-9]{2} " "?){3,5}', ["0xFF 0x12 0xAB", "0xFF 0x12 0xAB 0x00 0x00"],
     ["", "0xFF", "0xFF 0x12", "0xFF 0x12 0xAB 0x00 0x00 0x00"]),
    ("root ::= ( [x]* )*", ["", "x", "xx"], ["y", "yy"]),
]


@pytest.mark.parametrize("gbnf,good,bad", INTEGRATION)
def test_llama_cpp_integration_vectors(gbnf, good, bad):
    g = Grammar(gbnf)
    assert [s for s in good if not g.accepts(s)] == []
    assert [s for s in bad if g.accepts(s)] == []


def test_escapes_classes_and_comments():
    g = Grammar('root ::= "\\x41\\u00e9\\U0001F600\\t\\"\\\\" [^a-z\\n] . # a comment\n')
    assert g.accepts('Aé😀\t"\\Z\u4e00')
    assert not g.accepts('Aé😀\t"\\a\u4e00')
    assert not g.accepts('Aé😀\t"\\\n\u4e00')
    assert Grammar("root ::= [\\]\\-a]+").accepts("]-a")


@pytest.mark.parametrize("text,where", [
    ('root ::= "a"\nfoo ::= "b" )', "line 2, column 13"),
    ('root ::= [a-z', "line 1, column 10"),
    ('root ::= "abc', "line 1, column 14"),
    ('\n\nroot ::= "\\q"', "line 3, column 11"),
    ('root := "a"', "line 1, column 6"),
    ('root ::= "a"{2,1}', "line 1, column 13"),
    ('root ::= * "a"', "line 1, column 10"),
])
def test_parse_errors_name_line_and_column(text, where):
    with pytest.raises(GrammarError) as e:
        Grammar(text)
    assert where in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("text,name", [
    ('root ::= "a" | root "a"', "root"),
    ('root ::= asdf\nasdf ::= "a" | asdf "a"', "asdf"),
    ('root ::= asdf\nasdf ::= "a" | foo "b"\nfoo ::= "c" | asdf "d" | "e"', "asdf"),
    ('root ::= asdf\nasdf ::= "a" | foo "b"\nfoo ::= "c" | empty asdf "d" | "e"\nempty ::= "blah" | ', "asdf"),
])
def test_left_recursion_refused_by_name(text, name):
    with pytest.raises(GrammarError, match=f"left recursion in rule '{name}'"):
        Grammar(text)


def test_undefined_and_missing_rules_refused_by_name():
    with pytest.raises(GrammarError, match="undefined rule 'numero'"):
        Grammar('root ::= expr\nexpr ::= term ("+" term)*\nterm ::= numero\nnumber ::= [0-9]+')
    with pytest.raises(GrammarError, match="no rule 'root'"):
        Grammar('rot ::= "a"')
    with pytest.raises(GrammarError, match="defined twice"):
        Grammar('root ::= "a"\nroot ::= "b"')


def test_multibyte_character_split_across_tokens():
    g = Grammar(LLAMA_CPP_GRAMMARS["japanese"])
    m = g.matcher()
    data = "こんにちは".encode()
    for i in range(len(data)):  # one byte at a time: every prefix stays alive
        assert m.accepts_bytes(data[i:i + 1])
        m.advance_bytes(data[i:i + 1])
        assert m.can_end() == ((i + 1) % 3 == 0)
    assert not m.accepts_bytes(b"\x80")  # a stray continuation byte
    assert not m.accepts_bytes("a".encode())


# Hypothesis: a regular grammar against Python's re, on strings over a small alphabet.
REGULAR = [
    ('root ::= ("ab" | [c-e]+){1,3} "x"?', r"(?:ab|[c-e]+){1,3}x?"),
    ('root ::= [a-c]* "d" [^a-d]?', r"[a-c]*d[^a-d]?"),
    ('root ::= ("a" | "b" "c"?)+ "é"{0,2}', r"(?:a|bc?)+é{0,2}"),
]


@settings(max_examples=150, deadline=None)
@given(which=st.integers(0, len(REGULAR) - 1), s=st.text(alphabet="abcdexé", max_size=10))
def test_regular_grammars_agree_with_re(which, s):
    gbnf, rx = REGULAR[which]
    g = _compiled(gbnf)
    assert g.accepts(s) == bool(re.fullmatch(rx, s)), (gbnf, s)
    prefix_alive = g.walk(g.start, s.encode()) >= 0
    if g.accepts(s):
        assert prefix_alive


_CACHE = {}


def _compiled(gbnf):
    if gbnf not in _CACHE:
        _CACHE[gbnf] = Grammar(gbnf)
    return _CACHE[gbnf]


# -----------------------------------------------------------------------------
# masks on the default model's vocabulary

@pytest.fixture(scope="module")
def tokenizer():
    try:
        from perro_pastor.formats import open_model_file
        from perro_pastor.paths import default_model_path
        from perro_pastor.tokenizer import Tokenizer
        path = default_model_path()
    except Exception as exc:  # the default model package is optional
        pytest.skip(f"default model not installed: {exc}")
    f = open_model_file(path)
    try:
        return Tokenizer.from_metadata(f.metadata, str(path))
    finally:
        f.close()


def _brute_force(m: GrammarMatcher, tok):
    want = np.array([bool(p) and m.accepts_bytes(p) for p in m.trie.pieces])
    want[sorted(tok.eot_ids)] = m.can_end()
    return want


@pytest.mark.parametrize("name,doc", [
    ("json", '{"say": "Ábrete, sésamo 🚪", "n": [1, -2.5e3, true]}'),
    ("japanese", "こんにちは 世界"),
])
def test_mask_matches_brute_force_on_default_vocab(tokenizer, name, doc):
    g = Grammar(LLAMA_CPP_GRAMMARS[name])
    m = g.matcher(tokenizer)
    ids = tokenizer.encode(doc, add_bos=False)
    check_at = set(np.random.default_rng(0).choice(len(ids), size=min(4, len(ids)), replace=False)) | {0}
    for k, t in enumerate(ids):
        mask = m.allowed_tokens()
        assert mask[t], (k, tokenizer.token_to_bytes(t))
        assert not mask[[i for i, ty in enumerate(tokenizer.types) if ty == 3 and i not in tokenizer.eot_ids]].any()
        if k in check_at:
            want = _brute_force(m, tokenizer)
            diff = np.nonzero(mask != want)[0]
            assert len(diff) == 0, [(int(i), tokenizer.token_to_bytes(int(i)), bool(want[i])) for i in diff[:5]]
        m.advance(t)
    assert m.can_end() and not m.is_dead()
    eos = min(tokenizer.eot_ids)
    assert m.allowed_tokens()[eos]
    m.advance(eos)
    assert m.is_dead() and not m.allowed_tokens().any()


def test_eos_only_where_grammar_accepts_and_bad_tokens_refused(tokenizer):
    g = Grammar('root ::= "yes" | "no"')
    m = g.matcher(tokenizer)
    eos = tokenizer.eos_id
    assert not m.allowed_tokens()[eos]
    with pytest.raises(GrammarError, match="end of turn"):
        m.advance(eos)
    yes = tokenizer.encode("yes", add_bos=False)
    assert len(yes) == 1 and m.allowed_tokens()[yes[0]]
    with pytest.raises(GrammarError):
        m.advance(tokenizer.encode("maybe", add_bos=False)[0])
    m.advance(yes[0])
    mask = m.allowed_tokens()
    assert mask[eos] and mask.sum() == len(tokenizer.eot_ids)
    assert TokenTrie.for_tokenizer(tokenizer) is m.trie  # one trie per tokenizer


def test_only_byte_tokens_fit_an_odd_byte_and_why_stopped(tokenizer):
    m = Grammar('root ::= "a" [\\x00]').matcher(tokenizer)
    m.advance(tokenizer.encode("a", add_bos=False)[0])
    allowed = np.nonzero(m.allowed_tokens())[0]
    assert [tokenizer.token_to_bytes(int(t)) for t in allowed] == [b"\x00"] and not m.can_end()
    m.advance(int(allowed[0]))
    m.advance(tokenizer.eos_id)
    assert m.is_dead() and "complete" in m.why_stopped()


def test_the_automaton_stops_growing_at_its_state_limit(monkeypatch):
    """A recursive grammar fed ever deeper nesting makes a new state per level; past the limit
    the matcher refuses with a GrammarError instead of growing for as long as a game runs."""
    from perro_pastor import grammar as grammar_module
    monkeypatch.setattr(grammar_module, "MAX_STATES", 40)
    g = Grammar('root ::= "[" root "]" | "x"')
    assert g.accepts("[[[x]]]")
    m = g.matcher()
    with pytest.raises(GrammarError, match="grew past 40 states"):
        m.advance_bytes(b"[" * 100)
