"""Grammar-constrained replies through the runtime: sessions (batched, each with its own grammar),
Model.generate and the CLI. Outputs are checked with json.loads and the jsonschema package."""

import json
import subprocess
import sys

import numpy as np
import pytest

from perro_pastor.grammar import Grammar, GrammarError
from perro_pastor.sampling import GREEDY, SamplerSettings
from perro_pastor.scheduler import Scheduler

from runtime_model import small_model

jsonschema = pytest.importorskip("jsonschema")

NPC_ACTION = {
    "type": "object",
    "properties": {
        "say": {"type": "string", "maxLength": 60},
        "action": {"enum": ["none", "give_item", "open_door", "follow", "wave"]},
        "mood": {"enum": ["happy", "angry", "sad", "calm"]},
    },
    "required": ["say", "action", "mood"],
}
SAMPLED = SamplerSettings(temperature=1.0, top_k=40, top_p=0.95, min_p=0.0)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return small_model(tmp_path_factory)


def test_batched_npcs_each_follow_their_own_grammar(model):
    """Three NPCs decode in one batch: one with the action schema, one with a small GBNF grammar,
    one free. Each constrained reply is a complete sentence of its grammar, and the free NPC's
    tokens are the same as when it runs alone."""
    action = Grammar.from_json_schema(NPC_ACTION)
    yes_no = Grammar('root ::= ("yes" | "no") "." ')
    sched = Scheduler(model)
    guard = sched.session(system_prompt="You are a guard.", sampler=SAMPLED, seed=3, n_ctx=256)
    bard = sched.session(system_prompt="You are a bard.", sampler=SAMPLED, seed=4, n_ctx=256)
    free = sched.session(system_prompt="You are a cook.", sampler=GREEDY, n_ctx=256)
    replies = [guard.ask("Open the door!", max_tokens=80, grammar=action),
               bard.ask("Will you sing?", max_tokens=8, grammar=yes_no),
               free.ask("What is for dinner?", max_tokens=12, ignore_eos=True)]
    while not all(r.done for r in replies):
        sched.tick(50.0)
    guard_reply, bard_reply, free_reply = replies
    assert guard_reply.finish_reason == "eos", guard_reply.text
    jsonschema.validate(json.loads(guard_reply.text), NPC_ACTION)
    assert bard_reply.finish_reason == "eos" and bard_reply.text in ("yes.", "no.")

    alone = Scheduler(model).session(system_prompt="You are a cook.", sampler=GREEDY, n_ctx=256)
    assert alone.ask("What is for dinner?", max_tokens=12, ignore_eos=True).result() == free_reply.text


def test_gl_backend_npcs_follow_their_grammars_in_one_batch():
    """The same on the gl backend (llvmpipe): masks are applied on the host to the logits the
    pass reads back, per NPC of the batch."""
    pytest.importorskip("moderngl")
    from model_slices import model_slice
    from perro_pastor.errors import BackendError
    from perro_pastor.model import load

    try:
        gl_model = load(model_slice("Q4_1", n_layers=2), backend="gl")
    except BackendError as exc:
        pytest.skip(f"no GL 4.3: {exc}")
    try:
        sched = Scheduler(gl_model)
        a = sched.session(system_prompt="You are a guard.", sampler=SAMPLED, seed=5, n_ctx=256)
        b = sched.session(system_prompt="You are a bard.", sampler=SAMPLED, seed=6, n_ctx=192)
        replies = [a.ask("Open the door!", max_tokens=160, grammar=Grammar.from_json_schema(NPC_ACTION)),
                   b.ask("Count to three.", max_tokens=12, grammar=Grammar('root ::= [1-3] (", " [1-3]){2} "."'))]
        while not all(r.done for r in replies):
            sched.tick(50.0)
        assert replies[0].finish_reason == "eos", replies[0].text
        jsonschema.validate(json.loads(replies[0].text), NPC_ACTION)
        assert replies[1].finish_reason == "eos" and len(replies[1].text) == 8, replies[1].text
    finally:
        gl_model.close()


def test_generate_follows_a_grammar_and_eos_comes_only_where_it_accepts(model):
    grammar = Grammar.json()
    for seed in range(3):
        tokens = list(model.generate("The answer as JSON:", max_tokens=60, grammar=grammar,
                                     sampler=__import__("perro_pastor").Sampler(SAMPLED, seed=seed)))
        text = "".join(t.text for t in tokens)
        m = grammar.matcher(model.tokenizer)
        for t in tokens:
            m.advance(t.id)  # every token the sampler picked is one the grammar allows
        if len(tokens) < 60:  # ended by EOS: only allowed where the document is complete
            assert m.can_end()
            json.loads(text)


def test_a_grammar_no_token_can_follow_ends_the_reply_saying_why(model):
    """Once the grammar's sentence is complete and no end-of-turn token may end it (a matcher
    made without EOS ids), no token can follow: the reply ends with finish reason `grammar` and
    a GrammarError naming the session, after the token that completed it."""
    grammar = Grammar('root ::= "a"')
    s = Scheduler(model).session(name="mute", n_ctx=64)
    reply = s.ask("Say a.", max_tokens=5, grammar=grammar)
    reply.grammar = grammar.matcher(model.tokenizer, eos_ids=frozenset())
    with pytest.raises(GrammarError, match="'mute': no token can continue"):
        reply.result()
    assert reply.finish_reason == "grammar" and reply.text == "a"
    assert s.ask("Hello again", max_tokens=2).result() is not None  # the NPC still answers


def test_a_non_grammar_is_refused_before_the_reply(model):
    s = Scheduler(model).session(n_ctx=64)
    with pytest.raises(TypeError, match="grammar must be"):
        s.ask("Hi", grammar="root ::= \"a\"")
    assert not s.busy and s.messages == []


def test_cli_json_schema_and_bad_grammar_files(tmp_path):
    schema = tmp_path / "npc.json"
    schema.write_text(json.dumps(NPC_ACTION))
    out = subprocess.run([sys.executable, "-m", "perro_pastor.cli", "generate", "-m", "default",
                          "-p", "The guard answers:", "-n", "80", "--seed", "1", "--backend", "cpu",
                          "--json-schema", str(schema)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    jsonschema.validate(json.loads(out.stdout), NPC_ACTION)

    bad = tmp_path / "bad.gbnf"
    bad.write_text('root ::= "a" | \n  oops ::=')
    out = subprocess.run([sys.executable, "-m", "perro_pastor.cli", "generate", "-m", "no-such-model",
                          "-p", "x", "--grammar-file", str(bad)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and out.stderr.startswith("perro-pastor: error: --grammar-file")
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
