"""Keep deploy/ honest without Docker: the compose file, the Kubernetes manifests, .env.example, the Dockerfiles
and the Prometheus / Grafana config must agree with the code and with each other (task queue names, settings
the code reads, Worker Deployment name and build ids, search attributes, console-script entrypoints, API port
and probes, metrics targets). The API database's init script runs against a real PostgreSQL server."""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import tempfile
import tomllib
from pathlib import Path
from urllib.parse import urlparse

import pytest
import sqlalchemy
import yaml

from longsong.settings import Settings, parse_days, parse_duration, variables
from longsong.storage.s3.names import check_bucket
from longsong.workflows.messages import SEARCH_ATTRIBUTES

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
WORKERS = K8S / "workers"
API = K8S / "api"
PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"
DB_INIT = DEPLOY / "postgres" / "init-longsong.sh"
BUILD_LABEL = "longsong.io/build-id"
# A build id is an image tag and, on Kubernetes, part of object names and a label value.
BUILD_ID = re.compile(r"[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?")

# Python sources that the workers (and the client they share) run.
CODE = [*sorted((ROOT / "longsong").rglob("*.py")), *sorted((ROOT / "activities").rglob("*.py")),
        *sorted((ROOT / "workflows").rglob("*.py")), ROOT / "worker_gpu.py", ROOT / "worker_cpu.py",
        ROOT / "client.py"]
# Read by temporalio.envconfig (inside the SDK), not by our sources.
ENVCONFIG = {"TEMPORAL_ADDRESS", "TEMPORAL_NAMESPACE", "TEMPORAL_API_KEY", "TEMPORAL_TLS",
             "TEMPORAL_TLS_CLIENT_CERT_PATH", "TEMPORAL_TLS_CLIENT_CERT_DATA", "TEMPORAL_TLS_CLIENT_KEY_PATH",
             "TEMPORAL_TLS_CLIENT_KEY_DATA", "TEMPORAL_TLS_SERVER_CA_CERT_PATH", "TEMPORAL_TLS_SERVER_CA_CERT_DATA",
             "TEMPORAL_TLS_SERVER_NAME", "TEMPORAL_TLS_DISABLE_HOST_VERIFICATION", "TEMPORAL_PROFILE",
             "TEMPORAL_CONFIG_FILE"}
SERVICES = {"postgresql", "temporal-schema", "temporal", "temporal-init", "temporal-ui", "minio", "minio-init",
            "worker-gpu", "worker-cpu", "worker-gpu-next", "worker-cpu-next", "api-db-init", "api", "prometheus",
            "grafana"}
WORKERS_COMPOSE = ("worker-gpu", "worker-cpu", "worker-gpu-next", "worker-cpu-next")


def settings_read_by_code() -> set[str]:
    names: set[str] = set()
    pattern = re.compile(r"""["']((?:LONGSONG|TEMPORAL|AWS)_[A-Z0-9_]*[A-Z0-9])["']""")
    for path in CODE:
        if path.exists():
            names.update(pattern.findall(path.read_text()))
    return names | set(variables()) | ENVCONFIG | {"HF_HOME"}


def env_example() -> tuple[dict[str, str], set[str]]:
    """(assigned NAME=value, every name mentioned at a line start, assigned or commented out)."""
    assigned: dict[str, str] = {}
    mentioned: set[str] = set()
    for line in (DEPLOY / ".env.example").read_text().splitlines():
        m = re.match(r"^(#\s*)?([A-Z][A-Z0-9_]*)=(.*)$", line.strip())
        if m:
            mentioned.add(m.group(2))
            if not m.group(1):
                assigned[m.group(2)] = m.group(3).strip()
    return assigned, mentioned


def compose() -> dict:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def k8s_docs() -> list[dict]:
    docs = []
    for path in sorted(K8S.rglob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def k8s(kind: str, name: str | None = None) -> list[dict]:
    return [d for d in k8s_docs() if d.get("kind") == kind and (name is None or d["metadata"]["name"] == name)]


def workers_kustomization() -> dict:
    return yaml.safe_load((WORKERS / "kustomization.yaml").read_text())


def k8s_build() -> str:
    """The build id of the workers in deploy/k8s/workers (its label)."""
    (labels,) = workers_kustomization()["labels"]
    return labels["pairs"][BUILD_LABEL]


def sa_pairs(text: str) -> dict[str, str]:
    return dict(pair.split("=", 1) for pair in text.split())


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def metrics_port() -> int:
    """The workers' Prometheus port (LONGSONG_METRICS_ADDR in .env.example)."""
    env, _ = env_example()
    return int(env["LONGSONG_METRICS_ADDR"].rsplit(":", 1)[1])


def container_port(container: dict, port: int | str) -> int:
    """A probe's or a Service's port, a number or a port name, as the container's port number."""
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container["ports"] if p["name"] == port]
    return number


