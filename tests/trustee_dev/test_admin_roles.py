"""Two admin credentials over real HTTP, on each Trustee version: the data owner's can do
everything, Airflow's can write and delete a run's grant and nothing else.

The stand-in is configured from the `[admin]` TOML that coco_ai.kbs.admin_acl writes (the same
text the devstack serves and deploy/ ships), parsed in the emulated version's own syntax.
"""

from __future__ import annotations

import base64
import http.client
import json
import ssl
from dataclasses import dataclass
from pathlib import Path

import pytest

from coco_ai import policies
from coco_ai.kbs.admin_acl import (
    AIRFLOW_ENDPOINTS,
    AIRFLOW_ROLE,
    DATA_OWNER_ROLE,
    admin_config_toml,
    mint_airflow_token,
)
from coco_ai.kbs.admin_auth import (
    BearerTokenAdminAuth,
    SelfSignedAdminAuth,
    admin_auth_for,
    mint_admin_token,
)
from coco_ai.kbs.versions import TRUSTEE_VERSIONS, self_signed_admin_auth
from coco_ai.trustee_dev import serve_in_thread
from coco_ai.trustee_dev.admin import AdminAuthDenied, AdminConfig, AdminConfigError
from coco_ai.trustee_dev.state import StateDir
from tests.trustee_dev.conftest import AdminKeys, b64url_nopad, make_admin_keys

pytestmark = pytest.mark.timeout(60)

GRANT = "coco-ai-run/grant/run-1"


@dataclass
class TwoCredentials:
    version: str
    url: str
    ca: bytes
    state: StateDir
    owner: object  # AdminAuth
    airflow: object  # AdminAuth

    def call(self, auth, method: str, raw_path: str, body: bytes = b"") -> tuple[int, str]:
        """One request with `raw_path` sent exactly as written (no client normalisation)."""
        host, port = self.url.removeprefix("https://").rsplit(":", 1)
        conn = http.client.HTTPSConnection(
            host, int(port), context=ssl.create_default_context(cadata=self.ca.decode()), timeout=10
        )
        try:
            conn.request(
                method, raw_path, body=body, headers={"Authorization": auth.authorization()}
            )
            response = conn.getresponse()
            return response.status, response.read().decode(errors="replace")
        finally:
            conn.close()


def airflow_auth(version: str, owner: AdminKeys, airflow: AdminKeys):
    """What Airflow's `trustee` connection holds on each version."""
    if self_signed_admin_auth(version):
        return SelfSignedAdminAuth(airflow.private_pem)
    return BearerTokenAdminAuth(mint_airflow_token(owner.private_pem))


def two_credential_config(version: str, tmp: Path, owner: AdminKeys, airflow: AdminKeys) -> str:
    (tmp / "owner-public.pem").write_bytes(owner.public_pem)
    (tmp / "airflow-public.pem").write_bytes(airflow.public_pem)
    return admin_config_toml(
        version,
        str(tmp / "owner-public.pem"),
        str(tmp / "airflow-public.pem") if self_signed_admin_auth(version) else None,
    )


@pytest.fixture(scope="module", params=TRUSTEE_VERSIONS)
def creds(request, tmp_path_factory):
    version = request.param
    tmp = tmp_path_factory.mktemp("two-creds")
    owner, airflow = make_admin_keys(), make_admin_keys()
    config = AdminConfig.from_toml(two_credential_config(version, tmp, owner, airflow), version)
    server = serve_in_thread(tmp / "state", config, trustee_version=version)
    try:
        yield TwoCredentials(
            version,
            server.url,
            server.tls_ca_path.read_bytes(),
            StateDir(tmp / "state"),
            admin_auth_for(version, owner.private_pem),
            airflow_auth(version, owner, airflow),
        )
    finally:
        server.stop()


def _policy_body(text: str) -> bytes:
    return json.dumps({"policy": b64url_nopad(text)}).encode()


def _attestation_policy_body() -> bytes:
    text = policies.load("attestation_cpu_sample")
    return json.dumps(
        {"type": "rego", "policy_id": "default_cpu", "policy": b64url_nopad(text)}
    ).encode()


def _reference_value_body() -> bytes:
    payload = base64.b64encode(json.dumps({"svn": ["1"]}).encode()).decode()
    return json.dumps({"version": "0.1.0", "type": "sample", "payload": payload}).encode()


