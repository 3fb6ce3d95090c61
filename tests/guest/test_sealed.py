"""CoCo sealed secrets over real HTTP: sealed by the data owner (ours and upstream's `secret seal`),
unsealed in an emulated pod through its attested KBS path to the Trustee stand-in (dev policy,
real Rego); every bad input refused before the secret's resource is requested."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from coco_ai.guest import secret_cli
from coco_ai.guest.sealed import (
    MAX_SEALED_SECRET_BYTES,
    SealedSecretError,
    VaultSecret,
    generate_signing_jwk,
    public_jwk,
    seal_vault_secret,
    signing_key_from_jwk,
    unseal_environment,
    unseal_mounted_files,
    unseal_secret,
)
from coco_ai.kbs.client import KbsAdminClient
from coco_ai.kbs.wire import b64url_decode, b64url_encode

pytestmark = pytest.mark.timeout(120)

SIGNING_KID = "kbs:///coco-ai/sealed-signing/owner"
DB_PASSWORD = "kbs:///coco-ai/rag-credentials/db-password"
S3_KEY = "kbs:///coco-ai/rag-credentials/s3-secret-key"

# Upstream-produced vector: kata-containers/kata-containers
# tests/integration/kubernetes/confidential_common.sh (SEALED_SECRET_PRECREATED_TEST and
# SEALED_SECRET_SIGNING_PUBLIC_JWK), made with guest-components' `secret seal --signing-kid
# kbs:///default/signing-key/sealed-secret ... vault --resource-uri
# kbs:///default/sealed-secret/test --provider kbs` and unsealed by the CDH in Kata's CI.
UPSTREAM_KID = "kbs:///default/signing-key/sealed-secret"
UPSTREAM_RESOURCE = "kbs:///default/sealed-secret/test"
UPSTREAM_PUBLIC_JWK = (
    b'{"alg":"ES256","crv":"P-256","kid":"sealed-secret-test-key","kty":"EC","use":"sig",'
    b'"x":"4jH376AuwTUCIx65AJ_56D7SZzWf7sGcEA7_Csq21UM",'
    b'"y":"rjdceysnSa5ZfzWOPGCURMUuHndxBAGUu4ISTIVN0yA"}'
)
UPSTREAM_SEALED = (
    "sealed.eyJiNjQiOnRydWUsImFsZyI6IkVTMjU2Iiwia2lkIjoia2JzOi8vL2RlZmF1bHQvc2lnbmluZy1rZXkvc2Vh"
    "bGVkLXNlY3JldCJ9.eyJ2ZXJzaW9uIjoiMC4xLjAiLCJ0eXBlIjoidmF1bHQiLCJuYW1lIjoia2JzOi8vL2RlZmF1"
    "bHQvc2VhbGVkLXNlY3JldC90ZXN0IiwicHJvdmlkZXIiOiJrYnMiLCJwcm92aWRlcl9zZXR0aW5ncyI6e30sImFubm"
    "90YXRpb25zIjp7fX0.ZI2fTv5ramHqHQa9DKBFD5hlJ_Mjf6cEIcpsNGshpyhEiKklML0abfH600TD7LAFHf53oDIJ"
    "mEcVsDtJ20UafQ"
)


class Owner:
    """The data owner: a signing key whose public JWK is the kid resource, and two secrets."""

    def __init__(self, admin: KbsAdminClient) -> None:
        self.private_jwk = generate_signing_jwk(SIGNING_KID)
        self.key = signing_key_from_jwk(json.dumps(self.private_jwk).encode(), "owner JWK")
        # A text password (never a bare JSON value) and a binary key (never valid UTF-8).
        self.secrets = {
            DB_PASSWORD: b"pw-" + os.urandom(12).hex().encode(),
            S3_KEY: b"\xff" + os.urandom(19),
        }
        admin.set_resource(SIGNING_KID, json.dumps(public_jwk(self.private_jwk)).encode())
        for uri, value in self.secrets.items():
            admin.set_resource(uri, value)
        self.admin = admin

    def seal(self, resource: str = DB_PASSWORD, kid: str = SIGNING_KID) -> str:
        return seal_vault_secret(VaultSecret(resource), self.key, kid)

    def sign(self, header: dict | bytes, payload: dict | bytes, key=None) -> str:
        """A validly signed JWS over arbitrary header and payload (for refusals past parsing)."""
        h = b64url_encode(header if isinstance(header, bytes) else json.dumps(header).encode())
        p = b64url_encode(payload if isinstance(payload, bytes) else json.dumps(payload).encode())
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

        der = (key or self.key).sign(f"{h}.{p}".encode(), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        return f"sealed.{h}.{p}.{b64url_encode(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


@pytest.fixture(scope="module")
def owner(admin: KbsAdminClient) -> Owner:
    return Owner(admin)


class Recorder:
    """The guest's real fetch (GuestClient → emulator → KBS), remembering what was asked."""

    def __init__(self, fetch: Callable[[str], bytes]) -> None:
        self.fetch = fetch
        self.requested: list[str] = []

    def __call__(self, uri: str) -> bytes:
        self.requested.append(uri)
        return self.fetch(uri)


