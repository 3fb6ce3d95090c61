"""Turn an NVFlare 2.9 startup kit into a confidential party's: Trustee-issued TLS credentials and
the Trustee CC components.

Run inside the party's TEE after its credential bundle was released (through the confidential
data hub): ``startup/`` gets the bundle's CA, certificate and key in place of NVFlare's own
provisioning, and ``local/resources.json`` gets a :class:`TrusteeCCAuthorizer` (issuer and
verifier) and an :class:`IdentityBoundCCManager`, with both classes added to the kit's class
allow list (NVFlare enforces it). Every party lists the same CC-enabled sites, so every site's
token is checked at registration and at each cross-site validation.

NVFlare's CCManager blocks BYOC jobs (jobs that bring their own code): a confidential job's
code must be installed in the party's measured image, which is also what the approved-code
binding of the resource policies requires.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from coco_ai.federated.credentials import CredentialBundle

AUTHORIZER_ID = "coco_ai_trustee_cc_authorizer"
CC_MANAGER_ID = "coco_ai_cc_manager"
AUTHORIZER_CLASS = "coco_ai.federated.authorizer.TrusteeCCAuthorizer"
CC_MANAGER_CLASS = "coco_ai.federated.cc_manager.IdentityBoundCCManager"
#: The server job component that carries out the CC manager's drops inside a job.
DROPPED_SITE_GUARD_CLASS = "coco_ai.federated.cc_manager.DroppedSiteGuard"
_RESOURCES = "resources.json"


class StartupKitError(ValueError):
    """A startup kit that cannot be made confidential as asked (says what is missing)."""


def install_confidential_kit(
    kit_dir: str | Path,
    bundle: CredentialBundle,
    *,
    guest_api_url: str,
    trust_anchor_path: str,
    cc_enabled_sites: Sequence[str],
    token_signer_path: str | None = None,
    min_gpus: int = 1,
    allow_development_evidence: bool = False,
    verify_frequency_s: int = 120,
    token_expiration_s: int = 60,
    peer_request_timeout_s: float = 30.0,
    extra_allowed_classes: Sequence[str] = (),
    run_id: str | None = None,
    record_dir: str | None = None,
) -> Path:
    """Install ``bundle`` and the CC components into ``kit_dir``; returns the resources file.

    ``cc_enabled_sites`` are the site names of the whole federation (aggregator included); they
    are also the only participant ids the authorizer accepts. ``extra_allowed_classes`` are the
    installed job classes (the federated job's) the kit's class allow list must admit.
    ``peer_request_timeout_s`` bounds the CC manager's requests for a peer's fresh token and for
    the site list (NVFlare's default, 10 s, is short enough that one slow attestation-agent
    answer on a loaded host shuts the whole federation down). ``run_id``, when given, is the
    pipeline run every peer's attestation must name (parties of another run of the same
    federation are refused). ``record_dir`` (the aggregator's) is where the CC manager records
    each attested peer and each dropped participant (docs/formats/federated.md, section 2).
    """
    kit = Path(kit_dir)
    startup, local = kit / "startup", kit / "local"
    if not startup.is_dir() or not local.is_dir():
        raise StartupKitError(f"{kit} is not an NVFlare startup kit (no startup/ and local/)")
    if bundle.identity.participant_id not in cc_enabled_sites:
        raise StartupKitError(
            f"this party ({bundle.identity.participant_id}) is not among the CC-enabled sites"
        )
    bundle.write_startup_files(startup)
    source = local / _RESOURCES
    if not source.is_file():
        source = local / (_RESOURCES + ".default")
    try:
        resources: dict[str, Any] = json.loads(source.read_text())
    except (OSError, ValueError) as exc:
        raise StartupKitError(f"cannot read {source}: {exc}") from None
    components = [
        c
        for c in resources.get("components", [])
        if c.get("id") not in (AUTHORIZER_ID, CC_MANAGER_ID)
    ]
    authorizer_args: dict[str, Any] = {
        "guest_api_url": guest_api_url,
        "trust_anchor_path": trust_anchor_path,
        "federation": bundle.identity.federation,
        "min_gpus": min_gpus,
        "allow_development_evidence": allow_development_evidence,
        "accepted_participants": list(cc_enabled_sites),
    }
    if token_signer_path is not None:
        authorizer_args["token_signer_path"] = token_signer_path
    if run_id is not None:
        authorizer_args["run_id"] = run_id
    cc_manager_args: dict[str, Any] = {
        "cc_issuers_conf": [{"issuer_id": AUTHORIZER_ID, "token_expiration": token_expiration_s}],
        "cc_verifier_ids": [AUTHORIZER_ID],
        "verify_frequency": verify_frequency_s,
        "cc_enabled_sites": list(cc_enabled_sites),
        "get_site_request_timeout": peer_request_timeout_s,
        "get_token_request_timeout": peer_request_timeout_s,
    }
    if record_dir is not None:
        cc_manager_args["record_dir"] = str(record_dir)
    components += [
        {"id": AUTHORIZER_ID, "path": AUTHORIZER_CLASS, "args": authorizer_args},
        {"id": CC_MANAGER_ID, "path": CC_MANAGER_CLASS, "args": cc_manager_args},
    ]
    resources["components"] = components
    allowed = resources.get("class_allow_list")
    if isinstance(allowed, list):
        resources["class_allow_list"] = sorted(
            {
                *allowed,
                AUTHORIZER_CLASS,
                CC_MANAGER_CLASS,
                DROPPED_SITE_GUARD_CLASS,
                *extra_allowed_classes,
            }
        )
    target = local / _RESOURCES
    target.write_text(json.dumps(resources, indent=2) + "\n")
    return target