def published(service: dict) -> set[int]:
    """Container-side ports of a compose service's `ports` ("host:container")."""
    return {int(str(p).rsplit(":", 1)[1]) for p in service.get("ports", [])}


# ------------------------------------------------------------------------------------------ .env.example


def test_env_example_covers_every_setting_the_code_reads():
    _, mentioned = env_example()
    missing = sorted(settings_read_by_code() - mentioned)
    assert not missing, f"add to deploy/.env.example (commented out if optional): {missing}"


def test_env_example_values_are_valid():
    env, _ = env_example()
    assert env["LONGSONG_GPU_QUEUE"] == Settings.gpu_queue
    assert env["LONGSONG_CPU_QUEUE"] == Settings.cpu_queue
    assert env["LONGSONG_DEPLOYMENT"] == Settings.deployment and "." not in env["LONGSONG_DEPLOYMENT"]
    for name in ("LONGSONG_BUILD_ID", "LONGSONG_NEXT_BUILD_ID"):
        assert BUILD_ID.fullmatch(env[name]), f"{name}={env[name]!r}: lowercase letters, digits and '-'"
    assert env["LONGSONG_BUILD_ID"] != env["LONGSONG_NEXT_BUILD_ID"]
    assert ":" not in env["LONGSONG_IMAGE_GPU"] + env["LONGSONG_IMAGE_CPU"]  # the tag is the build id
    storage = urlparse(env["LONGSONG_STORAGE"])
    assert storage.scheme == "s3"
    check_bucket(storage.netloc, env["LONGSONG_STORAGE"])
    assert urlparse(env["AWS_ENDPOINT_URL_S3"]).scheme in ("http", "https")
    parse_duration("LONGSONG_LINK_EXPIRY", env["LONGSONG_LINK_EXPIRY"])
    parse_days("LONGSONG_SCRATCH_EXPIRY_DAYS", env["LONGSONG_SCRATCH_EXPIRY_DAYS"])
    parse_days("LONGSONG_RETENTION_DAYS", env["LONGSONG_RETENTION_DAYS"])
    assert int(env["LONGSONG_SHUTDOWN_GRACE_S"]) > 0
    assert env["HF_HOME"].startswith("/")
    assert "TEMPORAL_API_KEY" not in env  # an empty API key would still turn TLS on: keep it commented out
    assert ":" not in env["LONGSONG_IMAGE_API"]
    settings = Settings.from_env(env)  # every LONGSONG_* value set there parses
    assert settings.webhook_secret != Settings.webhook_secret, "LONGSONG_WEBHOOK_SECRET: not the development key"
    assert re.fullmatch(r"[A-Za-z0-9._~-]+", env["API_DB_PASSWORD"])  # it goes into LONGSONG_DATABASE_URL unquoted
    assert env["LONGSONG_METRICS_ADDR"].startswith("0.0.0.0:") and 0 < metrics_port() < 65536


# ------------------------------------------------------------------------------------------ compose


def test_compose_services_and_healthchecks():
    services = compose()["services"]
    assert set(services) == SERVICES
    for name in ("postgresql", "temporal", "minio", "worker-gpu", "worker-cpu", "api", "prometheus"):
        assert "healthcheck" in services[name], name
    assert "auto-setup" not in services["temporal"]["image"]  # deprecated image
    assert services["temporal"]["environment"]["DB"] == "postgres12"
    assert services["temporal"]["depends_on"]["temporal-schema"]["condition"] == "service_completed_successfully"
    for name, svc in services.items():
        assert svc.get("profiles", []) == (["upgrade"] if name.endswith("-next") else []), name
    for worker in WORKERS_COMPOSE:
        deps = services[worker]["depends_on"]
        assert deps["temporal-init"]["condition"] == "service_completed_successfully"
        assert deps["minio-init"]["condition"] == "service_completed_successfully"
        assert services[worker]["env_file"] == [".env"]


def test_compose_files_and_variables_exist():
    text = (DEPLOY / "docker-compose.yml").read_text()
    assigned, _ = env_example()
    used = set(re.findall(r"(?<!\$)\$\{([A-Z_][A-Z0-9_]*)", text))
    assert not used - set(assigned), f"compose uses variables .env.example does not set: {used - set(assigned)}"
    services = compose()["services"]
    for name, svc in services.items():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (DEPLOY / source).exists(), f"{name}: {source}"
        entry = svc.get("entrypoint")
        if entry and entry[0] == "/bin/sh":
            mount = next(v for v in svc["volumes"] if v.split(":")[1] in entry[1])
            host, inside = mount.split(":")[:2]
            script = DEPLOY / host / Path(entry[1]).relative_to(inside)
            assert script.exists(), script
            if shutil.which("sh"):
                subprocess.run(["sh", "-n", str(script)], check=True)
        build = svc.get("build")
        if build:
            assert (DEPLOY / build["context"] / build["dockerfile"]).exists()


