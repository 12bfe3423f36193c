"""Loads GLSL compute shaders from the package: `#define` injection, nested `#include`, `#line`.

Why one loader: every kernel is compiled with a few compile-time knobs (quant type, rows per
invocation) and shares decode code from ``shaders/common/``. Doing the text assembly in one place
keeps the shader files valid GLSL (defaults live in the files under ``#ifndef``) and lets driver
errors point at ``matvec.comp:42`` instead of line 317 of a pasted blob.

GLSL's ``#line N S`` takes a *source-string number* S, not a file name, so the loader numbers each
file it pastes (0 = the top-level ``.comp``) and translates the driver's ``S:N(col)`` / ``S(N)``
back to ``name:N`` when compilation fails.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib import resources

from ..errors import BackendError

SHADER_PACKAGE = "perro_pastor.shaders"

# Values the launchers and the shaders both depend on, stated once, here: ``assemble`` #defines
# them in every shader, and a shader that reads one has no value of its own (it says #error).
# A x of a fused LoRA delta (stacked ranks up to 1024) fills the first LORA_AX_WORDS words of the
# work buffer of common/lora_a.glsl, read by matvec.comp as a uniform block; its counter follows,
# then from LORA_PARTS_WORD on the per-group partial sums.
LORA_AX_WORDS = 1024
LORA_PARTS_WORD = LORA_AX_WORDS + 4
MAX_HEAD_SIZE = 256  # attention.comp keeps one query head in shared memory
SHARED_DEFINES = {"LORA_AX_WORDS": LORA_AX_WORDS, "LORA_PARTS": LORA_PARTS_WORD, "MAX_HEAD_SIZE": MAX_HEAD_SIZE}

_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*(//.*)?$')
_VERSION = re.compile(r"^\s*#\s*version\b")
# Mesa writes "3:42(7): error: ..."; NVIDIA "3(42) : error ..."; AMD/others "ERROR: 3:42: ...".
_DRIVER_LOC = re.compile(r"\b(\d+)(?::(\d+)\((\d+)\)|\((\d+)\)|:(\d+))")


def read_shader_file(name: str) -> str:
    """Text of ``shaders/<name>`` (e.g. ``matvec.comp``, ``common/dequant.glsl``) from the package."""
    node = resources.files(SHADER_PACKAGE)
    for part in name.split("/"):
        node = node.joinpath(part)
    try:
        return node.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BackendError(f"shader file {name!r} not found in package {SHADER_PACKAGE}") from None


@dataclass
class ShaderSource:
    """Assembled source plus the table that maps GLSL source-string numbers to file names."""

    text: str
    files: list[str] = field(default_factory=list)

    def translate(self, message: str) -> str:
        """Rewrite driver locations like ``2:17(3)`` into ``common/dequant.glsl:17``."""

        def repl(m: re.Match[str]) -> str:
            file_id = int(m.group(1))
            line = m.group(2) or m.group(4) or m.group(5)
            if file_id >= len(self.files):
                return m.group(0)
            return f"{self.files[file_id]}:{line}"

        return _DRIVER_LOC.sub(repl, message)


def _format_define(value: object) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def assemble(name: str, defines: dict[str, object] | None = None) -> ShaderSource:
    """Build the full source of ``shaders/<name>`` with ``defines``, then ``SHARED_DEFINES``,
    injected after ``#version``.

    Includes are resolved relative to the shaders/ root and pasted once (include guards by file
    name), so two common files may both include a third.
    """
    defines = dict(defines or {})
    for key, value in SHARED_DEFINES.items():
        defines.setdefault(key, value)
    src = ShaderSource(text="", files=[])
    out: list[str] = []
    included: set[str] = set()

    def emit_file(fname: str, stack: tuple[str, ...]) -> None:
        if fname in stack:
            raise BackendError(f"shader include cycle: {' -> '.join(stack + (fname,))}")
        file_id = len(src.files)
        src.files.append(fname)
        lines = read_shader_file(fname).splitlines()
        if file_id != 0:
            out.append(f"#line 1 {file_id}")
        for lineno, line in enumerate(lines, start=1):
            if file_id == 0 and _VERSION.match(line):
                out.append(line)
                for key, value in defines.items():
                    out.append(f"#define {key} {_format_define(value)}")
                out.append(f"#line {lineno + 1} 0")
                continue
            m = _INCLUDE.match(line)
            if m is None:
                out.append(line)
                continue
            inc = m.group(1)
            if inc not in included:
                included.add(inc)
                emit_file(inc, stack + (fname,))
            out.append(f"#line {lineno + 1} {file_id}")

    emit_file(name, ())
    if not out or not _VERSION.match(out[0]):
        raise BackendError(f"shader {name}: first line must be #version")
    src.text = "\n".join(out) + "\n"
    return src


def compile_compute(ctx, name: str, defines: dict[str, object] | None = None):
    """Compile ``shaders/<name>`` into a ``moderngl.ComputeShader``; errors name the file and line."""
    src = assemble(name, defines)
    try:
        return ctx.compute_shader(src.text)
    except Exception as exc:  # moderngl.Error: message is the driver's info log
        detail = src.translate(str(exc))
        raise BackendError(f"compiling shader {name} with defines {defines or {}}:\n{detail}") from None
