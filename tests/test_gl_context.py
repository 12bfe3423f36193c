"""GL context checks: version and limits give one clear BackendError; the error helper works."""

from __future__ import annotations

import dataclasses

import pytest

from perro_pastor.errors import BackendError
from perro_pastor.gl.context import GLContext, assert_no_gl_error, check_limits, read_limits

from gl_helpers import glctx  # noqa: F401  (fixture)


class FakeCtx:
    """Just what read_limits looks at: a version code and the info dict."""

    def __init__(self, version: int, **overrides):
        self.version_code = version
        self.info = {
            "GL_RENDERER": "FakeGL", "GL_VERSION": f"{version // 100}.{version % 100 // 10} Fake",
            "GL_MAX_SHADER_STORAGE_BLOCK_SIZE": 1 << 27, "GL_MAX_COMPUTE_WORK_GROUP_INVOCATIONS": 1024,
            "GL_MAX_COMPUTE_WORK_GROUP_SIZE": (1024, 1024, 64),
            "GL_MAX_COMPUTE_WORK_GROUP_COUNT": (65535, 65535, 65535),
            "GL_MAX_COMPUTE_SHARED_MEMORY_SIZE": 32768,
        }
        self.info.update(overrides)


def test_real_context_limits(glctx):  # noqa: F811
    lim = glctx.limits
    assert lim.version >= 430
    assert lim.max_ssbo_block_size >= 1 << 24
    assert lim.max_shared_memory >= 16384
    assert_no_gl_error(glctx)


def test_gl_41_is_rejected_with_version_in_message():
    with pytest.raises(BackendError, match=r"OpenGL 4\.1 .*FakeGL.*needs OpenGL 4\.3"):
        read_limits(FakeCtx(410))


def test_fake_43_passes():
    assert read_limits(FakeCtx(430)).max_ssbo_block_size == 1 << 27


@pytest.mark.parametrize("field,value,name", [
    ("GL_MAX_SHADER_STORAGE_BLOCK_SIZE", 1 << 20, "GL_MAX_SHADER_STORAGE_BLOCK_SIZE=1048576"),
    ("GL_MAX_COMPUTE_SHARED_MEMORY_SIZE", 1024, "GL_MAX_COMPUTE_SHARED_MEMORY_SIZE=1024"),
    ("GL_MAX_COMPUTE_WORK_GROUP_INVOCATIONS", 128, "GL_MAX_COMPUTE_WORK_GROUP_INVOCATIONS=128"),
])
def test_small_limits_are_named(field, value, name):
    with pytest.raises(BackendError, match=name):
        read_limits(FakeCtx(450, **{field: value}))


def test_check_limits_lists_every_problem(glctx):  # noqa: F811
    bad = dataclasses.replace(glctx.limits, max_ssbo_block_size=10, max_shared_memory=10)
    with pytest.raises(BackendError) as info:
        check_limits(bad)
    assert "STORAGE_BLOCK_SIZE=10" in str(info.value) and "SHARED_MEMORY_SIZE=10" in str(info.value)


def test_check_error_raises_on_a_real_gl_error(glctx):  # noqa: F811
    buf = glctx.ctx.buffer(reserve=16)
    buf.bind_to_storage_buffer(100000)  # beyond GL_MAX_SHADER_STORAGE_BUFFER_BINDINGS
    buf.release()
    with pytest.raises(BackendError, match="GL_INVALID_VALUE"):
        glctx.check_error("after bad bind")
    assert_no_gl_error(glctx)  # reading the error cleared it
