"""Chat templates: turning a list of messages into the prompt text a model was trained on.

A GGUF file may carry its own Jinja template (``tokenizer.chat_template``). That text comes from
an untrusted file, and rendering one unsandboxed was a code-execution hole (CVE-2024-34359,
RELIABILITY.md row 22). So it is rendered in Jinja2's ``ImmutableSandboxedEnvironment`` (no
attribute access to internals, no mutation of inputs) and within limits: template size, output
size, string/number blow-up, and a wall-clock deadline checked by a line tracer while it renders.
A template that breaks a rule raises ``ChatTemplateError``; ``template_for_model`` then falls back
to the matching built-in (ChatML, Llama-2 ``[INST]``, Llama-3, Zephyr) and warns.

The deadline is only checked between Python lines, so no single operation may be costly either:
every operation that can build something big from something small is priced before it runs
(``*``, ``**``, ``+``, ``%`` and ``str.format`` widths, ``~``, filters with a size argument such as
``indent``/``center``/``batch``, str methods such as ``center``/``zfill``/``replace``, and turning a
nested value into text). Constant folding is off, so nothing runs at compile time, and compiling is
guarded like rendering. ``template_for_model`` checks a template once per source (cached) on a
probe conversation and refuses one that takes over ``MAX_PROBE_S`` with the measured time. A render
that fails later, mid-conversation, is the session's to report (session.py warns and switches).
"""

from __future__ import annotations

import functools
import re
import string
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from .errors import PerroPastorError

MAX_TEMPLATE_CHARS = 64 * 1024
MAX_OUTPUT_CHARS = 1 << 20
MAX_RENDER_S = 0.5
MAX_REPEAT = 1 << 16  # largest `str * n` / `list * n` / exponent a template may compute
MAX_INT_BITS = 1 << 14  # largest integer a template may compute (`**`, `*`)
MAX_WIDTH = 4096  # largest width or precision in a format spec
MAX_NODES = 1 << 16  # most items a value turned into text may visit (shared lists count each time)
MAX_PROBE_S = 0.05  # a template slower than this on the probe conversation is refused at load


class ChatTemplateError(PerroPastorError):
    """A chat template is malformed, hostile or over its limits."""


Message = Mapping[str, str]  # {"role": "system" | "user" | "assistant", "content": "..."}