def test_compose_gpu_worker():
    gpu = compose()["services"]["worker-gpu"]
    env, _ = env_example()
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    targets = [v.split(":", 1)[1] for v in gpu["volumes"]]
    assert "${HF_HOME:-" + env["HF_HOME"] + "}" in targets  # the model cache volume sits at HF_HOME
    assert "$$LONGSONG_GPU_QUEUE" in gpu["healthcheck"]["test"][1]
    assert "$$LONGSONG_CPU_QUEUE" in compose()["services"]["worker-cpu"]["healthcheck"]["test"][1]


def test_compose_workers_run_their_build():
    """Image tag and LONGSONG_BUILD_ID come from one variable per build; the `-next` workers (profile `upgrade`)
    are the same services for LONGSONG_NEXT_BUILD_ID, so both builds serve the same queues side by side."""
    services = compose()["services"]
    env, _ = env_example()
    for kind in ("gpu", "cpu"):
        current, nxt = services[f"worker-{kind}"], services[f"worker-{kind}-next"]
        image = f"${{LONGSONG_IMAGE_{kind.upper()}:-longsong-worker-{kind}}}:"
        assert current["image"].startswith(image + "${LONGSONG_BUILD_ID:?")
        assert nxt["image"] == image + "${LONGSONG_NEXT_BUILD_ID}"
        assert "environment" not in current  # LONGSONG_BUILD_ID from .env
        assert nxt["environment"] == {"LONGSONG_BUILD_ID": "${LONGSONG_NEXT_BUILD_ID}"}
        same = {k: v for k, v in nxt.items() if k not in ("image", "environment", "profiles")}
        assert same == {k: v for k, v in current.items() if k != "image"}, kind
        # healthy only while polling as this container's version (unversioned pollers are not listed there)
        check = current["healthcheck"]["test"][1]
        assert '--select-build-id \"$$LONGSONG_DEPLOYMENT:$$LONGSONG_BUILD_ID\"' in check, check
        assert f"--task-queue-type {'activity' if kind == 'gpu' else 'workflow'}" in check
    assert env["LONGSONG_IMAGE_GPU"] == "longsong-worker-gpu" and env["LONGSONG_IMAGE_CPU"] == "longsong-worker-cpu"


def test_compose_stop_grace_longer_than_shutdown_grace():
    env, _ = env_example()
    for name in ("worker-gpu", "worker-cpu"):
        grace = compose()["services"][name]["stop_grace_period"]
        m = re.fullmatch(r"(\d+)([sm])", grace)
        seconds = int(m.group(1)) * (60 if m.group(2) == "m" else 1)
        assert seconds > int(env["LONGSONG_SHUTDOWN_GRACE_S"]), name


def test_compose_bucket_and_search_attributes():
    services = compose()["services"]
    assert sa_pairs(services["temporal-init"]["environment"]["SEARCH_ATTRIBUTES"]) == SEARCH_ATTRIBUTES
    init_env = services["minio-init"]["environment"]
    assert init_env["LONGSONG_STORAGE"].startswith("${LONGSONG_STORAGE")  # same bucket as the workers
    assert init_env["AWS_ACCESS_KEY_ID"].startswith("${AWS_ACCESS_KEY_ID")


def cli_commands() -> set[str]:
    from longsong.cli import build_parser

    (sub,) = [a for a in build_parser()._actions if a.dest == "command"]
    return set(sub.choices)


