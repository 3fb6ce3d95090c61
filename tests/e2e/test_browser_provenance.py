"""The provenance view in the real Airflow UI, for a real promoted run; and its access control.

One run is driven the way `coco-ai demo` drives it (`run_pipeline`, relaying training progress
from the task log over REST). Then: the plugin's endpoints refuse an unauthenticated caller and
an authenticated caller without permissions (real api-server, Airflow's own auth manager); the
admin opens the run page in headless Chromium, clicks the "Provenance" tab and reads the
attestation statuses and the verification verdict from the page; the run's secrets appear
nowhere in it; a tampered ciphertext object turns the verdict to failed. Screenshots go to
docs/ (committed).
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from conftest import STRANGER  # tests/e2e is on sys.path (rootdir-relative test modules)

from coco_ai.devstack import DAG_ID, run_pipeline

pytestmark = [pytest.mark.e2e, pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(900)]

DOCS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
CHECKS = (
    "attestation token",
    "attestation policy",
    "manifest signature",
    "ciphertext",
    "model signature",
    "registry",
)


@pytest.fixture(scope="module")
def promoted(e2e_stack, quick_run):
    """One run as `coco-ai demo` drives it; the run's key derived the data owner's way."""
    progress = []
    summary = run_pipeline(e2e_stack.info, quick_run, training=progress.append, timeout_s=600)
    assert summary["state"] == "success", summary["tasks"]
    key = e2e_stack.info.data_owner_run_key(summary["run_refs"]["run_id"])
    return {"summary": summary, "progress": progress, "checkpoint_key": key}


def _api(info, run_id: str) -> str:
    return f"{info.api_url}/coco-ai/api/runs/{DAG_ID}/{quote(run_id, safe='')}"


def test_demo_summary_carries_the_third_party_verdict(promoted):
    """`coco-ai verify` as the demo runs it: the owner's public key, the store and the registry
    only; every check passes, including the registry's (a real promotion, a real alias)."""
    from coco_ai.devstack.demo import format_summary

    verify = promoted["summary"]["verify"]
    assert verify["verdict"] == "verified", verify["checks"]
    statuses = {c["name"]: c["status"] for c in verify["checks"]}
    assert set(statuses.values()) == {"passed"}, statuses
    assert "coco-ai verify (owner's public key + store + registry only): VERIFIED" in (
        format_summary(promoted["summary"])
    )


def test_demo_relays_training_progress_from_the_task_log(promoted):
    progress = promoted["progress"]
    assert progress, "no training progress was read from the confidential_finetune log"
    last = progress[-1]
    assert 0 < last.step <= last.total_steps
    assert last.loss > 0 and last.tokens_per_s > 0
    assert [p.step for p in progress] == sorted(p.step for p in progress)


def test_endpoints_refuse_unauthenticated_and_unauthorised_callers(e2e_stack, promoted):
    info, run_id = e2e_stack.info, promoted["summary"]["run_id"]
    page = f"{info.api_url}/coco-ai/runs/{DAG_ID}/{quote(run_id, safe='')}"
    reg = promoted["summary"]["registry"]
    model = f"{info.api_url}/coco-ai/api/models/{reg['model_name']}/{reg['version']}"
    for url in (_api(info, run_id), page, model, f"{info.api_url}/coco-ai/models"):
        r = httpx.get(url, timeout=60)
        assert r.status_code == 401, (url, r.status_code, r.text[:200])
        assert "verdict" not in r.text
    stranger = {"Authorization": f"Bearer {e2e_stack.token(STRANGER)}"}
    for url in (_api(info, run_id), page, model):
        r = httpx.get(url, headers=stranger, timeout=60)
        assert r.status_code == 403, (url, r.status_code, r.text[:200])
        assert "verdict" not in r.text
    forged = {"Authorization": "Bearer " + e2e_stack.token()[:-8] + "AAAAAAAA"}
    assert httpx.get(_api(info, run_id), headers=forged, timeout=60).status_code in (401, 403)


def test_run_record_verifies_and_shows_no_secret(e2e_stack, promoted):
    info, run_id = e2e_stack.info, promoted["summary"]["run_id"]
    r = httpx.get(
        _api(info, run_id), headers={"Authorization": f"Bearer {e2e_stack.token()}"}, timeout=120
    )
    assert r.status_code == 200, r.text
    record = r.json()
    checks = {c["name"]: c["status"] for c in record["verification"]["checks"]}
    assert checks == dict.fromkeys(CHECKS, "passed"), record["verification"]
    assert record["verification"]["verdict"] == "verified"
    assert {s["status"] for s in record["attestation"]["submods"]} == {"affirming"}
    assert record["run_refs"]["checkpoint_key_uri"].startswith("kbs:///")
    assert record["registry"]["version"] == promoted["summary"]["registry"]["version"]
    root = Path(promoted["summary"]["run_key_root_file"]).read_bytes()
    for secret in (promoted["checkpoint_key"], e2e_stack.dataset_key(), root):
        for form in (secret.hex(), base64.b64encode(secret).decode()):
            assert form not in r.text


