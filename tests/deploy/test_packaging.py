"""docker/, docker-compose.yml and .dockerignore, checked by parsing (no Docker engine runs here)."""
from __future__ import annotations

import os
import re
import shlex

import pytest

from tests.deploy import compose as dc
from tests.deploy.scans import REPO

REPLICAS = ("restune-a", "restune-b")
PACKAGES = ("restune", "restuning", "tuner_store", "training", "server", "clients", "bench")
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt", ".onnx", ".npz", ".pkl", ".h5")


@pytest.fixture(scope="module")
def spec() -> dict:
    return dc.load()


def services(spec) -> dict:
    return spec["services"]


def test_compose_has_redis_two_replicas_and_a_load_balancer(spec):
    assert set(services(spec)) == {"redis", *REPLICAS, "lb"}
    a, b = (services(spec)[name] for name in REPLICAS)
    assert a == b  # the replicas are one definition (x-restune), so they cannot drift apart
    assert dc.nginx_upstream_servers(dc.NGINX_TEMPLATE.read_text()) == [f"{name}:8000" for name in REPLICAS]


def test_redis_is_persistent_and_private(spec):
    redis = services(spec)["redis"]
    image = dc.interpolate(redis["image"], {})
    assert re.match(r"redis:(7|8)\b", image), image
    command = redis["command"]
    assert command[0] == "redis-server"
    flags = dict(zip(command[1::2], command[2::2]))
    assert flags["--appendonly"] == "yes"  # AOF: tuners survive a restart of Redis
    assert flags["--appendfsync"] in ("always", "everysec")
    assert flags.get("--maxmemory-policy", "noeviction") == "noeviction"  # an evicted key is a lost tuner
    assert "redis-data:/data" in redis["volumes"] and "redis-data" in spec["volumes"]
    assert "ports" not in redis  # only the replicas reach it, on the internal network
    assert "redis-cli ping" in " ".join(redis["healthcheck"]["test"])
    assert redis["networks"] == ["backend"] and spec["networks"]["backend"]["internal"] is True


def test_replicas_share_the_redis_store_and_need_a_token(spec):
    for name in REPLICAS:
        svc = services(spec)[name]
        env = svc["environment"]
        assert env["RESTUNE_STORE"] == "redis://redis:6379/0"
        assert env["RESTUNE_HOST"] == "0.0.0.0" and str(env["RESTUNE_PORT"]) == "8000"
        # the token comes from the environment / .env, is required, and has no default in the file
        assert re.fullmatch(r"\$\{RESTUNE_ADMIN_TOKEN:\?[^}]*\}", env["RESTUNE_ADMIN_TOKEN"])
        assert svc["depends_on"] == {"redis": {"condition": "service_healthy"}}
        assert "ports" not in svc  # reached through the load balancer only
        assert svc["networks"] == ["backend"]
        assert svc["cap_drop"] == ["ALL"] and "no-new-privileges:true" in svc["security_opt"]
        check = " ".join(svc["healthcheck"]["test"])
        assert "/healthz" in check and "127.0.0.1:8000" in check
        assert svc["build"]["dockerfile"] == "docker/Dockerfile.cpu" and svc["build"]["context"] == "."


def test_weights_are_mounted_read_only_not_baked(spec):
    for name in REPLICAS:
        svc = services(spec)[name]
        mounts = [v for v in svc["volumes"] if isinstance(v, dict) and v["target"] == "/weights"]
        assert len(mounts) == 1 and mounts[0]["type"] == "bind" and mounts[0]["read_only"] is True
        assert "RESTUNE_WEIGHTS_DIR" in dc.variables(mounts[0]["source"])
        weights = dc.interpolate(svc["environment"]["RESTUNE_WEIGHTS"], {})
        assert weights.startswith("/weights/") and weights.endswith(".safetensors")


