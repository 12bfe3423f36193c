"""The `perro-pastor` command as a user runs it: a real subprocess, real model files."""

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest


def run(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "perro_pastor.cli", *args], capture_output=True,
                          text=True, input=stdin, timeout=600)


def test_generate_json_streams_tokens_then_summary():
    out = run("generate", "-m", "default", "-p", "Once upon a time", "-n", "6", "--temp", "0",
              "--backend", "cpu", "--json")
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert all(set(line) == {"id", "text"} for line in lines[:-1]) and len(lines) == 7
    summary = lines[-1]
    assert summary["prompt_tokens"] == 4 and summary["generated_tokens"] == 6
    assert summary["prefill_tok_s"] > 0 and summary["decode_tok_s"] > 0


def test_tokenize_parses_special_tokens_like_llama_tokenize():
    out = run("tokenize", "-m", "default", "<|im_start|>user")
    assert out.returncode == 0, out.stderr
    ids = json.loads(out.stdout)
    assert ids[0] == 1 and len(ids) == 2  # <|im_start|> is one special token, no BOS for SmolLM2
    plain = json.loads(run("tokenize", "-m", "default", "--no-parse-special", "<|im_start|>user").stdout)
    assert 1 not in plain and len(plain) > 2


def test_tokenize_jsonl_batch_mode():
    out = run("tokenize", "-m", "default", "--jsonl", stdin='"Hello"\n"12345"\n')
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(rows) == 2 and len(rows[1]) == 5  # the smollm pre-tokenizer splits digits singly


def test_inspect_counts_parameters():
    out = run("inspect", "default", "--json")
    info = json.loads(out.stdout)
    assert info["format"] == "gguf" and len(info["tensors"]) == 272
    assert 130e6 < info["n_params"] < 140e6
    assert info["metadata"]["llama.block_count"] == 30
    names = [t["name"] for t in info["tensors"]]
    assert names.index("blk.2.attn_q.weight") < names.index("blk.10.attn_q.weight")  # by number


