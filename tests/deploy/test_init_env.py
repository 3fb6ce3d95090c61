"""deploy/compose/init_env.py: strong generated secrets, and a clear refusal to start without them.

The `check` command is exercised as airflow-init runs it: a separate process, environment in,
exit status and stderr out.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtensionOID
from distributed.harness import REPO_ROOT, init_env

SCRIPT = REPO_ROOT / "deploy" / "compose" / "init_env.py"


@pytest.fixture
def generated(tmp_path: Path) -> tuple[Path, Path]:
    env_file, secrets_dir = tmp_path / ".env", tmp_path / "secrets"
    init_env.generate(env_file, secrets_dir, tmp_path / "owner")
    return env_file, secrets_dir


@pytest.fixture
def owner_dir(generated) -> Path:
    return generated[0].parent / "owner"


def _check(env: dict[str, str], *extra: str) -> subprocess.CompletedProcess:
    base = dict(os.environ)
    for spec in init_env.ENV_SECRETS:
        base.pop(spec.name, None)
    return subprocess.run(
        [sys.executable, str(SCRIPT), "check", "--from-environment", *extra],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_generated_env_file_is_private_and_passes_the_check(generated) -> None:
    env_file, secrets_dir = generated
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(secrets_dir.stat().st_mode) == 0o700
    values = init_env.read_env_file(env_file)
    assert init_env.check_env_values(values) == []
    assert init_env.check_secret_files(secrets_dir) == []
    assert values["AIRFLOW_UID"] == str(os.getuid())
    result = _check(values, "--secrets-dir", str(secrets_dir))
    assert result.returncode == 0, result.stderr


def test_generated_values_are_strong_and_distinct(generated) -> None:
    values = init_env.read_env_file(generated[0])
    secrets = [values[s.name] for s in init_env.ENV_SECRETS if s.name != "MINIO_ROOT_USER"]
    assert len(set(secrets)) == len(secrets)
    for value in secrets:
        assert len(value) >= 32
    Fernet(values["FERNET_KEY"].encode()).decrypt(
        Fernet(values["FERNET_KEY"].encode()).encrypt(b"x")
    )
    assert len(base64.urlsafe_b64decode(values["FERNET_KEY"])) == 32
    # A second generation shares nothing with the first.
    again = init_env.generate_env_values()
    assert not set(again.values()) & set(values.values())


def test_generated_key_files_fit_together(generated) -> None:
    secrets_dir = generated[1]
    for name in sorted(init_env.PRIVATE_FILES):
        assert stat.S_IMODE((secrets_dir / name).stat().st_mode) == 0o600, name
    root = (secrets_dir / "run-key-root.bin").read_bytes()
    assert len(root) == 32 and root != bytes(32)
    admin = serialization.load_pem_private_key(
        (secrets_dir / "trustee-admin-private.pem").read_bytes(), None
    )
    assert isinstance(admin, ed25519.Ed25519PrivateKey)
    public = serialization.load_pem_public_key(
        (secrets_dir / "trustee-admin-public.pem").read_bytes()
    )
    public.verify(admin.sign(b"admin request"), b"admin request")

    # The token signer is P-256 (Trustee refuses anything else) and chains to token-ca.pem.
    signer_key = serialization.load_pem_private_key(
        (secrets_dir / "as-token-signer-key.pem").read_bytes(), None
    )
    assert isinstance(signer_key, ec.EllipticCurvePrivateKey)
    assert signer_key.curve.name == "secp256r1"
    chain = x509.load_pem_x509_certificates((secrets_dir / "as-token-signer-cert.pem").read_bytes())
    ca = x509.load_pem_x509_certificate((secrets_dir / "token-ca.pem").read_bytes())
    assert chain[0].public_key() == signer_key.public_key()
    chain[0].verify_directly_issued_by(ca)
    assert chain[1] == ca

    tls = x509.load_pem_x509_certificates((secrets_dir / "kbs-tls-cert.pem").read_bytes())
    kbs_ca = x509.load_pem_x509_certificate((secrets_dir / "kbs-ca.pem").read_bytes())
    tls[0].verify_directly_issued_by(kbs_ca)
    names = tls[0].extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
    assert "kbs" in names.value.get_values_for_type(x509.DNSName)
    assert kbs_ca != ca, "TLS and token trust anchors are separate"


@pytest.mark.parametrize("variable", [s.name for s in init_env.ENV_SECRETS])
def test_missing_secret_fails_with_the_variable_named(generated, variable: str) -> None:
    values = init_env.read_env_file(generated[0])
    del values[variable]
    result = _check(values)
    assert result.returncode == 2
    assert f"{variable} is missing" in result.stderr
    assert "refusing to start" in result.stderr


@pytest.mark.parametrize("variable", ["FERNET_KEY", "AIRFLOW_JWT_SECRET", "POSTGRES_PASSWORD"])
def test_empty_secret_fails_with_the_variable_named(generated, variable: str) -> None:
    values = init_env.read_env_file(generated[0])
    values[variable] = "  "
    result = _check(values)
    assert result.returncode == 2
    assert f"{variable} is empty" in result.stderr


@pytest.mark.parametrize(
    ("variable", "value", "reason"),
    [
        ("AIRFLOW_JWT_SECRET", "airflow_jwt_secret", "well-known default"),
        ("MINIO_ROOT_PASSWORD", "minioadmin", "well-known default"),
        ("POSTGRES_PASSWORD", "short", "shorter than"),
        ("FERNET_KEY", base64.urlsafe_b64encode(b"16 bytes only!!!").decode(), "32 bytes"),
        ("FERNET_KEY", "not base64 !!", "not url-safe base64"),
    ],
)
def test_weak_secret_fails(generated, variable: str, value: str, reason: str) -> None:
    values = init_env.read_env_file(generated[0])
    values[variable] = value
    result = _check(values)
    assert result.returncode == 2
    assert variable in result.stderr and reason in result.stderr


def test_missing_key_file_fails_with_the_file_named(generated) -> None:
    env_file, secrets_dir = generated
    (secrets_dir / "trustee-admin-public.pem").unlink()
    (secrets_dir / "token-ca.pem").write_bytes(b"")
    result = _check(init_env.read_env_file(env_file), "--secrets-dir", str(secrets_dir))
    assert result.returncode == 2
    assert "trustee-admin-public.pem is missing" in result.stderr
    assert "token-ca.pem is empty" in result.stderr


def test_errors_never_print_secret_values(generated) -> None:
    values = init_env.read_env_file(generated[0])
    values["POSTGRES_PASSWORD"] = "tooShortButSecret"
    result = _check(values)
    assert result.returncode == 2
    for value in values.values():
        if len(value) > 8:
            assert value not in result.stderr + result.stdout


def test_generate_refuses_to_overwrite_existing_secrets(generated) -> None:
    env_file, secrets_dir = generated
    before = env_file.read_bytes()
    owner = env_file.parent / "owner"
    with pytest.raises(init_env.SecretsError, match="refusing to overwrite"):
        init_env.generate(env_file, secrets_dir, owner)
    assert env_file.read_bytes() == before
    # The owner's policy alone is reason enough: it may hold the data owner's approvals.
    with pytest.raises(init_env.SecretsError, match=r"owner-policy\.jws"):
        init_env.generate(env_file.parent / "other.env", env_file.parent / "other", owner)
    init_env.generate(env_file, secrets_dir, owner, force=True)
    assert env_file.read_bytes() != before


def test_check_without_env_file_says_how_to_generate(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "check", "--env-file", str(tmp_path / ".env")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "init_env.py generate" in result.stderr


def test_fernet_rotation_pair_is_accepted_but_each_key_is_checked(generated) -> None:
    values = init_env.read_env_file(generated[0])
    old = values["FERNET_KEY"]
    values["FERNET_KEY"] = f"{Fernet.generate_key().decode()},{old}"
    assert init_env.check_env_values(values) == []
    values["FERNET_KEY"] = f"{old},tooshort"
    (problem,) = init_env.check_env_values(values)
    assert problem.startswith("FERNET_KEY key #2")


@pytest.mark.parametrize("group", sorted(init_env.KEY_GROUPS))
def test_rotate_replaces_one_group_and_keeps_the_previous_keys(generated, group: str) -> None:
    secrets_dir = generated[1]
    before = {n: (secrets_dir / n).read_bytes() for n in init_env.SECRET_FILES}
    previous = init_env.rotate_key_group(secrets_dir, group)
    for name, content in before.items():
        now = (secrets_dir / name).read_bytes()
        if name in init_env.KEY_GROUPS[group]:
            assert now != content and (previous / name).read_bytes() == content
        else:
            assert now == content
    assert init_env.check_secret_files(secrets_dir) == []
    assert stat.S_IMODE(previous.stat().st_mode) == 0o700


def test_a_fresh_generation_draws_a_new_run_key_root(tmp_path: Path) -> None:
    init_env.generate_secret_files(tmp_path / "a", only={"run-key-root.bin"})
    init_env.generate_secret_files(tmp_path / "b", only={"run-key-root.bin"})
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["run-key-root.bin"]
    a, b = ((tmp_path / d / "run-key-root.bin").read_bytes() for d in "ab")
    assert a != b


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda p: p.unlink(), "run-key-root.bin is missing"),
        (lambda p: p.write_bytes(b""), "run-key-root.bin is empty"),
        (lambda p: p.write_bytes(bytes(31)), "is 31 bytes; a run-key root is exactly 32"),
        (lambda p: p.write_bytes(p.read_bytes() + b"\n"), "is 33 bytes"),
        (lambda p: p.chmod(0o644), "readable by group or others"),
    ],
)
def test_check_refuses_a_bad_run_key_root(generated, change, message: str) -> None:
    env_file, secrets_dir = generated
    root = secrets_dir / "run-key-root.bin"
    secret = root.read_bytes()
    change(root)
    result = _check(init_env.read_env_file(env_file), "--secrets-dir", str(secrets_dir))
    assert result.returncode == 2
    assert message in result.stderr
    assert "coco-ai checkpoint decrypt --run-key-root-file" in result.stderr
    assert secret.hex() not in result.stderr + result.stdout


def test_check_refuses_a_private_key_readable_by_others(generated) -> None:
    secrets_dir = generated[1]
    (secrets_dir / "kbs-tls-key.pem").chmod(0o640)
    (secrets_dir / "kbs-tls-cert.pem").chmod(0o644)  # public: fine
    (problem,) = init_env.check_secret_files(secrets_dir)
    assert "kbs-tls-key.pem is readable by group or others (mode 640)" in problem


def test_compose_check_reads_run_secrets_without_the_run_key_root(generated, tmp_path) -> None:
    """airflow-init checks /run/secrets/<compose name>; the run-key root is never there."""
    env_file, secrets_dir = generated
    run_secrets = tmp_path / "run-secrets"
    run_secrets.mkdir()
    for file, secret in init_env.COMPOSE_SECRET_NAMES.items():
        if file not in init_env.NOT_IN_AIRFLOW:
            (run_secrets / secret).write_bytes((secrets_dir / file).read_bytes())
    assert not (run_secrets / "run_key_root").exists()
    values = init_env.read_env_file(env_file)
    ok = _check(values, "--secrets-dir", str(run_secrets), "--compose-names")
    assert ok.returncode == 0, ok.stderr
    # Without --compose-names the same directory is wrong: the file names differ.
    assert _check(values, "--secrets-dir", str(run_secrets)).returncode == 2
    (run_secrets / "token_ca").unlink()
    missing = _check(values, "--secrets-dir", str(run_secrets), "--compose-names")
    assert missing.returncode == 2
    assert f"{run_secrets / 'token_ca'} is missing" in missing.stderr


def test_run_key_root_is_in_no_rotation_group() -> None:
    """A rotated root needs a new version path (v2), not a new file under v1."""
    assert all("run-key-root.bin" not in files for files in init_env.KEY_GROUPS.values())
    assert set(init_env.COMPOSE_SECRET_NAMES) == set(init_env.SECRET_FILES) - init_env.NOT_MOUNTED


# -- the data owner's policy key and first policy ------------------------------------------------


def _public_pem(key) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def test_first_owner_policy_verifies_with_the_written_key_and_approves_nothing(
    generated, owner_dir: Path
) -> None:
    from coco_ai.owner_policy import OwnerPolicy, verify_owner_policy

    secrets_dir = generated[1]
    signed = verify_owner_policy(
        (owner_dir / "owner-policy.jws").read_bytes(), (owner_dir / "owner-public.pem").read_bytes()
    )
    policy = signed.policy
    # Fail closed: no input, recipe or image approved, so nothing can be promoted yet.
    assert policy.approved_base_models == frozenset()
    assert policy.approved_datasets == frozenset()
    assert policy.approved_training_recipes == frozenset()
    assert policy.approved_images == frozenset()
    index = policy.for_workload("rag_index")  # the RAG index DAG's outputs: approved nothing
    assert index.registry_name == "coco-ai-rag-index"
    assert all(digests == frozenset() for digests in index.approved_inputs.values())
    assert index.approved_recipes == frozenset()
    assert index.champion_max_regression == 0.0
    assert policy.allow_development_evidence is False
    assert policy.min_gpus == 1
    # The policy key is the data owner's (0600, kept with the secrets), and no other.
    owner_key = serialization.load_pem_private_key(
        (secrets_dir / "owner-policy-key.pem").read_bytes(), None
    )
    assert isinstance(owner_key, ec.EllipticCurvePrivateKey)
    assert owner_key.curve.name == "secp256r1"
    assert _public_pem(owner_key) == (owner_dir / "owner-public.pem").read_text()
    assert stat.S_IMODE((secrets_dir / "owner-policy-key.pem").stat().st_mode) == 0o600
    assert not (owner_dir / "owner-policy-key.pem").exists()
    # Trust: this stack's token CA, pinned to its attestation service's own signing certificate.
    assert policy.trust_anchor_pem == (secrets_dir / "token-ca.pem").read_text()
    signer = x509.load_pem_x509_certificate(policy.token_signer_pem.encode())
    signer_key = serialization.load_pem_private_key(
        (secrets_dir / "as-token-signer-key.pem").read_bytes(), None
    )
    assert signer.public_key() == signer_key.public_key()
    assert policy.token_signer_pem.count("BEGIN CERTIFICATE") == 1, "the leaf, not the chain"
    # Promotion signer: the stack's model-signing key, which the worker signs with.
    model_key = serialization.load_pem_private_key(
        (secrets_dir / "model-signing-key.pem").read_bytes(), None
    )
    assert isinstance(model_key, ec.EllipticCurvePrivateKey)
    assert policy.promotion_signers == (_public_pem(model_key),)
    assert (secrets_dir / "model-signing-public.pem").read_text() == _public_pem(model_key)
    # The document beside it is exactly what the JWS carries, ready to edit and re-sign.
    document = json.loads((owner_dir / "owner-policy.json").read_text())
    assert OwnerPolicy.from_dict(document) == policy
    assert document == policy.to_dict()


def test_a_second_generation_has_its_own_owner_key(generated, owner_dir: Path, tmp_path) -> None:
    from coco_ai.owner_policy import OwnerPolicyError, verify_owner_policy

    init_env.generate(tmp_path / "b.env", tmp_path / "b-secrets", tmp_path / "b-owner")
    with pytest.raises(OwnerPolicyError, match="does not verify"):
        verify_owner_policy(
            (tmp_path / "b-owner" / "owner-policy.jws").read_bytes(),
            (owner_dir / "owner-public.pem").read_bytes(),
        )


def test_check_verifies_the_owner_policy(generated, owner_dir: Path, tmp_path) -> None:
    env_file, secrets_dir = generated
    values = init_env.read_env_file(env_file)
    ok = _check(values, "--secrets-dir", str(secrets_dir), "--owner-dir", str(owner_dir))
    assert ok.returncode == 0, ok.stderr

    # A policy signed by someone else (here: another deployment's owner) is refused, named.
    init_env.generate(tmp_path / "b.env", tmp_path / "b-secrets", tmp_path / "b-owner")
    (owner_dir / "owner-policy.jws").write_bytes(
        (tmp_path / "b-owner" / "owner-policy.jws").read_bytes()
    )
    forged = _check(values, "--owner-dir", str(owner_dir))
    assert forged.returncode == 2
    assert "owner-policy.jws" in forged.stderr
    assert "does not verify with the data owner's key" in forged.stderr

    (owner_dir / "owner-policy.jws").unlink()
    (owner_dir / "owner-public.pem").write_bytes(b"")
    missing = _check(values, "--owner-dir", str(owner_dir))
    assert missing.returncode == 2
    assert "owner-policy.jws is missing" in missing.stderr
    assert "owner-public.pem is empty" in missing.stderr


@pytest.mark.parametrize("group", sorted(init_env.KEY_GROUPS))
def test_rotating_a_key_the_owner_policy_names_says_to_re_sign(generated, group: str) -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "rotate", group, "--secrets-dir", str(generated[1])],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert ("re-sign it" in done.stdout) == (group in {"token-signer", "model-signing"})


def test_add_missing_completes_an_earlier_deployment_without_touching_its_keys(
    generated, owner_dir: Path
) -> None:
    """A deployment generated before the owner policy existed has no promotion key, no owner
    key and no owner directory: `generate --add-missing` writes exactly those."""
    import shutil

    env_file, secrets_dir = generated
    new = {"model-signing-key.pem", "model-signing-public.pem", "owner-policy-key.pem"}
    for name in new:
        (secrets_dir / name).unlink()
    shutil.rmtree(owner_dir)
    before = {p.name: p.read_bytes() for p in secrets_dir.iterdir() if p.is_file()}
    env_before = env_file.read_bytes()
    done = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "generate",
            "--add-missing",
            "--env-file",
            str(env_file),
            "--secrets-dir",
            str(secrets_dir),
            "--owner-dir",
            str(owner_dir),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert env_file.read_bytes() == env_before
    for name, content in before.items():
        assert (secrets_dir / name).read_bytes() == content, name
    assert {p.name for p in secrets_dir.iterdir() if p.is_file()} - set(before) == new
    values = init_env.read_env_file(env_file)
    ok = _check(values, "--secrets-dir", str(secrets_dir), "--owner-dir", str(owner_dir))
    assert ok.returncode == 0, ok.stderr
    # Everything there: nothing to do, nothing replaced.
    policy = (owner_dir / "owner-policy.jws").read_bytes()
    assert init_env.add_missing(secrets_dir, owner_dir) == []
    assert (owner_dir / "owner-policy.jws").read_bytes() == policy


def test_add_missing_refuses_a_partial_group(generated, owner_dir: Path) -> None:
    secrets_dir = generated[1]
    (secrets_dir / "model-signing-public.pem").unlink()
    with pytest.raises(init_env.SecretsError, match=r"partial key group.*model-signing-key"):
        init_env.add_missing(secrets_dir, owner_dir)
    assert (secrets_dir / "model-signing-key.pem").exists()
    (owner_dir / "owner-policy.jws").unlink()
    with pytest.raises(init_env.SecretsError, match="owner-public"):
        init_env.add_missing(secrets_dir, owner_dir)


def test_airflow_reads_the_generated_policy_and_the_next_read_sees_a_re_signed_one(
    generated, owner_dir: Path, monkeypatch
) -> None:
    """As compose configures the Airflow services; then the OPERATIONS.md approval procedure:
    edit the document, sign with the owner's key, rename into place. No restart: the next read
    (the next task) applies it, and a policy signed by anyone else is refused."""
    from coco_ai.owner_policy import OwnerPolicy, OwnerPolicyError, generate_owner_key
    from coco_ai_airflow._settings import owner_policy

    monkeypatch.setenv("AIRFLOW__COCO_AI__OWNER_PUBLIC_KEY", str(owner_dir / "owner-public.pem"))
    monkeypatch.setenv("AIRFLOW__COCO_AI__OWNER_POLICY", str(owner_dir / "owner-policy.jws"))
    first = owner_policy()
    assert first.policy.version == 1 and first.policy.approved_base_models == frozenset()

    document = json.loads((owner_dir / "owner-policy.json").read_text())
    base_model = "sha256:" + "ab" * 32
    document["approved"]["base_models"].append(base_model)
    document["version"] += 1
    owner_key = (generated[1] / "owner-policy-key.pem").read_bytes()
    staged = owner_dir / "owner-policy.jws.new"
    staged.write_text(OwnerPolicy.from_dict(document).sign(owner_key))
    staged.rename(owner_dir / "owner-policy.jws")
    second = owner_policy()
    assert second.policy.version == 2
    assert second.policy.approved_base_models == {base_model}
    assert second.digest != first.digest

    intruder, _ = generate_owner_key()
    document["attestation"]["allow_development_evidence"] = True
    (owner_dir / "owner-policy.jws").write_text(OwnerPolicy.from_dict(document).sign(intruder))
    with pytest.raises(OwnerPolicyError, match="does not verify"):
        owner_policy()
