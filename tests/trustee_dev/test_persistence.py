"""State directory: restart persistence, encryption at rest, integrity, file modes."""

from __future__ import annotations

import json
import stat

import pytest

from coco_ai.kbs.errors import PluginInternalError
from coco_ai.kbs.versions import DEFAULT_TRUSTEE_VERSION
from coco_ai.trustee_dev import TrusteeStandIn
from coco_ai.trustee_dev.state import Binding, StateDir, StateError
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


def test_binding_is_authenticated(tmp_path):
    state = StateDir(tmp_path)
    state.put_resource(
        "coco-ai-run/key/x", b"k" * 32, kind="provisioned", bind=Binding("io.coco-ai.run-id", "r1")
    )
    file = tmp_path / "resources" / "coco-ai-run" / "key" / "x.json"
    record = json.loads(file.read_bytes())
    record["bind"]["value"] = "r2"  # an attacker with disk access rebinding the key
    file.write_text(json.dumps(record))
    with pytest.raises(StateError):
        state.get_resource("coco-ai-run/key/x")


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