def test_compose_api():
    """`longsong serve` from the CPU image, listening on the port it publishes and its healthcheck asks
    (/readyz), on the database api-db-init creates, after Temporal, MinIO and that database are ready."""
    services = compose()["services"]
    api, env = services["api"], env_example()[0]
    assert api["build"] == services["worker-cpu"]["build"]
    assert api["image"].startswith("${LONGSONG_IMAGE_API:-" + env["LONGSONG_IMAGE_API"] + "}:${LONGSONG_BUILD_ID:?")
    assert api["entrypoint"] == ["longsong", "serve"]
    assert api["entrypoint"][0] in pyproject()["project"]["scripts"]
    assert "serve" in cli_commands(), "longsong/cli.py has no `serve` command"
    assert api["env_file"] == [".env"]  # TEMPORAL_*, storage, quotas and LONGSONG_WEBHOOK_SECRET like the workers
    settings = Settings.from_env({**env, **api["environment"]})
    assert settings.api_host == "0.0.0.0"
    assert settings.api_port in published(api)
    check = " ".join(api["healthcheck"]["test"])
    assert f":{settings.api_port}/readyz" in check and check.startswith("CMD python -c")  # no curl in python-slim
    deps = {name: d["condition"] for name, d in api["depends_on"].items()}
    assert deps == {"postgresql": "service_healthy", "api-db-init": "service_completed_successfully",
                    "temporal-init": "service_completed_successfully", "minio-init": "service_completed_successfully"}
    url = sqlalchemy.engine.make_url(settings.database)
    role, db = (re.search(rf'{name}="\$\{{{var}:-([a-z_]+)\}}"', DB_INIT.read_text()).group(1)
                for name, var in (("role", "API_DB_USER"), ("db", "API_DB_NAME")))
    assert (url.drivername, url.host, url.port, url.username, url.database) == (
        "postgresql+psycopg", "postgresql", 5432, role, db)
    assert url.password == "${API_DB_PASSWORD}"
    init = services["api-db-init"]
    assert init["image"] == services["postgresql"]["image"]  # psql and pg_isready of the server's version
    assert init["environment"]["API_DB_PASSWORD"].startswith("${API_DB_PASSWORD")
    assert init["environment"]["PGUSER"] == services["postgresql"]["environment"]["POSTGRES_USER"]
    required = set(re.findall(r"\$\{([A-Z_]+):\?", DB_INIT.read_text()))
    assert required <= set(init["environment"]), required - set(init["environment"])


def prometheus_targets() -> dict[str, tuple[int, str]]:
    """host -> (port, metrics path) of every scrape target of deploy/prometheus/prometheus.yml."""
    assert PROMETHEUS.exists(), "deploy/prometheus/prometheus.yml is missing (the scrape config of api and workers)"
    targets = {}
    for job in yaml.safe_load(PROMETHEUS.read_text())["scrape_configs"]:
        hosts = [t for static in job.get("static_configs", []) for t in static["targets"]]
        hosts += [f"{n}:{sd['port']}" for sd in job.get("dns_sd_configs", []) for n in sd["names"]]
        for target in hosts:
            host, port = target.rsplit(":", 1)
            targets[host] = (int(port), job.get("metrics_path", "/metrics"))
    return targets


def test_compose_prometheus_scrapes_api_and_workers():
    services = compose()["services"]
    prometheus = services["prometheus"]
    targets = prometheus_targets()
    unknown = set(targets) - set(services) - {"localhost"}
    assert not unknown, f"prometheus.yml scrapes hosts that are no compose service: {unknown}"
    api_port = Settings.from_env(services["api"]["environment"]).api_port
    assert targets.get("api") == (api_port, "/metrics")
    for worker in WORKERS_COMPOSE:
        assert targets.get(worker) == (metrics_port(), "/metrics"), worker
    config = next(a.split("=", 1)[1] for a in prometheus["command"] if a.startswith("--config.file="))
    assert f"./prometheus/prometheus.yml:{config}:ro" in prometheus["volumes"]
    assert 9090 in published(prometheus) and "9090/-/ready" in " ".join(prometheus["healthcheck"]["test"])


def test_compose_grafana_provisioning():
    """Grafana's read-only mounts exist; its data source is the prometheus service, its dashboard provider reads
    the mounted dashboards folder, and the home dashboard is one of them."""
    services = compose()["services"]
    grafana = services["grafana"]
    mounts = {}
    for volume in grafana["volumes"]:
        source, inside, *mode = volume.split(":")
        if source.startswith("./"):
            assert mode == ["ro"], volume
            assert (DEPLOY / source).exists(), f"deploy/{source[2:]} is missing (grafana mounts it at {inside})"
            mounts[inside] = DEPLOY / source

    def provisioned(folder: str, key: str) -> list[dict]:
        files = sorted(mounts[f"/etc/grafana/provisioning/{folder}"].glob("*.y*ml"))
        return [item for f in files for item in yaml.safe_load(f.read_text()).get(key, [])]

    sources = [d for d in provisioned("datasources", "datasources") if d["type"] == "prometheus"]
    assert len(sources) == 1, f"one provisioned Prometheus data source, found {len(sources)}"
    url = urlparse(sources[0]["url"])
    assert url.hostname == "prometheus" and url.port in published(services["prometheus"]), url.geturl()
    paths = {p["options"]["path"] for p in provisioned("dashboards", "providers")}
    read = [m for m in mounts if m in paths]
    assert len(read) == 1, f"dashboard providers read {sorted(paths)}; grafana mounts {sorted(mounts)}"
    inside = read[0]
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(inside + "/")
    dashboard = json.loads((mounts[inside] / home.removeprefix(inside + "/")).read_text())
    assert dashboard["panels"], home
    assert grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD:?")
    assert 3000 in published(grafana)


