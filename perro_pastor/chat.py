"""Chat templates: turning a list of messages into the prompt text a model was trained on.

A GGUF file may carry its own Jinja template (``tokenizer.chat_template``). That text comes from
an untrusted file, and rendering one unsandboxed was a code-execution hole (CVE-2024-34359,
RELIABILITY.md row 22). So it is rendered in Jinja2's ``ImmutableSandboxedEnvironment`` (no
attribute access to internals, no mutation of inputs) and within limits: template size, output
size, string/number blow-up, and a wall-clock deadline checked by a line tracer while it renders.
A template that breaks a rule raises ``ChatTemplateError``; ``template_for_model`` then falls back
to the matching built-in (ChatML, Llama-2 ``[INST]``, Llama-3, Zephyr) and warns.
"""

from __future__ import annotations

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


def _zephyr(messages, gen):
    out = "".join(f"<|{m['role']}|>\n{m['content']}</s>\n" for m in messages)
    return out + ("<|assistant|>\n" if gen else "")


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
    "zephyr": ChatTemplate("zephyr", _zephyr),
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
    if "<|assistant|>" in text or "<|assistant|>" in markers:
        return BUILTIN["zephyr"]
    return BUILTIN["chatml"]


# -----------------------------------------------------------------------------
# sandboxed Jinja templates from model files

def _sandbox():
    from jinja2.exceptions import SecurityError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class LimitedSandbox(ImmutableSandboxedEnvironment):
        """The immutable sandbox plus caps on `*` and `**`, which could allocate gigabytes."""
        intercepted_binops = frozenset({"*", "**"})

        def call_binop(self, context, operator, left, right):
            if operator == "**" and isinstance(right, (int, float)) and abs(right) > 64:
                raise SecurityError(f"exponent {right} is over the template limit")
            if operator == "*":
                for seq, n in ((left, right), (right, left)):
                    if isinstance(seq, (str, list, tuple)) and isinstance(n, int) \
                            and len(seq) * n > MAX_REPEAT:
                        raise SecurityError("repetition over the template limit")
            return super().call_binop(context, operator, left, right)

    return LimitedSandbox(trim_blocks=True, lstrip_blocks=True, autoescape=False), SecurityError


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

    try:
        compiled = env.from_string(source)
    except jinja2.TemplateError as exc:
        raise ChatTemplateError(f"{where}: does not compile: {exc}") from None

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
    try:
        template = jinja_template(source, bos_token, eos_token, where=f"{where}: tokenizer.chat_template")
        template.render([{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
                         {"role": "assistant", "content": "a"}], True)
        return template
    except ChatTemplateError as exc:
        warnings.warn(f"{exc}; using the built-in {fallback.name} template", stacklevel=2)
        return fallback
