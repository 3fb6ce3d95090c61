"""NVFlare parties as separate local processes on loopback (the embedded default).

NVFlare's POC provisioning lays out one startup kit per site (server ``server``, listening on
``localhost``; clients named by their participant ids); :func:`install_confidential_kit` then
replaces its TLS material with the Trustee-released bundle and adds the CC components, and
:func:`start_site` runs the site's NVFlare process in secure (mutual TLS) mode with this
interpreter — the same entry points NVFlare's ``startup/sub_start.sh`` execs, without the
shell wrapper's restart loop.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from coco_ai.federated.identity import AGGREGATOR

#: The site name NVFlare's POC provisioning gives the server: the aggregator's participant id.
POC_SERVER_NAME = "server"
#: The kit NVFlare's POC provisioning makes for the project admin (the job submitter's).
POC_ADMIN_KIT = "admin@nvidia.com"
_ORG = "nvidia"  # the organisation POC provisioning writes into every kit


def prepare_kits(workspace: str | Path, participant_ids: Sequence[str], *, port: int) -> Path:
    """Provision POC startup kits for the server (on ``localhost:port``) and ``participant_ids``;
    returns the folder holding one kit per site (``<folder>/<site>/{startup,local}``). NVFlare
    points the server's job and snapshot stores into ``workspace`` (its local/resources.json)."""
    import yaml
    from nvflare.tool.poc.poc_commands import (
        gen_project_config_file,
        get_prod_dir,
        prepare_poc_provision,
    )

    ws = Path(workspace)
    ws.mkdir(parents=True, exist_ok=True)
    # NVFlare keeps an existing project.yml (and fills in the clients): set the port there.
    project_file = Path(gen_project_config_file(str(ws)))
    project = yaml.safe_load(project_file.read_text())
    servers = [p for p in project["participants"] if p.get("type") == "server"]
    if len(servers) != 1:
        raise RuntimeError(f"NVFlare's POC project has {len(servers)} servers, expected one")
    servers[0]["fed_learn_port"] = port
    project_file.write_text(yaml.safe_dump(project, sort_keys=False))
    prepare_poc_provision(list(participant_ids), len(participant_ids), str(ws), None)
    return Path(get_prod_dir(str(ws)))


def retarget_kit(kit_dir: str | Path, *, host: str, server_identity: str) -> None:
    """Point a POC client or admin kit at the aggregator: dial ``host`` (at the kit's port) and
    accept only a server certificate whose CN is ``server_identity`` (the aggregator's id). A
    server kit is left as it is."""
    import json

    startup = Path(kit_dir) / "startup"
    client, admin = startup / "fed_client.json", startup / "fed_admin.json"
    if client.is_file():
        doc = json.loads(client.read_text())
        for server in doc["servers"]:
            port = server["service"]["target"].rpartition(":")[2]
            server["service"]["target"] = f"{host}:{port}"
            server["identity"] = server_identity
        client.write_text(json.dumps(doc, indent=2))
    if admin.is_file():
        doc = json.loads(admin.read_text())
        doc["admin"]["host"] = host
        doc["admin"]["server_identity"] = server_identity
        admin.write_text(json.dumps(doc, indent=2))


def site_command(kit_dir: str | Path, site: str, role: str) -> list[str]:
    """The NVFlare process of one site, in secure mode, with this interpreter."""
    kit = str(kit_dir)
    if role == AGGREGATOR:
        entry, config, extra = "nvflare.private.fed.app.server.server_train", "fed_server.json", []
    else:
        entry, config, extra = (
            "nvflare.private.fed.app.client.client_train",
            "fed_client.json",
            [f"uid={site}"],
        )
    return [
        sys.executable, "-u", "-m", entry, "-m", kit, "-s", config,
        "--set", "secure_train=true", *extra, f"org={_ORG}", "config_folder=config",
    ]  # fmt: skip


def start_site(kit_dir: str | Path, site: str, role: str, log_path: str | Path) -> subprocess.Popen:
    """Start one site's process (cwd = its kit), stdout and stderr to ``log_path``."""
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            site_command(kit_dir, site, role),
            cwd=kit_dir,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(os.environ),
            start_new_session=True,  # its own process group: stop_site ends its children too
        )


def stop_site(process: subprocess.Popen, timeout: float = 15.0) -> None:
    """End a site started by :func:`start_site` and everything it spawned (its job processes)."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout)


def run_job(
    admin_kit: str | Path, admin_name: str, job_dir: str | Path, *, timeout_s: float
) -> dict:
    """Submit the job folder ``job_dir`` with the admin kit and wait for it; returns the job's
    final meta (``status`` ``FINISHED:COMPLETED`` when it ran to the end)."""
    from nvflare.fuel.flare_api.flare_api import new_secure_session

    session = new_secure_session(admin_name, str(admin_kit), timeout=30.0)
    try:
        job_id = session.submit_job(str(job_dir))
        _, meta = session.monitor_job_and_return_job_meta(job_id, timeout=timeout_s)
        return meta or session.get_job_meta(job_id)
    finally:
        session.close()
