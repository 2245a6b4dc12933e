"""`restune demo --diffusion` at tiny sizes: three style tuners pushed, one grid from ONE POST /v1/generate call
answered by the real server app (in this process)."""
from __future__ import annotations

import json

from PIL import Image

from restune.cli import main


def test_demo_diffusion_pushes_three_styles_and_draws_the_grid_from_one_generate_call(tmp_path, capsys,
                                                                                        monkeypatch):
    from clients import client as client_module
    from tuner_store.urls import open_store

    calls = []
    generate = client_module._Endpoints.generate

    def counted(self, prompts, styles, **options):
        calls.append((list(prompts), list(styles), options))
        return generate(self, prompts, styles, **options)

    monkeypatch.setattr(client_module._Endpoints, "generate", counted)
    store = f"file://{tmp_path / 'store'}"
    grid = tmp_path / "out" / "grid.png"
    code = main(["demo", "--diffusion", "--style-steps", "2", "--style-images", "4", "--store", store,
                 "--grid", str(grid), "--device", "cpu", "--no-progress", "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["model"] == "tiny-trained" and summary["server"] == "in-process"
    assert {n: s["pushed"] for n, s in summary["styles"].items()} == {
        "crimson": "crimson@1", "stripes": "stripes@1", "blur": "blur@1"}
    assert all(s["steps"] == 2 for s in summary["styles"].values())
    assert summary["columns"] == ["base", "crimson", "stripes", "blur"] and len(summary["prompts"]) == 4
    assert len(calls) == 1 and calls[0][:2] == (summary["prompts"], summary["columns"])
    with open_store(store) as s:
        assert sorted((r.name, r.kind) for r in s.latest().values()) == [
            ("blur", "diffusion"), ("crimson", "diffusion"), ("stripes", "diffusion")]
    image = Image.open(grid)
    assert image.size[0] == 170 + 4 * (128 + 4)  # a label column, then base + 3 styles
    assert image.size[1] > 4 * (128 + 4)  # 4 prompts as rows


def test_demo_diffusion_flags_parse_and_a_bad_model_is_one_line(tmp_path, capsys):
    code = main(["demo", "--diffusion", "--diffusion-model", str(tmp_path / "nowhere"), "--store",
                 f"file://{tmp_path / 'store'}", "--grid", str(tmp_path / "g.png"), "--device", "cpu"])
    assert code == 2
    assert "does not exist; give 'tiny-random', 'tiny-trained' or a local diffusers directory" in \
        capsys.readouterr().err
