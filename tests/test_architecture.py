"""The layout is the architecture: one-way imports, no cycles, parsing and printing only in opswap/cli."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "opswap"


@pytest.fixture(scope="module")
def graph():
    """The import graph of opswap, imports inside functions included."""
    return grimp.build_graph("opswap", include_external_packages=False)


def _cycles(adjacency: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan, iterative)."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]
    for start in adjacency:
        if start in index:
            continue
        work = [(start, iter(sorted(adjacency[start])))]
        index[start] = low[start] = counter[0]
        counter[0] += 1
        stack.append(start)
        on.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on.add(child)
                    work.append((child, iter(sorted(adjacency.get(child, ())))))
                elif child in on:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def test_the_cycle_finder_finds_cycles():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_between_modules(graph):
    adjacency = {m: set(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    assert _cycles(adjacency) == []


def test_no_import_cycles_between_the_package_parts(graph):
    def part(module: str) -> str:
        return ".".join(module.split(".")[:2])

    adjacency: dict[str, set[str]] = {}
    for module in graph.modules:
        for imported in graph.find_modules_directly_imported_by(module):
            if part(module) != part(imported):
                adjacency.setdefault(part(module), set()).add(part(imported))
    assert _cycles(adjacency) == []
    # Parts import each other directly, never through the lazy `opswap` namespace.
    assert not any("opswap" in targets for source, targets in adjacency.items() if source != "opswap.__main__")


def test_layer_contracts_hold():
    """The import-linter contracts of pyproject.toml (layers; argparse only in opswap.cli)."""
    done = subprocess.run([sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
                           "sys.argv = ['lint-imports']; lint_imports_command()"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]


def _calls(path: Path, name: str) -> list[int]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name) and node.func.id == name]


def test_only_the_cli_prints():
    offenders = {str(p.relative_to(ROOT)): lines for p in sorted(PACKAGE.rglob("*.py"))
                 if "cli" not in p.relative_to(PACKAGE).parts and (lines := _calls(p, "print"))}
    assert offenders == {}


def test_only_the_cli_parses_arguments():
    offenders = [str(p.relative_to(ROOT)) for p in sorted(PACKAGE.rglob("*.py"))
                 if "cli" not in p.relative_to(PACKAGE).parts and "argparse" in p.read_text(encoding="utf-8")]
    assert offenders == []