@dataclass(frozen=True)
class ChatTemplate:
    """A named renderer: ``render(messages, add_generation_prompt)`` -> prompt text."""
    name: str
    render_fn: Callable[[Sequence[Message], bool], str]

    def render(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> str:
        for m in messages:
            if not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise ChatTemplateError(f"message needs string 'role' and 'content', got {dict(m)!r}")
        return self.render_fn(list(messages), add_generation_prompt)


# -----------------------------------------------------------------------------
# built-in templates (plain Python: nothing to sandbox)

def _chatml(messages, gen):
    out = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return out + ("<|im_start|>assistant\n" if gen else "")


def _llama3(messages, gen):
    out = "<|begin_of_text|>" + "".join(
        f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n{m['content'].strip()}<|eot_id|>"
        for m in messages)
    return out + ("<|start_header_id|>assistant<|end_header_id|>\n\n" if gen else "")


def _tagged(end: str):
    """<|role|> turns closed by ``end``: Zephyr's (</s>) and Phi-3's (<|end|>)."""
    def render(messages, gen):
        out = "".join(f"<|{m['role']}|>\n{m['content']}{end}\n" for m in messages)
        return out + ("<|assistant|>\n" if gen else "")
    return render


def _gemma(messages, gen):
    """Gemma's turns; it has no system role: the system prompt opens the first user turn, and
    the assistant is called "model"."""
    system = ""
    if messages and messages[0]["role"] == "system":
        system, messages = messages[0]["content"].strip() + "\n\n", messages[1:]
    out = "".join(f"<start_of_turn>{'model' if m['role'] == 'assistant' else m['role']}\n"
                  f"{system if i == 0 else ''}{m['content'].strip()}<end_of_turn>\n" for i, m in enumerate(messages))
    if not messages and system:
        out = f"<start_of_turn>user\n{system}"
    return out + ("<start_of_turn>model\n" if gen else "")


def _llama2(messages, gen):
    """[INST] blocks; the system prompt is folded into the first user turn inside <<SYS>>."""
    system = ""
    if messages and messages[0]["role"] == "system":
        system, messages = f"<<SYS>>\n{messages[0]['content']}\n<</SYS>>\n\n", messages[1:]
    out = ""
    for i, m in enumerate(messages):
        if m["role"] == "user":
            out += f"<s>[INST] {system if i == 0 else ''}{m['content'].strip()} [/INST]"
        else:
            out += f" {m['content'].strip()} </s>"
    if not messages and system:
        out = f"<s>[INST] {system}"
    return out


BUILTIN = {
    "chatml": ChatTemplate("chatml", _chatml),
    "llama2": ChatTemplate("llama2", _llama2),
    "llama3": ChatTemplate("llama3", _llama3),
    "zephyr": ChatTemplate("zephyr", _tagged("</s>")),
    "gemma": ChatTemplate("gemma", _gemma),
    "phi3": ChatTemplate("phi3", _tagged("<|end|>")),
}


def guess_builtin(template_text: str | None, vocab: Sequence[str] = ()) -> ChatTemplate:
    """The built-in a model most likely expects, from its template text or special tokens."""
    text = template_text or ""
    markers = set(vocab) if vocab else set()
    if "<|start_header_id|>" in text or "<|start_header_id|>" in markers:
        return BUILTIN["llama3"]
    if "<|im_start|>" in text or "<|im_start|>" in markers:
        return BUILTIN["chatml"]
    if "[INST]" in text:
        return BUILTIN["llama2"]
    if "<|end|>" in text or ("<|end|>" in markers and "<|assistant|>" in markers):
        return BUILTIN["phi3"]
    if "<|assistant|>" in text or "<|assistant|>" in markers:
        return BUILTIN["zephyr"]
    if "<start_of_turn>" in text or "<start_of_turn>" in markers:
        return BUILTIN["gemma"]
    return BUILTIN["chatml"]


# -----------------------------------------------------------------------------
# sandboxed Jinja templates from model files

_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")
_DIGITS = re.compile(r"\d+")


def _check_format(fmt, kind: str) -> None:
    """Refuse a `%` or `str.format` string whose widths or precisions would build huge text."""
    if not isinstance(fmt, str):
        return
    if kind == "%":
        widths = [w for m in _PERCENT_SPEC.finditer(fmt) for w in m.groups() if w]
    else:
        specs = [spec or "" for _, _, spec, _ in string.Formatter().parse(fmt)]
        if any("{" in spec for spec in specs):
            raise _security_error()("nested fields in a format spec are refused")
        widths = [w for spec in specs for w in _DIGITS.findall(spec)]
    if "*" in widths or any(int(w) > MAX_WIDTH for w in widths) or sum(map(int, widths or [0])) > MAX_OUTPUT_CHARS:
        raise _security_error()(f"format widths {widths[:4]} over the template limit {MAX_WIDTH}")


def _check_size(value, budget: int = MAX_NODES) -> None:
    """Refuse a value whose text would be huge: a long string, or a nested structure that str()
    would walk more than ``budget`` times (a list of a list of ... the same list, doubled)."""
    stack, seen = [value], 0
    while stack:
        v = stack.pop()
        seen += len(v) if isinstance(v, str) else 1
        if seen > max(budget, MAX_OUTPUT_CHARS):
            raise _security_error()("value too large to turn into text")
        if isinstance(v, (list, tuple, set, frozenset)):
            stack.extend(v)
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        if len(stack) > budget:
            raise _security_error()("value too large to turn into text")


def _security_error():
    from jinja2.exceptions import SecurityError
    return SecurityError


def _width(x) -> int:
    return len(x) if isinstance(x, str) else x if isinstance(x, int) else 0


# the price of a filter's result, from its arguments (value first): refused over MAX_OUTPUT_CHARS
_FILTER_COST = {
    "indent": lambda v, width=4, *a, **k: len(str(v)) + (str(v).count("\n") + 1) * _width(width),
    "center": lambda v, width=80, *a, **k: len(str(v)) + _width(width),
    "replace": lambda v, old="", new="", *a, **k: len(str(v)) + (str(v).count(str(old)) + 1) * len(str(new)),
    "batch": lambda v, n=1, *a, **k: _width(n) * 64,
    "slice": lambda v, n=1, *a, **k: _width(n) * 64,
    "wordwrap": lambda v, width=79, *a, **k: len(str(v)) * 2,
    "format": lambda v, *a, **k: _check_format(v, "%") or len(str(v)),
}
_STR_METHOD_COST = {
    "center": lambda s, w=0, *a: _width(w), "ljust": lambda s, w=0, *a: _width(w),
    "rjust": lambda s, w=0, *a: _width(w), "zfill": lambda s, w=0, *a: _width(w),
    "expandtabs": lambda s, n=8, *a: len(s) + s.count("\t") * _width(n),
    "replace": lambda s, old="", new="", *a: len(s) + (s.count(old) + 1) * len(new) if isinstance(old, str)
    and isinstance(new, str) else 0,
}


def _checked_filter(name: str, f):
    cost = _FILTER_COST.get(name)
    skip = 1 if getattr(f, "jinja_pass_arg", None) is not None else 0  # (context, value, ...)

    @functools.wraps(f)
    def filtered(*args, **kwargs):
        if len(args) > skip:
            _check_size(args[skip])
            if cost is not None and cost(*args[skip:], **kwargs) > MAX_OUTPUT_CHARS:
                raise _security_error()(f"filter {name} would build over {MAX_OUTPUT_CHARS} chars")
        return f(*args, **kwargs)
    return filtered


def _sandbox():
    from jinja2.compiler import CodeGenerator
    from jinja2.exceptions import SecurityError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class PricedConcat(CodeGenerator):
        """`a ~ b` calls ``environment.priced_join`` instead of an unchecked str join."""
        def visit_Concat(self, node, frame):
            self.write("environment.priced_join((")
            for arg in node.nodes:
                self.visit(arg, frame)
                self.write(", ")
            self.write("))")

    class LimitedSandbox(ImmutableSandboxedEnvironment):
        """The immutable sandbox where every operation that could build something huge from
        something small is priced first (see the module docstring)."""
        intercepted_binops = frozenset({"*", "**", "+", "%"})
        code_generator_class = PricedConcat

        def call_binop(self, context, operator, left, right):
            ints = isinstance(left, int) and isinstance(right, int)
            if operator == "**" and isinstance(right, (int, float)) and (
                    abs(right) > 64 or ints and left.bit_length() * max(right, 0) > MAX_INT_BITS):
                raise SecurityError(f"power with exponent {right} is over the template limit")
            if operator == "*":
                if ints and left.bit_length() + right.bit_length() > MAX_INT_BITS:
                    raise SecurityError("product over the template limit")
                for seq, n in ((left, right), (right, left)):
                    if isinstance(seq, (str, list, tuple)) and isinstance(n, int) \
                            and len(seq) * n > MAX_REPEAT:
                        raise SecurityError("repetition over the template limit")
            if operator == "+" and isinstance(left, (str, list, tuple)) and isinstance(right, (str, list, tuple)) \
                    and len(left) + len(right) > MAX_OUTPUT_CHARS:
                raise SecurityError("concatenation over the template limit")
            if operator == "%":
                _check_format(left, "%")
            return super().call_binop(context, operator, left, right)

        def priced_join(self, values):
            for v in values:
                _check_size(v)
            out = "".join(map(str, values))
            if len(out) > MAX_OUTPUT_CHARS:
                raise SecurityError("concatenation over the template limit")
            return out

        def wrap_str_format(self, value):
            wrapper = super().wrap_str_format(value)
            if wrapper is not None:
                _check_format(value.__self__, "format")
            return wrapper

        def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 (jinja's own spelling)
            cost = _STR_METHOD_COST.get(getattr(__obj, "__name__", ""))
            if cost is not None and isinstance(getattr(__obj, "__self__", None), str) \
                    and cost(__obj.__self__, *args) > MAX_OUTPUT_CHARS:
                raise SecurityError(f"str.{__obj.__name__} would build over {MAX_OUTPUT_CHARS} chars")
            return super().call(__context, __obj, *args, **kwargs)

    env = LimitedSandbox(trim_blocks=True, lstrip_blocks=True, autoescape=False, optimized=False,
                         finalize=lambda value: _check_size(value) or value)
    for name, f in list(env.filters.items()):
        env.filters[name] = _checked_filter(name, f)
    return env, SecurityError


class _Deadline:
    """A line tracer that raises once the render has run past its deadline, so even a template
    of nested loops that calls nothing cannot hang the game."""

    def __init__(self, seconds: float):
        self.end = time.perf_counter() + seconds
        self.count = 0

    def __call__(self, frame, event, arg):
        self.count += 1
        if self.count % 256 == 0 and time.perf_counter() > self.end:
            raise ChatTemplateError(f"chat template render took over {MAX_RENDER_S} s")
        return self


def jinja_template(source: str, bos_token: str = "", eos_token: str = "",
                   where: str = "tokenizer.chat_template") -> ChatTemplate:
    """Compile an untrusted template for sandboxed, limited rendering."""
    if not isinstance(source, str):
        raise ChatTemplateError(f"{where}: must be a string, got {type(source).__name__}")
    if len(source) > MAX_TEMPLATE_CHARS:
        raise ChatTemplateError(f"{where}: {len(source)} chars, over the {MAX_TEMPLATE_CHARS} limit")
    import jinja2
    env, security_error = _sandbox()

    def raise_exception(message):
        raise ChatTemplateError(f"{where}: template raised: {message}")

    old_trace = sys.gettrace()
    sys.settrace(_Deadline(MAX_RENDER_S))
    try:  # (guarded like a render: a parser can recurse, and a compiler can evaluate)
        compiled = env.from_string(source)
    except ChatTemplateError:
        raise
    except (jinja2.TemplateError, RecursionError, MemoryError, OverflowError, ValueError, TypeError) as exc:
        raise ChatTemplateError(f"{where}: does not compile: {type(exc).__name__}: {exc}") from None
    finally:
        sys.settrace(old_trace)

    def render(messages, gen):
        variables = dict(messages=[dict(m) for m in messages], add_generation_prompt=gen,
                         bos_token=bos_token, eos_token=eos_token, raise_exception=raise_exception)
        pieces, size = [], 0
        old_trace = sys.gettrace()
        sys.settrace(_Deadline(MAX_RENDER_S))
        try:
            for piece in compiled.generate(**variables):
                size += len(piece)
                if size > MAX_OUTPUT_CHARS:
                    raise ChatTemplateError(f"{where}: output over {MAX_OUTPUT_CHARS} chars")
                pieces.append(piece)
        except ChatTemplateError:
            raise
        except security_error as exc:
            raise ChatTemplateError(f"{where}: refused by the sandbox: {exc}") from None
        except (jinja2.TemplateError, TypeError, ValueError, KeyError, IndexError, AttributeError,
                ZeroDivisionError, OverflowError, RecursionError, MemoryError) as exc:
            raise ChatTemplateError(f"{where}: render failed: {type(exc).__name__}: {exc}") from None
        finally:
            sys.settrace(old_trace)
        return "".join(pieces)

    return ChatTemplate("gguf", render)


def template_for_model(metadata: Mapping[str, Any], tokens: Sequence[str] = (),
                       bos_token: str = "", eos_token: str = "", name: str | None = None,
                       where: str = "model") -> ChatTemplate:
    """The template to use for a model: a built-in by ``name`` if given, else the file's own
    (sandboxed, checked once on a probe conversation), else the built-in its vocabulary suggests."""
    if name is not None:
        if name not in BUILTIN:
            raise ChatTemplateError(f"unknown chat template {name!r} (choose from {', '.join(BUILTIN)})")
        return BUILTIN[name]
    source = metadata.get("tokenizer.chat_template")
    fallback = guess_builtin(source if isinstance(source, str) else None, tokens)
    if source is None:
        return fallback
    key = (source, bos_token, eos_token, where)
    if key not in _CHECKED:
        _CHECKED[key] = _check_template(source, bos_token, eos_token, where)
        while len(_CHECKED) > 16:
            _CHECKED.pop(next(iter(_CHECKED)))
        if isinstance(_CHECKED[key], ChatTemplateError):  # warned once per template, not per NPC
            warnings.warn(f"{_CHECKED[key]}; using the built-in {fallback.name} template", stacklevel=2)
    checked = _CHECKED[key]
    return fallback if isinstance(checked, ChatTemplateError) else checked


_CHECKED: dict[tuple, "ChatTemplate | ChatTemplateError"] = {}  # the checks template_for_model made


def _check_template(source, bos_token: str, eos_token: str, where: str) -> "ChatTemplate | ChatTemplateError":
    """Compile a model's template and time it on a probe conversation: the template, or why not."""
    probe = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
             {"role": "assistant", "content": "a"}, {"role": "user", "content": "u"}]
    try:
        template = jinja_template(source, bos_token, eos_token, where=f"{where}: tokenizer.chat_template")
        start = time.perf_counter()
        template.render(probe, True)
        took = time.perf_counter() - start
        if took > MAX_PROBE_S:
            raise ChatTemplateError(f"{where}: tokenizer.chat_template took {took * 1000:.0f} ms on a "
                                    f"4-message probe, over the {MAX_PROBE_S * 1000:.0f} ms limit")
        return template
    except ChatTemplateError as exc:
        return exc
