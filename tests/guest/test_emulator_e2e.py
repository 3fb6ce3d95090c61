"""The emulator end to end over real HTTP: workload → GuestClient → emulator → KbsClient →
the Trustee stand-in (TLS, dev policy set, real Rego), and back."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from coco_ai.digest import Digest
from coco_ai.guest.client import GuestClient, GuestError
from coco_ai.guest.initdata import RUN_GRANT_KEY, RUN_ID_KEY, build_initdata
from coco_ai.kbs.client import KbsAdminClient
from coco_ai.kbs.ear import verify_ear_token
from coco_ai.kbs.jwe import TeeKeyPair
from coco_ai.run_keys import Grant, RunKeyError, check_grant, grant_path
from coco_ai.trustee_dev.server import RunningServer as TrusteeServer
from tests.code_binding import APPROVED_IMAGE, APPROVED_MODULE

pytestmark = pytest.mark.timeout(120)

DATASET_KEY = "kbs:///coco-ai/dataset/key"


@pytest.fixture(scope="module")
def dataset_key(admin: KbsAdminClient) -> bytes:
    key = secrets.token_bytes(32)
    admin.set_resource(DATASET_KEY, key)
    return key


def test_resource_released_to_attested_guest_with_gpu(guest_factory, dataset_key: bytes) -> None:
    guest = guest_factory({RUN_ID_KEY: "run-ok"}, gpus=1)
    assert guest.client.get_resource(DATASET_KEY) == dataset_key
    # Again on the same session (cookie mode), and with two sample GPUs.
    assert guest.client.get_resource(DATASET_KEY) == dataset_key
    assert (
        guest_factory({RUN_ID_KEY: "run-2gpu"}, gpus=2).client.get_resource(DATASET_KEY)
        == dataset_key
    )


@pytest.mark.parametrize(
    "image",
    [None, "registry.example/coco-ai/finetune@sha256:" + "6" * 64],
    ids=["no-code-binding", "unapproved-image"],
)
def test_guest_not_bound_to_the_approved_image_is_refused(
    guest_factory, dataset_key: bytes, image: str | None
) -> None:
    """Fully affirming evidence is not enough: the initdata must pin the approved code."""
    guest = guest_factory({RUN_ID_KEY: "run-other-code"}, image=image)
    with pytest.raises(GuestError) as err:
        guest.client.get_resource(DATASET_KEY)
    assert err.value.policy_denied, err.value.message
    assert dataset_key.hex() not in err.value.message


def test_no_gpu_guest_is_refused_with_policy_reason(guest_factory, dataset_key: bytes) -> None:
    guest = guest_factory({RUN_ID_KEY: "run-nogpu"}, gpus=0)
    with pytest.raises(GuestError) as err:
        guest.client.get_resource(DATASET_KEY)
    assert err.value.status == 500
    assert err.value.policy_denied, err.value.message
    assert dataset_key.hex() not in err.value.message


def test_missing_resource_is_an_error_not_empty_bytes(guest_factory) -> None:
    guest = guest_factory({RUN_ID_KEY: "run-missing"})
    with pytest.raises(GuestError) as err:
        guest.client.get_resource("kbs:///coco-ai/dataset/absent")
    assert err.value.status == 500


def test_token_carries_the_returned_keys_public_half(
    guest_factory, token_anchor: bytes, trustee: TrusteeServer
) -> None:
    guest = guest_factory({RUN_ID_KEY: "run-token"}, gpus=2)
    token, pem = guest.client.get_token()
    claims = verify_ear_token(token, token_anchor)
    attested = claims.tee_pubkey()
    ours = TeeKeyPair.from_pem(pem).public_jwk()
    assert {k: attested[k] for k in ("kty", "crv", "x", "y")} == {
        k: ours[k] for k in ("kty", "crv", "x", "y")
    }
    assert claims.init_data_claims()[RUN_ID_KEY] == "run-token"
    assert claims.gpu_submods() == ["gpu0", "gpu1"]
    # One TEE key per guest: a second call reuses the still-valid token and the same key.
    assert guest.client.get_token() == (token, pem)


def test_token_is_renewed_near_expiry_with_the_same_key(guest_factory, token_anchor: bytes) -> None:
    offset = [0.0]
    import time

    guest = guest_factory({RUN_ID_KEY: "run-renew"}, clock=lambda: time.time() + offset[0])
    token1, pem1 = guest.client.get_token()
    offset[0] = 24 * 3600.0  # the emulator's clock says the token has expired
    token2, pem2 = guest.client.get_token()
    assert token2 != token1 and pem2 == pem1
    verify_ear_token(token2, token_anchor)


def test_per_run_grant_released_only_to_its_run(
    guest_factory, admin: KbsAdminClient, token_anchor: bytes
) -> None:
    """A run's grant (coco_ai.run_keys) goes only to a TEE whose initdata names it and a run."""
    grant_uri = grant_path("run-a").uri()
    run_a = guest_factory({RUN_ID_KEY: "run-a", RUN_GRANT_KEY: grant_uri})
    initdata = run_a.emulator.initdata
    grant = Grant("run-a", Digest(initdata.algorithm, initdata.digest().hex())).to_bytes()
    admin.set_resource(grant_path("run-a"), grant)
    assert run_a.client.get_resource(grant_uri) == grant
    token, _ = run_a.client.get_token()
    claims = verify_ear_token(token, token_anchor)
    check_grant(Grant.from_bytes(grant), run_id="run-a", initdata_matches=claims.carries_init_data)

    # Another run's TEE, whose initdata names its own grant: the policy refuses run A's.
    run_b = guest_factory({RUN_ID_KEY: "run-b", RUN_GRANT_KEY: grant_path("run-b").uri()})
    with pytest.raises(GuestError) as err:
        run_b.client.get_resource(grant_uri)
    assert err.value.status == 500 and err.value.policy_denied, err.value.message
    # Initdata naming the grant but no run: refused too.
    no_run = guest_factory({RUN_GRANT_KEY: grant_uri})
    with pytest.raises(GuestError) as err:
        no_run.client.get_resource(grant_uri)
    assert err.value.policy_denied, err.value.message
    # A TEE of another run that names run A's grant gets the (public) grant, and refuses it
    # itself: the grant names run A and run A's initdata.
    copycat = guest_factory({RUN_ID_KEY: "run-c", RUN_GRANT_KEY: grant_uri})
    copied = Grant.from_bytes(copycat.client.get_resource(grant_uri))
    token, _ = copycat.client.get_token()
    with pytest.raises(RunKeyError):
        check_grant(
            copied,
            run_id="run-c",
            initdata_matches=verify_ear_token(token, token_anchor).carries_init_data,
        )

    admin.delete_resource(grant_path("run-a"))  # revoked: not even run A gets it now
    with pytest.raises(GuestError):
        run_a.client.get_resource(grant_uri)