def test_inspect_into_a_closed_pipe_ends_quietly():
    """`perro-pastor inspect default | head -1`: no "Broken pipe", no traceback."""
    for extra in ([], ["--json"]):
        p = subprocess.Popen([sys.executable, "-m", "perro_pastor.cli", "inspect", "default", *extra],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        p.stdout.readline()
        p.stdout.close()  # what head does after its line
        err = p.stderr.read()
        assert p.wait(timeout=60) == 0 and err == "", err


def test_a_bad_flag_answers_before_the_model_loads():
    """The model exists here: the error must still come without loading it (issue 23: < 1 s)."""
    for args in (["generate", "-n", "0", "-p", "hi"], ["perplexity", "-f", "/nonexistent.txt"],
                 ["generate", "-p", "hi", "--top-p", "5"], ["bench", "-p", "0", "-n", "0"]):
        start = time.perf_counter()
        out = run(*args, "-m", "default", "--backend", "cpu")
        wall = time.perf_counter() - start
        assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
        assert out.stderr.startswith("perro-pastor: error: ") and "Traceback" not in out.stderr
        assert wall < 3, (args, wall)


def test_generate_context_flag_is_capped_to_the_model_and_says_so():
    out = run("generate", "-m", "default", "-p", "Once upon a time", "-n", "2", "--temp", "0",
              "--backend", "cpu", "-c", "10000000")
    assert out.returncode == 0, out.stderr
    assert "-c 10000000 is more than this model's context of 8192 tokens; using 8192" in out.stderr
    out = run("generate", "-m", "default", "-p", "Once upon a time", "-n", "2", "--backend", "cpu", "-c", "3")
    assert out.returncode == 2 and "does not fit a context of 3" in out.stderr and out.stderr.count("\n") == 1


@pytest.mark.parametrize("wait_bytes", [1, 60])  # at once (in Python), or mid-run (often in a numba kernel)
def test_ctrl_c_during_generate_prints_interrupted_on_its_own_line(wait_bytes):
    p = subprocess.Popen([sys.executable, "-m", "perro_pastor.cli", "generate", "-m", "default", "-p",
                          "Once upon a time", "-n", "2000", "--temp", "0", "--backend", "cpu"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = p.stdout.read(wait_bytes)  # text is streaming
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    text, err = (first + out).decode(), err.decode()
    assert p.returncode == 130, err
    assert text.endswith("\n") and err.endswith("perro-pastor: interrupted\n") and "Traceback" not in err


def test_chat_prints_its_speed_on_stderr_and_only_replies_on_stdout():
    out = run("chat", "-m", "default", "--backend", "cpu", "-n", "4", "--temp", "0", "-c", "10000000",
              stdin="Hello\nWho are you?\n")
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.splitlines()) == 2 and "tok/s" not in out.stdout
    speeds = [line for line in out.stderr.splitlines() if "tok/s" in line]
    assert len(speeds) == 2 and all(line.startswith("[4 tokens, ") for line in speeds), out.stderr
    assert "using 8192" in out.stderr  # -c above the model's context is capped, and says so


def test_bench_shows_progress_and_only_the_columns_that_apply():
    out = run("bench", "-m", "default", "--backend", "cpu", "-p", "4", "-n", "2", "--repeats", "1", "--json")
    assert out.returncode == 0, out.stderr
    row = json.loads(out.stdout)
    assert row["backend"] == "cpu" and None not in row.values() and "gl_renderer" not in row
    assert row["int_activations"] is True  # (the cpu default: decode on 9-bit activations)
    progress = [line for line in out.stderr.splitlines() if line.startswith("perro-pastor: bench: ")]
    assert [line.split(": ")[2].split(" ")[0] for line in progress] == ["loading", "warm-up", "run"], out.stderr


@pytest.mark.parametrize("content", [b"", b"GGUF", b"GGUF\x03\x00\x00\x00" + b"\xff" * 40, b"not a model at all"])
def test_bad_model_file_is_one_line_and_exit_3(tmp_path, content):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(content)
    for args in (["generate", "-m", str(bad), "-p", "hi", "--backend", "cpu"], ["inspect", str(bad)],
                 ["tokenize", "-m", str(bad), "hi"]):
        out = run(*args)
        assert out.returncode == 3, (args, out.stderr)
        assert out.stderr.count("\n") == 1 and "bad.gguf" in out.stderr and "Traceback" not in out.stderr


def test_missing_model_and_usage_errors():
    out = run("generate", "-m", "/nonexistent/model.gguf", "-p", "hi")
    assert out.returncode == 3 and "no such model file" in out.stderr
    assert run("generate").returncode == 2
    out = run("generate", "-m", "default", "-p", "hi", "--top-p", "0", "--backend", "cpu")
    assert out.returncode == 2 and "top_p" in out.stderr


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    from lora_fixtures import gguf_tensors, random_factors, write_gguf_lora
    from perro_pastor.model import load
    cfg = load("default", backend="cpu").config
    factors = random_factors(cfg, 4, np.random.default_rng(5), layers=range(cfg.n_layers), size=0.2)
    return write_gguf_lora(tmp_path_factory.mktemp("lora") / "npc.gguf", gguf_tensors(factors), alpha=4.0)


def greedy_ids(*extra):
    out = run("generate", "-m", "default", "-p", "The old mill", "-n", "6", "--temp", "0",
              "--backend", "cpu", "--json", *extra)
    assert out.returncode == 0, out.stderr
    return [json.loads(line)["id"] for line in out.stdout.splitlines()[:-1]]


def test_lora_flag_applies_adapters_at_run_time(adapter):
    plain = greedy_ids()
    assert greedy_ids("--lora", f"{adapter}:0") == plain  # scale 0 is the base model
    assert greedy_ids("--lora", str(adapter)) != plain
    bad = run("generate", "-m", "default", "-p", "x", "--backend", "cpu", "--lora", "/nonexistent.gguf")
    assert bad.returncode == 3 and bad.stderr.count("\n") == 1


def test_demo_hands_its_flags_to_the_game():
    out = run("demo", "--help")
    assert out.returncode == 0 and "--autoplay" in out.stdout and "--screenshot" in out.stdout
    assert out.stdout.startswith("usage: perro-pastor-demo ")