def _header() -> dict:
    return {"b64": True, "alg": "ES256", "kid": SIGNING_KID}


def _vault(name: str = DB_PASSWORD, **changes) -> dict:
    return {**VaultSecret(name).payload(), **changes}


def _flip(sealed: str, segment: int) -> str:
    """Change one decoded byte of JWS segment 0 (header), 1 (payload) or 2 (signature)."""
    prefix, jws = sealed.split(".", 1)
    parts = jws.split(".")
    raw = bytearray(b64url_decode(parts[segment]))
    raw[len(raw) // 2] ^= 0x01
    parts[segment] = b64url_encode(bytes(raw))
    return prefix + "." + ".".join(parts)


# -- round trips --------------------------------------------------------------------------------


def test_round_trip_through_the_attested_guest(approved_guest, owner: Owner) -> None:
    sealed = owner.seal(DB_PASSWORD)
    client = approved_guest.client
    assert client.unseal_secret(sealed, DB_PASSWORD) == owner.secrets[DB_PASSWORD]
    # Pinned kid, host-ful URI spelling (the CDH ignores host:port), and the emulator's
    # in-process UnsealSecret all give the same plaintext.
    assert (
        client.unseal_secret(
            sealed, "kbs://kbs.example:8080/coco-ai/rag-credentials/db-password",
            expected_kid=SIGNING_KID,
        )
        == owner.secrets[DB_PASSWORD]
    )  # fmt: skip
    assert approved_guest.emulator.unseal_secret(sealed, DB_PASSWORD) == owner.secrets[DB_PASSWORD]
    assert client.unseal_secret(owner.seal(S3_KEY)) == owner.secrets[S3_KEY]


def test_upstream_sealed_secret_unseals(approved_guest, admin: KbsAdminClient) -> None:
    value = os.urandom(16)
    admin.set_resource(UPSTREAM_KID, UPSTREAM_PUBLIC_JWK)
    admin.set_resource(UPSTREAM_RESOURCE, value)
    assert approved_guest.client.unseal_secret(UPSTREAM_SEALED, UPSTREAM_RESOURCE) == value


def test_our_seal_is_upstreams_bytes_up_to_the_signature() -> None:
    """Header and payload are byte for byte what upstream's `secret seal` wrote for the same
    kid and resource (ECDSA signatures are randomised, so those differ)."""
    key = ec.generate_private_key(ec.SECP256R1())
    ours = seal_vault_secret(VaultSecret(UPSTREAM_RESOURCE), key, UPSTREAM_KID)
    assert ours.rsplit(".", 1)[0] == UPSTREAM_SEALED.rsplit(".", 1)[0]


def test_independent_jose_implementations_agree() -> None:
    """What upstream's CDH checks is plain RFC 7515 ES256 (jose_jws + p256): two independent
    implementations (joserfc, jwcrypto) verify our output, and ours verifies joserfc's."""
    from joserfc import jws as joserfc_jws
    from joserfc.jwk import ECKey
    from jwcrypto import jwk as jwcrypto_jwk
    from jwcrypto import jws as jwcrypto_jws

    private = generate_signing_jwk(SIGNING_KID)
    key = signing_key_from_jwk(json.dumps(private).encode(), "owner")
    ours = seal_vault_secret(VaultSecret(DB_PASSWORD), key, SIGNING_KID)
    compact = ours.removeprefix("sealed.")
    payload = json.loads(
        joserfc_jws.deserialize_compact(
            compact, ECKey.import_key(public_jwk(private)), algorithms=["ES256"]
        ).payload
    )
    assert payload == VaultSecret(DB_PASSWORD).payload()
    token = jwcrypto_jws.JWS()
    token.deserialize(compact)
    token.verify(jwcrypto_jwk.JWK(**public_jwk(private)), alg="ES256")
    assert json.loads(token.payload) == payload

    theirs = "sealed." + joserfc_jws.serialize_compact(
        {"alg": "ES256", "kid": SIGNING_KID},
        json.dumps(VaultSecret(S3_KEY).payload()).encode(),
        ECKey.import_key(private),
        algorithms=["ES256"],
    )
    resources = {SIGNING_KID: json.dumps(public_jwk(private)).encode(), S3_KEY: b"s3"}
    assert unseal_secret(theirs, resources.__getitem__, expected_resource=S3_KEY) == b"s3"


# -- refusals -----------------------------------------------------------------------------------

P384_JWK = {
    "kty": "EC",
    "crv": "P-384",
    "x": b64url_encode(b"\1" * 48),
    "y": b64url_encode(b"\2" * 48),
}
RSA_JWK = {"kty": "RSA", "n": b64url_encode(b"\xc1" * 256), "e": "AQAB"}

KID_RESOURCES = {
    "kbs:///coco-ai/sealed-signing/p384": json.dumps(P384_JWK).encode(),
    "kbs:///coco-ai/sealed-signing/rsa": json.dumps(RSA_JWK).encode(),
    "kbs:///coco-ai/sealed-signing/not-json": b"-----BEGIN PUBLIC KEY-----",
    "kbs:///coco-ai/sealed-signing/off-curve": json.dumps(
        {
            "kty": "EC",
            "crv": "P-256",
            "x": b64url_encode(b"\1" * 32),
            "y": b64url_encode(b"\2" * 32),
        }
    ).encode(),
}


def _bad_inputs(owner: Owner) -> dict[str, tuple[str | bytes, str, str | None]]:
    """name -> (sealed input, words the error must contain, expected_resource)."""
    good = owner.seal(DB_PASSWORD)
    other_key = ec.generate_private_key(ec.SECP256R1())
    private_kid = "kbs:///coco-ai/sealed-signing/private"
    owner.admin.set_resource(private_kid, json.dumps(owner.private_jwk).encode())
    for uri, body in KID_RESOURCES.items():
        owner.admin.set_resource(uri, body)
    kid_at = {uri.rsplit("/", 1)[1]: uri for uri in KID_RESOURCES}
    return {
        "tampered-header": (_flip(good, 0), "", DB_PASSWORD),
        "tampered-payload": (_flip(good, 1), "signature does not verify", DB_PASSWORD),
        "tampered-signature": (_flip(good, 2), "signature does not verify", DB_PASSWORD),
        "payload-swapped-to-other-resource": (
            good.split(".")[0] + "." + good.split(".")[1] + "."
            + owner.seal(S3_KEY).split(".")[2] + "." + good.split(".")[3],
            "signature does not verify", None,
        ),
        "signed-by-another-key": (
            seal_vault_secret(VaultSecret(DB_PASSWORD), other_key, SIGNING_KID),
            "signature does not verify", None,
        ),
        "unknown-kid": (
            owner.seal(kid="kbs:///coco-ai/sealed-signing/nobody"),
            "signing key kbs:///coco-ai/sealed-signing/nobody could not be obtained", None,
        ),
        "kid-is-the-secret-itself": (owner.seal(kid=DB_PASSWORD), "not UTF-8 JSON", None),
        "kid-p384": (owner.seal(kid=kid_at["p384"]), "EC P-256", None),
        "kid-rsa": (owner.seal(kid=kid_at["rsa"]), "EC P-256", None),
        "kid-not-json": (owner.seal(kid=kid_at["not-json"]), "JSON", None),
        "kid-off-curve": (owner.seal(kid=kid_at["off-curve"]), "not a point on P-256", None),
        "kid-private-jwk": (owner.seal(kid=private_kid), "private JWK", None),
        "kid-local-path": (owner.sign({**_header(), "kid": "test-key"}, _vault()), "kid", None),
        "alg-none": (owner.sign({**_header(), "alg": "none"}, _vault()), "alg must be ES256", None),
        "alg-es384": (
            owner.sign({**_header(), "alg": "ES384"}, _vault()), "alg must be ES256", None
        ),
        "b64-false": (owner.sign({**_header(), "b64": False}, _vault()), "b64", None),
        "crit-header": (owner.sign({**_header(), "crit": ["exp"]}, _vault()), "crit", None),
        "jwk-in-header": (
            owner.sign({**_header(), "jwk": public_jwk(owner.private_jwk)}, _vault()), "jwk", None
        ),
        "duplicate-alg": (
            owner.sign(b'{"alg":"none","alg":"ES256","kid":"' + SIGNING_KID.encode() + b'"}',
                       _vault()),
            "repeats", None,
        ),
        "for-another-resource": (owner.seal(S3_KEY), "not the expected resource", DB_PASSWORD),
        "no-prefix": (good[len("sealed."):], "must start with 'sealed.'", None),
        "double-prefix": ("sealed." + good, "JWS segments", None),
        "two-segments": (good.rsplit(".", 1)[0], "JWS segments", None),
        "five-segments": (good + ".AAAA", "JWS segments", None),
        "padded-base64": (good + "==", "base64url", None),
        "standard-base64": (good.replace("-", "+").replace("_", "/") + "+", "base64url", None),
        "non-canonical-signature": (good[:-1] + chr(ord(good[-1]) + 1), "canonical", None),
        "short-signature": (
            good.rsplit(".", 1)[0] + "." + b64url_encode(b"\1" * 63), "64 bytes", None
        ),
        "header-not-json": (owner.sign(b"\xff{", _vault()), "not UTF-8 JSON", None),
        "payload-not-json": (owner.sign(_header(), b"[1,"), "payload is not UTF-8 JSON", None),
        "payload-array": (owner.sign(_header(), b"[]"), "JSON object", None),
        "wrong-version": (owner.sign(_header(), _vault(version="0.2.0")), "version", None),
        "unknown-type": (owner.sign(_header(), _vault(type="pointer")), "type", None),
        "unknown-member": (owner.sign(_header(), _vault(extra=1)), "unknown members", None),
        "missing-annotations": (
            owner.sign(_header(), {k: v for k, v in _vault().items() if k != "annotations"}),
            "lacks", None,
        ),
        "other-provider": (owner.sign(_header(), _vault(provider="aliyun")), "provider", None),
        "name-not-kbs-uri": (owner.sign(_header(), _vault(name="file:///etc/shadow")), "KBS", None),
        "envelope": (
            owner.sign(_header(), {"version": "0.1.0", "type": "envelope", "provider": "aliyun",
                                   "key_id": "k", "encrypted_key": "AA==",
                                   "encrypted_data": "AA==", "wrap_type": "A256GCM",
                                   "iv": "AA==", "provider_settings": {}, "annotations": {}}),
            "envelope", None,
        ),
        "oversized": (
            "sealed." + "A" * MAX_SEALED_SECRET_BYTES, f"at most {MAX_SEALED_SECRET_BYTES}", None
        ),
        "not-utf8": (b"sealed.\xff\xfe", "not UTF-8", None),
    }  # fmt: skip


BAD_INPUT_NAMES = [
    "tampered-header", "tampered-payload", "tampered-signature",
    "payload-swapped-to-other-resource", "signed-by-another-key", "unknown-kid",
    "kid-is-the-secret-itself", "kid-p384", "kid-rsa", "kid-not-json", "kid-off-curve",
    "kid-private-jwk", "kid-local-path", "alg-none", "alg-es384", "b64-false", "crit-header",
    "jwk-in-header", "duplicate-alg", "for-another-resource", "no-prefix", "double-prefix",
    "two-segments", "five-segments", "padded-base64", "standard-base64",
    "non-canonical-signature", "short-signature", "header-not-json", "payload-not-json",
    "payload-array", "wrong-version", "unknown-type", "unknown-member", "missing-annotations",
    "other-provider", "name-not-kbs-uri", "envelope", "oversized", "not-utf8",
]  # fmt: skip


@pytest.fixture(scope="module")
def bad_inputs(owner: Owner) -> dict[str, tuple[str | bytes, str, str | None]]:
    cases = _bad_inputs(owner)
    assert sorted(cases) == sorted(BAD_INPUT_NAMES)
    return cases


@pytest.mark.parametrize("case", BAD_INPUT_NAMES)
def test_bad_sealed_secret_is_refused_before_any_secret_is_requested(
    approved_guest, owner: Owner, bad_inputs, case: str
) -> None:
    sealed, words, expected = bad_inputs[case]
    fetch = Recorder(approved_guest.client.get_resource)
    with pytest.raises(SealedSecretError) as err:
        unseal_secret(sealed, fetch, expected_resource=expected)
    message = str(err.value)
    assert words in message, message
    # The secrets were never requested (only a kid may have been), and no byte of them leaks.
    assert not set(fetch.requested) & set(owner.secrets) or case == "kid-is-the-secret-itself"
    for value in owner.secrets.values():
        assert value.hex() not in message and repr(value)[2:-1] not in message


def test_pinned_kid_refuses_a_secret_signed_under_another_kid(approved_guest, owner) -> None:
    other_kid = "kbs:///coco-ai/sealed-signing/other-owner"
    other = generate_signing_jwk(other_kid)
    owner.admin.set_resource(other_kid, json.dumps(public_jwk(other)).encode())
    sealed = seal_vault_secret(
        VaultSecret(DB_PASSWORD), signing_key_from_jwk(json.dumps(other).encode(), "o"), other_kid
    )
    # Valid on its own (another key the KBS serves), refused when the caller pins its owner.
    assert approved_guest.client.unseal_secret(sealed) == owner.secrets[DB_PASSWORD]
    with pytest.raises(SealedSecretError, match="not the expected signing key"):
        approved_guest.client.unseal_secret(sealed, DB_PASSWORD, expected_kid=SIGNING_KID)


def test_guest_without_gpu_gets_no_secret(guest_factory, owner: Owner) -> None:
    """The signing key verifies, but the KBS policy still decides: no GPU, no resource."""
    from coco_ai.guest.initdata import RUN_ID_KEY

    guest = guest_factory({RUN_ID_KEY: "run-sealed-nogpu"}, gpus=0)
    with pytest.raises(SealedSecretError, match="PolicyDeny") as err:
        guest.client.unseal_secret(owner.seal(DB_PASSWORD), DB_PASSWORD)
    assert owner.secrets[DB_PASSWORD].decode() not in str(err.value)


# -- the agent's step: env values and Secret volume files ---------------------------------------


def test_environment_and_kubelet_volume_are_unsealed(approved_guest, owner, tmp_path) -> None:
    client = approved_guest.client
    env = {"DB_PASSWORD": owner.seal(DB_PASSWORD), "PLAIN": "sealed-not", "EMPTY": ""}
    out = unseal_environment(env, client.unseal_secret, {"DB_PASSWORD": DB_PASSWORD})
    assert out == {**env, "DB_PASSWORD": owner.secrets[DB_PASSWORD].decode()}

    # kubelet's atomic-writer layout: name -> ..data/name, ..data -> ..<timestamp>
    stamp = tmp_path / "..2026_12_02_08_00_00.1"
    stamp.mkdir()
    (stamp / "s3-key").write_text(owner.seal(S3_KEY))
    (stamp / "plain").write_text("not sealed")
    (tmp_path / "..data").symlink_to(stamp.name)
    for name in ("s3-key", "plain"):
        (tmp_path / name).symlink_to(f"..data/{name}")
    assert unseal_mounted_files(tmp_path, client.unseal_secret, {"s3-key": S3_KEY}) == ["s3-key"]
    assert (tmp_path / "s3-key").read_bytes() == owner.secrets[S3_KEY]
    assert (tmp_path / "plain").read_text() == "not sealed"
    assert oct((stamp / "s3-key.unsealed").stat().st_mode & 0o777) == "0o600"


@pytest.mark.parametrize(
    ("env", "pins", "words"),
    [
        ({"A": "sealed.x.y.z"}, {}, "variable A"),
        ({"A": "plain"}, {"A": DB_PASSWORD}, "missing or not sealed"),
        ({}, {"A": DB_PASSWORD}, "missing or not sealed"),
    ],
)
def test_environment_refusals(approved_guest, env, pins, words) -> None:
    with pytest.raises(SealedSecretError, match=words):
        unseal_environment(env, approved_guest.client.unseal_secret, pins)


def test_environment_refuses_binary_plaintext(approved_guest, owner) -> None:
    """S3_KEY holds binary bytes (starting 0xff): not a valid environment value."""
    with pytest.raises(SealedSecretError, match="not UTF-8") as err:
        unseal_environment({"K": owner.seal(S3_KEY)}, approved_guest.client.unseal_secret)
    assert "variable K" in str(err.value)


def _exec(guest_url: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    base = {k: os.environ[k] for k in ("PATH", "HOME") if k in os.environ}
    return subprocess.run(
        [sys.executable, "-m", "coco_ai.cli", "guest", "exec", "--guest-url", guest_url, *args],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_guest_exec_unseals_then_starts_the_workload(approved_guest, owner, tmp_path) -> None:
    volume = tmp_path / "secret-volume"
    volume.mkdir()
    (volume / "s3-key").write_text(owner.seal(S3_KEY))
    report = tmp_path / "report.json"
    workload = (
        "import hashlib, json, os, sys; json.dump({'env': hashlib.sha256(os.environ['DB_PASSWORD']"
        ".encode()).hexdigest(), 'file': hashlib.sha256(open(sys.argv[1], 'rb').read())"
        ".hexdigest()}, open(sys.argv[2], 'w'))"
    )
    done = _exec(
        approved_guest.server.url, {"DB_PASSWORD": owner.seal(DB_PASSWORD)},
        "--sealed-dir", str(volume), "--expect-env", f"DB_PASSWORD={DB_PASSWORD}",
        "--expect-file", f"{volume / 's3-key'}={S3_KEY}",
        "--", sys.executable, "-c", workload, str(volume / "s3-key"), str(report),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(report.read_text()) == {
        "env": hashlib.sha256(owner.secrets[DB_PASSWORD]).hexdigest(),
        "file": hashlib.sha256(owner.secrets[S3_KEY]).hexdigest(),
    }


def test_guest_exec_does_not_start_the_workload_on_a_bad_secret(
    approved_guest, owner, tmp_path
) -> None:
    marker = tmp_path / "started"
    swapped = owner.seal(S3_KEY)  # validly sealed, but for another resource than pinned
    done = _exec(
        approved_guest.server.url, {"DB_PASSWORD": swapped},
        "--expect-env", f"DB_PASSWORD={DB_PASSWORD}",
        "--", sys.executable, "-c", f"open({str(marker)!r}, 'w')",
    )  # fmt: skip
    assert done.returncode == 2
    assert "workload not started" in done.stderr and "DB_PASSWORD" in done.stderr
    assert "not the expected resource" in done.stderr
    assert not marker.exists()
    assert owner.secrets[DB_PASSWORD].decode() not in done.stderr + done.stdout


# -- the data owner's CLI -----------------------------------------------------------------------


def _cli(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="coco-ai")
    secret_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_keygen_and_seal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "owner.jwk"
    assert _cli(["secret", "keygen", "--kid", SIGNING_KID, "--out", str(key)]) == 0
    public = json.loads(capsys.readouterr().out)
    private = json.loads(key.read_text())
    assert "d" not in public and public == public_jwk(private) and private["kid"] == SIGNING_KID
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    # Never overwrites a signing key.
    assert _cli(["secret", "keygen", "--kid", SIGNING_KID, "--out", str(key)]) == 2
    assert json.loads(key.read_text()) == private
    capsys.readouterr()

    argv = ["secret", "seal", "--signing-kid", SIGNING_KID, "--signing-jwk-path", str(key)]
    assert _cli([*argv, "vault", "--resource-uri", DB_PASSWORD, "--provider", "kbs"]) == 0
    sealed = capsys.readouterr().out.strip()
    resources = {SIGNING_KID: json.dumps(public).encode(), DB_PASSWORD: b"pw"}
    assert unseal_secret(sealed, resources.__getitem__, expected_resource=DB_PASSWORD) == b"pw"


@pytest.mark.parametrize(
    ("argv_tail", "words"),
    [
        (["--signing-kid", "not-a-uri", "vault", "-r", DB_PASSWORD], "signing kid"),
        (["--signing-kid", SIGNING_KID, "vault", "-r", "kbs:///a/b"], "resource URI"),
        (["--signing-kid", SIGNING_KID, "vault", "-r", DB_PASSWORD, "-a", "[1]"], "JSON object"),
    ],
)
def test_cli_seal_refusals(tmp_path, capsys, argv_tail, words) -> None:
    key = tmp_path / "owner.jwk"
    key.write_text(json.dumps(generate_signing_jwk(SIGNING_KID)))
    assert _cli(["secret", "seal", "--signing-jwk", str(key), *argv_tail]) == 2
    captured = capsys.readouterr()
    assert words in captured.err and captured.out == ""


def test_signing_jwk_whose_public_half_is_not_its_own_is_refused() -> None:
    a, b = generate_signing_jwk(SIGNING_KID), generate_signing_jwk(SIGNING_KID)
    mixed = {**a, "x": b["x"], "y": b["y"]}
    with pytest.raises(SealedSecretError, match="not the public key of d"):
        signing_key_from_jwk(json.dumps(mixed).encode(), "mixed")


def test_volume_entry_resolving_outside_the_volume_is_refused(approved_guest, owner, tmp_path):
    """A symlink out of the volume would make the unsealer write plaintext beside its target."""
    outside = tmp_path / "elsewhere"
    outside.write_text(owner.seal(DB_PASSWORD))
    volume = tmp_path / "volume"
    volume.mkdir()
    (volume / "db").symlink_to(outside)
    with pytest.raises(SealedSecretError, match="outside the mounted directory"):
        unseal_mounted_files(volume, approved_guest.client.unseal_secret)
    assert not (tmp_path / "elsewhere.unsealed").exists()
    assert (volume / "db").read_text().startswith("sealed.")
