"""The library's import graph and the house rules it must keep (docs/architecture.md):

- no import circle among library modules, counting imports inside functions too (so a
  function-local import cannot hide a loop);
- no arrow back up: the library never imports the game (``sample_game``) or ``tools``;
- no library module over ``MAX_LINES`` lines;
- no private name used across modules: ``from m import _x``, or ``obj._x`` where ``_x`` is not
  defined in the module doing the access.

    python tools/import_graph.py          # the figures, and every rule broken

tests/test_architecture.py runs the same checks.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIBRARY = "perro_pastor"
OUTSIDE = ("sample_game", "tools")  # layers above the library: it must not import them
MAX_LINES = 400


@dataclass
class Module:
    name: str
    path: Path
    tree: ast.Module
    imports: set[str] = field(default_factory=set)  # library modules imported at module level
    local_imports: set[str] = field(default_factory=set)  # ... inside a function
    outside_imports: set[str] = field(default_factory=set)  # sample_game.*, tools.*


def library_modules(root: Path = ROOT) -> dict[str, Module]:
    modules = {}
    for path in sorted((root / LIBRARY).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = Module(name, path, ast.parse(path.read_text(), str(path)))
    for module in modules.values():
        _find_imports(module, modules)
    return modules


def _imported_names(module: Module, node: ast.Import | ast.ImportFrom) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        package = module.name.split(".")
        if module.path.name != "__init__.py":
            package = package[:-1]
        package = package[:len(package) - node.level + 1]
        base = ".".join(package + ([node.module] if node.module else []))
    else:
        base = node.module or ""
    return [f"{base}.{alias.name}" for alias in node.names] + [base]


def _find_imports(module: Module, modules: dict[str, Module]) -> None:
    top_level = {id(node) for node in ast.walk(module.tree)
                 if isinstance(node, (ast.Import, ast.ImportFrom)) and not _inside_function(module.tree, node)}
    for node in ast.walk(module.tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        for name in _imported_names(module, node):
            if name.startswith(f"{LIBRARY}.tools"):  # tools/ installed inside the package
                name = name[len(LIBRARY) + 1:]
            if name.split(".")[0] in OUTSIDE:
                module.outside_imports.add(name)
            while name and name not in modules and "." in name:
                name = name.rsplit(".", 1)[0]
            if name in modules and name != module.name:
                (module.imports if id(node) in top_level else module.local_imports).add(name)
    # "from . import x" names x twice (as "pkg.x" and "pkg"): keep the most specific
    for imports in (module.imports, module.local_imports):
        for name in list(imports):
            if name in modules and modules[name].path.name == "__init__.py" and any(
                    other.startswith(name + ".") for other in imports):
                if not _imports_package_itself(module, name):
                    imports.discard(name)


def _imports_package_itself(module: Module, package: str) -> bool:
    """True when ``module`` uses a name defined in ``package/__init__.py`` (not only submodules)."""
    for node in ast.walk(module.tree):
        if isinstance(node, ast.ImportFrom):
            names = _imported_names(module, node)
            base = names[-1]
            if base == package and any(n not in _submodules(package) for n in names[:-1]):
                return True
    return False


def _submodules(package: str) -> set[str]:
    pkg_dir = ROOT / Path(*package.split("."))
    return {f"{package}.{p.stem}" for p in pkg_dir.glob("*.py")} | {
        f"{package}.{p.name}" for p in pkg_dir.iterdir() if (p / "__init__.py").exists()}


def _inside_function(tree: ast.Module, target: ast.AST) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            if any(child is target for child in ast.walk(node)):
                return True
    return False


def circles(modules: dict[str, Module]) -> list[list[str]]:
    """Strongly connected groups of two or more modules (Tarjan), over all imports."""
    graph = {name: m.imports | m.local_imports for name, m in modules.items()}
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    sys.setrecursionlimit(max(10_000, sys.getrecursionlimit()))
    for name in graph:
        if name not in index:
            visit(name)
    return found


def arrows_up(modules: dict[str, Module]) -> list[str]:
    return [f"{m.name} imports {name}" for m in modules.values() for name in sorted(m.outside_imports)]


def long_modules(modules: dict[str, Module]) -> list[tuple[str, int]]:
    sizes = [(m.name, len(m.path.read_text().splitlines())) for m in modules.values()]
    return sorted([(n, lines) for n, lines in sizes if lines > MAX_LINES], key=lambda x: -x[1])


def largest_module(modules: dict[str, Module]) -> tuple[str, int]:
    return max(((m.name, len(m.path.read_text().splitlines())) for m in modules.values()), key=lambda x: x[1])


def private_names_across(modules: dict[str, Module]) -> list[str]:
    """``from m import _x`` anywhere, and ``obj._x`` where nothing in this module defines ``_x``
    (as a function, method, class, assignment target or attribute set on ``self``)."""
    found = []
    for m in modules.values():
        defined = set()
        for node in ast.walk(m.tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                defined.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                defined.add(node.id)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                defined.add(node.attr)
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                defined.add(node.target.id)
        for node in ast.walk(m.tree):
            if isinstance(node, ast.ImportFrom):
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        found.append(f"{m.name}:{node.lineno} imports {alias.name}")
            elif isinstance(node, ast.Attribute) and _is_private(node.attr) and node.attr not in defined:
                found.append(f"{m.name}:{node.lineno} uses .{node.attr}")
    return found


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def local_library_imports(modules: dict[str, Module]) -> int:
    return sum(len(m.local_imports) for m in modules.values())


def main() -> int:
    modules = library_modules()
    name, lines = largest_module(modules)
    problems = {
        "import circles": circles(modules),
        "arrows back up": arrows_up(modules),
        f"modules over {MAX_LINES} lines": long_modules(modules),
        "private names used across modules": private_names_across(modules),
    }
    print(f"{len(modules)} library modules; largest: {name} ({lines} lines); "
          f"function-local imports of library modules: {local_library_imports(modules)}")
    for title, items in problems.items():
        print(f"{title}: {len(items)}")
        for item in items:
            print(f"  {item}")
    return 1 if any(problems.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
