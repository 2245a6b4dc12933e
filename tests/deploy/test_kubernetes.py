"""deploy/kubernetes, checked without a cluster: rendered, validated against the Kubernetes schemas, and held
against the code it deploys (settings, routes, the image's user, ports, the drain's timing).

The committed renderings (deploy/kubernetes/rendered/) are what most tests read, so they run where kubectl is
missing; where it is present, the first test renders every target again and requires the committed files to match.
Validation uses kubernetes-validate's bundled OpenAPI schemas (strict: an unknown field is an error), offline.
"""
from __future__ import annotations

import copy
import os
import re
from urllib.parse import urlsplit

import pytest
import yaml

from tests.deploy import compose as dc
from tests.deploy import kube
from tests.deploy.scans import REPO

# The oldest Kubernetes these manifests are for (preStop `sleep` needs 1.29+; 1.30 turned it on by default),
# and the newest the validator knows.
OLDEST = "1.30"
# Custom resources: their schemas come with their operators, not with Kubernetes; checked by hand below.
CUSTOM_KINDS = {"ServiceMonitor"}


@pytest.fixture(scope="module")
def docs():
    return {name: kube.rendered(name) for name in kube.TARGETS}


def newest_schema() -> str:
    from kubernetes_validate.utils import latest_version

    return ".".join(latest_version().split(".")[:2])


def validate(obj: dict, version: str) -> None:
    import kubernetes_validate

    kubernetes_validate.validate(obj, version, strict=True)


# -- rendering and schemas --------------------------------------------------------------------------


@pytest.mark.skipif(kube.kubectl() is None, reason="kubectl is not installed; the committed renderings are checked")
@pytest.mark.parametrize("name", sorted(kube.TARGETS))
def test_rendered_files_are_what_kustomize_makes_now(name):
    assert kube.kustomize(kube.TARGETS[name]) == kube.rendered(name), (
        f"deploy/kubernetes/rendered/{name}.yaml is stale: run deploy/kubernetes/render.sh")


def test_every_target_has_a_rendering():
    assert sorted(p.stem for p in kube.RENDERED.glob("*.yaml")) == sorted(kube.TARGETS)
    for target in kube.TARGETS.values():
        assert (kube.KUBE / target / "kustomization.yaml").is_file(), target


@pytest.mark.parametrize("name", sorted(kube.TARGETS))
def test_every_object_is_valid_for_kubernetes_1_30_and_the_newest(name, docs):
    checked = 0
    for obj in docs[name]:
        if obj["kind"] in CUSTOM_KINDS:
            continue
        for version in (OLDEST, newest_schema()):
            validate(obj, version)
        checked += 1
    assert checked >= 12, checked


def test_the_secret_example_is_valid_and_matches_what_the_deployment_reads(docs):
    example = yaml.safe_load((kube.KUBE / "base" / "secret.example.yaml").read_text())
    validate(example, OLDEST)
    assert example["stringData"] == {"RESTUNE_ADMIN_TOKEN": ""}  # a blank, never a usable token
    env = kube.one_named(kube.server_container(docs["cpu"])["env"], "RESTUNE_ADMIN_TOKEN")
    ref = env["valueFrom"]["secretKeyRef"]
    assert ref == {"name": example["metadata"]["name"], "key": "RESTUNE_ADMIN_TOKEN"}
    assert "optional" not in ref  # without the Secret the pod waits instead of starting without a token
    for name, objects in docs.items():
        assert not kube.find(objects, "Secret"), f"{name}: a Secret in the kustomization would overwrite the real one"