def test_cli_serve_end_to_end(
    tmp_path: Path, trustee: TrusteeServer, trustee_ca: bytes, dataset_key: bytes
) -> None:
    """`coco-ai guest serve` as its own process, configured only by the initdata file."""
    import subprocess
    import sys
    import time

    from coco_ai.guest.emulator import bind_loopback

    initdata = tmp_path / "initdata.toml"
    initdata.write_bytes(
        build_initdata(
            trustee.url,
            trustee_ca,
            {RUN_ID_KEY: "run-cli"},
            image=APPROVED_IMAGE,
            module=APPROVED_MODULE,
        ).toml_bytes()
    )
    sock = bind_loopback("127.0.0.1", 0)
    port = sock.getsockname()[1]
    sock.close()
    cmd = [sys.executable, "-m", "coco_ai.cli", "guest", "serve", "--initdata", str(initdata)]
    proc = subprocess.Popen(
        [*cmd, "--port", str(port), "--gpus", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        with GuestClient(f"http://127.0.0.1:{port}", timeout=10) as client:
            deadline = time.monotonic() + 60
            while True:
                try:
                    assert client.info()["additional_tees"] == ["sampledevice"]
                    break
                except GuestError:
                    assert proc.poll() is None, proc.stdout.read().decode()  # type: ignore[union-attr]
                    assert time.monotonic() < deadline, "emulator did not come up"
                    time.sleep(0.2)
            assert client.get_resource(DATASET_KEY) == dataset_key
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    output = proc.stdout.read().decode()  # type: ignore[union-attr]
    assert dataset_key.hex() not in output and "PRIVATE KEY" not in output
