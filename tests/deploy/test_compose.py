"""docker-compose.yaml: valid against the compose-spec schema, and the deployment invariants hold.

No Docker engine runs here, so the file is checked statically: the vendored compose-spec JSON
schema (compose-spec.SOURCE.md), then what the schema cannot say (shared Airflow secrets,
healthchecks, digests, no insecure Trustee admin mode, no literal secrets).
"""

from __future__ import annotations

import copy
import json
import re
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml
from distributed.harness import REPO_ROOT, init_env

COMPOSE = REPO_ROOT / "docker-compose.yaml"
TRUSTEE_DIR = REPO_ROOT / "deploy" / "compose" / "trustee"
SCHEMA = Path(__file__).with_name("compose-spec.json")

AIRFLOW_SERVICES = {
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
    "airflow-init",
}
SHARED_AIRFLOW_SETTINGS = (
    "AIRFLOW__CORE__FERNET_KEY",
    "AIRFLOW__API_AUTH__JWT_SECRET",
    "AIRFLOW__API__SECRET_KEY",
    "AIRFLOW__CORE__EXECUTION_API_SERVER_URL",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
    "AIRFLOW__CELERY__BROKER_URL",
    "AIRFLOW__CELERY__RESULT_BACKEND",
    "AIRFLOW__CORE__EXECUTOR",
)
DIGEST_REF = re.compile(
    r"^[a-z0-9][a-z0-9._/-]*(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?@sha256:(?P<digest>[0-9a-f]{64})$"
)
PLACEHOLDER_DIGEST = "0" * 64
SECRET_NAME = re.compile(r"PASSWORD|SECRET|FERNET|PRIVATE|TOKEN|(^|_)KEY(_|$)", re.IGNORECASE)
INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Z0-9_]+)(?P<op>:\?|:-|\?|-)?(?P<rest>[^}]*)\}")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict) -> dict:
    return compose["services"]