def test_the_validator_is_strict():
    """A typo'd field, a wrong type and a field 1.28 did not have are all refused: the checks above can fail."""
    import kubernetes_validate

    deployment = kube.deployment(kube.rendered("cpu"))
    broken = []
    typo = copy.deepcopy(deployment)
    probe = typo["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
    probe["httpGett"] = probe.pop("httpGet")
    broken.append((typo, OLDEST))
    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = "thirty"
    broken.append((wrong_type, OLDEST))
    broken.append((deployment, "1.28"))  # preStop sleep is 1.29+
    for obj, version in broken:
        with pytest.raises(kubernetes_validate.ValidationError):
            validate(obj, version)


# -- consistency with the code ----------------------------------------------------------------------


def restune_names(docs_of_one: list[dict]) -> dict[str, str]:
    """Every RESTUNE_* variable the manifests set, with its value (or where it comes from)."""
    names = dict(kube.restune_config(docs_of_one))
    for d in docs_of_one:
        if d["kind"] == "ConfigMap":
            names.update({k: v for k, v in d["data"].items() if k.startswith("RESTUNE_")})
    for _, pod in kube.pod_templates(docs_of_one):
        for container in pod["containers"]:
            for env in container.get("env", []):
                names[env["name"]] = env.get("value", "(from a Secret)")
    return {k: v for k, v in names.items() if k.startswith("RESTUNE_")}


@pytest.mark.parametrize("name", sorted(kube.TARGETS))
def test_every_restune_variable_is_a_real_setting(name, docs):
    from server.settings import ServerSettings

    fields = {f"RESTUNE_{field.upper()}" for field in ServerSettings.model_fields}
    used = set(restune_names(docs[name]))
    assert used and used <= fields, used - fields  # the server ignores unknown names: a typo would go unnoticed


@pytest.mark.parametrize("name", kube.OVERLAYS)
def test_the_configmap_and_a_token_make_valid_settings(name, docs, monkeypatch):
    from pydantic import ValidationError

    from server.settings import ServerSettings

    for key in list(os.environ):
        if key.startswith("RESTUNE_"):
            monkeypatch.delenv(key)
    config = kube.restune_config(docs[name])
    for key, value in config.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ValidationError, match="admin token"):
        ServerSettings()  # 0.0.0.0 without the Secret's token: the server refuses to start
    monkeypatch.setenv("RESTUNE_ADMIN_TOKEN", "t0ken")
    settings = ServerSettings()
    assert settings.host == "0.0.0.0" and settings.store == "redis://redis:6379/0"
    assert settings.weights.startswith("/weights/") and settings.weights.endswith(".safetensors")
    assert settings.device == ("cuda" if name == "gpu" else "cpu")
    if name == "gpu":
        assert settings.dtype in ("float16", "bfloat16")


@pytest.mark.parametrize("name", kube.OVERLAYS)
def test_torch_threads_match_the_cpu_limit(name, docs):
    """torch starts one thread per core of the node unless told; under a CPU limit that means throttling."""
    limits = kube.server_container(docs[name])["resources"]["limits"]
    assert int(kube.restune_config(docs[name])["RESTUNE_TORCH_THREADS"]) == int(limits["cpu"])


def test_the_probes_point_at_routes_of_the_server(docs):
    from server.app import create_app
    from server.routers.health import READINESS_STORE_WAIT_S
    from server.settings import ServerSettings

    routes = set(create_app(ServerSettings(store="file:///nonexistent")).openapi()["paths"])
    container = kube.server_container(docs["cpu"])
    port = kube.one_named(container["ports"], "http")["containerPort"]
    assert port == int(kube.restune_config(docs["cpu"])["RESTUNE_PORT"])
    expected = {"startupProbe": "/healthz", "livenessProbe": "/healthz", "readinessProbe": "/readyz"}
    for probe, path in expected.items():
        get = container[probe]["httpGet"]
        assert get["path"] == path and get["path"] in routes, probe
        assert get["port"] == "http", probe
    # the store's ping is bounded below the probe's timeout, so a hung store cannot fail the probe
    assert READINESS_STORE_WAIT_S < container["readinessProbe"]["timeoutSeconds"]
    # the startup probe allows minutes for loading the backbone (the port opens only after it)
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 180


def test_the_probes_answer_as_the_manifests_assume(store_url, run_app, tmp_path):
    """/healthz answers while /readyz is 503 (never synced, or draining), so neither state restarts a replica;
    a store that went away after the first sync keeps /readyz 200."""
    import asyncio
    import shutil as sh
    from pathlib import Path

    from tests.helpers import server_settings

    async def main():
        async with run_app(server_settings(store_url)) as app:
            ready = await app.client.get("/readyz")
            assert ready.status_code == 200 and ready.json()["store"] == "reachable"
            app.state.draining = True
            draining = await app.client.get("/readyz")
            assert draining.status_code == 503 and "shutting down" in draining.json()["error"]
            assert (await app.client.get("/healthz")).status_code == 200
            app.state.draining = False
            # the store becomes unusable (a file where its directory was): still ready, since classify needs only
            # the loaded tuners, and the body says what is wrong
            root = Path(store_url.removeprefix("file://"))
            sh.move(root, tmp_path / "moved")
            root.write_text("not a store")
            try:
                away = await app.client.get("/readyz")
                assert away.status_code == 200 and away.json()["store"] == "unreachable", away.text
            finally:
                root.unlink()
                sh.move(tmp_path / "moved", root)

        # a replica that could never read its store is not ready, but alive
        closed = f"redis://127.0.0.1:{_closed_port()}/0"
        async with run_app(server_settings(closed)) as app:
            never = await app.client.get("/readyz")
            assert never.status_code == 503 and "tuners not loaded" in never.json()["error"], never.text
            assert (await app.client.get("/healthz")).status_code == 200

    asyncio.run(main())