def test_airflow_writes_and_deletes_a_grant(creds):
    status, body = creds.call(creds.airflow, "POST", f"/kbs/v0/resource/{GRANT}", b"grant")
    assert status == 200, body
    assert creds.state.get_resource(GRANT).data == b"grant"
    status, body = creds.call(creds.airflow, "DELETE", f"/kbs/v0/resource/{GRANT}")
    assert status == 200, body
    assert creds.state.get_resource(GRANT) is None


# Everything beyond a grant: (method, raw path, body). Each must be refused for Airflow.
REFUSED = [
    ("GET", "/kbs/v0/resource-policy", b""),
    ("POST", "/kbs/v0/resource-policy", _policy_body("package policy\ndefault allow := true\n")),
    ("POST", "/kbs/v0/attestation-policy", _attestation_policy_body()),
    ("GET", "/kbs/v0/reference-value/svn", b""),
    ("POST", "/kbs/v0/reference-value", _reference_value_body()),
    ("POST", "/kbs/v0/resource/coco-ai/run-key-root/v1", b"x" * 32),
    ("DELETE", "/kbs/v0/resource/coco-ai/run-key-root/v1", b""),
    ("POST", "/kbs/v0/resource/coco-ai/dataset-key/demo-v1", b"x" * 32),
    ("POST", "/kbs/v0/resource/coco-ai-run/checkpoint-key/run-1", b"x" * 32),
    ("POST", "/kbs/v0/resource/coco-ai-run/other/run-1", b"x"),
    # grant-path tricks
    ("POST", "/kbs/v0/resource/coco-ai-run/grant/run-1/extra", b"x"),
    ("POST", "/kbs/v0/resource/coco-ai-run/grant/a%2F..%2F..%2Fcoco-ai%2Frun-key-root", b"x"),
    ("POST", "/kbs/v0/resource/coco-ai-run/grant/%2e%2e", b"x"),
    ("POST", "/kbs/v0/resource/coco-ai-run/grant/..", b"x"),
    ("POST", "/kbs/v0/resource/coco-ai-run/grant/../../coco-ai/run-key-root/v1", b"x"),
    ("POST", "/kbs/v0/resource/coco-ai-run/grant/run-1?x=y", b"x"),
    ("POST", "/kbs/v0/resource/coco-ai-run/grant/run-1?/../../resource-policy", b"x"),
    ("POST", "/kbs/v0/resource/coco-ai-run/grant/", b"x"),
    ("POST", "/kbs/v0/resource/coco-ai-run/grant", b"x"),
    ("POST", "/kbs/v0/provisioner/provision", b'{"vm_name": "pod"}'),
]


def _state_snapshot(state: StateDir) -> dict[str, bytes]:
    root = state.root
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "tls" not in p.parts
    }


@pytest.mark.parametrize(
    ("method", "path", "body"), REFUSED, ids=[f"{m} {p}" for m, p, _ in REFUSED]
)
def test_airflow_is_refused_everything_else(creds, method, path, body):
    before = _state_snapshot(creds.state)
    status, text = creds.call(creds.airflow, method, path, body)
    # 401 from the admin check (or the path check, stricter than Trustee, for %/..); 404 where
    # the path names no endpoint or plugin at all. Never 2xx, and nothing stored changed.
    assert status in (401, 404), (status, text)
    assert _state_snapshot(creds.state) == before
    if status == 401 and "%" not in path and ".." not in path:
        kind = json.loads(text)["type"].rsplit("/", 1)[1]
        assert kind in ("AdminAuth", "AdminAuthAccess", "AdminAuthInitialization"), text


def test_the_owner_can_do_everything(creds):
    owner = creds.owner
    assert creds.call(owner, "GET", "/kbs/v0/resource-policy")[0] == 200
    dev = policies.load("resource_dev")
    assert creds.call(owner, "POST", "/kbs/v0/resource-policy", _policy_body(dev))[0] == 200
    assert (
        creds.call(owner, "POST", "/kbs/v0/attestation-policy", _attestation_policy_body())[0]
        == 200
    )
    assert creds.call(owner, "POST", "/kbs/v0/reference-value", _reference_value_body())[0] == 200
    assert creds.call(owner, "GET", "/kbs/v0/reference-value/svn")[0] == 200
    for path in ("coco-ai/run-key-root/v1", "coco-ai/dataset-key/demo-v1", GRANT):
        assert creds.call(owner, "POST", f"/kbs/v0/resource/{path}", b"k" * 32)[0] == 200
        assert creds.state.get_resource(path).data == b"k" * 32
        assert creds.call(owner, "DELETE", f"/kbs/v0/resource/{path}")[0] == 200