def test_provenance_tab_on_the_run_page(e2e_stack, promoted, signed_in_page):
    info, run_id = e2e_stack.info, promoted["summary"]["run_id"]
    page = signed_in_page(1400)

    page.goto(f"{info.api_url}/dags/{DAG_ID}/runs/{quote(run_id, safe='')}")
    page.get_by_role("link", name="Provenance").click()
    page.wait_for_url(re.compile(r".*/plugin/provenance$"))
    view = page.frame_locator("iframe[title='Provenance']")
    view.locator("#verdict").wait_for()
    assert view.locator("#verdict").inner_text() == "verified"
    statuses = {
        row.locator("td").nth(0).inner_text(): row.locator("td").nth(1).inner_text()
        for row in view.locator("#checks tr[data-check]").all()
    }
    assert statuses == dict.fromkeys(CHECKS, "passed")
    submods = {
        row.locator("td").nth(0).inner_text(): row.locator("td").nth(1).inner_text()
        for row in view.locator("#submods tr[data-submod]").all()
    }
    assert submods == {"cpu0": "affirming", "gpu0": "affirming"}, submods
    keys = view.locator("#keys").inner_text()
    # grant, run-key root, data-set key, and the checkpoint key's name: references only
    assert keys.count("kbs:///") == 4 and "kbs:///coco-ai/dataset-key/" in keys
    DOCS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(DOCS / "provenance-run.png"), full_page=True)

    reg = promoted["summary"]["registry"]
    page.goto(f"{info.api_url}/coco-ai/models/{reg['model_name']}/{reg['version']}")
    assert page.locator("#verdict").inner_text() == "verified"
    registry = page.locator("#registry").inner_text()
    assert f"version {reg['version']}" in registry and reg["alias"] in registry
    page.screenshot(path=str(DOCS / "provenance-model-version.png"), full_page=True)
    page.close()


def test_data_owner_report_for_the_run(e2e_stack, promoted, tmp_path):
    from coco_ai.cli import main

    summary = promoted["summary"]
    out = tmp_path / "report.html"
    anchor = tmp_path / "anchor.pem"
    anchor.write_bytes((Path(e2e_stack.info.trustee_state_dir) / "ca.pem").read_bytes())
    reg = summary["registry"]
    rc = main(
        [
            "report",
            f"models:/{reg['model_name']}/{reg['version']}",
            "--run-key-root-file",
            summary["run_key_root_file"],
            "--registry-uri",
            e2e_stack.info.registry_uri,
            "--trust-anchor",
            str(anchor),
            "--out",
            str(out),
        ]
    )
    page = out.read_text()
    assert re.search(r"<td>ciphertext</td><td class='passed'>passed", page)
    assert rc == 1  # no promotion public key given: the model signature check did not run
    sample = summary["sample"]
    assert sample is not None and sample["question"] in html.unescape(page)
    assert 'id="loss-curve"' in page and "data:image/png;base64," in page


def test_tampered_ciphertext_shows_as_failed(e2e_stack, promoted, signed_in_page):
    info, run_id = e2e_stack.info, promoted["summary"]["run_id"]
    checkpoint = Path(promoted["summary"]["checkpoint_uri"].removeprefix("file://"))
    victim = sorted(p for p in (checkpoint / "objects").iterdir() if p.is_file())[0]
    original = victim.read_bytes()
    tampered = bytearray(original)
    tampered[len(tampered) // 2] ^= 0x01
    victim.write_bytes(bytes(tampered))
    try:
        page = signed_in_page(1400)
        page.goto(f"{info.api_url}/dags/{DAG_ID}/runs/{quote(run_id, safe='')}/plugin/provenance")
        view = page.frame_locator("iframe[title='Provenance']")
        view.locator("#verdict").wait_for()
        assert view.locator("#verdict").inner_text() == "failed"
        ciphertext = view.locator("#checks tr[data-check='ciphertext']")
        assert ciphertext.locator("td").nth(1).inner_text() == "failed"
        model_signature = view.locator("#checks tr[data-check='model signature']")
        assert model_signature.locator("td").nth(1).inner_text() == "failed"
        token = view.locator("#checks tr[data-check='attestation token']")
        assert token.locator("td").nth(1).inner_text() == "passed"
        page.screenshot(path=str(DOCS / "provenance-tampered.png"), full_page=True)
        page.close()
    finally:
        victim.write_bytes(original)
