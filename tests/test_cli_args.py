"""Every flag of `perro-pastor` is checked before a model loads (issue 23): in-process, over the
parser, with a model path that does not exist, so that passing the checks shows up as the
"no such model file" error and failing them as one `perro-pastor: error:` line about the flag."""

import contextlib
import io

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from perro_pastor import cli

MISSING = "/nonexistent/model.gguf"


def run_main(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = cli.main(argv)
        except SystemExit as exc:  # argparse: --help, or its own usage errors
            code = exc.code
    return code, err.getvalue()


def error_lines(stderr: str) -> list[str]:
    """The error lines; other lines may only be the command's own progress notes."""
    lines = stderr.splitlines()
    assert all(line.startswith("perro-pastor: ") for line in lines), stderr
    return [line for line in lines if line.startswith("perro-pastor: error: ")]


BAD = [  # (argv, what the one error line must mention)
    (["generate", "-p", "hi", "-n", "0"], "-n must be >= 1"),
    (["generate", "-p", "hi", "-n", "-5"], "-n must be >= 1"),
    (["generate", "-p", "hi", "-c", "0"], "-c/--ctx must be >= 1"),
    (["generate", "-p", "hi", "--temp", "-1"], "--temp -1.0: temperature must be >= 0"),
    (["generate", "-p", "hi", "--top-p", "5"], "--top-p 5.0: top_p must be in (0, 1]"),
    (["generate", "-p", "hi", "--top-p", "0"], "top_p must be in (0, 1]"),
    (["generate", "-p", "hi", "--min-p", "nan"], "--min-p nan: min_p must be"),
    (["generate", "-p", "hi", "--top-k", "-1"], "--top-k -1: top_k must be >= 0"),
    (["generate", "-p", "hi", "--repeat-last-n", "-1"], "repeat_last_n must be >= 0"),
    (["generate", "-p", "hi", "--repeat-penalty", "0"], "repeat_penalty must be > 0"),
    (["generate", "-p", "hi", "--seed", "-1"], "--seed must be >= 0"),
    (["generate", "-p", "hi", "--cpu-cache-mb", "-1"], "--cpu-cache-mb must be >= 0"),
    (["generate", "-p", "hi", "-n", "many"], "expected an integer, got 'many'"),
    (["generate"], "required: -p/--prompt"),
    (["perplexity", "-f", "/nonexistent/text.txt"], "cannot read /nonexistent/text.txt: No such file"),
    (["perplexity", "-f", "x.txt", "-c", "0"], "-c/--ctx must be >= 8"),
    (["perplexity", "-f", "x.txt", "-c", "-5"], "-c/--ctx must be >= 8"),
    (["perplexity", "-f", "x.txt", "-c", "7"], "-c/--ctx must be >= 8"),
    (["bench", "-p", "0", "-n", "0"], "-p must be >= 1"),
    (["bench", "-n", "0"], "-n must be >= 1"),
    (["bench", "--repeats", "0"], "--repeats must be >= 1"),
    (["bench", "--sessions", "2", "--budget-ms", "-1"], "--budget-ms must be a number > 0"),
    (["chat", "-n", "0"], "-n must be >= 1"),
    (["chat", "-c", "0"], "-c/--ctx must be >= 16"),
    (["chat", "--temp", "-1"], "temperature must be >= 0"),
    (["download", "x", "--lock-timeout", "-1"], "must be a finite number of seconds >= 0, got -1"),
    (["download", "x", "--lock-timeout", "inf"], "must be a finite number of seconds >= 0, got inf"),
    (["download", "x", "--lock-timeout", "soon"], "not a number of seconds: 'soon'"),
]


@pytest.mark.parametrize("argv, message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_a_bad_flag_is_one_line_and_exit_2_before_any_model_loads(argv, message):
    code, stderr = run_main([*argv, "-m", MISSING])
    assert code == 2, stderr
    [line] = error_lines(stderr)
    assert message in line and "no such model" not in line and "Traceback" not in stderr


def test_good_flags_get_as_far_as_the_model():
    code, stderr = run_main(["generate", "-m", MISSING, "-p", "hi", "-n", "3", "-c", "64", "--temp", "0",
                             "--top-p", "1", "--top-k", "0", "--seed", "7", "--backend", "cpu"])
    assert code == 3 and "no such model file" in error_lines(stderr)[0]


VALUES = ["0", "-1", "-5", "1", "7", "8", "64", "1e9", "0.5", "1.5", "nan", "inf", "-inf", "abc", ""]
FLAGS = ["-n", "-c", "-p", "--temp", "--top-k", "--top-p", "--min-p", "--repeat-penalty", "--repeat-last-n",
         "--seed", "--cpu-cache-mb", "--repeats", "--sessions", "--budget-ms", "--backend", "-f", "--lora"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(command=st.sampled_from(["generate", "chat", "perplexity", "bench", "tokenize"]),
       flags=st.lists(st.tuples(st.sampled_from(FLAGS), st.sampled_from(VALUES)), max_size=5))
def test_no_flag_combination_gives_a_traceback(command, flags):
    argv = [command, "-m", MISSING, *[part for pair in flags for part in pair]]
    code, stderr = run_main(argv)
    assert code in (2, 3), (argv, code, stderr)
    [line] = error_lines(stderr)
    assert "Traceback" not in stderr and "unexpected" not in line, (argv, stderr)
    assert (code == 3) == ("no such model file" in line), (argv, stderr)


def test_tensor_names_sort_by_layer_number():
    names = ["blk.10.ffn_up.weight", "output.weight", "blk.2.attn_q.weight", "blk.1.attn_q.weight"]
    assert sorted(names, key=cli.layer_order) == \
        ["blk.1.attn_q.weight", "blk.2.attn_q.weight", "blk.10.ffn_up.weight", "output.weight"]
