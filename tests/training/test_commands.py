"""`restune demo`, `restune bench train-memory`, `restune bench accuracy` and torchrun, on the micro backbone."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from restune.cli import main
from tests.training.conftest import MICRO
from training import demo_tasks


def test_demo_pushes_nineteen_working_tuners(tmp_path, capsys, micro_backbone):
    from tuner_store.kinds import build_tuner
    from tuner_store.urls import open_store

    url = f"file://{tmp_path / 'store'}"
    code = main(["demo", "--store", url, "--backbone", MICRO, "--weights", "random:0", "--train-size", "12",
                 "--test-size", "6", "--epochs", "1", "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0
    store = open_store(url)
    latest = store.latest()
    assert sorted(latest) == sorted(demo_tasks.task_names())
    for name in demo_tasks.task_names():
        assert f"{name}@1" in out  # one table row per task
        record = latest[name]
        assert record.metrics["demo"] and 0 <= record.metrics["test_accuracy"] <= 1 and record.metrics["num_test"] == 6
        assert record.backbone_fingerprint == micro_backbone.fingerprint()
    head = build_tuner(store.get("clevr_color"))
    assert head.config.num_classes == 6 and "19 tuners pushed" in out


def test_run_demo_is_the_servers_entry_point(tmp_path):
    from training.demo import DemoSizes, run_demo

    records = run_demo(str(tmp_path / "s"), backbone=MICRO, weights="random:0", progress=False,
                       sizes=DemoSizes.uniform(8, 4, epochs=1))
    assert len(records) == 19 and {r.ref for r in records} == {f"{n}@1" for n in demo_tasks.task_names()}


def test_train_memory_schema_on_the_micro_backbone(tmp_path, capsys):
    code = main(["bench", "train-memory", "--backbone", MICRO, "--batch-size", "2", "--steps", "1", "--warmup", "0",
                 "--device", "cpu", "--threads", "1", "--out-dir", str(tmp_path), "--json", "--no-progress"])
    payload = json.loads(capsys.readouterr().out)
    assert code == 0
    assert set(payload["methods"]) == {"idle", "full", "restuning", "bypass", "bypass_cached"}
    for method in ("full", "restuning", "bypass", "bypass_cached"):
        r = payload["methods"][method]
        assert "error" not in r, r
        assert r["peak_bytes"] == r["peak_rss_bytes"] > payload["methods"]["idle"]["peak_rss_bytes"] > 0
        assert r["step_ms_median"] > 0 and r["trainable_params"] > 0
    assert payload["methods"]["full"]["trainable_params"] > payload["methods"]["bypass"]["trainable_params"]
    ratios = payload["ratios_vs_full"]
    assert set(ratios) == {"restuning", "bypass", "bypass_cached"}
    assert {"peak_memory", "step_time", "peak_memory_above_idle", "target_peak_memory", "meets_target"} <= set(
        ratios["bypass"])
    written = list(tmp_path.glob("train-memory-restune_vit_micro-cpu-*t.json"))
    assert len(written) == 1 and json.loads(written[0].read_text())["methods"].keys() == payload["methods"].keys()


def test_a_missing_extra_is_named_in_one_line():
    """An install without the diffusion extra: the command says which extra brings what it needs."""
    code = ("import sys; sys.modules['diffusers'] = None\n"  # as if diffusers were not installed
            "from restune.cli import main; sys.exit(main(['describe', '--diffusion', 'tiny-random']))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines()[-1] == (
        "restune: error: this command needs 'diffusers', which comes with the 'diffusion' extra: "
        "pip install 'restune[diffusion]'")


def test_bench_accuracy_compares_train_classify_recipes_and_sweeps_lr_and_weight_decay(tmp_path):
    from bench.accuracy import format_accuracy, run_digits_accuracy
    from bench.accuracy_config import RECIPES
    from training.train_config import DEFAULT_LR

    payload = run_digits_accuracy(backbone=MICRO, weights="random:0", epochs=1, batch_size=16, progress=False,
                                  lrs={"linear": (0.05,), "bypass": (0.01,), "full": (1e-3,)},
                                  wds={"bypass": (0.05, 0.0), "linear": (0.05,)}, sizes={"train": 60, "test": 30},
                                  cache_dir=str(tmp_path))
    recipes = payload["recipes"]
    assert set(recipes) == set(RECIPES)
    # each recipe is train classify with its flags: the artifact's metrics say what it resolved to
    assert (recipes["default"]["augmentation"], recipes["default"]["head_init"]) == ("none", "probe")  # 8 px digits
    assert recipes["default"]["lr"] == DEFAULT_LR["bypass"] and recipes["no_augment"]["flags"] == "--no-augment"
    assert (recipes["previous"]["augmentation"], recipes["previous"]["head_init"]) == ("crop", "random")
    assert recipes["previous"]["lr"] == 0.01
    for r in recipes.values():
        assert 0 <= r["test_accuracy"] <= 1 and r["seconds"] > 0 and len(r["runs"]) == 1
    assert payload["time_ratio_default_vs_no_augment"] > 0 and set(payload["meets"]) == {
        "default_test", "time_ratio", "not_worse", "gap"}
    sweep = payload["sweep"]
    assert set(sweep) == {"linear", "bypass", "full"}
    bypass = sweep["bypass"]
    # the grid, plus the method's own defaults when the grid lacks them
    assert [(c["lr"], c["weight_decay"]) for c in bypass["candidates"]] == [
        (0.01, 0.05), (0.01, 0.0), (DEFAULT_LR["bypass"], 0.05)]
    assert (bypass["at_default"]["lr"], bypass["at_default"]["weight_decay"]) == (DEFAULT_LR["bypass"], 0.05)
    assert bypass["best_by_val"]["val_accuracy"] == max(c["val_accuracy"] for c in bypass["candidates"])
    assert bypass["at_default"]["head_init"] == "probe" and sweep["full"]["at_default"]["head_init"] == "random"
    assert "bypass_minus_linear_points" in payload and payload["settings"]["weights"] == "random:0"
    report = format_accuracy(payload)
    assert "--no-augment" in report and "default / --no-augment time" in report


def test_torchrun_two_cpu_ranks_match_one_process(image_folder, tmp_path):
    """DDP (gloo, 2 ranks x batch 4) sees the same global batches as 1 process x batch 8: same weights.

    24 training images (validation on a separate copy) split evenly: no sampler padding, no short batch.
    """
    from tuner_store.artifact import read_artifact

    common = ["train", "classify", "--data", str(image_folder), "--backbone", MICRO, "--weights", "random:0",
              "--epochs", "2", "--dim", "4", "--no-progress", "--feature-cache", "--no-checkpoints",
              "--no-augment", "--val-fraction", "0", "--val-data", str(image_folder)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "restune",
         *common, "--batch-size", "4", "--out", str(tmp_path / "ddp.safetensors"), "--push", str(tmp_path / "st")],
        capture_output=True, text=True, env=env, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("pushed pets@1") == 1  # rank 0 alone reports and pushes
    assert main([*common, "--batch-size", "8", "--out", str(tmp_path / "one.safetensors")]) == 0
    ddp, one = read_artifact(tmp_path / "ddp.safetensors"), read_artifact(tmp_path / "one.safetensors")
    import torch

    for key in one.tensors:
        assert torch.allclose(ddp.tensors[key], one.tensors[key], atol=1e-5), key
    assert ddp.metrics["val_accuracy"] == one.metrics["val_accuracy"]
