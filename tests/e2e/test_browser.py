"""The web UI path: log in, open the DAG, fill the trigger form, submit, watch the run succeed.

Headless Chromium from Debian (`apt-get install chromium`) driven by Playwright.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

import pytest

from coco_ai.devstack import DAG_ID

pytestmark = [pytest.mark.e2e, pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(900)]


def test_trigger_form_starts_a_run_that_succeeds(e2e_stack, follow, signed_in_page):
    info = e2e_stack.info
    # the recipe typed below (short: the run only has to end), approved by the data owner
    typed = {
        "lora": {"r": 4, "alpha": 16, "dropout": 0.05},
        "training": {"epochs": 2, "max_steps": 8},
    }
    info.approve_recipes(typed)
    page = signed_in_page()

    page.goto(f"{info.api_url}/dags/{DAG_ID}")
    page.get_by_role("button", name="Trigger").first.click()
    dialog = page.get_by_role("dialog")
    # sections of the form are the Param sections; fields are found by their titles
    for section in ("Data", "LoRA adapter", "Training", "Confidential computing"):
        assert dialog.get_by_text(section, exact=True).is_visible()
    dialog.get_by_text("LoRA adapter", exact=True).click()
    dialog.get_by_label("LoRA rank (r)").fill("4")
    dialog.get_by_text("Training", exact=True).click()
    dialog.get_by_label("Epochs").fill("2")
    dialog.get_by_label("Maximum optimizer steps").fill("8")
    dialog.get_by_role("button", name="Trigger").click()

    page.wait_for_url(re.compile(rf".*/dags/{DAG_ID}/runs/.+"))
    run_id = unquote(page.url.rsplit("/runs/", 1)[1])
    run = follow(run_id, timeout_s=600)
    assert run.state == "success", {t: ti["state"] for t, ti in run.tasks.items()}

    client = info.client()
    conf = client.dag_run(DAG_ID, run_id)["conf"]
    client.close()
    # what was typed into the form
    assert (conf["lora_r"], conf["epochs"], conf["max_steps"]) == (4, 2, 8)

    page.reload()  # the badge updates before the task table; reload before asserting
    badge = page.get_by_test_id("state-badge").first
    badge.wait_for()
    assert badge.inner_text().strip().lower() == "success"
    page.close()