def _env(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    assert isinstance(env, dict), "environment must be a mapping (one place to read each value)"
    return {k: str(v) for k, v in env.items()}


def test_compose_file_is_valid_against_the_compose_spec_schema(compose: dict) -> None:
    validator = jsonschema.Draft7Validator(json.loads(SCHEMA.read_text()))
    errors = [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(compose)]
    assert errors == []


def test_schema_validation_rejects_a_malformed_compose_file(compose: dict) -> None:
    validator = jsonschema.Draft7Validator(json.loads(SCHEMA.read_text()))
    broken = copy.deepcopy(compose)
    broken["services"]["postgres"]["healthcheck"]["test"] = {"cmd": "pg_isready"}
    broken["services"]["redis"]["restartt"] = "always"
    errors = {tuple(e.path): e.message for e in validator.iter_errors(broken)}
    assert ("services", "postgres", "healthcheck", "test") in errors
    assert any("restartt" in m for m in errors.values())


def test_official_layout_services_are_present(services: dict) -> None:
    expected = AIRFLOW_SERVICES | {"postgres", "redis", "kbs", "as", "rvps", "minio", "mlflow"}
    assert expected <= set(services)
    assert services["postgres"]["image"].startswith("postgres:16@")
    assert services["redis"]["image"].startswith("redis:7.2-bookworm@")
    assert services["airflow-worker"]["command"] == "celery worker"


def test_every_airflow_service_shares_secrets_and_execution_api_url(services: dict) -> None:
    envs = {name: _env(services[name]) for name in AIRFLOW_SERVICES}
    for setting in SHARED_AIRFLOW_SETTINGS:
        values = {name: env.get(setting) for name, env in envs.items()}
        assert None not in values.values(), f"{setting} missing in {values}"
        assert len(set(values.values())) == 1, f"{setting} differs between services: {values}"
    url = envs["airflow-worker"]["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"]
    assert url == "http://airflow-apiserver:8080/execution/"
    assert envs["airflow-worker"]["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"


def test_every_long_running_service_has_a_healthcheck(services: dict) -> None:
    one_shot = {n for n, s in services.items() if s.get("restart") == "no"}
    assert one_shot == {"airflow-init", "trustee-init"}
    for name, service in services.items():
        if name in one_shot:
            continue
        check = service.get("healthcheck")
        assert check and not check.get("disable") and check.get("test"), name


def test_one_shot_services_gate_their_dependents(services: dict) -> None:
    """airflow-init and trustee-init have no healthcheck: dependents wait for their success."""
    gated = {
        dep
        for service in services.values()
        for dep, cond in (service.get("depends_on") or {}).items()
        if cond.get("condition") == "service_completed_successfully"
    }
    assert {"airflow-init", "trustee-init"} <= gated
    for name in AIRFLOW_SERVICES - {"airflow-init"}:
        assert (
            services[name]["depends_on"]["airflow-init"]["condition"]
            == "service_completed_successfully"
        )


def test_airflow_init_checks_secrets_before_anything_else(services: dict) -> None:
    flag, script = services["airflow-init"]["command"]
    assert flag == "-c"
    first = next(line for line in script.splitlines() if line.strip() and "set -e" not in line)
    assert "init_env.py check --from-environment --secrets-dir /run/secrets" in first
    # /run/secrets holds compose secret names, and no run-key root (NOT_IN_AIRFLOW).
    assert "--compose-names" in first
    mounted = set(services["airflow-init"]["secrets"])
    expected = {
        init_env.COMPOSE_SECRET_NAMES[f]
        for f in init_env.SECRET_FILES
        if f not in init_env.NOT_IN_AIRFLOW
    }
    assert expected <= mounted, "airflow-init's check needs every other key file"
    assert "set -euo pipefail" in script
    env = _env(services["airflow-init"])
    for spec in init_env.ENV_SECRETS:
        assert spec.name in env, f"airflow-init cannot check {spec.name}"


def _image_refs(services: dict) -> dict[str, str]:
    refs = {n: s["image"] for n, s in services.items() if "image" in s and "build" not in s}
    for name, service in services.items():
        if "build" in service:
            dockerfile = REPO_ROOT / service["build"]["context"] / service["build"]["dockerfile"]
            for i, line in enumerate(dockerfile.read_text().splitlines()):
                if line.upper().startswith("FROM "):
                    refs[f"{name} ({dockerfile.name} FROM #{i})"] = line.split()[1]
    return refs


def test_every_image_is_pinned_by_digest(services: dict) -> None:
    refs = _image_refs(services)
    assert len(refs) >= 10
    unpinned = {n: r for n, r in refs.items() if not DIGEST_REF.match(r)}
    assert unpinned == {}


def test_placeholder_digests_are_documented_for_resolution(services: dict) -> None:
    """An all-zero digest cannot be pulled (fail closed); each one must be listed in the
    operations guide with the command that resolves it."""
    ops = (REPO_ROOT / "docs" / "OPERATIONS.md").read_text()
    for name, ref in _image_refs(services).items():
        if DIGEST_REF.match(ref).group("digest") == PLACEHOLDER_DIGEST:
            assert ref.split("@")[0] in ops, f"{name}: placeholder {ref} not in OPERATIONS.md"


def _names_a_mounted_file(service: dict, value: str) -> bool:
    """A setting that is the path of a file mounted into the service holds no secret itself."""
    if value.startswith("/run/secrets/"):
        return value.removeprefix("/run/secrets/") in (service.get("secrets") or [])
    return any(
        value.startswith(str(volume).split(":")[1].rstrip("/") + "/")
        for volume in service.get("volumes", [])
        if str(volume).startswith("./") and str(volume).endswith(":ro")
    )


def test_no_literal_secret_in_the_compose_file(services: dict) -> None:
    for name, service in services.items():
        for key, value in _env(service).items():
            refs = list(INTERPOLATION.finditer(value))
            if _names_a_mounted_file(service, value):
                continue
            if SECRET_NAME.search(key) or any(spec.name in value for spec in init_env.ENV_SECRETS):
                assert refs, f"{name}.{key} holds a literal value"
            for ref in refs:
                if ref.group("name") in {s.name for s in init_env.ENV_SECRETS}:
                    # `:?`: compose refuses to start when the variable is unset or empty.
                    assert ref.group("op") == ":?", f"{name}.{key}: {ref.group(0)} has a default"


def test_every_generated_secret_is_used_and_required(services: dict) -> None:
    text = COMPOSE.read_text()
    for spec in init_env.ENV_SECRETS:
        assert f"${{{spec.name}:?" in text, spec.name
    names = "|".join(s.name for s in init_env.ENV_SECRETS)
    assert not re.search(r"\$\{(" + names + r")(:-|-)", text), "a secret has a default value"


def test_secret_files_match_what_init_env_generates(compose: dict) -> None:
    files = {Path(s["file"]).name for s in compose["secrets"].values()}
    # Every generated key file but the data owner's policy key, which no container gets.
    assert files == set(init_env.SECRET_FILES) - init_env.NOT_MOUNTED
    # init_env.py check --compose-names looks each file up under this secret name.
    names = {name: Path(s["file"]).name for name, s in compose["secrets"].items()}
    assert {f: n for n, f in names.items()} == init_env.COMPOSE_SECRET_NAMES
    for secret in compose["secrets"].values():
        assert secret["file"].startswith("./deploy/compose/secrets/")
    ignore = (REPO_ROOT / "deploy" / "compose" / ".gitignore").read_text().split()
    assert "secrets/" in ignore
    assert "owner/" in ignore


def test_env_file_is_ignored_by_git() -> None:
    lines = (REPO_ROOT / ".gitignore").read_text().split()
    assert ".env" in lines


def test_no_insecure_trustee_admin_mode_anywhere() -> None:
    kubernetes = (p for p in (REPO_ROOT / "deploy" / "kubernetes").rglob("*") if p.is_file())
    paths = [COMPOSE, *TRUSTEE_DIR.iterdir(), *kubernetes]
    for path in paths:
        assert "InsecureAllowAll" not in path.read_text(), path


def test_kbs_config_uses_v020_simple_admin_auth_and_https() -> None:
    config = tomllib.loads((TRUSTEE_DIR / "kbs-config.toml").read_text())
    assert config["admin"]["type"] == "Simple"
    personas = config["admin"]["personas"]
    assert personas and all(p["public_key_path"].startswith("/run/secrets/") for p in personas)
    for role in config["admin"].get("roles", []):
        regex = role["allowed_endpoints"]
        assert regex.startswith("^/kbs") and regex.endswith("$")
    assert config["http_server"]["insecure_http"] is False
    assert config["http_server"]["private_key"].startswith("/run/secrets/")
    token = config["attestation_token"]
    # v0.20.0 key name (v0.21+: insecure_header_jwk, which v0.20 would ignore).
    assert token["insecure_key"] is False
    assert "insecure_header_jwk" not in token
    assert token["trusted_certs_paths"] == ["/run/secrets/token_ca"]


def test_trustee_config_files_reference_mounted_secrets(services: dict) -> None:
    mounted = {
        "kbs": ("kbs-config.toml", services["kbs"]),
        "as": ("as-config.json", services["as"]),
    }
    for name, (config_file, service) in mounted.items():
        text = (TRUSTEE_DIR / config_file).read_text()
        used = set(re.findall(r"/run/secrets/([a-z_]+)", text))
        assert used, name
        assert used <= set(service["secrets"]), f"{name} reads unmounted secrets"
    signer = json.loads((TRUSTEE_DIR / "as-config.json").read_text())["attestation_token_broker"]
    assert signer["signer"]["key_path"] == "/run/secrets/as_token_signer_key"


def test_policies_are_mounted_and_loaded_by_trustee_init(services: dict) -> None:
    assert "./coco_ai/policies:/opt/coco-ai/policies:ro" in services["kbs"]["volumes"]
    init = services["trustee-init"]
    assert "./coco_ai/policies:/opt/coco-ai/policies:ro" in init["volumes"]
    assert "--policy-dir=/opt/coco-ai/policies" in init["command"]
    assert init["environment"] == {}, "trustee-init needs no Airflow secret"


def test_published_ports_bind_loopback_only(services: dict) -> None:
    for name, service in services.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} on all hosts"


RUN_KEY_ROOT_FILE = "./deploy/compose/secrets/run-key-root.bin"


def _bind_sources(service: dict) -> list[str]:
    sources = []
    for volume in service.get("volumes", []):
        source = volume["source"] if isinstance(volume, dict) else str(volume).split(":")[0]
        if source.startswith((".", "/")):
            sources.append(source.rstrip("/") or "/")
    return sources


def _exposes(source: str, target: str) -> bool:
    """Whether bind-mounting `source` makes the file `target` visible (itself or a parent)."""
    src, dst = (Path(p.removeprefix("./")).as_posix() for p in (source, target))
    return src in (".", "") or dst == src or dst.startswith(src + "/")


def test_run_key_root_is_mounted_only_into_trustee_init(compose: dict, services: dict) -> None:
    (name,) = [n for n, s in compose["secrets"].items() if s["file"] == RUN_KEY_ROOT_FILE]
    assert name == "run_key_root"
    holders = {n for n, s in services.items() if name in (s.get("secrets") or [])}
    assert holders == {"trustee-init"}
    assert "--run-key-root=/run/secrets/run_key_root" in services["trustee-init"]["command"]


def test_no_service_but_trustee_init_can_read_the_run_key_root_through_a_bind_mount(
    services: dict,
) -> None:
    """Compose secrets are not the only way in: a bind mount of deploy/compose (or above) would
    expose deploy/compose/secrets/, and with it the root, to every Airflow container."""
    for name, service in services.items():
        if name == "trustee-init":
            continue
        for source in _bind_sources(service):
            assert not _exposes(source, RUN_KEY_ROOT_FILE), f"{name} mounts {source}"
    # trustee-init reads the root as its secret, not through a mount of the directory either.
    for source in _bind_sources(services["trustee-init"]):
        assert not _exposes(source, RUN_KEY_ROOT_FILE), source


def test_bind_mount_check_catches_the_directory_mounts() -> None:
    for source in (".", "./deploy", "./deploy/compose", "./deploy/compose/secrets"):
        assert _exposes(source, RUN_KEY_ROOT_FILE), source
    for source in ("./deploy/compose/init_env.py", "./deploy/compose-other", "./coco_ai/policies"):
        assert not _exposes(source, RUN_KEY_ROOT_FILE), source


def test_no_airflow_template_or_service_gets_a_data_owner_secret(services: dict) -> None:
    for name in AIRFLOW_SERVICES:
        assert "run_key_root" not in (services[name].get("secrets") or []), name
        env = _env(services[name])
        assert not any("RUN_KEY_ROOT" in k or "run-key-root.bin" in v for k, v in env.items())


# -- the two Trustee admin credentials (coco_ai.kbs.admin_acl) ---------------------------------

KBS_CONFIGS = {"0.20.0": "kbs-config.toml", "0.21.0": "kbs-config-v0.21.toml"}


@pytest.mark.parametrize("version", sorted(KBS_CONFIGS))
def test_kbs_admin_config_gives_airflow_run_grants_only(version: str, tmp_path: Path) -> None:
    """The shipped [admin] table, read by the stand-in in that version's syntax, is the
    project's two-credential configuration: the data owner everything, Airflow a grant."""
    import time

    from coco_ai.kbs.admin_acl import (
        AIRFLOW_ENDPOINTS,
        AIRFLOW_ROLE,
        DATA_OWNER_ENDPOINTS,
        DATA_OWNER_ROLE,
        mint_airflow_token,
    )
    from coco_ai.kbs.admin_auth import SelfSignedAdminAuth, admin_auth_for
    from coco_ai.trustee_dev.admin import AdminAuthDenied, AdminConfig

    init_env.generate_secret_files(tmp_path)
    by_secret = {
        f"/run/secrets/{n}": tmp_path / f for f, n in init_env.COMPOSE_SECRET_NAMES.items()
    }
    config = AdminConfig.from_toml(
        (TRUSTEE_DIR / KBS_CONFIGS[version]).read_text(),
        version,
        read_key=lambda path: by_secret[path.removeprefix("file://")].read_bytes(),
    )
    assert {(r.role, r.allowed_endpoints) for r in config.rules} == {
        (DATA_OWNER_ROLE, DATA_OWNER_ENDPOINTS),
        (AIRFLOW_ROLE, AIRFLOW_ENDPOINTS),
    }
    owner_pem = (tmp_path / "trustee-admin-private.pem").read_bytes()
    if version == "0.20.0":
        airflow = SelfSignedAdminAuth((tmp_path / "trustee-airflow-private.pem").read_bytes())
    else:
        airflow = f"Bearer {mint_airflow_token(owner_pem)}"
    airflow_header = airflow if isinstance(airflow, str) else airflow.authorization()
    owner_header = admin_auth_for(version, owner_pem).authorization()
    now = time.time()
    grant = "/kbs/v0/resource/coco-ai-run/grant/confidential_finetune-manual__1"
    assert config.authorize(airflow_header, grant, now) == AIRFLOW_ROLE
    for uri in ("/kbs/v0/resource-policy", "/kbs/v0/resource/coco-ai/run-key-root/v1"):
        with pytest.raises(AdminAuthDenied):
            config.authorize(airflow_header, uri, now)
        assert config.authorize(owner_header, uri, now) == DATA_OWNER_ROLE


def test_airflow_services_get_no_key_that_widens_access(services: dict) -> None:
    for name in AIRFLOW_SERVICES:
        mounted = set(services[name].get("secrets") or [])
        for file in init_env.NOT_IN_AIRFLOW - init_env.NOT_MOUNTED:
            assert init_env.COMPOSE_SECRET_NAMES[file] not in mounted, (name, file)
    assert "trustee_airflow_private_key" in services["airflow-init"]["secrets"]
    assert "trustee_admin_private_key" in services["trustee-init"]["secrets"]


# -- the data owner's policy (coco_ai.owner_policy) --------------------------------------------

OWNER_DIR = "./deploy/compose/owner"
OWNER_MOUNT = "/opt/coco-ai/owner"
# Services that run tasks (the Celery worker) or serve the provenance view (the API server), and
# the other long-running Airflow components, which share the same configuration.
TASK_AND_VIEW_SERVICES = AIRFLOW_SERVICES - {"airflow-init"}


def test_every_airflow_service_reads_the_owner_policy_from_a_read_only_mount(
    services: dict,
) -> None:
    for name in TASK_AND_VIEW_SERVICES:
        env = _env(services[name])
        key = env.get("AIRFLOW__COCO_AI__OWNER_PUBLIC_KEY")
        policy = env.get("AIRFLOW__COCO_AI__OWNER_POLICY")
        assert key == f"{OWNER_MOUNT}/{init_env.OWNER_PUBLIC_KEY}", name
        assert policy == f"{OWNER_MOUNT}/{init_env.OWNER_POLICY}", name
        assert f"{OWNER_DIR}:{OWNER_MOUNT}:ro" in services[name]["volumes"], name
    # airflow-init verifies the policy before anything starts (init_env.py check --owner-dir).
    assert f"{OWNER_DIR}:{OWNER_MOUNT}:ro" in services["airflow-init"]["volumes"]
    assert f"--owner-dir {OWNER_MOUNT}" in services["airflow-init"]["command"][1]
    # Nothing writes the owner directory: every mount of it is read-only.
    for name, service in services.items():
        for volume in service.get("volumes", []):
            if str(volume).startswith(OWNER_DIR):
                assert str(volume).endswith(":ro"), (name, volume)


def test_the_owner_mount_exposes_no_secret(services: dict) -> None:
    for secret_file in init_env.SECRET_FILES:
        target = f"./deploy/compose/secrets/{secret_file}"
        assert not _exposes(OWNER_DIR, target), secret_file
    for name in AIRFLOW_SERVICES:
        for source in _bind_sources(services[name]):
            assert not _exposes(source, "./deploy/compose/secrets/owner-policy-key.pem"), (
                name,
                source,
            )


def test_the_owner_policy_key_is_in_no_service(compose: dict, services: dict) -> None:
    assert init_env.OWNER_POLICY_KEY in init_env.NOT_IN_AIRFLOW
    assert init_env.OWNER_POLICY_KEY not in init_env.COMPOSE_SECRET_NAMES
    files = {Path(s["file"]).name for s in compose["secrets"].values()}
    assert init_env.OWNER_POLICY_KEY not in files
    for name, service in services.items():
        for source in _bind_sources(service):
            assert not _exposes(source, f"./deploy/compose/secrets/{init_env.OWNER_POLICY_KEY}")
        env = _env(service)
        assert not any("owner-policy-key" in v for v in env.values()), name


def test_the_worker_signs_with_the_promotion_key_and_the_view_checks_its_public_half(
    services: dict,
) -> None:
    worker = services["airflow-worker"]
    assert _env(worker)["AIRFLOW__COCO_AI__MODEL_SIGNING_KEY"] == "/run/secrets/model_signing_key"
    assert "model_signing_key" in worker["secrets"]
    holders = {n for n, s in services.items() if "model_signing_key" in (s.get("secrets") or [])}
    assert holders == {"airflow-worker", "airflow-init"}, "airflow-init only checks it"
    api = services["airflow-apiserver"]
    public = _env(api)["AIRFLOW__COCO_AI__MODEL_SIGNING_PUBLIC_KEY"]
    assert public.removeprefix("/run/secrets/") in api["secrets"]


def test_rag_serve_runs_beside_its_emulator_with_no_secret_and_only_public_inputs(
    services: dict,
) -> None:
    """The retrieval service: built from images/rag, started only with the `rag` profile, its
    inputs a read-only directory of public material (initdata, config with the sealed store
    credentials, trust anchor), no file secret, no env, its port on loopback."""
    rag = services["rag-serve"]
    assert rag["build"] == {"context": ".", "dockerfile": "images/rag/Dockerfile"}
    assert rag["profiles"] == ["rag"]
    assert "secrets" not in rag and "environment" not in rag and "env_file" not in rag
    assert rag["volumes"] == ["./deploy/compose/rag-serve:/etc/coco-ai/rag-serve:ro"]
    assert rag["ports"] == ["127.0.0.1:8444:8443"]
    (script,) = rag["command"]
    assert "coco-ai guest serve --initdata /etc/coco-ai/rag-serve/initdata.toml" in script
    assert script.rstrip().endswith(
        "exec python -m coco_ai.workloads.rag_serve --config /etc/coco-ai/rag-serve/config.json"
    )
    assert rag["depends_on"]["trustee-init"]["condition"] == "service_completed_successfully"
