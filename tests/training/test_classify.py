"""`train classify` end to end: artifacts tuner_store loads, logits reproduced, pushes, CLI errors."""
from __future__ import annotations

import json
import threading
import time

import pytest
import torch

from restune.cli import main
from tests.helpers import free_port
from tests.training.conftest import MICRO
from training.classify import ClassifyOptions, train_classify
from training.methods import MethodSpec
from training.trainer import TrainSettings


def _options(data, tmp_path, method="bypass", **kwargs):
    settings = TrainSettings(method=method, epochs=1, batch_size=8, device="cpu", progress=False, log_epochs=False,
                             feature_cache=kwargs.pop("feature_cache", False))
    return ClassifyOptions(data=str(data), backbone=MICRO, weights="random:0", spec=MethodSpec(method=method, dim=4),
                           train=settings, out=str(tmp_path / f"{method}.safetensors"), **kwargs)


@pytest.mark.parametrize("method, cached", [("bypass", True), ("linear", False)])
def test_artifact_loads_in_tuner_store_and_reproduces_the_trained_logits(image_folder, tmp_path, micro_backbone,
                                                                         monkeypatch, method, cached):
    import training.classify as classify
    from tuner_store.artifact import read_artifact
    from tuner_store.kinds import build_tuner

    captured = {}
    real = classify.build_model
    monkeypatch.setattr(classify, "build_model", lambda *a, **k: captured.setdefault("model", real(*a, **k)))
    result = train_classify(_options(image_folder, tmp_path, method=method, feature_cache=cached))
    artifact = read_artifact(result.out, backbone_fingerprint=micro_backbone.fingerprint())
    assert artifact.name == "pets" and artifact.labels == ["cat", "dog", "fox"]
    m = artifact.metrics
    assert m["method"] == method and m["epochs"] == 1 and m["num_train"] + m["num_val"] == 24
    assert m["feature_cache"] is cached and {"train_accuracy", "val_accuracy", "data_fingerprint"} <= set(m)
    loaded = build_tuner(artifact)
    trained = captured["model"].head("pets")
    feats = micro_backbone.forward_features(torch.randn(5, 3, 32, 32))
    assert torch.equal(loaded(feats, micro_backbone), trained(feats, micro_backbone))
    if method == "linear":  # the servable linear probe is exactly a head on the pooled final features
        pos = micro_backbone.token_positions(micro_backbone.info.pooling)
        assert torch.equal(loaded(feats, micro_backbone), loaded.head(micro_backbone.pool(feats[-1][:, pos])))


def test_push_to_a_file_store(csv_data, tmp_path):
    from tuner_store.urls import open_store

    url = f"file://{tmp_path / 'store'}"
    result = train_classify(_options(csv_data, tmp_path, push=url, name="colours"))
    assert result.pushed == "colours@1"
    record = open_store(url).latest()["colours"]
    assert record.metrics["unreadable_images"] == 2 and record.num_labels == 2


def test_baselines_are_saved_but_never_pushed(image_folder, tmp_path):
    from safetensors import safe_open

    from restuning.errors import ConfigError

    result = train_classify(_options(image_folder, tmp_path, method="restuning"))
    assert not result.servable
    with safe_open(str(result.out), framework="pt") as f:
        meta = json.loads(f.metadata()["restune_baseline"])
        assert meta["method"] == "restuning" and "not a Res-Tuning-Bypass tuner" in meta["note"]
        assert any(k.startswith("model.model.blocks.0.tuners") for k in f.keys())
    with pytest.raises(ConfigError, match="does not produce a servable tuner"):
        train_classify(_options(image_folder, tmp_path, method="full", push=f"file://{tmp_path}/s"))


@pytest.mark.e2e
def test_push_to_a_running_server_with_the_admin_token(image_folder, tmp_path, monkeypatch):
    uvicorn = pytest.importorskip("uvicorn")
    from server.app import create_app
    from server.settings import ServerSettings
    from training.push import PushError

    settings = ServerSettings(backbone=MICRO, weights="random:0", store=f"file://{tmp_path / 'srv'}", device="cpu",
                              dtype="float32", admin_token="s3cret")
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.time() + 30
        while not server.started:
            assert time.time() < deadline, "server did not start"
            time.sleep(0.05)
        monkeypatch.delenv("RESTUNE_ADMIN_TOKEN", raising=False)
        with pytest.raises(PushError, match=r"HTTP 401.*push it later with `restune tuners push"):
            train_classify(_options(image_folder, tmp_path, push=f"http://127.0.0.1:{port}"))
        monkeypatch.setenv("RESTUNE_ADMIN_TOKEN", "s3cret")
        result = train_classify(_options(image_folder, tmp_path, push=f"http://127.0.0.1:{port}"))
        assert result.pushed == "pets@1"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_cli_trains_from_a_folder_and_reports_unreadable_images(csv_data, tmp_path, capsys):
    out = tmp_path / "c.safetensors"
    code = main(["train", "classify", "--data", str(csv_data), "--backbone", MICRO, "--weights", "random:0",
                 "--epochs", "2", "--batch-size", "8", "--dim", "4", "--out", str(out), "--no-progress",
                 "--checkpoint-dir", str(tmp_path / "ck"), "--feature-cache", "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["metrics"]["epochs"] == 2 and report["servable"] and out.is_file()
    assert {u["path"] for u in report["unreadable"]} == {"img/broken.png", "img/missing.png"}
    assert (tmp_path / "ck" / "checkpoint.json").is_file()
    # --resume of a finished run trains nothing more and writes the same tuner
    code = main(["train", "classify", "--data", str(csv_data), "--backbone", MICRO, "--weights", "random:0",
                 "--epochs", "2", "--batch-size", "8", "--dim", "4", "--out", str(tmp_path / "again.safetensors"),
                 "--no-progress", "--resume", str(tmp_path / "ck"), "--feature-cache"])
    assert code == 0
    from tuner_store.artifact import read_artifact

    assert read_artifact(out).weights_sha256 == read_artifact(tmp_path / "again.safetensors").weights_sha256


@pytest.mark.parametrize("argv, message", [
    (["--data", "{tmp}/missing_dir/"], "does not exist"),
    (["--data", "digits", "--method", "nope", "--name", "Bad Name!", "--out", "x.pt"],
     "unknown method 'nope'"),
    (["--data", "digits", "--method", "full", "--feature-cache"], "--feature-cache needs a frozen backbone"),
    (["--data", "digits", "--push", "ftp://x"], "unknown store URL scheme"),
])
def test_cli_errors_are_one_line_with_exit_code_2(tmp_path, capsys, argv, message):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    code = main(["train", "classify", "--backbone", MICRO, "--weights", "random:0", "--no-progress", *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1
    if "nope" in argv:  # every problem at once
        assert "--name: name 'Bad Name!' is not allowed" in err and "must end in .safetensors" in err