def _closed_port() -> int:
    from tests.helpers import free_port

    return free_port()  # bound and released: nothing listens there


@pytest.mark.parametrize("flavor", ["cpu", "gpu"])
def test_the_images_user_is_the_pods_user(flavor, docs):
    text = dc.DOCKERFILES[flavor].read_text()
    args = dict(re.findall(r"^ARG (UID|GID)=(\d+)", text, re.M))
    final = dc.dockerfile_stages(dc.DOCKERFILES[flavor])[-1]
    assert [a for i, a in final if i == "USER"][-1] == "restune"
    assert any(i == "RUN" and '--uid "${UID}"' in a and "--gid restune" in a for i, a in final)
    pod = kube.deployment(docs[flavor])["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == int(args["UID"])
    assert pod["securityContext"]["runAsGroup"] == int(args["GID"])
    assert kube.server_container(docs[flavor])["image"] == f"restune:{flavor}"


def _policies_for(docs_of_one, labels, direction):
    return [p for p in kube.find(docs_of_one, "NetworkPolicy")
            if p["spec"]["podSelector"].get("matchLabels") == labels and direction in p["spec"]["policyTypes"]]


def _ports(rules):
    return {(port["port"], port.get("protocol", "TCP")) for rule in rules for port in rule.get("ports", [])}


@pytest.mark.parametrize("name", sorted(kube.TARGETS))
def test_network_policy_ports_are_the_containers_ports(name, docs):
    objects = docs[name]
    server_port = kube.one_named(kube.server_container(objects)["ports"], "http")["containerPort"]
    # default deny, in and out, for everything in the namespace
    deny = kube.one(objects, "NetworkPolicy", "default-deny")["spec"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    # in: the ingress controller (and, with the Prometheus component, Prometheus) on the server's port only
    ingress = [rule for p in _policies_for(objects, kube.SERVER_LABELS, "Ingress") for rule in p["spec"]["ingress"]]
    assert ingress and _ports(ingress) == {(server_port, "TCP")}
    assert all("namespaceSelector" in peer for rule in ingress for peer in rule["from"])
    # out: DNS, and the store's port
    egress = [rule for p in _policies_for(objects, kube.SERVER_LABELS, "Egress") for rule in p["spec"]["egress"]]
    store_port = urlsplit(restune_store_url(objects)).port or 6379
    assert _ports(egress) == {(53, "UDP"), (53, "TCP"), (store_port, "TCP")}
    redis = kube.find(objects, "StatefulSet", "redis")
    if redis:
        container = kube.one_named(redis[0]["spec"]["template"]["spec"]["containers"], "redis")
        redis_port = kube.one_named(container["ports"], "redis")["containerPort"]
        assert redis_port == store_port
        service = kube.one(objects, "Service", "redis")["spec"]
        assert service["type"] == "ClusterIP" and [p["port"] for p in service["ports"]] == [redis_port]
        (allow,) = _policies_for(objects, kube.REDIS_LABELS, "Ingress")
        assert allow["spec"]["ingress"] == [{"from": [{"podSelector": {"matchLabels": kube.SERVER_LABELS}}],
                                             "ports": [{"port": redis_port, "protocol": "TCP"}]}]
        assert "Egress" in allow["spec"]["policyTypes"] and not allow["spec"].get("egress")  # Redis reaches nothing


def restune_store_url(objects) -> str:
    container = kube.server_container(objects)
    if any(e["name"] == "RESTUNE_STORE" for e in container.get("env", [])):
        return "rediss://:secret@managed.example:6379/0"  # components/managed-redis: the URL is in a Secret
    return kube.restune_config(objects)["RESTUNE_STORE"]


def test_managed_redis_reads_the_store_from_a_secret(docs):
    objects = docs["example-managed-redis"]
    assert not kube.find(objects, "StatefulSet")
    env = kube.one_named(kube.server_container(objects)["env"], "RESTUNE_STORE")
    assert env["valueFrom"]["secretKeyRef"] == {"name": "restune-store", "key": "RESTUNE_STORE"}


@pytest.mark.parametrize("name", sorted(kube.TARGETS))
def test_pods_meet_the_restricted_pod_security_standard(name, docs):
    objects = docs[name]
    namespace = kube.one(objects, "Namespace", "restune")["metadata"]["labels"]
    assert namespace["pod-security.kubernetes.io/warn"] == "restricted"
    hostpath = name == "example-weights-hostpath"
    assert namespace["pod-security.kubernetes.io/enforce"] == ("privileged" if hostpath else "restricted")
    for where, pod in kube.pod_templates(objects):
        assert pod["securityContext"]["runAsNonRoot"] is True, where
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where
        assert pod["automountServiceAccountToken"] is False, where  # no RBAC needed, no API token mounted
        assert pod["enableServiceLinks"] is False, where
        for container in pod["containers"]:
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["privileged"] is False, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["capabilities"] == {"drop": ["ALL"]}, where
            assert "limits" in container["resources"] and "requests" in container["resources"], where
        host_volumes = [v["name"] for v in pod.get("volumes", []) if "hostPath" in v]
        assert host_volumes == (["weights"] if hostpath and where == "Deployment/restune" else []), where


@pytest.mark.parametrize("name", sorted(kube.TARGETS))
def test_no_role_or_binding_is_needed(name, docs):
    kinds = {d["kind"] for d in docs[name]}
    assert not kinds & {"Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"}
    account = kube.one(docs[name], "ServiceAccount", "restune")
    assert account["automountServiceAccountToken"] is False


@pytest.mark.parametrize("name", kube.OVERLAYS)
def test_the_replicas(name, docs):
    objects = docs[name]
    spec = kube.deployment(objects)["spec"]
    assert "replicas" not in spec  # the HPA owns the count
    assert spec["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    pod = spec["template"]["spec"]
    assert spec["selector"]["matchLabels"] == kube.SERVER_LABELS == {
        k: v for k, v in spec["template"]["metadata"]["labels"].items() if k in kube.SERVER_LABELS}
    spread = {c["topologyKey"]: c for c in pod["topologySpreadConstraints"]}
    assert spread["kubernetes.io/hostname"]["labelSelector"]["matchLabels"] == kube.SERVER_LABELS
    assert spread["kubernetes.io/hostname"]["maxSkew"] == 1
    container = kube.server_container(objects)
    for key in ("cpu", "memory"):
        assert container["resources"]["requests"][key] == container["resources"]["limits"][key]  # Guaranteed QoS
    # the weights: one read-only volume, the file the settings name inside it, nothing fetched at start
    mount = kube.one_named(container["volumeMounts"], "weights")
    assert mount["readOnly"] is True
    assert kube.restune_config(objects)["RESTUNE_WEIGHTS"].startswith(mount["mountPath"] + "/")
    weights = kube.one_named(pod["volumes"], "weights")
    assert weights["persistentVolumeClaim"] == {"claimName": "restune-weights", "readOnly": True}
    assert kube.one(objects, "PersistentVolumeClaim", "restune-weights")["spec"]["accessModes"] == ["ReadOnlyMany"]
    assert "pretrained" not in kube.restune_config(objects)["RESTUNE_WEIGHTS"]
    # every writable path is an emptyDir: the root filesystem is read-only
    writable = {m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")}
    empty_dirs = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
    assert writable == {m["mountPath"] for m in container["volumeMounts"] if m["name"] in empty_dirs} == {
        "/tmp", "/home/restune"}


@pytest.mark.parametrize("name", kube.OVERLAYS)
def test_the_shutdown_fits_the_grace_period(name, docs):
    """preStop sleep, then SIGTERM: the server's drain delay and its timeout for requests in flight, then exit.
    All of it must end before the kubelet's SIGKILL, with time for the shutdown itself."""
    from server.settings import ServerSettings

    budget = kube.drain_budget(docs[name])
    assert budget["pre_stop"] >= 3  # time for kube-proxy and the ingress controller to drop the endpoint
    assert budget["pre_stop"] + budget["delay"] + budget["timeout"] + 2 <= budget["grace"], budget
    defaults = ServerSettings.model_fields
    assert budget["delay"] == defaults["drain_delay_s"].default and budget["timeout"] == defaults["drain_timeout_s"].default
    # the compose stack's replicas, without a preStop, fit their stop_grace_period as well
    replica = dc.load()["services"]["restune-a"]
    assert budget["delay"] + budget["timeout"] + 2 <= float(replica["stop_grace_period"].rstrip("s"))


def test_the_rest_of_the_stack(docs):
    objects = docs["cpu"]
    service = kube.one(objects, "Service", "restune")
    assert service["spec"]["type"] == "ClusterIP" and service["spec"]["selector"] == kube.SERVER_LABELS
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] == "http"
    pdb = kube.one(objects, "PodDisruptionBudget", "restune")["spec"]
    assert pdb["selector"]["matchLabels"] == kube.SERVER_LABELS and pdb["maxUnavailable"] == 1
    hpa = kube.one(objects, "HorizontalPodAutoscaler", "restune")["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "restune"}
    assert hpa["minReplicas"] >= 2  # with the PDB's maxUnavailable 1, one replica always serves
    assert [m["resource"]["name"] for m in hpa["metrics"]] == ["cpu"]
    ingress = kube.one(objects, "Ingress", "restune")["spec"]
    paths = {p["path"]: p for rule in ingress["rules"] for p in rule["http"]["paths"]}
    assert "/v1" in paths and "/metrics" not in paths and "/" not in paths  # /metrics stays inside the cluster
    assert all(p["backend"]["service"] == {"name": "restune", "port": {"name": port["name"]}} for p in paths.values())
    body_limit = ingress_body_limit_mb(kube.one(objects, "Ingress", "restune"))
    config = kube.restune_config(objects)
    assert body_limit > max(float(config["RESTUNE_MAX_UPLOAD_MB"]), float(config["RESTUNE_MAX_IMAGE_MB"]) * 4 / 3) + 1


def ingress_body_limit_mb(ingress) -> float:
    value = ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"]
    assert re.fullmatch(r"\d+m", value), value
    return float(value[:-1])


def test_redis(docs):
    objects = docs["cpu"]
    redis = kube.one(objects, "StatefulSet", "redis")
    args = kube.one_named(redis["spec"]["template"]["spec"]["containers"], "redis")["args"]
    flags = dict(zip(args[1::2], args[2::2]))
    assert args[0] == "redis-server"
    assert flags["--appendonly"] == "yes" and flags["--appendfsync"] in ("always", "everysec")
    assert flags["--maxmemory-policy"] == "noeviction"
    (claim,) = redis["spec"]["volumeClaimTemplates"]
    mount = kube.one_named(kube.one_named(redis["spec"]["template"]["spec"]["containers"], "redis")["volumeMounts"],
                           claim["metadata"]["name"])
    assert mount["mountPath"] == flags["--dir"]
    assert redis["spec"]["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": "Retain", "whenScaled": "Retain"}
    # the same Redis major version as the compose stack
    compose_image = dc.interpolate(dc.load()["services"]["redis"]["image"], {})
    image = redis["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image.split(":")[1].split(".")[0] == compose_image.split(":")[1].split(".")[0]
    for service in kube.find(objects, "Service"):
        assert service["spec"]["type"] == "ClusterIP"
        assert all("nodePort" not in p for p in service["spec"]["ports"])


def test_gpu_overlay(docs):
    gpu, cpu = docs["gpu"], docs["cpu"]
    container = kube.server_container(gpu)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["resources"]["requests"]["nvidia.com/gpu"] == "1"
    assert "nvidia.com/gpu" not in kube.server_container(cpu)["resources"]["limits"]
    pod = kube.deployment(gpu)["spec"]["template"]["spec"]
    assert pod["nodeSelector"] and any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    config = kube.restune_config(gpu)
    assert config["RESTUNE_DEVICE"] == "cuda" and config["RESTUNE_KERNEL_BACKEND"] in ("auto", "triton")


def test_service_monitor_scrapes_the_replicas(docs):
    objects = docs["example-prometheus"]
    monitor = kube.one(objects, "ServiceMonitor", "restune")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    service = kube.one(objects, "Service", "restune")
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]} and endpoint["path"] == "/metrics"
    hpa = kube.one(objects, "HorizontalPodAutoscaler", "restune")["spec"]
    pods_metrics = [m["pods"]["metric"]["name"] for m in hpa["metrics"] if m["type"] == "Pods"]
    assert pods_metrics == ["restune_queue_depth"]
    from server.metrics import ServerMetrics

    assert "restune_queue_depth" in ServerMetrics().render()[0].decode()


def test_docs_point_at_what_exists():
    text = (REPO / "docs" / "kubernetes.md").read_text()
    for target in re.findall(r"kubectl apply -k (deploy/kubernetes/\S+)", text):
        assert (REPO / target / "kustomization.yaml").is_file(), target
    for kind in ("Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler", "Secret", "ConfigMap",
                 "NetworkPolicy", "StatefulSet", "PersistentVolumeClaim", "ServiceMonitor", "Ingress"):
        assert f"`{kind}`" in text, kind
    assert "no cluster" in text.lower() and "docker engine" in text.lower()
