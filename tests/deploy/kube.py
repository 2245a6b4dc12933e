"""Reading deploy/kubernetes: its kustomize targets, their committed renderings, the objects in them."""
from __future__ import annotations

import shutil
import subprocess

import yaml

from tests.deploy.scans import REPO

KUBE = REPO / "deploy" / "kubernetes"
RENDERED = KUBE / "rendered"
# rendered/<name>.yaml <- kubectl kustomize <target>; deploy/kubernetes/render.sh writes them
TARGETS = {
    "cpu": "overlays/cpu",
    "gpu": "overlays/gpu",
    "example-prometheus": "examples/prometheus",
    "example-managed-redis": "examples/managed-redis",
    "example-weights-hostpath": "examples/weights-hostpath",
}
OVERLAYS = ("cpu", "gpu")
SERVER_LABELS = {"app.kubernetes.io/name": "restune", "app.kubernetes.io/component": "server"}
REDIS_LABELS = {"app.kubernetes.io/name": "restune", "app.kubernetes.io/component": "redis"}


def kubectl() -> str | None:
    return shutil.which("kubectl")


def kustomize(target: str) -> list[dict]:
    """The objects `kubectl kustomize` makes of a target (a path under deploy/kubernetes)."""
    out = subprocess.run([kubectl(), "kustomize", str(KUBE / target)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def rendered(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((RENDERED / f"{name}.yaml").read_text()) if d]


def find(docs: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = find(docs, kind, name)
    assert len(found) == 1, f"{len(found)} {kind} {name or ''} objects"
    return found[0]


def deployment(docs: list[dict]) -> dict:
    return one(docs, "Deployment", "restune")


def server_container(docs: list[dict]) -> dict:
    return one_named(deployment(docs)["spec"]["template"]["spec"]["containers"], "restune")


def one_named(items: list[dict], name: str) -> dict:
    found = [i for i in items if i["name"] == name]
    assert len(found) == 1, f"{len(found)} items named {name}"
    return found[0]


def restune_config(docs: list[dict]) -> dict[str, str]:
    """The data of the ConfigMap the server container takes its environment from (its name carries a hash)."""
    refs = [e["configMapRef"]["name"] for e in server_container(docs).get("envFrom", []) if "configMapRef" in e]
    assert len(refs) == 1, refs
    return one(docs, "ConfigMap", refs[0])["data"]


def drain_budget(docs: list[dict]) -> dict[str, float]:
    """The numbers of a replica's shutdown: grace period, preStop sleep, the server's drain delay and timeout."""
    pod = deployment(docs)["spec"]["template"]["spec"]
    config = restune_config(docs)
    return {
        "grace": float(pod["terminationGracePeriodSeconds"]),
        "pre_stop": float(server_container(docs)["lifecycle"]["preStop"]["sleep"]["seconds"]),
        "delay": float(config["RESTUNE_DRAIN_DELAY_S"]),
        "timeout": float(config["RESTUNE_DRAIN_TIMEOUT_S"]),
    }


def pod_templates(docs: list[dict]) -> list[tuple[str, dict]]:
    return [(f"{d['kind']}/{d['metadata']['name']}", d["spec"]["template"]["spec"])
            for d in docs if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job")]
