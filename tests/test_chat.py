"""Chat templates: built-ins, the model's own template in the sandbox, and hostile templates."""

import os
import time
import warnings

import pytest

from perro_pastor.chat import BUILTIN, ChatTemplateError, guess_builtin, jinja_template, template_for_model
from perro_pastor.formats import open_model_file
from perro_pastor.paths import default_model_path

CONVO = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
         {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Name?"}]


@pytest.fixture(scope="module")
def smollm_metadata():
    mf = open_model_file(default_model_path())
    yield dict(mf.metadata)
    mf.close()


def test_gguf_template_matches_builtin_chatml(smollm_metadata):
    t = template_for_model(smollm_metadata)
    assert t.name == "gguf"
    assert t.render(CONVO, True) == BUILTIN["chatml"].render(CONVO, True)
    assert t.render(CONVO, False) == BUILTIN["chatml"].render(CONVO, False)


def test_builtins_shapes():
    assert BUILTIN["chatml"].render(CONVO[:2]).endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    l2 = BUILTIN["llama2"].render(CONVO, True)
    assert l2.startswith("<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello. </s><s>[INST] Name? [/INST]")
    l3 = BUILTIN["llama3"].render(CONVO[:2], True)
    assert l3 == ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
                  "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
                  "<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert BUILTIN["zephyr"].render(CONVO[1:2], True) == "<|user|>\nHi</s>\n<|assistant|>\n"


def test_guess_builtin():
    assert guess_builtin("{{ '[INST]' }}").name == "llama2"
    assert guess_builtin(None, ["<|start_header_id|>"]).name == "llama3"
    assert guess_builtin(None, ["<|assistant|>"]).name == "zephyr"
    assert guess_builtin(None).name == "chatml"


HOSTILE = [
    # classic SSTI: reach os through a global function's __globals__ and write a file
    "{{ cycler.__init__.__globals__.os.popen('touch {path}').read() }}",
    "{{ lipsum.__globals__['os'].system('touch {path}') }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}{{ open('{path}', 'w').write('x') }}",
    "{% for c in [].__class__.__base__.__subclasses__() %}{% if c.__name__ == 'catch_warnings' %}"
    "{{ c()._module.__builtins__['__import__']('os').system('touch {path}') }}{% endif %}{% endfor %}",
    "{{ raise_exception.__globals__['__builtins__']['__import__']('os').system('touch {path}') }}",
    "{{ messages.append(1) or self._TemplateReference__context.cycler.__init__.__globals__.os.system('touch {path}') }}",
]


@pytest.mark.parametrize("payload", HOSTILE)
def test_hostile_template_never_executes(tmp_path, payload):
    target = tmp_path / "pwned"
    source = payload.replace("{path}", str(target))
    with pytest.raises(ChatTemplateError):
        jinja_template(source).render(CONVO, True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t = template_for_model({"tokenizer.chat_template": source}, ["<|im_start|>"])
    assert t.name == "chatml" and any("tokenizer.chat_template" in str(w.message) for w in caught)
    assert not target.exists() and not os.path.exists("pwned")


@pytest.mark.parametrize("source", [
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",  # time
    "{{ 'x' * 1000000000 }}",  # memory
    "{{ 7 ** 100000000 }}",
    "{% for i in range(100000) %}{{ 'xxxxxxxxxxxxxxxxxxxx' }}{% endfor %}",  # output size
    "{{ raise_exception('no system role') }}",
    "{% for %}",  # syntax
])
def test_template_limits(source):
    start = time.perf_counter()
    with pytest.raises(ChatTemplateError):
        jinja_template(source).render(CONVO, True)
    assert time.perf_counter() - start < 3


def test_oversized_template_refused():
    with pytest.raises(ChatTemplateError, match="over the"):
        jinja_template("x" * 100_000)


def test_unknown_builtin_name():
    with pytest.raises(ChatTemplateError, match="unknown chat template"):
        template_for_model({}, name="alpaca")


NESTED = "{% set ns = namespace(l=[1]) %}{% for i in range(40) %}{% set ns.l = [ns.l, ns.l] %}{% endfor %}"
COSTLY = {  # single operations that ran unbounded (seconds, gigabytes) before they were priced
    "percent width": "{{ '%01000000000d' % 1 }}",
    "percent star": "{{ '%*d' % (1000000000, 1) }}",
    "power chain": "{{ ((10**60)**60)**60 }}",
    "squaring": "{% set ns = namespace(x=3) %}{% for i in range(40) %}{% set ns.x = ns.x * ns.x %}{% endfor %}",
    "indent": "{{ 'a\nb' | indent(10**9) }}",
    "format filter": "{{ '%0999999999d' | format(1) }}",
    "str.format": "{{ '{:>1000000000}'.format(1) }}",
    "str.format nested": "{{ '{:>{}}'.format(1, 1000000000) }}",
    "center": "{{ 'a'.center(10**9) }}",
    "zfill": "{{ 'a'.zfill(10**9) }}",
    "replace": "{{ ('x'*60000).replace('x', 'y'*60000) }}",
    "replace filter": "{{ ('x'*60000)|replace('x', 'y'*60000) }}",
    "concat doubling": "{% set ns = namespace(s='xxxxxxxx') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
    "plus doubling": "{% set ns = namespace(s='xxxxxxxx') %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
    "nested list as text": NESTED + "{{ ns.l }}",
    "nested tojson": NESTED + "{{ ns.l|tojson|length }}",
    "nested concat": NESTED + "{{ (ns.l ~ '')|length }}",
    "batch": "{{ [1]|batch(10**9, 'x')|list|length }}",
    "expandtabs": "{{ ('\t'*60000).expandtabs(60000) }}",
    "deep parse": "{{ " + "(" * 20000 + "1" + ")" * 20000 + " }}",
}


@pytest.mark.parametrize("source", COSTLY.values(), ids=COSTLY)
def test_costly_single_operations_are_refused(source):
    import tracemalloc
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(ChatTemplateError):
            jinja_template(source).render(CONVO, True)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - start < 2 and peak < 50e6


def test_constant_folding_cannot_raise_outside_the_guard():
    """Jinja folds constant expressions while compiling: `indent(10**9)` raised a bare
    MemoryError out of session creation. Now it is a refused template and one warning."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t = template_for_model({"tokenizer.chat_template": "{{ 'a\nb' | indent(10**9) }}{{ '<|im_start|>' }}"})
    assert t.name == "chatml" and len(caught) == 1 and "indent" in str(caught[0].message)


SLOW = ("{% for i in range(600) %}{% for j in range(600) %}{% endfor %}{% endfor %}"
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}")


def test_slow_template_is_refused_once_at_load_with_its_time():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        start = time.perf_counter()
        names = [template_for_model({"tokenizer.chat_template": SLOW}, ["<|im_start|>"]).name for _ in range(5)]
        took = time.perf_counter() - start
    assert names == ["chatml"] * 5
    assert len(caught) == 1 and " ms on a 4-message probe" in str(caught[0].message)
    assert took < 0.6  # checked once, not once per NPC


def test_a_good_template_is_checked_once():
    source = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    first = template_for_model({"tokenizer.chat_template": source})
    assert template_for_model({"tokenizer.chat_template": source}) is first and first.name == "gguf"


def test_gemma_builtin_folds_the_system_prompt_into_the_first_user_turn():
    from perro_pastor.chat import guess_builtin
    gemma = guess_builtin(None, ["<pad>", "<start_of_turn>", "<end_of_turn>"])
    assert gemma.name == "gemma"
    text = gemma.render([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                         {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"}], True)
    assert text == ("<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello.<end_of_turn>\n"
                    "<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n")


def test_phi3_builtin_is_guessed_from_its_end_marker():
    from perro_pastor.chat import guess_builtin
    phi3 = guess_builtin(None, ["<s>", "<|assistant|>", "<|end|>", "<|user|>"])
    assert phi3.name == "phi3"
    assert phi3.render([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}], True) == \
        "<|system|>\nBe brief.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\n"
    assert guess_builtin(None, ["<|assistant|>", "</s>"]).name == "zephyr"