def postgres_bindir() -> Path | None:
    found = shutil.which("pg_ctl") or max(map(str, Path("/usr/lib/postgresql").glob("*/bin/pg_ctl")),
                                          key=lambda p: int(Path(p).parts[-3]), default=None)
    return Path(found).parent if found else None


@pytest.fixture
def postgres_superuser():
    """A real PostgreSQL server on a Unix socket whose superuser `temporal` has a password, as the compose
    stack's; yields the libpq environment to reach it. initdb refuses root, so as root it runs as `postgres`."""
    bindir = postgres_bindir()
    if not bindir:
        pytest.skip("PostgreSQL server not installed (apt-get install postgresql; `make test-data`)")
    owner = "postgres" if os.geteuid() == 0 else None
    root = Path(tempfile.mkdtemp(prefix="longsong-pg-"))  # not tmp_path: the server's user must reach it
    data = root / "data"
    try:
        (root / "pw").write_text("temporal-pw\n")
        if owner:
            for path in (root, root / "pw"):
                shutil.chown(path, owner)
        subprocess.run([bindir / "initdb", "-D", data, "-U", "temporal", f"--pwfile={root / 'pw'}",
                        "--auth=scram-sha-256"], check=True, capture_output=True, user=owner)
        subprocess.run([bindir / "pg_ctl", "-D", data, "-w", "-l", root / "log", "-o",
                        f"-c listen_addresses='' -k {root}", "start"], check=True, capture_output=True, user=owner)
        yield {"PATH": f"{bindir}:{os.environ['PATH']}", "PGHOST": str(root), "PGUSER": "temporal",
               "PGPASSWORD": "temporal-pw"}
    finally:
        subprocess.run([bindir / "pg_ctl", "-D", data, "-m", "immediate", "stop"], capture_output=True, user=owner)
        shutil.rmtree(root, ignore_errors=True)


