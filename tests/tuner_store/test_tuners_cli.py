"""`restune tuners list|show|push|rm|export` against a file store and a real Redis."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from restune.cli import main
from tests.tuner_store.tuner_helpers import PICKLE_BYTES, make_artifact
from tuner_store import open_store, read_artifact, write_artifact

REPO = Path(__file__).resolve().parents[2]


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["tuners", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_push_list_show_export_rm(store_url, micro_backbone, tmp_path, capsys):
    files = [write_artifact(make_artifact(micro_backbone, "digits", seed=s), tmp_path / f"d{s}.safetensors")
             for s in (0, 1)]
    code, out, _ = _run(capsys, "push", *map(str, files), "--store", store_url)
    assert code == 0
    assert "stored as digits@1" in out and "stored as digits@2" in out

    code, out, _ = _run(capsys, "list", "--store", store_url)
    assert code == 0
    header, *rows = out.splitlines()
    assert header.split()[:5] == ["NAME", "VERSION", "KIND", "LABELS", "BACKBONE"]
    assert [r.split()[:4] for r in rows] == [["digits", "1", "classification", "3"],
                                            ["digits", "2", "classification", "3"]]
    assert "restune_vit_micro" in rows[0] and "KiB" in rows[0]

    code, out, _ = _run(capsys, "list", "--json", "--latest", "--store", store_url)
    assert code == 0
    listed = json.loads(out)
    assert [(r["name"], r["version"]) for r in listed] == [("digits", 2)]
    assert listed[0]["sha256"] == read_artifact(files[1]).weights_sha256

    code, out, _ = _run(capsys, "show", "digits@1", "--store", store_url)
    assert code == 0
    assert out.startswith("digits@1  classification  3 labels")
    assert "cat, dog, fox" in out and "versions  1, 2" in out
    code, out, _ = _run(capsys, "show", "digits", "--json", "--store", store_url)
    shown = json.loads(out)
    assert shown["record"]["version"] == 2 and shown["labels"] == ["cat", "dog", "fox"]
    assert shown["tensors"]["head.weight"] == {"dtype": "float32", "shape": [3, micro_backbone.embed_dim]}

    out_dir = tmp_path / "exported"
    code, out, _ = _run(capsys, "export", "digits@1", f"{out_dir}/", "--store", store_url)
    assert code == 0
    exported = out_dir / "digits@1.safetensors"
    with open_store(store_url) as store:
        assert exported.read_bytes() == store.get_bytes("digits", 1)
    assert read_artifact(exported).version == 1
    code, _, err = _run(capsys, "export", "digits@1", str(exported), "--store", store_url)
    assert code == 2 and "pass --force" in err
    assert _run(capsys, "export", "digits@1", str(exported), "--force", "--store", store_url)[0] == 0

    code, out, _ = _run(capsys, "rm", "digits@1", "--store", store_url)
    assert code == 0 and "deleted digits@1" in out
    code, out, _ = _run(capsys, "rm", "digits", "--store", store_url)
    assert code == 0 and "deleted digits@2" in out
    code, out, _ = _run(capsys, "list", "--store", store_url)
    assert code == 0 and out.startswith("no tuners in ")


def test_failures_exit_2_with_one_line(store_url, tmp_path, capsys):
    bad = tmp_path / "tuner.safetensors"
    bad.write_bytes(PICKLE_BYTES)
    code, out, err = _run(capsys, "push", str(bad), "--store", store_url)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "Python pickle" in err and str(bad) in err
    code, _, err = _run(capsys, "rm", "digits@3", "--store", store_url)
    assert code == 2 and err.count("\n") == 1 and "no tuner named 'digits'" in err
    code, _, err = _run(capsys, "show", "../etc", "--store", store_url)
    assert code == 2 and "tuner names are" in err
    code, _, err = _run(capsys, "push", str(tmp_path / "missing.safetensors"), "--store", store_url)
    assert code == 2 and "cannot read" in err
    with open_store(store_url) as store:
        assert store.revision() == 0


def test_store_from_environment(micro_backbone, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RESTUNE_STORE", f"file://{tmp_path / 'env-store'}")
    path = write_artifact(make_artifact(micro_backbone, "shapes"), tmp_path / "s.safetensors")
    assert _run(capsys, "push", str(path))[0] == 0
    assert open_store(str(tmp_path / "env-store")).record("shapes").version == 1


def test_unknown_store_scheme(capsys):
    code, out, err = _run(capsys, "list", "--store", "s3://bucket")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "unknown store URL scheme 's3://'" in err and "redis://host:port/db" in err


def test_real_cli_process_fails_with_one_line():
    """The installed entry point, as a user runs it: Redis down -> exit 2 and one line naming the URL."""
    from tests.helpers import free_port

    url = f"redis://127.0.0.1:{free_port()}/0"
    result = subprocess.run([sys.executable, "-m", "restune", "tuners", "list", "--store", url], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("restune: error: ") and result.stderr.count("\n") == 1
    assert "is unreachable" in result.stderr and url in result.stderr
