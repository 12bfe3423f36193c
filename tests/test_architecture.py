"""The house rules of docs/architecture.md, checked on the library's own source
(tools/import_graph.py prints the same figures)."""

import pytest

from perro_pastor.tools import import_graph


@pytest.fixture(scope="module")
def modules():
    return import_graph.library_modules()


def test_the_graph_sees_the_library(modules):
    # a rule checker that found nothing to check would pass every rule
    assert {"perro_pastor.cpu", "perro_pastor.scheduler", "perro_pastor.gl.forward"} <= set(modules)
    assert "perro_pastor.config" in modules["perro_pastor.cpu"].imports


def test_no_import_circles(modules):
    assert import_graph.circles(modules) == []


def test_the_library_never_imports_the_game_or_tools(modules):
    assert import_graph.arrows_up(modules) == []


def test_no_library_module_is_over_400_lines(modules):
    assert import_graph.long_modules(modules) == []


def test_no_private_name_is_used_across_modules(modules):
    assert import_graph.private_names_across(modules) == []


def test_the_checker_catches_what_it_claims(tmp_path):
    """A circle hidden by a function-local import, an arrow up, and a private name across
    modules, in a small package of its own."""
    pkg = tmp_path / "perro_pastor"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import helper\n\ndef f():\n    return helper()\n")
    (pkg / "b.py").write_text("def helper():\n    from .a import f\n    from sample_game import world\n"
                              "    return f.__name__\n\ndef g(obj):\n    return obj._secret\n")
    found = import_graph.library_modules(tmp_path)
    assert import_graph.circles(found) == [["perro_pastor.a", "perro_pastor.b"]]
    assert import_graph.arrows_up(found) == ["perro_pastor.b imports sample_game", "perro_pastor.b imports sample_game.world"]
    assert import_graph.private_names_across(found) == ["perro_pastor.b:7 uses ._secret"]


def test_both_backends_offer_the_whole_transformer_interface():
    """backend.Transformer is what the runtime may call; each backend class has every member."""
    from perro_pastor.backend import Transformer
    from perro_pastor.cpu import CpuTransformer
    from perro_pastor.gl.forward import GlTransformer

    members = {name for name in vars(Transformer) if not name.startswith("_")} | set(Transformer.__annotations__)
    assert {"forward_steps", "export_kv", "poll", "limit_threads", "release_cache", "name"} <= members
    for backend in (CpuTransformer, GlTransformer):
        assert not members - set(dir(backend)), f"{backend.__name__} lacks {sorted(members - set(dir(backend)))}"
