"""The shader loader: #define injection, nested includes with guards, #line -> file:line errors."""

from __future__ import annotations

import re

import pytest

from perro_pastor.errors import BackendError
from perro_pastor.gl import shader_loader
from perro_pastor.gl.shader_loader import assemble, compile_compute

from gl_helpers import glctx  # noqa: F401  (fixture)


def test_defines_follow_version_and_line_numbers_restart():
    src = assemble("matvec.comp", {"QUANT_Q4_1": 1, "NR": 2})
    lines = src.text.splitlines()
    assert lines[0] == "#version 430"
    shared = [f"#define {k} {v}" for k, v in shader_loader.SHARED_DEFINES.items()]
    assert lines[1:4 + len(shared)] == ["#define QUANT_Q4_1 1", "#define NR 2", *shared, "#line 2 0"]
    assert src.files == ["matvec.comp", "common/dequant.glsl", "common/bytes.glsl"]
    assert "#line 1 1" in lines and "#line 1 2" in lines


def test_nested_include_pasted_once(monkeypatch):
    files = {
        "top.comp": '#version 430\n#include "common/a.glsl"\n#include "common/b.glsl"\nvoid main() {}\n',
        "common/a.glsl": '#include "common/b.glsl"\nfloat a() { return b(); }\n',
        "common/b.glsl": "float b() { return 1.0; }\n",
    }
    monkeypatch.setattr(shader_loader, "read_shader_file", lambda name: files[name])
    src = assemble("top.comp")
    assert src.text.count("float b()") == 1
    assert src.files == ["top.comp", "common/a.glsl", "common/b.glsl"]


def test_include_cycle_is_an_error(monkeypatch):
    files = {"top.comp": '#version 430\n#include "common/a.glsl"\n', "common/a.glsl": '#include "top.comp"\n'}
    monkeypatch.setattr(shader_loader, "read_shader_file", lambda name: files[name])
    with pytest.raises(BackendError, match="include cycle"):
        assemble("top.comp")


def test_missing_file_names_it():
    with pytest.raises(BackendError, match="nope.comp"):
        assemble("nope.comp")


def test_compile_error_names_file_and_line(glctx, monkeypatch):  # noqa: F811
    files = {
        "bad.comp": "#version 430\nlayout(local_size_x = 1) in;\n"
                    '#include "common/oops.glsl"\nvoid main() { float y = f(); }\n',
        # The error is on line 3 of the included file.
        "common/oops.glsl": "// a comment\nfloat f() {\n    return undefined_name;\n}\n",
    }
    monkeypatch.setattr(shader_loader, "read_shader_file", lambda name: files[name])
    with pytest.raises(BackendError) as info:
        compile_compute(glctx.ctx, "bad.comp")
    assert re.search(r"common/oops\.glsl:3\b", str(info.value)), str(info.value)


def test_compile_error_in_top_file_after_include(glctx, monkeypatch):  # noqa: F811
    files = {
        "bad.comp": "#version 430\nlayout(local_size_x = 1) in;\n"
                    '#include "common/ok.glsl"\n\nvoid main() { float y = g(); }\n',
        "common/ok.glsl": "float f() { return 1.0; }\n",
    }
    monkeypatch.setattr(shader_loader, "read_shader_file", lambda name: files[name])
    with pytest.raises(BackendError) as info:
        compile_compute(glctx.ctx, "bad.comp", {"X": 1})
    assert re.search(r"bad\.comp:5\b", str(info.value)), str(info.value)


def test_shared_constants_are_stated_once_in_python(glctx):  # noqa: F811
    """Values both sides depend on come from Python: the loader defines SHARED_DEFINES in every
    shader (a caller's value wins), and a knob only the launcher sets stops the compile when
    missing instead of falling back to a second copy in the file."""
    text = assemble("attention.comp").text
    assert f"#define MAX_HEAD_SIZE {shader_loader.MAX_HEAD_SIZE}" in text
    assert "#define MAX_HEAD_SIZE 8" in assemble("attention.comp", {"MAX_HEAD_SIZE": 8}).text
    assert assemble("attention.comp", {"MAX_HEAD_SIZE": 8}).text.count("#define MAX_HEAD_SIZE") == 1
    for name in ("common/lora_a.glsl", "attention.comp"):
        assert not re.search(r"#define (LORA_AX_WORDS|LORA_PARTS|MAX_HEAD_SIZE) ", shader_loader.read_shader_file(name))
    with pytest.raises(BackendError, match="WG_SIZE"):
        compile_compute(glctx.ctx, "add.comp")
