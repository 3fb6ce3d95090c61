"""State directory: restart persistence, encryption at rest, integrity, file modes."""

from __future__ import annotations

import json
import stat

import pytest

from coco_ai.kbs.errors import PluginInternalError
from coco_ai.kbs.versions import DEFAULT_TRUSTEE_VERSION
from coco_ai.trustee_dev import TrusteeStandIn
from coco_ai.trustee_dev.state import StateDir, StateError
from tests.trustee_dev.conftest import Stand, make_admin_keys, start_stand

pytestmark = pytest.mark.timeout(60)

SECRET = b"kept across restarts \x00\xff"


def _stand(state_dir, keys) -> Stand:
    return start_stand(state_dir, keys, trustee_version=DEFAULT_TRUSTEE_VERSION)


def test_resources_survive_restart_encrypted_at_rest(tmp_path):
    keys = make_admin_keys()
    first = _stand(tmp_path, keys)
    try:
        first.admin.set_resource("coco-ai/dataset-key/persist", SECRET)
        ca_before, anchor_before = first.ca, first.anchor
    finally:
        first.admin.close()
        first.server.stop()

    record = tmp_path / "resources" / "coco-ai" / "dataset-key" / "persist.json"
    raw = record.read_bytes()
    assert SECRET not in raw and SECRET.hex().encode() not in raw
    assert stat.S_IMODE(record.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "state.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "token-signer" / "ca-key.pem").stat().st_mode) == 0o600

    second = _stand(tmp_path, keys)
    try:
        assert second.ca == ca_before  # clients keep their TLS pin
        assert second.anchor == anchor_before  # relying parties keep their trust anchor
        with second.client() as client:
            assert client.get_resource("kbs:///coco-ai/dataset-key/persist") == SECRET
    finally:
        second.admin.close()
        second.server.stop()


def test_tampered_record_is_not_released(tmp_path):
    keys = make_admin_keys()
    stand = _stand(tmp_path, keys)
    try:
        stand.admin.set_resource("coco-ai/dataset-key/a", b"key a")
        stand.admin.set_resource("coco-ai/dataset-key/b", b"key b")
        folder = tmp_path / "resources" / "coco-ai" / "dataset-key"
        # Move b's ciphertext under a's name: the AAD (path) no longer matches.
        record = json.loads((folder / "b.json").read_bytes())
        record["path"] = "coco-ai/dataset-key/a"
        (folder / "a.json").write_text(json.dumps(record))
        with stand.client() as client, pytest.raises(PluginInternalError):
            client.get_resource("kbs:///coco-ai/dataset-key/a")
        with pytest.raises(StateError):
            StateDir(tmp_path).get_resource("coco-ai/dataset-key/a")
    finally:
        stand.admin.close()
        stand.server.stop()


@pytest.mark.parametrize(
    ("field", "value"),
    [("kind", "uploaded"), ("uuid", "00000000-0000-5000-8000-000000000000"), ("version", 1)],
)
def test_record_metadata_is_authenticated(tmp_path, field, value):
    state = StateDir(tmp_path)
    ident = "2a5e4c4b-0c7e-5d6f-9a8b-1c2d3e4f5a6b"
    path = f"default/{ident}/root"
    state.put_resource(path, b"confdata", kind="provisioner", uuid=ident, namespace="provisioner")
    assert state.get_resource(path, "provisioner").uuid == ident
    file = tmp_path / "provisioner" / "default" / ident / "root.json"
    record = json.loads(file.read_bytes())
    assert "bind" not in record
    record[field] = value  # an attacker with disk access relabelling the record
    file.write_text(json.dumps(record))
    with pytest.raises(StateError):
        state.get_resource(path, "provisioner")


def test_state_key_readable_by_others_is_refused(tmp_path):
    StateDir(tmp_path)
    (tmp_path / "state.key").chmod(0o644)
    with pytest.raises(StateError):
        StateDir(tmp_path)


def test_no_admin_key_no_start(tmp_path):
    with pytest.raises(ValueError):
        TrusteeStandIn(tmp_path, b"")
    with pytest.raises(ValueError):
        TrusteeStandIn(tmp_path, make_admin_keys().private_pem)