def test_no_secret_is_written_into_the_compose_files():
    for path in (dc.COMPOSE, dc.COMPOSE_GPU):
        for line in path.read_text().splitlines():
            if line.strip().startswith("#"):
                continue
            m = re.match(r"\s*-?\s*([A-Z0-9_]*(TOKEN|PASSWORD|SECRET|KEY)[A-Z0-9_]*)\s*[:=]\s*(.+)", line)
            if m:
                value = m.group(3).strip().strip("'\"")
                assert value.startswith("${") and value.endswith("}"), line
    example = (REPO / ".env.example").read_text()
    assert re.search(r"^RESTUNE_ADMIN_TOKEN=$", example, re.M)  # a blank to fill, not a token
    assert ".env" in (REPO / ".gitignore").read_text().splitlines()


def test_compose_env_is_valid_server_settings(spec, monkeypatch):
    """Every RESTUNE_* the compose file sets is a real setting, and its defaults make a valid configuration."""
    from pydantic import ValidationError

    from server.settings import ServerSettings

    env_spec = services(spec)["restune-a"]["environment"]
    fields = {f"RESTUNE_{name.upper()}" for name in ServerSettings.model_fields}
    assert set(env_spec) <= fields, set(env_spec) - fields  # a typo would be silently ignored by the server
    with pytest.raises(dc.MissingVariable, match="RESTUNE_ADMIN_TOKEN"):
        dc.interpolate(env_spec, {})  # compose refuses to start without a token
    resolved = dc.interpolate(env_spec, {"RESTUNE_ADMIN_TOKEN": "t0ken"})
    for key in list(os.environ):
        if key.startswith("RESTUNE_"):
            monkeypatch.delenv(key)
    for key, value in resolved.items():
        monkeypatch.setenv(key, str(value))
    settings = ServerSettings()
    assert settings.store == "redis://redis:6379/0" and settings.host == "0.0.0.0"
    assert settings.admin_token == "t0ken" and settings.cors_origins == []
    assert settings.weights == "/weights/backbone.safetensors"
    # and without the token the server itself refuses a public address too
    monkeypatch.delenv("RESTUNE_ADMIN_TOKEN")
    with pytest.raises(ValidationError, match="admin token"):
        ServerSettings()


def test_load_balancer(spec):
    lb = services(spec)["lb"]
    assert re.match(r"nginx:1\.(2[89]|[3-9]\d)", dc.interpolate(lb["image"], {})), lb["image"]  # `resolve`: >= 1.27.3
    assert lb["depends_on"] == {name: {"condition": "service_healthy"} for name in REPLICAS}
    assert dc.interpolate(lb["ports"], {}) == ["127.0.0.1:8080:80"]  # loopback unless RESTUNE_BIND says otherwise
    assert "./docker/nginx.conf.template:/etc/nginx/templates/default.conf.template:ro" in lb["volumes"]
    assert "/lb-healthz" in " ".join(lb["healthcheck"]["test"])
    assert set(lb["networks"]) == {"frontend", "backend"}

    template = dc.NGINX_TEMPLATE.read_text()
    assert re.search(r"location\s*/\s*\{\s*proxy_pass\s+http://restune;", template)
    assert re.search(r"location\s*=\s*/lb-healthz", template)
    # nginx's envsubst leaves an unset ${VAR} as it is, which nginx then refuses: compose must set each one
    used = set(dc.variables(template))
    assert used and used <= set(lb["environment"]), used - set(lb["environment"])
    body_limit = dc.interpolate(lb["environment"]["NGINX_MAX_BODY_SIZE"], {})
    assert re.fullmatch(r"\d+m", body_limit)
    replica_env = services(spec)["restune-a"]["environment"]
    upload_mb = float(dc.interpolate(replica_env["RESTUNE_MAX_UPLOAD_MB"], {}))
    image_mb = float(dc.interpolate(replica_env["RESTUNE_MAX_IMAGE_MB"], {}))
    # nginx must let through what the replicas accept, so that their JSON 413 (not nginx's HTML one) answers
    assert int(body_limit[:-1]) > max(upload_mb, image_mb * 4 / 3) + 1