def test_a_token_from_an_untrusted_key_claiming_the_owner_role_is_refused(creds):
    """v0.20.0 reads the role from the persona whose key verifies, never from the token;
    v0.21.0+ reads the claim, but only a token signed with a trusted issuer's key counts, and
    Airflow holds none."""
    stranger = make_admin_keys()
    forged = BearerTokenAdminAuth(mint_admin_token(stranger.private_pem, role=DATA_OWNER_ROLE))
    status, _ = creds.call(forged, "GET", "/kbs/v0/resource-policy")
    assert status == 401


def test_a_v020_persona_token_claiming_the_owner_role_is_still_airflow(tmp_path):
    owner, airflow = make_admin_keys(), make_admin_keys()
    text = two_credential_config("0.20.0", tmp_path, owner, airflow)
    config = AdminConfig.from_toml(text, "0.20.0")
    claiming_admin = BearerTokenAdminAuth(
        mint_admin_token(airflow.private_pem, role=DATA_OWNER_ROLE, audience=None)
    )
    with pytest.raises(AdminAuthDenied, match="persona airflow not allowed"):
        config.authorize(claiming_admin.authorization(), "/kbs/v0/resource-policy", _now())


def _now() -> float:
    import time

    return time.time()


# -- the rules themselves, without the stand-in's stricter path check in front ------------------


@pytest.mark.parametrize("version", TRUSTEE_VERSIONS)
@pytest.mark.parametrize(
    "uri",
    [
        "/kbs/v0/resource/coco-ai-run/grant/run-1/extra",
        "/kbs/v0/resource/coco-ai-run/grant/a%2Fb",
        "/kbs/v0/resource/coco-ai-run/grant/..",
        "/kbs/v0/resource/coco-ai-run/grant/.hidden",
        "/kbs/v0/resource/coco-ai-run/grant/run-1?x=y",
        "/kbs/v0/resource/coco-ai-run/grant/",
        "/kbs/v0/resource/coco-ai-run/checkpoint-key/run-1",
        "/kbs/v0/resource-policy",
        "/kbs/v0/resource/coco-ai-run/grant/run-1\n",
    ],
)
def test_airflow_rule_matches_one_grant_segment_only(version, uri, tmp_path):
    owner, airflow = make_admin_keys(), make_admin_keys()
    config = AdminConfig.from_toml(
        two_credential_config(version, tmp_path, owner, airflow), version
    )
    auth = airflow_auth(version, owner, airflow)
    assert (
        config.authorize(auth.authorization(), "/kbs/v0/resource/coco-ai-run/grant/r-1.a_b", _now())
        == AIRFLOW_ROLE
    )
    with pytest.raises(AdminAuthDenied):
        config.authorize(auth.authorization(), uri, _now())
    if "\n" not in uri:  # `.` matches no line break in Rust either: nobody gets that one
        owner_auth = admin_auth_for(version, owner.private_pem)
        assert config.authorize(owner_auth.authorization(), uri, _now()) == DATA_OWNER_ROLE


def test_v020_without_roles_every_persona_may_call_everything(tmp_path):
    owner = make_admin_keys()
    (tmp_path / "k.pem").write_bytes(owner.public_pem)
    config = AdminConfig.from_toml(
        '[admin]\ntype = "Simple"\n[[admin.personas]]\nid = "anyone"\npublic_key_path = "k.pem"\n',
        "0.20.0",
        base_dir=tmp_path,
    )
    auth = SelfSignedAdminAuth(owner.private_pem)
    assert config.authorize(auth.authorization(), "/kbs/v0/resource-policy", _now()) == "anyone"


def test_v021_without_acls_nobody_may_call_anything(tmp_path):
    owner = make_admin_keys()
    (tmp_path / "k.pem").write_bytes(owner.public_pem)
    config = AdminConfig.from_toml(
        '[admin]\nauthorization_mode = "AuthenticatedAuthorization"\n'
        "[admin.authentication.bearer_jwt]\n"
        'identity_providers = [{ public_key_uri = "file://k.pem" }]\n'
        "[admin.authorization.regex_acl]\nacls = []\n",
        "0.21.0",
        base_dir=tmp_path,
    )
    token = mint_admin_token(owner.private_pem)
    with pytest.raises(AdminAuthDenied, match="Role admin not allowed for path /kbs/v0/x"):
        config.authorize(f"Bearer {token}", "/kbs/v0/x", _now())


