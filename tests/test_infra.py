"""Static checks of infra/: the compose file, the image and the Kubernetes manifests.

No container engine runs on the development machines, so nothing here starts a container.
What can be known without one is checked: the files parse; every image is built from a
Dockerfile that exists or named with a tag; every file the image copies exists; every
variable compose interpolates is documented in .env.example and every credential is required
(`${VAR:?}`), never defaulted; no credential is written down; every command a container runs
exists (`deepgate` subcommands and options from the Typer app, `mlflow`/`prefect` options from
their installed CLI sources); the environment variables set are the ones the code reads; the
manifests are valid Kubernetes objects (schemas bundled by kubernetes-validate).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import re
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer.main
import yaml
from scripts import load_script

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
K8S = INFRA / "k8s"

SECRET = re.compile(r"(PASSWORD|SECRET|SECRET_KEY|AUTH_STRING|USERNAME|_USER|KEY_ID|TOKEN)$")
# Documented by the third-party images themselves, not by this code.
IMAGE_VARIABLES = {
    "postgres": {"POSTGRES_USER", "POSTGRES_PASSWORD"},
    "minio/minio": {"MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"},
    "minio/mc": {"MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"},
}
# Entry points of third-party images (the command is their argument) and shell tools they hold.
IMAGE_ENTRYPOINTS = {"minio/minio": "minio"}
EXTERNAL_COMMANDS = {"minio", "mc", "pg_isready"}
# Read by boto3 / s3fs (MLflow's S3 artifact store, DVC's S3 remote); Kubernetes sets HOME-less
# users, so the worker gets one.
S3_VARIABLES = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"}
OTHER_VARIABLES = {"HOME"}
# Well-known default credentials that must not appear anywhere in infra/.
DEFAULT_CREDENTIALS = ("minioadmin", "password1234", "changeme", "postgres:postgres", "admin:admin", "prefect:prefect")
VARIABLE = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def _compose() -> dict[str, Any]:
    return yaml.safe_load((INFRA / "docker-compose.yml").read_text())


def _manifests() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs += [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    return docs


def _job_template() -> dict[str, Any]:
    return json.loads((K8S / "work-pool-template.json").read_text())


def _workloads() -> Iterator[tuple[str, dict[str, Any]]]:
    """(name, pod spec) of every manifest that runs pods, and of the work pool's flow-run Job."""
    for doc in _manifests():
        if doc["kind"] in ("Deployment", "Job"):
            yield doc["metadata"]["name"], doc["spec"]["template"]["spec"]
    yield "flow-run", _job_template()["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]


def _strings(node: Any) -> Iterator[str]:
    """Every string in a parsed YAML document (keys included); comments are gone by then."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _strings(key)
            yield from _strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from _strings(item)
    elif isinstance(node, str):
        yield node


def _env_example() -> dict[str, str]:
    lines = (INFRA / ".env.example").read_text().splitlines()
    pairs = [line.split("=", 1) for line in lines if line.strip() and not line.lstrip().startswith("#")]
    return {name.strip(): value for name, value in pairs}


def _is_secret(name: str) -> bool:
    return bool(SECRET.search(name))


def _image_repo(service: dict[str, Any]) -> str:
    return "deepgate" if "build" in service else service["image"].rsplit(":", 1)[0]


def _service_commands(service: dict[str, Any]) -> list[list[str]]:
    """Each command a compose service or a container runs, shell lines split at && and ;."""
    parts = [service.get("entrypoint"), service.get("command"), service.get("args")]
    argv: list[str] = []
    for part in parts:
        if part:
            argv += shlex.split(part) if isinstance(part, str) else [str(p) for p in part]
    if argv[:2] == ["sh", "-c"]:
        lines = [line for line in re.split(r"&&|;", argv[2]) if line.strip()]
        # `NODE_RANK=$((...)) exec deepgate ...` runs `deepgate ...`
        return [
            shlex.split(re.sub(r"^\s*(?:[A-Z_]+=(?:\$\(\([^)]*\)\)|\S+)\s+)*(?:exec\s+)?", "", line)) for line in lines
        ]
    return [argv] if argv else []


def _all_commands() -> list[tuple[str, list[str]]]:
    found = []
    for name, service in _compose()["services"].items():
        entrypoint = IMAGE_ENTRYPOINTS.get(_image_repo(service))
        found += [(name, [entrypoint, *cmd] if entrypoint else cmd) for cmd in _service_commands(service)]
    for name, pod in _workloads():
        for container in pod["containers"]:
            if "{{" in str(container.get("args", "")):  # the flow-run pod: the worker fills it in
                continue
            found += [(name, cmd) for cmd in _service_commands(container)]
    return found


def _cli_source(distribution: str, *files: str) -> str:
    dist = importlib.metadata.distribution(distribution)
    return "\n".join(Path(str(dist.locate_file(f))).read_text() for f in files)


# --- deepgate's own settings, derived from the code -------------------------------------------


def _settings_variables() -> set[str]:
    """What components/settings.py reads (`env.get("NAME")`)."""
    source = (ROOT / "components" / "settings.py").read_text()
    return set(re.findall(r"env\.get\(\"([A-Z0-9_]+)\"\)", source))


def _cli_variables() -> set[str]:
    """Options' envvars (`deepgate serve`'s DEEPGATE_SERVE_*) and what commands read themselves."""
    group = typer.main.get_command(__import__("flows.cli", fromlist=["app"]).app)
    names = {p.envvar for cmd in group.commands.values() for p in cmd.params if isinstance(p.envvar, str)}
    source = (ROOT / "flows" / "cli.py").read_text()
    names |= set(re.findall(r"os\.environ(?:\.get\(|\[)\"([A-Z0-9_]+)\"", source))
    names |= set(re.findall(r"\"([A-Z][A-Z0-9_]+)\"", " ".join(re.findall(r"for name in \(([^)]*)\)", source))))
    return names


def test_settings_variables_are_found() -> None:
    # If the derivation broke, every later check would pass vacuously.
    assert {"MLFLOW_TRACKING_URI", "DEEPGATE_DVC_REMOTE", "DEEPGATE_HOME"} <= _settings_variables()
    assert {"DEEPGATE_SERVE_POLL", "MASTER_ADDR", "MASTER_PORT", "NODE_RANK"} <= _cli_variables()


# --- the compose file ---------------------------------------------------------------------------


def test_compose_parses_with_the_services_the_stack_needs() -> None:
    services = _compose()["services"]
    assert {"postgres", "minio", "minio-buckets", "mlflow", "prefect", "worker", "serve"} <= set(services)


def test_compose_builds_from_files_that_exist_and_pins_other_images() -> None:
    for name, service in _compose()["services"].items():
        if "build" in service:
            context = (INFRA / service["build"]["context"]).resolve()
            assert context == ROOT, name
            assert (context / service["build"]["dockerfile"]).is_file(), name
        else:
            assert ":" in service["image"], f"{name}: give the image a tag"
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (INFRA / source).exists(), f"{name} mounts {source}, which is missing"


def test_dockerfile_copies_files_that_exist_and_installs_with_the_constraints() -> None:
    dockerfile = (INFRA / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", dockerfile, re.M)
    for line in re.findall(r"^COPY (.+)$", dockerfile, re.M):
        *sources, _ = line.split()
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: missing"
    assert re.search(r"pip install -c constraints\.txt \.", dockerfile)
    torch = re.search(r"^TORCH\s*\?=\s*torch==(\S+)", (ROOT / "Makefile").read_text(), re.M)
    assert torch and f"ARG TORCH_VERSION={torch.group(1)}" in dockerfile, (
        "the image's torch differs from the Makefile's"
    )
    assert "--index-url" in dockerfile and "whl/cpu" in dockerfile
    assert re.search(r"^USER \d+", dockerfile, re.M), "the image must not run as root"


def test_every_compose_variable_is_documented_and_every_credential_required() -> None:
    used = [match for text in _strings(_compose()) for match in VARIABLE.findall(text)]
    documented = _env_example()
    assert {name for name, _, _ in used} == set(documented), "docker-compose.yml and .env.example disagree"
    for name, operator, _ in used:
        assert operator == ":?", f"${{{name}}} must be required with :? (no defaults, no empty values)"
    assert all(value == "" for value in documented.values()), ".env.example must not hold values"


def test_no_credential_is_written_down() -> None:
    for path in [*INFRA.rglob("*")]:
        if not path.is_file():
            continue
        text = path.read_text().lower()
        for default in DEFAULT_CREDENTIALS:
            assert default not in text, f"{path.relative_to(ROOT)} holds {default!r}"
    for name, service in _compose()["services"].items():
        environment = service.get("environment") or {}
        for key, value in environment.items():
            if _is_secret(key):
                assert VARIABLE.fullmatch(str(value)), f"{name}: {key} is not from the environment"
            # A URL with a password in it: the password must be interpolated.
            for password in re.findall(r"://[^:/@]+:([^@/]+)@", VARIABLE.sub("VAR", str(value))):
                assert password == "VAR", f"{name}: {key} has a literal password"
    ini = (INFRA / "mlflow" / "basic_auth.ini").read_text()
    assert not re.search(r"^\s*admin_(username|password)\s*=", ini, re.M)


def test_the_real_env_file_is_never_committed() -> None:
    ignored = subprocess.run(["git", "check-ignore", "-q", "infra/.env"], cwd=ROOT, check=False)
    assert ignored.returncode == 0, "add infra/.env to .gitignore"


def test_mlflow_server_runs_with_basic_auth_on_postgresql_and_s3() -> None:
    service = _compose()["services"]["mlflow"]
    [command] = _service_commands(service)
    assert command[:2] == ["mlflow", "server"]
    assert command[command.index("--app-name") + 1] == "basic-auth"
    assert command[command.index("--artifacts-destination") + 1].startswith("s3://")
    assert "--serve-artifacts" in command
    env = service["environment"]
    # SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3, which the image does not install.
    assert env["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg2://")
    assert {"MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"} <= set(env)
    k8s_ini = next(d for d in _manifests() if d["metadata"]["name"] == "mlflow-auth-config")["data"]["basic_auth.ini"]
    assert k8s_ini == (INFRA / "mlflow" / "basic_auth.ini").read_text(), "the two auth configs differ"


def test_serving_is_healthchecked_on_ready() -> None:
    assert "/ready" in " ".join(_compose()["services"]["serve"]["healthcheck"]["test"])


# --- commands and environment variables, compose and Kubernetes alike --------------------------

PINNED_OPTIONS_FROM = {
    # command prefix -> (distribution, source files that define its options)
    ("mlflow", "server"): ("mlflow", "mlflow/cli/__init__.py", "mlflow/utils/cli_args.py"),
    ("prefect", "server"): ("prefect", "prefect/cli/server.py"),
    ("prefect", "worker"): ("prefect", "prefect/cli/worker.py"),
    ("prefect", "work-pool"): ("prefect", "prefect/cli/work_pool.py"),
}


def test_every_command_the_containers_run_exists() -> None:
    group = typer.main.get_command(__import__("flows.cli", fromlist=["app"]).app)
    commands = _all_commands()
    assert {"deepgate", "mlflow", "prefect"} <= {cmd[0] for _, cmd in commands if cmd}
    for where, cmd in commands:
        options = {word.split("=", 1)[0] for word in cmd if word.startswith("--")}
        if cmd[0] == "deepgate":
            assert cmd[1] in group.commands, f"{where}: no command `deepgate {cmd[1]}`"
            known = {opt for p in group.commands[cmd[1]].params for opt in [*p.opts, *p.secondary_opts]}
            assert options <= known, f"{where}: `deepgate {cmd[1]}` has no {options - known}"
        elif tuple(cmd[:2]) in PINNED_OPTIONS_FROM:
            distribution, *files = PINNED_OPTIONS_FROM[tuple(cmd[:2])]
            source = _cli_source(distribution, *files)
            for option in options:
                # click spells a flag "--x" or "--x/--no-x"; cyclopts "--x"
                assert re.search(rf"[\"/]{re.escape(option)}[\"/]", source), (
                    f"{where}: `{' '.join(cmd[:2])}` has no {option}"
                )
        else:
            assert cmd[0] in EXTERNAL_COMMANDS, f"{where}: unexpected command {cmd}"


def _container_env_names() -> dict[str, set[str]]:
    names = {name: set(svc.get("environment") or {}) for name, svc in _compose()["services"].items()}
    for name, pod in _workloads():
        for container in pod["containers"]:
            names.setdefault(name, set()).update(e["name"] for e in container.get("env", []))
    return names


def test_environment_variables_are_ones_the_code_reads() -> None:
    ours = _settings_variables() | _cli_variables()
    mlflow = _cli_source("mlflow", "mlflow/environment_variables.py", "mlflow/cli/__init__.py")
    images = {name: _image_repo(service) for name, service in _compose()["services"].items()}
    for where, names in _container_env_names().items():
        third_party = IMAGE_VARIABLES.get(images.get(where, "deepgate"), set())
        for name in names - third_party - S3_VARIABLES - OTHER_VARIABLES:
            if name.startswith("MLFLOW_") and name not in ours:
                assert f'"{name}"' in mlflow, f"{where}: MLflow reads no {name}"
            elif name.startswith("PREFECT_") or name in ("GX_ANALYTICS_ENABLED",):
                continue  # Prefect's settings: checked against Prefect's model in the slow test below
            else:
                assert name in ours, f"{where}: {name} is read by nothing in components/settings.py or flows/cli.py"


def test_deepgate_containers_get_every_server_setting() -> None:
    # Beyond one machine the embedded defaults would be wrong: each must be set. The artifact
    # root and registry URI are derived from the tracking server (see components/settings.py).
    required = _settings_variables() - {"DEEPGATE_ARTIFACT_ROOT", "MLFLOW_REGISTRY_URI"}
    names = _container_env_names()
    for where in ("worker", "deploy"):
        assert required | {"PREFECT_API_URL"} <= names[where], where
    # The flow-run pod gets PREFECT_API_URL from the worker at run time.
    assert required <= names["flow-run"]
    assert {"MLFLOW_TRACKING_URI", "DEEPGATE_HOME"} <= names["serve"] & names["deepgate-serve"]


@pytest.mark.slow
def test_prefect_variables_are_prefect_settings() -> None:
    from prefect.settings import Settings
    from prefect.settings.legacy import _get_valid_setting_names

    valid = _get_valid_setting_names(Settings)
    for where, names in _container_env_names().items():
        unknown = {n for n in names if n.startswith("PREFECT_")} - valid
        assert not unknown, f"{where}: Prefect has no setting {unknown}"


# --- Kubernetes ---------------------------------------------------------------------------------


def test_manifests_parse_and_name_their_kind() -> None:
    docs = _manifests()
    assert len(docs) >= 10
    for doc in docs:
        assert doc.get("apiVersion") and doc.get("kind") and doc.get("metadata", {}).get("name"), doc
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = {
        *kustomization["resources"],
        *(f.split("=")[-1] for g in kustomization["configMapGenerator"] for f in g["files"]),
    }
    on_disk = {p.name for p in K8S.iterdir()} - {"kustomization.yaml"}
    assert listed == on_disk, "kustomization.yaml and infra/k8s/ disagree"


def test_manifests_are_valid_kubernetes_objects() -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    template = _job_template()
    defaults = {k: v.get("default", 0) for k, v in template["variables"]["properties"].items()}
    defaults |= {"name": "flow-run", "command": ["prefect", "flow-run", "execute"], "labels": {}, "env": {}}
    rendered = json.loads(
        re.sub(
            r"\"\{\{ (\w+) \}\}\"",
            lambda m: json.dumps(defaults[m.group(1)]),
            json.dumps(template["job_configuration"]["job_manifest"]),
        )
    )
    for doc in [*_manifests(), rendered]:
        kubernetes_validate.validate(doc, "1.33.0", strict=True)


def test_serving_deployment_is_ready_on_ready_and_alive_on_health() -> None:
    [serve] = [d for d in _manifests() if d["kind"] == "Deployment" and d["metadata"]["name"] == "deepgate-serve"]
    [container] = serve["spec"]["template"]["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert container["resources"]["requests"] and container["resources"]["limits"]


def test_secrets_reach_containers_only_through_secret_refs() -> None:
    for where, pod in _workloads():
        for container in pod["containers"]:
            for env in container.get("env", []):
                if _is_secret(env["name"]):
                    assert "secretKeyRef" in env.get("valueFrom", {}), f"{where}: {env['name']} is not from a Secret"
    assert not [d for d in _manifests() if d["kind"] == "Secret"], "Secrets are created by hand, never committed"


def test_work_pool_job_can_request_gpus() -> None:
    template = _job_template()
    [container] = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "{{ gpus }}"
    assert template["variables"]["properties"]["gpus"]["type"] == "integer"


def test_multi_node_training_matches_the_readme() -> None:
    docs = {(d["kind"], d["metadata"]["name"]): d for d in _manifests()}
    service = docs["Service", "deepgate-ddp-master"]
    assert service["spec"]["clusterIP"] == "None"
    job = docs["Job", "deepgate-train-workers"]
    assert job["spec"]["completionMode"] == "Indexed"
    [worker] = job["spec"]["template"]["spec"]["containers"]
    script = worker["command"][-1]
    assert "NODE_RANK=$((JOB_COMPLETION_INDEX + 1))" in script and "deepgate train-worker" in script
    env = {e["name"]: e.get("value") for e in worker["env"]}
    assert env["MASTER_ADDR"] == service["metadata"]["name"]
    # Node 0, the flow-run pod: the label the headless Service selects, the same address and port.
    template = _job_template()["job_configuration"]["job_manifest"]["spec"]["template"]
    assert set(service["spec"]["selector"]) == set(template["metadata"]["labels"])
    [flow_run] = template["spec"]["containers"]
    flow_env = {e["name"]: e.get("value") for e in flow_run["env"]}
    assert flow_env["NODE_RANK"] == "0"
    assert flow_env["MASTER_ADDR"] == env["MASTER_ADDR"] and flow_env["MASTER_PORT"] == env["MASTER_PORT"]
    readme = (ROOT / "README.md").read_text()
    assert f"MASTER_PORT={env['MASTER_PORT']}" in readme, "README and infra/k8s/ disagree on MASTER_PORT"
    assert f"nvidia.com/gpu: {worker['resources']['limits']['nvidia.com/gpu']}" in readme


# --- the dependency audit -----------------------------------------------------------------------


def _audit_module() -> Any:
    return load_script(".ci/audit.py", "ci_audit")


def test_audit_fails_only_on_a_vulnerability_with_a_fix() -> None:
    audit = _audit_module()
    report = [
        {"name": "fixable", "version": "1.0", "vulns": [{"id": "GHSA-1", "fix_versions": ["1.1"]}]},
        {"name": "unfixed", "version": "2.0", "vulns": [{"id": "GHSA-2", "fix_versions": []}]},
        {"name": "clean", "version": "3.0", "vulns": []},
    ]
    findings, unaudited, audited = audit.audit(report)
    assert (len(findings), unaudited, audited) == (2, [], 3)
    assert audit.verdict(findings, unaudited) == 1
    assert audit.verdict([f for f in findings if not f.fixed_in], unaudited) == 0
    assert audit.verdict([], ["x==1"]) == 0 and audit.verdict([], ["x==1"], strict=True) == 1