def test_gpu_override(spec):
    gpu = dc.load(dc.COMPOSE_GPU)
    assert set(gpu["services"]) == set(REPLICAS)
    for name in REPLICAS:
        svc = gpu["services"][name]
        assert svc["build"]["dockerfile"] == "docker/Dockerfile.gpu"
        devices = svc["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]


@pytest.mark.parametrize("flavor", ["cpu", "gpu"])
def test_dockerfile(flavor):
    stages = dc.dockerfile_stages(dc.DOCKERFILES[flavor])
    assert len(stages) >= 2  # build stage + a runtime stage without build tools' leftovers
    text = dc.DOCKERFILES[flavor].read_text()
    base_args = dict(re.findall(r"^ARG (\w+)=(\S+)", text, re.M))
    first_from = stages[0][0][1].split()[0]
    base = re.sub(r"\$\{(\w+)\}", lambda m: base_args[m[1]], first_from)
    if flavor == "gpu":
        assert base.startswith("nvidia/cuda:") and "runtime" in base
    else:
        assert re.match(r"python:3\.\d+-slim", base), base

    final = stages[-1]
    instructions = [i for i, _ in final]
    users = [args for i, args in final if i == "USER"]
    assert users and users[-1] not in ("root", "0", "0:0")
    assert instructions.index("USER") < instructions.index("ENTRYPOINT")
    assert any(i == "RUN" and "useradd" in args and "--uid" in args for i, args in final)
    health = [args for i, args in final if i == "HEALTHCHECK"]
    assert len(health) == 1 and "/healthz" in health[0] and "--start-period" in health[0]
    assert dict(final)["ENTRYPOINT"] == '["restune"]' and dict(final)["CMD"] == '["serve"]'
    env = " ".join(args for i, args in final if i == "ENV")
    assert "RESTUNE_WEIGHTS=/weights/" in env and "RESTUNE_HOST=0.0.0.0" in env and "HF_HUB_OFFLINE=1" in env

    copied = []
    for stage in stages:
        for instruction, args in stage:
            if instruction in ("COPY", "ADD"):
                parts = [p for p in shlex.split(args) if not p.startswith("--")]
                sources = parts[:-1]
                if "--from=" in args:
                    continue
                copied.extend(sources)
            if instruction == "ADD":
                pytest.fail(f"ADD can fetch URLs and unpack archives; use COPY: {args}")
            if instruction == "RUN":
                lowered = args.lower()
                for bad in ("hf_hub_download", "huggingface-cli", "snapshot_download", "from_pretrained",
                            "--weights pretrained", "wget ", "curl "):
                    assert bad not in lowered, f"{flavor}: a RUN step may be fetching weights: {args}"
    # only the package sources: every package, nothing else (weights, data, tests, .env never enter the image)
    assert sorted(copied) == sorted(["pyproject.toml", "README.md", *PACKAGES]), copied
    for source in copied:
        assert (REPO / source).exists(), source
        assert not source.endswith(WEIGHT_SUFFIXES)


@pytest.mark.parametrize("flavor", ["cpu", "gpu"])
def test_dockerfile_torch_matches_pyproject(flavor):
    """torch comes from its own index first; a different range would make `pip install ".[server,…]"` replace it."""
    import tomllib

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["model"]
    torch_spec = next(d for d in deps if re.match(r"torch\b(?!vision)", d))
    text = dc.DOCKERFILES[flavor].read_text()
    assert re.search(r'pip install --index-url "\$\{TORCH_INDEX_URL\}" "' + re.escape(torch_spec) + '"', text), torch_spec


def test_the_image_holds_every_package_pyproject_ships():
    import tomllib

    includes = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    assert sorted(p.rstrip("*") for p in includes) == sorted(PACKAGES)


def test_dockerignore_keeps_weights_secrets_and_clutter_out():
    patterns = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    for needed in (".env", ".venv", ".git", "tests", "data", "weights", "bench/results", "**/*.safetensors", "**/*.pt",
                   "**/*.bin", "**/*.ckpt"):
        assert needed in patterns, needed
    for kept in (*PACKAGES, "pyproject.toml", "README.md"):  # what the Dockerfiles COPY must stay in the context
        assert kept not in patterns
