"""Every example in the documentation runs, or at least parses, so the docs cannot drift from the code.

The pages are docs/**/*.md and README.md. The rules:

Python blocks (```python)
- Every block runs, for real. The blocks of one page run in order in one namespace (a later block may use what an
  earlier one defined), in one fresh Python process per page whose working directory is an empty temporary folder
  (so `./data/tuners` there is a scratch store), with the repository on PYTHONPATH and OMP_NUM_THREADS=1 (the
  examples are small; on a busy machine a team of OpenMP threads spins instead of working). A traceback names the
  page and its line.
- A block right after `<!-- example: skip (REASON) -->` does not run. REASON is required and says what running it
  would need that a test machine lacks: a running server, a GPU, the reader's own files. Use it for nothing else;
  prefer small settings (`weights="random"`, tiny models, few steps) that keep an example realistic and runnable.

Shell blocks (```bash, ```console, ```sh, ```shell)
- In a console block only lines starting with `$ ` are commands (the rest is output); in the others every line is.
- A line ending in `\\` continues on the next one; `#` starts a comment (outside quotes); a line holds several
  commands separated by `;`, `&&`, `||`, `|` or `&`.
- A command is a `restune` command when its first word, after any NAME=value environment assignments, is `restune`
  or a path ending in `/restune`, or when it is `python … -m MODULE …` / `torchrun … -m MODULE …` with MODULE the
  CLI's module (`CLI_MODULE`; a doc naming another of the CLI's module names fails).
- `$(…)`, `${…}` and `$NAME` are replaced by the literal word PLACEHOLDER before parsing: a flag whose value is a
  shell expansion must accept any string, so write a real example value where argparse checks the type. Write
  placeholders as plain words (`NAME`, `URL`), not `<name>`.
- Every restune command is parsed by the real `restune` argument parser (`restune_parser()`): every subcommand and
  flag must exist and accept its value. `--help` (exit status 0) counts as parsed.
- The restune commands of a block right after `<!-- example: run -->` are also executed (`restune_command()` + the
  arguments, with the line's environment assignments, in an empty temporary folder, without RESTUNE_STORE and
  RESTUNE_SERVER) and must exit 0. Keep that set small and cheap (seconds each): `--help`, `describe`.
- A shell block right after `<!-- example: skip (REASON) -->` is not parsed; nothing needs it today.

Anything else (diagrams, YAML, curl, docker) is not checked here.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import textwrap
from functools import lru_cache

import pytest

from tests.docs.doc_blocks import REPO, Problems, doc_pages, read_blocks, rel, restune_commands

# -- where the CLI lives: the only place that names its module -------------------------------------------------------
CLI_MODULE = "restune"


def restune_parser():
    """The real `restune` argument parser."""
    from restune.cli import build_parser

    return build_parser()


def restune_command() -> list[str]:
    """How to run `restune` from this checkout without installing it."""
    return [sys.executable, "-m", CLI_MODULE]
# ---------------------------------------------------------------------------------------------------------------------

PROBLEMS = Problems()
BLOCKS = {page: read_blocks(page, PROBLEMS) for page in doc_pages()}
# pages with at least one python block to run (a page whose blocks are all marked skip has nothing to run)
PYTHON_PAGES = {page: [b for b in blocks if b.lang == "python" and b.marker != "skip"] for page, blocks in BLOCKS.items()}
PYTHON_PAGES = {page: blocks for page, blocks in PYTHON_PAGES.items() if blocks}
COMMANDS = [c for blocks in BLOCKS.values() for c in restune_commands(blocks, CLI_MODULE, PROBLEMS)]
RUN_COMMANDS = [c for c in COMMANDS if c.run]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RESTUNE_STORE", "RESTUNE_SERVER")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    env.update(extra)
    return env


def test_markers_are_well_formed():
    problems = list(PROBLEMS.items)
    for blocks in BLOCKS.values():
        for block in blocks:
            if block.marker == "skip" and not block.reason:
                problems.append(f"{block.where}: <!-- example: skip (REASON) --> needs its reason")
            if block.marker == "run" and block.lang == "python":
                problems.append(f"{block.where}: python blocks always run; <!-- example: run --> is for shell blocks")
    assert not problems, "\n".join(problems)


def test_the_docs_have_examples_to_check():
    """Guards the extraction itself: a broken fence parser would otherwise check nothing and pass."""
    runnable = [b for blocks in PYTHON_PAGES.values() for b in blocks]
    assert len(runnable) >= 5, [b.where for b in runnable]
    assert len(COMMANDS) >= 40, [c.where for c in COMMANDS]
    assert RUN_COMMANDS, "no <!-- example: run --> block"


# -- python -------------------------------------------------------------------------------------------------------------

RUNNER = textwrap.dedent("""
    import json, sys
    namespace = {"__name__": "__main__"}
    for block in json.load(open(sys.argv[1])):
        # padded so that a traceback's line numbers are the page's
        exec(compile("\\n" * (block["line"] - 1) + block["source"], block["path"], "exec"), namespace)
""")


@pytest.mark.parametrize("page", sorted(PYTHON_PAGES), ids=lambda p: rel(p))
def test_python_examples_run(page, tmp_path):
    blocks = PYTHON_PAGES[page]
    spec = tmp_path / "blocks.json"
    spec.write_text(json.dumps([{"path": str(b.path), "line": b.line, "source": b.source} for b in blocks]))
    work = tmp_path / "work"
    work.mkdir()
    proc = subprocess.run([sys.executable, "-c", RUNNER, str(spec)], cwd=work, env=_env(OMP_NUM_THREADS="1"),
                          capture_output=True, text=True, timeout=480)
    assert proc.returncode == 0, f"the examples of {rel(page)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"


# -- restune command lines ----------------------------------------------------------------------------------------------

@lru_cache(maxsize=1)
def _parser():
    return restune_parser()


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c.where)
def test_restune_commands_parse(command):
    assert command.problem is None, f"{command.where}: {command.text}\n{command.problem}"
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            _parser().parse_args(command.args)
        except SystemExit as exc:
            assert exc.code == 0, f"{command.where}: `{command.text}` does not parse:\n{err.getvalue()}"


@pytest.mark.parametrize("command", RUN_COMMANDS, ids=lambda c: c.where)
def test_marked_restune_commands_run(command, tmp_path):
    proc = subprocess.run([*restune_command(), *command.args], cwd=tmp_path, env=_env(**command.env),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (f"{command.where}: `{command.text}` exited {proc.returncode}:\n"
                                  f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    assert proc.stdout.strip(), f"{command.where}: `{command.text}` printed nothing"


def test_the_makefile_runs_commands_that_parse():
    """`make serve` is documented; the restune command it runs must parse like the documented ones."""
    from tests.docs.doc_blocks import Block

    recipe = "\n".join(line.strip() for line in (REPO / "Makefile").read_text().splitlines() if line.startswith("\t"))
    problems = Problems()
    commands = restune_commands([Block(REPO / "Makefile", 1, "bash", recipe + "\n")], CLI_MODULE, problems)
    assert commands and not problems.items, problems.items
    for command in commands:
        test_restune_commands_parse(command)
