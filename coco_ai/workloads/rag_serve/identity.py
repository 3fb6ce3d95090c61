"""Who is who around the retrieval service: the initdata claims of the service and of its
callers, and where Trustee keeps each caller's credential (docs/formats/rag.md §5).

The service's initdata (attested, so the service trusts it over its config) names:

- ``io.coco-ai.workload`` = ``rag_serve`` (its role) and its own ``io.coco-ai.run-id``;
- ``io.coco-ai.rag-index-key``: the URI of the index run's key that the data owner published
  for serving (``kbs:///coco-ai-rag/index-key/<index run>``, :func:`publish_index_key`): that one
  key, not the run-key root, so a broken service exposes one index, not every run under the
  root (the index run's grant is tombstoned when that run ends, so it is not used either);
- ``io.coco-ai.rag-index-run`` and ``io.coco-ai.rag-index-manifest``: the index run it serves
  and the manifest digest promotion published for it;
- ``io.coco-ai.rag-trust-anchor``: the SHA-256 of the attestation trust anchor (PEM) that the
  index's token and callers' tokens must chain to;
- ``io.coco-ai.rag-generator`` (only for generative answers): the model digest
  (coco_ai.workloads.models.model_digest) of the answer model;
- ``io.coco-ai.rag-store-options`` (only with a sealed ``sealed_storage_options`` in the
  config): the ``kbs:///`` URI of the index store's credentials, the one resource the sealed
  secret may name;
- ``io.coco-ai.rag-caller-credential.<caller id>``: one per admitted caller, the URI of that
  caller's credential, which the resource policy then releases to the service too.

A caller's initdata names ``io.coco-ai.rag-caller`` = the URI of its own credential
``kbs:///coco-ai-rag/caller-credential/<caller id>``; the resource policy releases a credential
only to an attested TEE running approved code whose initdata names that URI.
"""

from __future__ import annotations

from coco_ai.digest import Digest
from coco_ai.kbs.resource_path import ResourcePath, parse_resource_uri, validate_segment

SERVICE_ROLE = "rag_serve"
SERVICE_MODULE = "coco_ai.workloads.rag_serve"
INDEX_RUN_KEY = "io.coco-ai.rag-index-run"
INDEX_MANIFEST_KEY = "io.coco-ai.rag-index-manifest"
TRUST_ANCHOR_KEY = "io.coco-ai.rag-trust-anchor"
CALLER_CREDENTIAL_PREFIX = "io.coco-ai.rag-caller-credential."
CALLER_KEY = "io.coco-ai.rag-caller"
INDEX_KEY_KEY = "io.coco-ai.rag-index-key"
GENERATOR_KEY = "io.coco-ai.rag-generator"
STORE_OPTIONS_KEY = "io.coco-ai.rag-store-options"

CREDENTIAL_REPOSITORY = "coco-ai-rag"
CREDENTIAL_TYPE = "caller-credential"
CREDENTIAL_SIZE = 32
INDEX_KEY_TYPE = "index-key"


def credential_path(caller_id: str) -> ResourcePath:
    """Where Trustee keeps the caller's credential (32 random bytes the data owner writes)."""
    return ResourcePath(CREDENTIAL_REPOSITORY, CREDENTIAL_TYPE, validate_segment(caller_id))


def index_key_path(index_run_id: str) -> ResourcePath:
    """Where Trustee keeps an index run's key for the services that serve that index."""
    return ResourcePath(CREDENTIAL_REPOSITORY, INDEX_KEY_TYPE, validate_segment(index_run_id))


def publish_index_key(admin, index_run_id: str, index_key: bytes) -> ResourcePath:
    """The data owner lets services serve ``index_run_id``: that run's key (derived from the
    owner's run-key root on the owner's side, coco_ai.run_keys) written to Trustee at
    :func:`index_key_path`, which the resource policy releases only to a TEE whose initdata
    names it (a service of that index)."""
    path = index_key_path(index_run_id)
    admin.set_resource(path, index_key)
    return path


