"""Static checks over the repository's Python source (AST, so strings and comments never count)."""
from __future__ import annotations

import ast
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}
# Modules that fetch from the network: the server must never fetch what a client names.
FETCH_MODULES = {"urllib.request", "urllib3", "requests", "httpx", "aiohttp", "http.client", "pycurl", "ftplib",
                 "smtplib"}


def python_files() -> list[Path]:
    """Every .py file git tracks, plus new ones it does not ignore (the tree as it will be committed).

    Virtual environments someone made inside the checkout (a directory holding pyvenv.cfg, anything under
    site-packages) are third-party code, not ours, even where .gitignore does not list them.
    """
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.py"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    venvs = {p.parent for p in REPO.glob("*/pyvenv.cfg")}
    files = {REPO / line for line in out.splitlines() if line}
    return sorted(p for p in files if p.is_file() and "site-packages" not in p.parts
                  and not any(v in p.parents for v in venvs))


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _keyword_is(call: ast.Call, name: str, value) -> bool:
    return any(k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is value for k in call.keywords)


def imported_modules(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def pickle_problems(source: str | bytes, filename: str = "<source>") -> list[str]:
    """Every way this source could unpickle: imports of pickle-like modules and calls that unpickle."""
    tree = ast.parse(source, filename)
    problems = []
    for module in sorted(imported_modules(tree)):
        if module.split(".")[0] in PICKLE_MODULES or module == "torch.load":
            problems.append(f"imports {module}")
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = _dotted(node.func)
        line = f"line {node.lineno}: {func}("
        if func == "torch.load" or func.endswith(".torch.load"):
            if not _keyword_is(node, "weights_only", True):
                problems.append(f"{line} without weights_only=True")
        if _keyword_is(node, "allow_pickle", True):
            problems.append(f"{line} allow_pickle=True")
        if func.split(".")[-1] in {"read_pickle", "to_pickle"}:
            problems.append(line)
        if func.split(".")[0] in PICKLE_MODULES:
            problems.append(line)
    return problems


def fetch_imports(source: str | bytes, filename: str = "<source>") -> list[str]:
    """Network clients this source imports or reaches (`urllib.request` through `import urllib` counts too)."""
    tree = ast.parse(source, filename)
    found = {m for m in imported_modules(tree)
             if m in FETCH_MODULES or m.split(".")[0] in {"urllib3", "requests", "httpx", "aiohttp", "pycurl"}}
    found.update(d for node in ast.walk(tree) if isinstance(node, ast.Attribute)
                 for d in [_dotted(node)] if d in FETCH_MODULES)
    return sorted(found)
