"""The data owner's `coco-ai rag caller revoke|admit` over the real Trustee stand-in's admin API:
a revoked caller is refused by the running service at its next credential refresh and its TEE can
no longer obtain the credential; admitted again, it gets a fresh credential (the old one stays
refused), and the command never shows a credential."""

from __future__ import annotations

import json

import pytest

from coco_ai import cli
from coco_ai.guest.client import GuestClient, GuestError
from coco_ai.kbs.wire import b64url_encode
from coco_ai.workloads.rag_serve.client import RagServiceError
from coco_ai.workloads.rag_serve.identity import credential_path
from tests.rag_serve.test_service import client_for

pytestmark = pytest.mark.timeout(600)
CALLER = "dave"


@pytest.fixture
def admin_args(stack, tmp_path) -> list[str]:
    key = tmp_path / "admin-key.pem"
    key.write_bytes(stack.admin_private_pem)
    ca = tmp_path / "kbs-ca.pem"
    ca.write_bytes(stack.tls_ca_pem)
    return [
        "--kbs-url", stack.trustee_url, "--kbs-ca", str(ca), "--admin-key", str(key),
        "--trustee-version", stack.trustee_version,
    ]  # fmt: skip


def test_revoked_caller_is_refused_and_readmitted_with_a_fresh_credential(
    service, trust, caller_guests, admin_args, capsys
) -> None:
    uri = credential_path(CALLER).uri()
    with client_for(service, trust, caller_guests, CALLER) as before:
        assert before.retrieve("maintenance interval", k=1)["results"]

        assert cli.main(["rag", "caller", "revoke", *admin_args, CALLER]) == 0
        assert json.loads(capsys.readouterr().out) == [{"caller": CALLER, "revoked": uri}]
        assert service.service.gate.refresh() == [CALLER]  # what the refresh thread does
        with pytest.raises(RagServiceError) as refused:
            before.retrieve("maintenance interval", k=1)
        assert refused.value.status == 401
        with pytest.raises(GuestError):  # the caller's own TEE cannot obtain it any more
            client_for(service, trust, caller_guests, CALLER)

        assert cli.main(["rag", "caller", "admit", *admin_args, CALLER]) == 0
        printed = capsys.readouterr().out
        assert json.loads(printed) == [
            {
                "caller": CALLER,
                "credential_uri": uri,
                "service_initdata_claim": {f"io.coco-ai.rag-caller-credential.{CALLER}": uri},
            }
        ]
        with GuestClient(caller_guests[CALLER].url) as guest:
            fresh = guest.get_resource(uri)
        assert fresh.hex() not in printed and b64url_encode(fresh) not in printed
        assert service.service.gate.refresh() == []
        with client_for(service, trust, caller_guests, CALLER) as after:
            assert after.retrieve("maintenance interval", k=1)["results"]
        with pytest.raises(RagServiceError):  # the revoked credential stays refused
            before.retrieve("maintenance interval", k=1)
    assert "alice" in service.service.gate.admitted  # others were never affected


def test_a_bad_caller_id_is_refused_before_trustee_is_touched(admin_args, capsys) -> None:
    # "erin" is valid, "../alice" is not: every id is checked first, so erin is not admitted
    assert cli.main(["rag", "caller", "admit", *admin_args, "erin", "../alice"]) == 2
    captured = capsys.readouterr()
    assert json.loads(captured.out) == []
    assert "rag caller admit" in captured.err and "../alice" in captured.err