def withdraw_index_key(admin, index_run_id: str) -> None:
    """No service obtains the index's key any more (a running one keeps what it loaded)."""
    admin.delete_resource(index_key_path(index_run_id))


def issue_caller_credential(admin, caller_id: str) -> bytes:
    """The data owner admits ``caller_id``: a fresh random credential written to Trustee
    (``admin`` is a coco_ai.kbs.client.KbsAdminClient). A service whose initdata names the
    caller, and the caller's own TEE, obtain it after attestation; the bytes are returned for
    the owner's tests only (`coco-ai rag caller admit` never shows them)."""
    import secrets

    credential = secrets.token_bytes(CREDENTIAL_SIZE)
    admin.set_resource(credential_path(caller_id), credential)
    return credential


def revoke_caller_credential(admin, caller_id: str) -> None:
    """Delete the caller's credential from Trustee: a running service drops the caller at its
    next credential refresh (``credential_refresh_s``), and no TEE can obtain it again."""
    admin.delete_resource(credential_path(caller_id))


def service_claims(
    *,
    run_id: str,
    image: str,
    index_run_id: str,
    index_manifest_digest: str,
    trust_anchor_pem: bytes,
    callers: list[str],
    generator_digest: str | None = None,
    store_options_uri: str | None = None,
) -> dict[str, str]:
    """The ``io.coco-ai.*`` initdata claims of a retrieval service run (``generator_digest``:
    the answer model's, for generative answers; ``store_options_uri``: the store credentials'
    resource, for a sealed ``sealed_storage_options``)."""
    from coco_ai.guest.initdata import IMAGE_DIGEST_KEY, RUN_ID_KEY, WORKLOAD_KEY
    from coco_ai.runs import pinned_image

    validate_segment(index_run_id)
    Digest.parse(index_manifest_digest, algorithms=("sha256",))
    claims = {
        WORKLOAD_KEY: SERVICE_ROLE,
        RUN_ID_KEY: validate_segment(run_id),
        IMAGE_DIGEST_KEY: pinned_image(image).partition("@")[2],
        INDEX_KEY_KEY: index_key_path(index_run_id).uri(),
        INDEX_RUN_KEY: index_run_id,
        INDEX_MANIFEST_KEY: index_manifest_digest,
        TRUST_ANCHOR_KEY: anchor_digest(trust_anchor_pem),
    }
    if generator_digest is not None:
        claims[GENERATOR_KEY] = str(Digest.parse(generator_digest, algorithms=("sha256",)))
    if store_options_uri is not None:
        claims[STORE_OPTIONS_KEY] = parse_resource_uri(store_options_uri).uri()
    for caller in callers:
        claims[CALLER_CREDENTIAL_PREFIX + caller] = credential_path(caller).uri()
    return claims


def caller_claims(*, run_id: str, image: str, caller_id: str) -> dict[str, str]:
    """The ``io.coco-ai.*`` initdata claims of a caller workload (its own run)."""
    from coco_ai.guest.initdata import IMAGE_DIGEST_KEY, RUN_ID_KEY, WORKLOAD_KEY
    from coco_ai.runs import pinned_image

    return {
        WORKLOAD_KEY: "rag_caller",
        RUN_ID_KEY: validate_segment(run_id),
        IMAGE_DIGEST_KEY: pinned_image(image).partition("@")[2],
        CALLER_KEY: credential_path(caller_id).uri(),
    }


def anchor_digest(trust_anchor_pem: bytes) -> str:
    import hashlib

    return "sha256:" + hashlib.sha256(trust_anchor_pem).hexdigest()


def admitted_callers(claims: dict[str, str]) -> dict[str, str]:
    """{caller id: credential URI} named by a service's initdata claims."""
    out = {}
    for key, uri in claims.items():
        if key.startswith(CALLER_CREDENTIAL_PREFIX):
            caller = key[len(CALLER_CREDENTIAL_PREFIX) :]
            if uri != credential_path(caller).uri():
                raise ValueError(f"initdata claim {key} does not name caller {caller}'s credential")
            out[caller] = uri
    return out