def test_api_db_init_on_a_real_server(postgres_superuser):
    """postgres/init-longsong.sh makes a role, no superuser, that may log in with API_DB_PASSWORD only and owns
    its database, so the API's own migrations run as it; run again with a changed password (a new .env), it
    follows it."""
    from longsong.service.db import Database

    for password in ("firstPw1", "secondPw2"):
        done = subprocess.run(["sh", DB_INIT], env={**postgres_superuser, "API_DB_PASSWORD": password},
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    url = "postgresql+psycopg://longsong:{}@/longsong?host=" + postgres_superuser["PGHOST"]
    db = Database.open(url.format("secondPw2"))  # Alembic upgrade head, as `longsong serve` does at start
    try:
        with db.engine.connect() as conn:
            owners = conn.execute(sqlalchemy.text("SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = "
                                                  "'public'")).scalars().all()
            superuser = conn.execute(sqlalchemy.text("SELECT rolsuper FROM pg_roles WHERE rolname = current_user"))
            assert owners == ["longsong"] and superuser.scalar() is False
            tables = sqlalchemy.inspect(conn).get_table_names()
        assert "api_keys" in tables and "alembic_version" in tables, tables
    finally:
        db.engine.dispose()
    old = sqlalchemy.create_engine(url.format("firstPw1"), poolclass=sqlalchemy.pool.NullPool)
    with pytest.raises(sqlalchemy.exc.OperationalError, match="password authentication failed"):
        old.connect()


# ------------------------------------------------------------------------------------------ Dockerfiles


def dockerfile(kind: str) -> str:
    return (DEPLOY / f"Dockerfile.{kind}").read_text()


@pytest.mark.parametrize("kind", ["gpu", "cpu"])
def test_dockerfile_entrypoint_is_a_console_script(kind):
    m = re.search(r"^ENTRYPOINT\s+(\[.*\])\s*$", dockerfile(kind), re.M)
    assert m, "ENTRYPOINT in exec form, so SIGTERM reaches the worker"
    entry = yaml.safe_load(m.group(1))
    assert entry == [f"longsong-worker-{kind}"]
    project = pyproject()
    target = project["project"]["scripts"][entry[0]]
    module, func = target.split(":")
    assert module.rsplit(".", 1)[0] in project["tool"]["setuptools"]["packages"]
    path = ROOT / (module.replace(".", "/") + ".py")
    assert path.exists(), f"{target}: {path} is missing"
    tree = ast.parse(path.read_text())
    assert any(isinstance(n, ast.FunctionDef) and n.name == func for n in tree.body), f"{target}: no {func}()"


def test_dockerfiles_install_the_package():
    gpu, cpu = dockerfile("gpu"), dockerfile("cpu")
    assert re.search(r"^FROM \$\{CUDA_IMAGE\}", gpu, re.M) and "ARG CUDA_IMAGE=nvidia/cuda:" in gpu
    assert 'pip install ".[musicgen]"' in gpu
    assert 'pip install ".[postgres]"' in cpu and "[musicgen]" not in cpu  # the API's database driver
    assert any("psycopg" in d for d in pyproject()["project"]["optional-dependencies"]["postgres"])
    for text in (gpu, cpu):
        assert "USER 10001" in text
        assert "snapshot_download" not in text and "hf download" not in text  # weights are mounted, not baked in
    assert (ROOT / "README.md").exists()  # pyproject's readme, needed by `pip install .`


# ------------------------------------------------------------------------------------------ Kubernetes


def test_k8s_manifests_parse_and_are_listed():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    for resource in kustomization["resources"]:
        assert (K8S / resource).exists(), resource
    assert "workers" in kustomization["resources"] and "api" in kustomization["resources"]
    workers = workers_kustomization()
    for resource in workers["resources"] + workers["configurations"]:
        assert (WORKERS / resource).exists(), resource
    api = yaml.safe_load((API / "kustomization.yaml").read_text())
    for resource in api["resources"]:
        assert (API / resource).exists(), resource
    assert workers["namespace"] == api["namespace"] == kustomization["namespace"]
    listed = ({K8S / r for r in kustomization["resources"]} | {WORKERS / r for r in workers["resources"]}
              | {API / r for r in api["resources"]})
    for path in [*K8S.glob("*.yaml"), *WORKERS.glob("*.yaml"), *API.glob("*.yaml")]:
        if path.name not in ("kustomization.yaml", "kustomizeconfig.yaml"):
            assert path in listed, f"{path.relative_to(K8S)} is in no kustomization"
    for doc in k8s_docs():
        if doc.get("kind") not in (None, "Kustomization", "Namespace"):  # None: kustomize configuration
            assert doc["metadata"]["namespace"] == kustomization["namespace"]


def test_k8s_config_matches_code():
    cm = k8s("ConfigMap", "longsong-config")[0]["data"]
    secret = k8s("Secret", "longsong-secrets")[0]["stringData"]
    _, mentioned = env_example()
    assert cm["LONGSONG_GPU_QUEUE"] == Settings.gpu_queue
    assert cm["LONGSONG_CPU_QUEUE"] == Settings.cpu_queue
    assert cm["LONGSONG_DEPLOYMENT"] == Settings.deployment
    assert "LONGSONG_BUILD_ID" not in cm and "LONGSONG_BUILD_ID" not in secret  # per build, from the pod label
    assert not (set(cm) | set(secret)) - mentioned, "ConfigMap/Secret use names .env.example does not know"
    for required in ("TEMPORAL_ADDRESS", "TEMPORAL_NAMESPACE", "LONGSONG_STORAGE", "HF_HOME"):
        assert required in cm
    for required in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "LONGSONG_WATERMARK_KEY",
                     "LONGSONG_WEBHOOK_SECRET", "LONGSONG_DATABASE_URL"):  # the API and the CPU workers share one
        assert required in secret
    assert not (set(cm) & set(secret))
    parse_duration("LONGSONG_LINK_EXPIRY", cm["LONGSONG_LINK_EXPIRY"])
    settings = Settings.from_env({**cm, **secret})
    assert sqlalchemy.engine.make_url(settings.database).drivername == "postgresql+psycopg"  # the image's driver
    assert not settings.webhook_allow_private and not settings.metrics_addr  # metrics: per worker Deployment


