"""The provider as Airflow sees it, and the `trustee` connection / hook."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from airflow.sdk._shared.secrets_masker.secrets_masker import redact

from coco_ai_airflow.hooks.trustee import TrusteeConnectionError, TrusteeHook, TrusteeSettings
from coco_ai_airflow.provider_info import get_provider_info

AIRFLOW = str(Path(sys.executable).with_name("airflow"))


def _airflow_json(*args: str, home: Path) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(AIRFLOW_HOME=str(home), AIRFLOW__CORE__LOAD_EXAMPLES="False")
    out = subprocess.run(
        [AIRFLOW, "providers", *args, "-o", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    return json.loads(out[out.index("[") :])


def test_airflow_lists_the_provider_and_the_trustee_connection_fields(tmp_path):
    providers = _airflow_json("list", home=tmp_path)
    assert any(p["package_name"] == "coco-ai-pipelines" for p in providers)
    hooks = _airflow_json("hooks", home=tmp_path)
    (trustee,) = [h for h in hooks if h["connection_type"] == "trustee"]
    assert trustee["class"] == "coco_ai_airflow.hooks.trustee.TrusteeHook"
    widgets = _airflow_json("widgets", home=tmp_path)
    fields = {
        w["connection_parameter_name"]
        for w in widgets
        if w["connection_parameter_name"].startswith("extra__trustee__")
    }
    assert fields == {
        f"extra__trustee__{f}"
        for f in (
            "kbs_url",
            "ca_cert",
            "admin_secret",
            "credential",
            "admin_auth",
            "trustee_version",
            "timeout_s",
            "attempts",
            "retry_delay_s",
        )
    }


def test_connection_form_declares_a_password_field_and_hides_the_generic_ones():
    (conn_type,) = get_provider_info()["connection-types"]
    fields = conn_type["conn-fields"]
    assert fields["admin_secret"]["schema"]["format"] == "password"
    assert fields["ca_cert"]["schema"]["format"] == "multiline"
    assert fields["admin_auth"]["schema"]["enum"] == ["self-signed", "bearer"]
    assert fields["credential"]["schema"]["enum"] == ["airflow", "data-owner"]
    assert {"host", "login", "password", "port"} <= set(
        conn_type["ui-field-behaviour"]["hidden-fields"]
    )
    # every declared module exists
    import importlib

    for group in ("hooks", "operators"):
        for entry in get_provider_info()[group]:
            for module in entry["python-modules"]:
                importlib.import_module(module)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({}, "'kbs_url' is required"),
        ({"kbs_url": "ftp://kbs"}, "not http"),
        ({"kbs_url": "http://kbs.example:8080"}, "plain HTTP off loopback"),
        ({"kbs_url": "https://kbs", "admin_auth": "basic"}, "admin_auth 'basic'"),
        ({"kbs_url": "https://kbs", "ca_cert": "not a pem"}, "'ca_cert' is not a PEM"),
        ({"kbs_url": "https://kbs", "trustee_version": "0.19.0"}, "unknown Trustee version"),
        ({"kbs_url": "http://127.0.0.2:8080"}, None),  # all of 127.0.0.0/8 is loopback
        ({"kbs_url": "https://kbs", "credential": "root"}, "credential 'root'"),
        # the data owner's credential in Airflow: a development convenience, loopback only
        ({"kbs_url": "https://kbs.example", "credential": "data-owner"}, "loopback KBS"),
        ({"kbs_url": "https://10.0.0.1", "credential": "data-owner"}, "loopback KBS"),
        ({"kbs_url": "https://127.0.0.1:8443", "credential": "data-owner"}, None),
        ({"kbs_url": "https://kbs.example", "attempts": 0}, "attempts must be a positive"),
        ({"kbs_url": "https://kbs.example", "attempts": "many"}, "attempts must be a positive"),
        ({"kbs_url": "https://kbs.example", "timeout_s": -1}, "timeout_s must be a positive"),
        ({"kbs_url": "https://kbs.example", "retry_delay_s": True}, "retry_delay_s must be"),
        ({"kbs_url": "https://kbs.example", "attempts": "2", "timeout_s": 0.5}, None),
    ],
)
def test_bad_connections_are_refused_with_the_field_named(extra, message):
    if message is None:
        TrusteeSettings.from_extra(extra)
        return
    with pytest.raises(TrusteeConnectionError, match=message):
        TrusteeSettings.from_extra(extra)


def test_retry_settings_reach_the_admin_client(monkeypatch):
    """Attempts and backoff from the connection govern the client: with nothing listening,
    the error reports ``attempts`` tries, after ``retry_delay_s`` + twice that of backoff."""
    import time

    from coco_ai.kbs.errors import KbsUnavailable
    from coco_ai.trustee_dev.server import free_port

    extra = {
        "kbs_url": f"https://127.0.0.1:{free_port('127.0.0.1')}",
        "attempts": "3",
        "retry_delay_s": 0.2,
        "admin_secret": "a.b.c",
        "admin_auth": "bearer",
    }
    settings = TrusteeSettings.from_extra(extra)
    assert (settings.attempts, settings.retry_delay_s, settings.timeout_s) == (3, 0.2, 30.0)
    monkeypatch.setenv(
        "AIRFLOW_CONN_TRUSTEE_RETRY", json.dumps({"conn_type": "trustee", "extra": extra})
    )
    start = time.monotonic()
    with (
        TrusteeHook("trustee_retry").get_conn() as client,
        pytest.raises(KbsUnavailable, match=r"Trustee KBS https://127\.0\.0\.1:\d+.*3 attempt"),
    ):
        client.set_resource("kbs:///coco-ai-run/grant/x", b"{}")
    assert 0.6 <= time.monotonic() - start < 5


def test_version_is_read(trustee):
    extra = json.loads(trustee.connection(trustee_version="v0.21.0"))["extra"]
    assert TrusteeSettings.from_extra(extra).trustee_version == "0.21.0"


@pytest.mark.parametrize("field", ["trust_anchor", "token_signer"])
def test_a_connection_carrying_a_trust_field_is_refused_not_ignored(trustee, field, monkeypatch):
    """Earlier versions took the EAR trust anchor and signer from the connection. Whoever
    upgrades with them still there must learn that they no longer count (they come from the
    owner policy), not have them silently dropped: every use of the connection fails."""
    monkeypatch.setenv(
        "AIRFLOW_CONN_TRUSTEE_DEFAULT", trustee.connection(**{field: trustee.ca_pem})
    )
    with pytest.raises(TrusteeConnectionError, match=f"'{field}' is no longer read") as refused:
        TrusteeHook().get_conn()
    assert "data owner's signed policy" in str(refused.value)
    assert "owner_policy" in str(refused.value)
    assert TrusteeHook().test_connection()[0] is False
    both = {**json.loads(trustee.connection())["extra"], "trust_anchor": "x", "token_signer": "y"}
    with pytest.raises(TrusteeConnectionError, match="'trust_anchor' and 'token_signer' are no"):
        TrusteeSettings.from_extra(both)
    # Empty leftovers (an old form saved with the field blank) carry no trust: accepted.
    extra = json.loads(trustee.connection(**{field: ""}))["extra"]
    assert TrusteeSettings.from_extra(extra).kbs_url == trustee.url


def test_admin_credential_never_in_repr_and_masked_in_logs(trustee_conn):
    hook = TrusteeHook()
    settings = hook.settings
    secret = settings.admin_secret  # a PEM (v0.20.0) or a pre-minted admin JWT (v0.21.0+)
    assert secret and secret not in repr(settings) and "PRIVATE KEY" not in repr(settings)
    body = [line for line in secret.splitlines() if line and not line.startswith("-----")]
    assert body
    for line in body:
        assert redact(f"admin={line};") == "admin=***;"


def test_hook_talks_to_trustee_over_pinned_tls(trustee_conn):
    assert TrusteeHook().test_connection() == (True, "KBS is alive")


def test_hook_fails_with_a_foreign_ca(trustee, monkeypatch, tmp_path):
    from pki import pem, self_signed_ca

    other_ca = pem(self_signed_ca("someone else", days=1)[1]).decode()
    monkeypatch.setenv("AIRFLOW_CONN_TRUSTEE_DEFAULT", trustee.connection(ca_cert=other_ca))
    ok, message = TrusteeHook().test_connection()
    assert not ok and message  # TLS to a server whose CA we do not pin fails
