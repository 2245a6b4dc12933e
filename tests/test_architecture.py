"""The code's structure, checked: layers (import-linter contracts in pyproject.toml), no import cycles between
modules, function-level imports only with a reason, and a command line that builds without the heavy extras."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import grimp

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("restune", "bench", "server", "training", "clients", "tuner_store", "restuning")
# What the command line must not load just to parse arguments: these come with optional extras.
HEAVY = ("torch", "numpy", "timm", "safetensors", "PIL", "fastapi", "starlette", "uvicorn", "redis", "diffusers",
         "transformers", "matplotlib", "sklearn", "triton")


def test_layer_contracts_are_kept():
    lint = Path(sys.executable).with_name("lint-imports")
    out = subprocess.run([str(lint), "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "0 broken" in out.stdout


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative: the components with more than one module are the import cycles."""
    index, low, on_stack, stack, out, counter = {}, {}, set(), [], [], [0]
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
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
                    out.append(sorted(component))
    return out


def test_no_import_cycles_between_modules():
    """Function-level imports count too: a cycle hidden inside a function is still a cycle."""
    graph = grimp.build_graph(*PACKAGES, cache_dir=None)
    edges = {m: graph.find_modules_directly_imported_by(m) for m in graph.modules}
    # a package's own __init__ re-exporting its submodules is how packages work, not a cycle of design
    edges = {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in edges.items()}
    assert _strongly_connected(edges) == []


def _function_level_imports(path: Path):
    tree = ast.parse(path.read_text())
    lines = path.read_text().splitlines()
    found = []

    def walk(node, in_function: bool):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)) and in_function:
                found.append((child.lineno, child.end_lineno))
            walk(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))

    walk(tree, False)
    return lines, sorted(found)


def test_function_level_imports_say_why():
    """Each one (or the first of a group of adjacent ones) carries a comment naming the optional dependency."""
    silent = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            lines, spans = _function_level_imports(path)
            group_has_reason = False
            previous_end = -1
            for start, end in spans:
                if start != previous_end + 1:  # a new group of adjacent import lines
                    group_has_reason = False
                text = "\n".join(lines[start - 1:end])
                group_has_reason = group_has_reason or "#" in text
                if not group_has_reason:
                    silent.append(f"{path.relative_to(REPO)}:{start}: {lines[start - 1].strip()}")
                previous_end = end
    assert silent == []


def test_the_command_line_builds_without_the_heavy_extras():
    code = ("import sys\nfrom restune.cli import build_parser\nbuild_parser()\n"
            f"print([m for m in {HEAVY!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