@pytest.mark.parametrize("kind", ["gpu", "cpu"])
def test_k8s_worker_deployments(kind):
    cm = k8s("ConfigMap", "longsong-config")[0]["data"]
    dep = k8s("Deployment", f"longsong-worker-{kind}")[0]
    kustomization = workers_kustomization()
    assert "replicas" not in dep["spec"]  # KEDA owns it
    pod = dep["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] in {i["name"] for i in kustomization["images"]}
    refs = {next(iter(r.values()))["name"] for r in container["envFrom"]}
    assert refs == {"longsong-config", "longsong-secrets"}
    env = {**cm, **{e["name"]: e["value"] for e in container.get("env", []) if "value" in e}}
    (build,) = [e for e in container["env"] if e["name"] == "LONGSONG_BUILD_ID"]
    assert build["valueFrom"]["fieldRef"]["fieldPath"] == f"metadata.labels['{BUILD_LABEL}']"
    assert pod["terminationGracePeriodSeconds"] > int(env["LONGSONG_SHUTDOWN_GRACE_S"])
    mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
    assert env["LONGSONG_HOME"] in mounts
    port = int(env["LONGSONG_METRICS_ADDR"].rsplit(":", 1)[1])
    assert env["LONGSONG_METRICS_ADDR"].startswith("0.0.0.0:") and container_port(container, "metrics") == port
    assert dep["spec"]["template"]["metadata"]["annotations"] == {
        "prometheus.io/scrape": "true", "prometheus.io/port": str(port), "prometheus.io/path": "/metrics"}
    if kind == "gpu":
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert pod["nodeSelector"] and any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
        assert env["HF_HOME"] in mounts
        assert pod["terminationGracePeriodSeconds"] >= 120  # a segment can take minutes
    else:
        assert "nvidia.com/gpu" not in str(container["resources"])


def test_k8s_api():
    """`longsong serve` on the port LONGSONG_API_PORT names, alive on /healthz, ready on /readyz, scraped on
    /metrics, behind a Service that selects only its pods; not part of a worker build."""
    cm = k8s("ConfigMap", "longsong-config")[0]["data"]
    secret = k8s("Secret", "longsong-secrets")[0]["stringData"]
    (dep,) = k8s("Deployment", "longsong-api")
    pod = dep["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert container["command"] == ["longsong", "serve"]
    assert {next(iter(r.values()))["name"] for r in container["envFrom"]} == {"longsong-config", "longsong-secrets"}
    settings = Settings.from_env({**cm, **secret, **{e["name"]: e["value"] for e in container["env"]}})
    assert settings.api_host == "0.0.0.0"
    port = settings.api_port
    for probe, path in (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = container[probe]["httpGet"]
        assert get["path"] == path and container_port(container, get["port"]) == port, probe
    assert pod["metadata"]["annotations"] == {
        "prometheus.io/scrape": "true", "prometheus.io/port": str(port), "prometheus.io/path": "/metrics"}
    assert BUILD_LABEL not in str(dep)  # one API for every build
    assert container["image"] in {i["name"] for i in yaml.safe_load((API / "kustomization.yaml").read_text())["images"]}
    assert container_port(container, "http") == port
    (service,) = k8s("Service", "longsong-api")
    selector = service["spec"]["selector"]
    assert selector.items() <= pod["metadata"]["labels"].items()
    for worker in ("gpu", "cpu"):
        labels = k8s("Deployment", f"longsong-worker-{worker}")[0]["spec"]["template"]["metadata"]["labels"]
        assert not selector.items() <= labels.items(), f"the API Service would select worker-{worker} pods"
    (service_port,) = service["spec"]["ports"]
    assert container_port(container, service_port["targetPort"]) == port


def test_keda_scaled_objects():
    cm = k8s("ConfigMap", "longsong-config")[0]["data"]
    queues = {"longsong-worker-gpu": cm["LONGSONG_GPU_QUEUE"], "longsong-worker-cpu": cm["LONGSONG_CPU_QUEUE"]}
    scaled = k8s("ScaledObject")
    assert {s["spec"]["scaleTargetRef"]["name"] for s in scaled} == set(queues)
    for so in scaled:
        target = so["spec"]["scaleTargetRef"]["name"]
        assert k8s("Deployment", target)
        (trigger,) = so["spec"]["triggers"]
        meta = trigger["metadata"]
        assert trigger["type"] == "temporal"
        assert meta["taskQueue"] == queues[target]
        assert meta["endpoint"] == cm["TEMPORAL_ADDRESS"]
        assert meta["namespace"] == cm["TEMPORAL_NAMESPACE"]
        assert meta["workerDeploymentName"] == cm["LONGSONG_DEPLOYMENT"]  # this build's version, not unversioned
        assert "workerDeploymentBuildId" in meta  # filled in from the build label (test_k8s_workers_are_one_build)
    gpu = next(s for s in scaled if s["spec"]["scaleTargetRef"]["name"] == "longsong-worker-gpu")
    assert gpu["spec"]["triggers"][0]["metadata"]["queueTypes"] == "activity"
    assert gpu["spec"]["triggers"][0]["metadata"]["workflowTaskQueueForCount"] == cm["LONGSONG_CPU_QUEUE"]


def test_k8s_workers_are_one_build():
    """deploy/k8s/workers is one build: its id is the name suffix, the label (which the pods read as
    LONGSONG_BUILD_ID and the KEDA triggers copy), and both image tags."""
    workers = workers_kustomization()
    build = k8s_build()
    assert BUILD_ID.fullmatch(build), build
    assert workers["nameSuffix"] == f"-{build}"
    (labels,) = workers["labels"]
    assert labels["includeSelectors"] is True  # the Deployments of two builds never select each other's pods
    assert {i["name"]: i["newTag"] for i in workers["images"]} == {"longsong-worker-gpu": build,
                                                                   "longsong-worker-cpu": build}
    (replacement,) = workers["replacements"]
    assert replacement["source"]["fieldPath"] == f"metadata.labels.[{BUILD_LABEL}]"
    assert k8s("Deployment", replacement["source"]["name"])
    (target,) = replacement["targets"]
    assert target["select"] == {"kind": "ScaledObject"}
    assert target["fieldPaths"] == ["spec.triggers.0.metadata.workerDeploymentBuildId"]
    config = yaml.safe_load((WORKERS / workers["configurations"][0]).read_text())
    refs = {(r["kind"], f["path"]) for r in config["nameReference"] for f in r["fieldSpecs"]}
    assert ("Deployment", "spec/scaleTargetRef/name") in refs  # the suffix renames KEDA's reference too
    assert ("TriggerAuthentication", "spec/triggers/authenticationRef/name") in refs


@pytest.mark.skipif(not shutil.which("kubectl"), reason="kubectl (kustomize) not installed")
def test_k8s_kustomize_renders_one_build():
    out = subprocess.run(["kubectl", "kustomize", str(K8S)], check=True, capture_output=True, text=True).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    build = k8s_build()
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    assert set(deployments) == {f"longsong-worker-gpu-{build}", f"longsong-worker-cpu-{build}", "longsong-api"}
    api = deployments.pop("longsong-api")
    assert BUILD_LABEL not in api["spec"]["selector"]["matchLabels"]  # neither renamed nor relabelled per build
    assert api["spec"]["template"]["spec"]["containers"][0]["image"].startswith("registry.example.com/")
    assert {d["metadata"]["name"] for d in docs if d["kind"] == "Service"} == {"longsong-api"}
    for dep in deployments.values():
        assert dep["spec"]["selector"]["matchLabels"][BUILD_LABEL] == build
        assert dep["spec"]["template"]["metadata"]["labels"][BUILD_LABEL] == build
        assert dep["spec"]["template"]["spec"]["containers"][0]["image"].endswith(f":{build}")
    scaled = [d for d in docs if d["kind"] == "ScaledObject"]
    assert {s["spec"]["scaleTargetRef"]["name"] for s in scaled} == set(deployments)
    for so in scaled:
        assert so["metadata"]["name"].endswith(f"-{build}")
        assert so["spec"]["triggers"][0]["metadata"]["workerDeploymentBuildId"] == build
    shared = {d["metadata"]["name"] for d in docs if d["kind"] in ("ConfigMap", "Secret", "PersistentVolumeClaim")}
    assert shared == {"longsong-config", "longsong-secrets", "longsong-hf-cache"}  # one set for all builds


def test_search_attributes_everywhere():
    job = k8s("Job", "longsong-search-attributes")[0]
    env = {e["name"]: e["value"] for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert sa_pairs(env["SEARCH_ATTRIBUTES"]) == SEARCH_ATTRIBUTES
    readme = (DEPLOY / "README.md").read_text()
    m = re.search(r"for sa in ([^;]+); do", readme)
    assert m and sa_pairs(m.group(1)) == SEARCH_ATTRIBUTES


def test_readme_covers_the_operations():
    readme = (DEPLOY / "README.md").read_text()
    for phrase in ("docker compose up", "kubectl apply -k deploy/k8s", "LONGSONG_BUILD_ID", "LONGSONG_NEXT_BUILD_ID",
                   "temporal worker deployment set-current-version --deployment-name longsong --build-id",
                   "temporal worker deployment describe-version --deployment-name longsong --build-id",
                   "TemporalWorkerDeploymentVersion='longsong:", f"-l {BUILD_LABEL}=", "--profile upgrade",
                   "autoscaling.keda.sh/paused-replicas", "temporal operator search-attribute create", "Helm",
                   "Temporal Cloud", "TEMPORAL_API_KEY", "maxReplicaCount",
                   "docker compose exec api longsong keys create --user", "/healthz", "/readyz", "api-db-init",
                   "http://localhost:8000", "http://localhost:9090", "http://localhost:3000", "LONGSONG_WEBHOOK_SECRET",
                   "LONGSONG_DATABASE_URL", "deploy/k8s/api"):
        assert phrase in readme, phrase
    assert "longsong" == Settings.deployment  # the name the commands above use


def test_no_queue_per_version_upgrades_left():
    """Upgrades are Worker Deployment versions: no new GPU queue per model, nothing for clients to switch."""
    production = (ROOT / "README.md").read_text().split("## Production", 1)[1].split("\n## ", 1)[0]
    texts = {"README.md (Production)": production}
    for path in [*DEPLOY.rglob("*.md"), *DEPLOY.rglob("*.yml"), *DEPLOY.rglob("*.yaml"), DEPLOY / ".env.example"]:
        texts[str(path.relative_to(ROOT))] = path.read_text()
    for name, text in texts.items():
        assert not re.search(r"longsong-gpu-v\d|LONGSONG_GPU_QUEUE=longsong-gpu-", text), name
    assert "set-current-version" in production and "LONGSONG_BUILD_ID" in production
