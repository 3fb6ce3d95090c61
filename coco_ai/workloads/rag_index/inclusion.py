"""Keyed per-document digests in the index's signed manifest, and proofs of inclusion
(docs/formats/rag.md §4.1).

A document id can itself be confidential (a ticket number, a customer's name), and so can the
text's plain SHA-256 (a guessable document is confirmed by hashing it). So the manifest lists,
per document, a digest keyed from the index run's key, which only the TEE and the data owner
(who derives run keys from the root, coco_ai.run_keys) hold:

    inclusion key  K   = HKDF-SHA256(ikm = run key, salt = "coco-ai rag document inclusion v1",
                                     info = run id)
    opening        o_d = HMAC-SHA256(K, "coco-ai/rag-document-opening/v1" LF doc id)
    digest         e_d = HMAC-SHA256(o_d, RFC 8785 JSON {"id": doc id, "sha256": text digest})

sorted and de-duplicated. The public learns only how many documents there are. To prove that a
document (id and text) is in an attested index, the owner reveals that document's opening and
nothing else (:func:`prove`): a verifier recomputes ``e_d`` and finds it in the signed list
(:func:`check_inclusion`). An opening is one document's key: it says nothing about the others
(HMAC is a PRF), and without K nobody can make an opening for another id. The manifest's TEE
signature is what makes the list the index's; the verifier checks it first (coco-ai verify).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from coco_ai.crypto.manifest import DocumentDigests, Manifest
from coco_ai.kbs.wire import canonical_json

SCHEME = "coco-ai/rag-document-inclusion/v1"
_SALT = b"coco-ai rag document inclusion v1"
_OPENING_LABEL = b"coco-ai/rag-document-opening/v1\n"
KEY_SIZE = 32


class InclusionError(ValueError):
    """A proof does not show the document in the manifest; the message says what failed."""


def inclusion_key(run_key: bytes, run_id: str) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    if len(run_key) != KEY_SIZE:
        raise ValueError(f"run key must be {KEY_SIZE} bytes, got {len(run_key)}")
    return HKDF(
        algorithm=hashes.SHA256(), length=KEY_SIZE, salt=_SALT, info=run_id.encode()
    ).derive(run_key)


def opening(key: bytes, doc_id: str) -> bytes:
    return hmac.new(key, _OPENING_LABEL + doc_id.encode("utf-8"), hashlib.sha256).digest()


def document_entry(doc_opening: bytes, doc_id: str, sha256: str) -> str:
    message = canonical_json({"id": doc_id, "sha256": sha256})
    return hmac.new(doc_opening, message, hashlib.sha256).hexdigest()


def document_digests(
    run_key: bytes, run_id: str, documents: Iterable[tuple[str, str]]
) -> DocumentDigests:
    """The manifest's list for ``(doc id, text digest)`` pairs (inside the TEE)."""
    key = inclusion_key(run_key, run_id)
    entries = {document_entry(opening(key, i), i, digest) for i, digest in documents}
    return DocumentDigests(SCHEME, tuple(sorted(entries)))


@dataclass(frozen=True)
class InclusionProof:
    """What the owner reveals to show one document is in an index run's manifest."""

    run_id: str
    doc_id: str
    sha256: str  # the document text's digest (coco_ai.workloads.rag_index.index.document_digest)
    opening: str  # hex

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": SCHEME,
            "run_id": self.run_id,
            "doc_id": self.doc_id,
            "sha256": self.sha256,
            "opening": self.opening,
        }

    @classmethod
    def from_dict(cls, d: Any) -> InclusionProof:
        fields = {"format", "run_id", "doc_id", "sha256", "opening"}
        if not isinstance(d, dict) or set(d) != fields or d["format"] != SCHEME:
            raise InclusionError(f"not an inclusion proof: exactly {sorted(fields)} of {SCHEME}")
        if not all(isinstance(d[k], str) and d[k] for k in fields):
            raise InclusionError("every field of an inclusion proof is a non-empty string")
        try:
            if len(bytes.fromhex(d["opening"])) != KEY_SIZE:
                raise ValueError
        except ValueError:
            raise InclusionError(f"opening must be {KEY_SIZE} bytes in hex") from None
        return cls(d["run_id"], d["doc_id"], d["sha256"], d["opening"])


def prove(run_key: bytes, run_id: str, doc_id: str, sha256: str) -> InclusionProof:
    """The data owner's proof for one document (``run_key``: derived from the owner's root)."""
    doc_opening = opening(inclusion_key(run_key, run_id), doc_id)
    return InclusionProof(run_id, doc_id, sha256, doc_opening.hex())


def check_inclusion(manifest: Manifest, proof: InclusionProof, text: str | None = None) -> None:
    """Raise :class:`InclusionError` unless ``proof`` shows its document in ``manifest`` (whose
    signature the caller verified), and, given the document's ``text``, that it is that text."""
    from coco_ai.workloads.rag_index.index import text_digest

    if manifest.documents is None:
        raise InclusionError(
            f"manifest version {manifest.version} lists no document digests "
            "(an index's manifest does: version 4, or 5)"
        )
    if manifest.documents.scheme != SCHEME:
        raise InclusionError(f"manifest documents use scheme {manifest.documents.scheme!r}")
    if proof.run_id != manifest.run_id:
        raise InclusionError(f"proof is for run {proof.run_id!r}, the manifest {manifest.run_id!r}")
    if text is not None and text_digest(text) != proof.sha256:
        raise InclusionError("the document's text is not the one the proof names")
    entry = document_entry(bytes.fromhex(proof.opening), proof.doc_id, proof.sha256)
    if entry not in manifest.documents.digests:
        raise InclusionError(
            f"document {proof.doc_id!r} with that text is not in the index of run "
            f"{manifest.run_id} (or the opening is not its)"
        )
