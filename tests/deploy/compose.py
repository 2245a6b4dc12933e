"""Reading docker-compose.yml, the Dockerfiles and the nginx template without a Docker engine."""
from __future__ import annotations

import re
from pathlib import Path

import yaml

from tests.deploy.scans import REPO

COMPOSE = REPO / "docker-compose.yml"
COMPOSE_GPU = REPO / "docker" / "compose.gpu.yml"
NGINX_TEMPLATE = REPO / "docker" / "nginx.conf.template"
DOCKERFILES = {"cpu": REPO / "docker" / "Dockerfile.cpu", "gpu": REPO / "docker" / "Dockerfile.gpu"}

# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME?error} (compose's interpolation forms)
_VAR = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def load(path: Path = COMPOSE) -> dict:
    return yaml.safe_load(path.read_text())


def variables(text: str) -> dict[str, tuple[str | None, str | None]]:
    """Every ${NAME…} in `text`: name -> (operator, argument)."""
    return {m["name"]: (m["op"], m["arg"]) for m in _VAR.finditer(text)}


class MissingVariable(KeyError):
    pass


def interpolate(value, env: dict[str, str]):
    """Compose's variable substitution over a parsed value (strings inside lists and dicts too)."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match) -> str:
        name, op, arg = m["name"], m["op"], m["arg"]
        current = env.get(name)
        if op in (":-", "-"):
            use_default = current is None or (op == ":-" and current == "")
            return arg if use_default else current
        if op in (":?", "?"):
            if current is None or (op == ":?" and current == ""):
                raise MissingVariable(f"{name}: {arg}")
            return current
        return current or ""

    return _VAR.sub(sub, value.replace("$$", "\0")).replace("\0", "$")


def dockerfile_stages(path: Path) -> list[list[tuple[str, str]]]:
    """[(INSTRUCTION, arguments)] per build stage, continuation lines joined, comments dropped."""
    joined, current = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        joined.append(current)
        current = ""
    stages: list[list[tuple[str, str]]] = []
    for line in joined:
        instruction, _, args = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((instruction, args.strip()))
        else:  # ARG before the first FROM
            stages.append([(instruction, args.strip())])
    return [s for s in stages if s and s[0][0] == "FROM"]


def nginx_upstream_servers(text: str, upstream: str = "restune") -> list[str]:
    block = re.search(r"upstream\s+" + re.escape(upstream) + r"\s*\{(?P<body>[^}]*)\}", text)
    assert block, f"no upstream {upstream!r} block"
    return re.findall(r"^\s*server\s+(\S+)", block["body"], re.M)