def test_v021_takes_several_rules_per_role(tmp_path):
    owner = make_admin_keys()
    (tmp_path / "k.pem").write_bytes(owner.public_pem)
    config = AdminConfig.from_toml(
        '[admin]\nauthorization_mode = "AuthenticatedAuthorization"\n'
        "[admin.authentication.bearer_jwt]\n"
        'identity_providers = [{ issuer = "coco-ai", public_key_uri = "k.pem" }]\n'
        "[admin.authorization.regex_acl]\n"
        'acls = [{ role = "admin", allowed_endpoints = "^/kbs/v0/a$" },'
        ' { role = "admin", allowed_endpoints = "^/kbs/v0/b$" }]\n',
        "main",
        base_dir=tmp_path,
    )
    header = f"Bearer {mint_admin_token(owner.private_pem)}"
    assert config.authorize(header, "/kbs/v0/a", _now()) == "admin"
    assert config.authorize(header, "/kbs/v0/b", _now()) == "admin"
    with pytest.raises(AdminAuthDenied):
        config.authorize(header, "/kbs/v0/c", _now())
    wrong_issuer = f"Bearer {mint_admin_token(owner.private_pem, issuer='someone-else')}"
    with pytest.raises(AdminAuthDenied, match="Cannot verify token with any of the issuers"):
        config.authorize(wrong_issuer, "/kbs/v0/a", _now())


SIMPLE_PERSONA = (
    '[admin]\ntype = "Simple"\n[[admin.personas]]\nid = "a"\npublic_key_path = "k.pem"\n'
)


@pytest.mark.parametrize(
    ("version", "text", "message"),
    [
        (
            "0.20.0",
            SIMPLE_PERSONA + '[[admin.roles]]\nid = "a"\nallowed_endpoints = "/kbs/.*$"\n',
            "anchored|start with",
        ),
        (
            "0.20.0",
            SIMPLE_PERSONA + '[[admin.roles]]\nid = "a"\nallowed_endpoints = "^/kbs/.*"\n',
            "end with",
        ),
        (
            "0.20.0",
            SIMPLE_PERSONA + '[[admin.roles]]\nid = "a"\nallowed_endpoints = "^/kbs/(?!x).*$"\n',
            "Rust",
        ),
        (
            "0.20.0",
            SIMPLE_PERSONA + '[[admin.roles]]\nid = "a"\nallowed_endpoints = "^/kbs/(a$"\n',
            "invalid regex",
        ),
        (
            "0.20.0",
            SIMPLE_PERSONA + '[[admin.roles]]\nid = "a"\nallowed_endpoints = "^/kbs/a$"\n'
            '[[admin.roles]]\nid = "a"\nallowed_endpoints = "^/kbs/b$"\n',
            "Duplicate Admin Role",
        ),
        ("0.20.0", SIMPLE_PERSONA + '[[admin.role]]\nid = "a"\n', "unknown field 'role'"),
        ("0.20.0", '[admin]\ntype = "InsecureAllowAll"\n', "Simple"),
        ("0.20.0", '[admin]\ntype = "Simple"\n', "no admin identity"),
        (
            "0.21.0",
            '[admin]\nauthorization_mode = "InsecureAllowAll"\n',
            "AuthenticatedAuthorization",
        ),
        (
            "0.21.0",
            '[admin]\nauthorization_mode = "AuthenticatedAuthorization"\n'
            "[admin.authentication.bearer_jwt]\nidentity_providers = []\n"
            "[admin.authorization.regex_acl]\nacls = []\n",
            "at least one",
        ),
        (
            "0.21.0",
            '[admin]\nauthorization_mode = "AuthenticatedAuthorization"\n'
            "[admin.authentication.bearer_jwt]\n"
            'identity_providers = [{ public_key_uri = "k.pem" }]\n'
            "[admin.authorization.regex_acl]\n"
            'acls = [{ role = "a", allowed_endpoints = "^/kbs/a$", x = 1 }]\n',
            "unknown field 'x'",
        ),
        ("0.21.0", SIMPLE_PERSONA, "unknown field"),
        ("0.20.0", "not toml = = =", "not TOML"),
    ],
)
def test_bad_admin_configs_are_refused(version, text, message, tmp_path):
    (tmp_path / "k.pem").write_bytes(make_admin_keys().public_pem)
    with pytest.raises(AdminConfigError, match=message):
        AdminConfig.from_toml(text, version, base_dir=tmp_path)


def test_airflow_rule_is_what_admin_acl_documents():
    assert AIRFLOW_ENDPOINTS.startswith("^/kbs/v0/resource/coco-ai-run/grant/")
    with pytest.raises(ValueError, match="mint_airflow_token"):
        admin_config_toml("0.21.0", "/owner.pem", "/airflow.pem")
    with pytest.raises(ValueError, match="persona"):
        admin_config_toml("0.20.0", "/owner.pem")
