"""No import cycle among the project's modules, nor among the packages of `coco_ai`.

Every import counts, wherever it stands: module level, inside a function (lazy), under
`TYPE_CHECKING`, and the names a package exports lazily through `coco_ai._lazy.lazy_exports`.
A cycle is a design knot even when Python happens to resolve it at run time.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: folder -> the name it installs under (pyproject.toml package-dir)
PROJECT_PACKAGES = {"coco_ai": "coco_ai", "operators": "coco_ai_airflow"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    parts[0] = PROJECT_PACKAGES[parts[0]]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    found = {}
    for folder in PROJECT_PACKAGES:
        for path in sorted((ROOT / folder).rglob("*.py")):
            found[_module_name(path)] = path
    return found


MODULES = _modules()


def _lazy_exports(tree: ast.Module) -> dict[str, str]:
    """`{name: submodule}` of a package that assigns `_EXPORTS = {...}` for lazy_exports."""
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "_EXPORTS" for t in node.targets)
            and isinstance(node.value, ast.Dict)
        ):
            return {
                k.value: v.value
                for k, v in zip(node.value.keys, node.value.values, strict=True)
                if isinstance(k, ast.Constant) and isinstance(v, ast.Constant)
            }
    return {}


def _resolve(name: str) -> str | None:
    """The project module `name` denotes (a module or a package), or None if not ours."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(module: str, path: Path) -> Iterator[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_package = path.name == "__init__.py"
    lazy = _lazy_exports(tree)
    for sub in lazy.values():
        yield f"{module}.{sub}"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module if is_package else module.rpartition(".")[0]
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                origin = f"{base}.{node.module}" if node.module else base
            else:
                origin = node.module or ""
            for alias in node.names:
                yield f"{origin}.{alias.name}"  # a submodule, or a name _resolve trims off


def _exported_by(package: str, name: str) -> str | None:
    path = MODULES.get(package)
    if path is None or path.name != "__init__.py":
        return None
    sub = _lazy_exports(ast.parse(path.read_text(encoding="utf-8"))).get(name)
    return f"{package}.{sub}" if sub else None


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for module, path in MODULES.items():
        for target in _imports(module, path):
            package, _, name = target.rpartition(".")
            resolved = _exported_by(package, name) or _resolve(target)
            if resolved and resolved != module:
                graph[module].add(resolved)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = counter
                counter += 1
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph.get(child, ())))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return found


def _package_of(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else module


def test_the_scan_sees_lazy_and_type_checking_imports():
    # Guards the scanner itself: these edges are real and must be found, or the cycle tests
    # below would pass vacuously.
    graph = _graph()
    assert "coco_ai.crypto.transfer" in graph["coco_ai.crypto"]  # lazy export
    assert "coco_ai.storage.store" in graph["coco_ai.crypto.transfer"]
    assert len(graph) > 50


def test_no_cycle_among_modules():
    assert _cycles(_graph()) == []


def test_no_cycle_among_core_packages():
    packages: dict[str, set[str]] = {}
    for module, targets in _graph().items():
        source = _package_of(module)
        packages.setdefault(source, set()).update(
            _package_of(t) for t in targets if _package_of(t) != source
        )
    assert _cycles(packages) == []


@pytest.mark.parametrize(
    ("graph", "expected"),
    [
        ({"a": {"b"}, "b": {"a"}}, [["a", "b"]]),
        ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c"]]),
    ],
)
def test_cycle_finder(graph, expected):
    assert _cycles(graph) == expected
