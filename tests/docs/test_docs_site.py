"""The documentation site builds with `mkdocs build --strict`, works offline, and the README's links land.

Strict mode turns every warning into a failure: a page missing from the nav, a link to a missing page or image,
a link to an anchor that no heading has.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.docs.doc_blocks import DOCS, REPO

ASSETS = DOCS / "assets" / "bench"
RESULTS = REPO / "bench" / "results"


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    # NO_MKDOCS_2_WARNING: the theme's banner about MkDocs' future, printed on every build; not a build warning.
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0 and "No module named mkdocs" in proc.stderr:
        pytest.fail("mkdocs is not installed: `pip install -e '.[dev]'` (make test does)")
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return out


def test_every_page_is_built(site):
    for page in DOCS.rglob("*.md"):
        assert (site / page.relative_to(DOCS).with_suffix(".html")).is_file(), page


def test_the_site_loads_nothing_from_the_network(site):
    """No web fonts, stylesheets or scripts from elsewhere: the site reads the same offline."""
    remote = re.compile(r"""<(?:script|link|img|iframe)\b[^>]*\b(?:src|href)=["']?(?:https?:)?//""", re.I)
    for html in site.rglob("*.html"):
        found = remote.findall(html.read_text(encoding="utf-8"))
        assert not found, f"{html.relative_to(site)} loads {found}"


def test_bench_plots_are_copies_of_the_results():
    """The site can only serve files under docs/, so the plots it shows are copies of bench/results/ files,
    under the same names; a re-run benchmark must be copied again."""
    plots = sorted(ASSETS.glob("*.png"))
    assert plots
    for plot in plots:
        source = RESULTS / plot.name
        assert source.is_file(), f"{plot.relative_to(REPO)} has no bench/results/{plot.name}"
        assert plot.read_bytes() == source.read_bytes(), f"copy {source.relative_to(REPO)} to {plot.relative_to(REPO)}"


def test_readme_links_land(site):
    """README.md is not part of the site, so mkdocs does not check its links: every relative link must name a
    file that exists, and a docs page's anchor must be an id on the built page."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    assert links
    for link in links:
        if re.match(r"[a-z]+://", link):
            continue
        path, _, anchor = link.partition("#")
        assert (REPO / path).exists(), f"README links to missing {path}"
        if anchor and path.startswith("docs/") and path.endswith(".md"):
            html = (site / Path(path).relative_to("docs").with_suffix(".html")).read_text(encoding="utf-8")
            assert f'id="{anchor}"' in html, f"README links to {link}: no such anchor"
