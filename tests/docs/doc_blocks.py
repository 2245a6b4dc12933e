"""Fenced code blocks of the documentation, their example markers, and the `restune` commands in shell blocks.

The rules these functions implement are written down once, at the top of tests/docs/test_examples.py.
"""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"

SHELL_LANGUAGES = ("bash", "console", "sh", "shell")
MARKER = re.compile(r"^<!--\s*example:\s*(?P<verb>[a-z]+)\s*(?:\((?P<reason>[^)]*)\))?\s*-->$")
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<lang>[\w+-]*)")
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
# Shell expansions become one literal word: their value is not known when the docs are read.
EXPANSIONS = re.compile(r"\$\([^()]*\)|\$\{[^}]*\}|\$[A-Za-z_][A-Za-z0-9_]*")
PLACEHOLDER = "PLACEHOLDER"
SEPARATORS = {";", "&&", "||", "|", "&"}
PYTHONS = re.compile(r"^(python[0-9.]*|torchrun)$")
# Every name the CLI module has had or is about to have: a doc naming one of them must name the current one.
CLI_MODULE_NAMES = ("clients.cli", "restune", "restune.cli")


def doc_pages() -> list[Path]:
    """The pages whose examples are checked: every page of the site, and the README."""
    return sorted(DOCS.rglob("*.md")) + [REPO / "README.md"]


def rel(path: Path) -> str:
    return str(path.relative_to(REPO))


@dataclass
class Block:
    path: Path
    line: int  # 1-based line of the block's first content line
    lang: str
    source: str
    marker: str | None = None  # "skip" or "run"
    reason: str | None = None

    @property
    def where(self) -> str:
        return f"{rel(self.path)}:{self.line}"


@dataclass
class Problems:
    items: list[str] = field(default_factory=list)

    def add(self, where: str, text: str) -> None:
        self.items.append(f"{where}: {text}")


def read_blocks(path: Path, problems: Problems | None = None) -> list[Block]:
    """Every fenced block of a markdown file, with the example marker on the line before it (blank lines allowed)."""
    problems = problems if problems is not None else Problems()
    lines = path.read_text(encoding="utf-8").split("\n")
    blocks: list[Block] = []
    pending: tuple[int, re.Match] | None = None  # (line number, marker) waiting for its block
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        opened = FENCE.match(line)
        if stripped.startswith("<!--") and "example:" in stripped:
            marker = MARKER.match(stripped)
            if marker is None or marker["verb"] not in ("skip", "run"):
                problems.add(f"{rel(path)}:{i + 1}", f"unknown example marker {stripped!r}; "
                             "use <!-- example: skip (reason) --> or <!-- example: run -->")
            elif pending is not None:
                problems.add(f"{rel(path)}:{pending[0]}", "example marker followed by no code block")
            else:
                pending = (i + 1, marker)
            i += 1
            continue
        if opened:
            indent, fence = len(opened["indent"]), opened["fence"]
            start = i + 1
            j = start
            closer = re.compile(rf"^\s*{re.escape(fence[0])}{{{len(fence)},}}\s*$")
            while j < len(lines) and not closer.match(lines[j]):
                j += 1
            body = [ln[indent:] if ln[:indent].strip() == "" else ln.lstrip() for ln in lines[start:j]]
            block = Block(path, start + 1, opened["lang"].lower(), "\n".join(body) + "\n")
            if pending is not None:
                block.marker, block.reason = pending[1]["verb"], (pending[1]["reason"] or "").strip() or None
                pending = None
            blocks.append(block)
            i = j + 1
            continue
        if stripped and pending is not None:
            problems.add(f"{rel(path)}:{pending[0]}", "example marker not directly before a code block")
            pending = None
        i += 1
    if pending is not None:
        problems.add(f"{rel(path)}:{pending[0]}", "example marker followed by no code block")
    return blocks


@dataclass
class Command:
    """One `restune` command found in a shell block."""

    where: str  # page:line
    text: str  # the command line as written (continuations joined)
    args: list[str]  # what follows `restune` (or `-m CLI_MODULE`)
    env: dict[str, str]  # NAME=value assignments in front of it
    run: bool  # its block is marked <!-- example: run -->
    problem: str | None = None  # a command that names the CLI module wrongly


def shell_lines(block: Block) -> list[tuple[int, str]]:
    """(line number, command line) of a shell block: continuations joined; in a console block only `$ ` lines."""
    out: list[tuple[int, str]] = []
    raw = block.source.rstrip("\n").split("\n")
    k = 0
    while k < len(raw):
        number, text = block.line + k, raw[k]
        if block.lang == "console":
            if not text.startswith("$ "):
                k += 1
                continue
            text = text[2:]
        while text.endswith("\\") and k + 1 < len(raw):
            k += 1
            text = text[:-1] + " " + raw[k].strip()
        out.append((number, text))
        k += 1
    return out


def split_commands(text: str) -> list[list[str]]:
    """Words of each simple command on a shell line; comments dropped, expansions replaced by PLACEHOLDER."""
    lexer = shlex.shlex(EXPANSIONS.sub(PLACEHOLDER, text), posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    commands, words = [], []
    for token in lexer:
        if token in SEPARATORS:
            commands.append(words)
            words = []
        else:
            words.append(token)
    commands.append(words)
    return [c for c in commands if c]


def restune_args(words: list[str], cli_module: str) -> tuple[list[str], dict[str, str], str | None] | None:
    """(args, env, problem) when the words run the restune CLI, else None."""
    env: dict[str, str] = {}
    while words and ENV_ASSIGNMENT.match(words[0]):
        name, _, value = words[0].partition("=")
        env[name] = value
        words = words[1:]
    if not words:
        return None
    program = words[0].rsplit("/", 1)[-1]
    if program == "restune":
        return words[1:], env, None
    if PYTHONS.match(program) and "-m" in words[:-1]:
        module = words[words.index("-m") + 1]
        if module == cli_module:
            return words[words.index("-m") + 2:], env, None
        if module in CLI_MODULE_NAMES:
            return [], env, f"runs the CLI as `-m {module}`; the CLI module is `{cli_module}`"
    return None


def restune_commands(blocks: list[Block], cli_module: str, problems: Problems) -> list[Command]:
    commands: list[Command] = []
    for block in blocks:
        if block.lang not in SHELL_LANGUAGES or block.marker == "skip":
            continue
        found = 0
        for number, text in shell_lines(block):
            try:
                split = split_commands(text)
            except ValueError as exc:  # an unbalanced quote
                problems.add(f"{rel(block.path)}:{number}", f"cannot split {text!r}: {exc}")
                continue
            for words in split:
                parsed = restune_args(words, cli_module)
                if parsed is not None:
                    args, env, problem = parsed
                    commands.append(Command(f"{rel(block.path)}:{number}", text.strip(), args, env,
                                            block.marker == "run", problem))
                    found += 1
        if block.marker == "run" and not found:
            problems.add(block.where, "<!-- example: run --> before a block without a restune command")
    return commands
