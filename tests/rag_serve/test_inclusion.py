"""Per-document keyed digests in the index's signed manifest (version 5; 4 before): the data
owner proves a document's inclusion with `coco-ai rag document prove`, anyone checks it against
the verified index with `coco-ai rag document check`; wrong proofs, other runs and old manifests
are refused.
The index is the session's real index run (tests/rag_serve/conftest.py)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest

from coco_ai.crypto.manifest import DocumentDigests, Manifest, ManifestError
from coco_ai.workloads.rag_index.inclusion import (
    SCHEME,
    InclusionError,
    InclusionProof,
    check_inclusion,
    prove,
)
from coco_ai.workloads.rag_index.index import document_digest
from tests.rag_serve.conftest import INDEX_RUN

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def manifest(index_uri) -> Manifest:
    from coco_ai.crypto import read_manifest
    from coco_ai.storage import open_store

    return read_manifest(open_store(index_uri))[0]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "coco_ai.cli", "rag", "document", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_manifest_lists_one_keyed_digest_per_document_and_no_id(manifest, repository) -> None:
    assert manifest.version == 5
    assert manifest.documents is not None and manifest.documents.scheme == SCHEME
    assert len(manifest.documents.digests) == len(repository.documents)
    public = manifest.canonical_bytes().decode()
    for d in repository.documents:  # neither ids nor plain text digests are public
        assert d.id not in public
        assert document_digest(d).removeprefix("sha256:") not in public
    # round trip: the bytes are the canonical form, parsed back to the same manifest
    assert Manifest.from_bytes(manifest.canonical_bytes()) == manifest


def test_every_document_proves_in_and_wrong_proofs_are_refused(manifest, repository, stack) -> None:
    key = stack.run_key  # INDEX_RUN is the stack's run: the owner derives its key from the root
    for d in repository.documents:
        check_inclusion(manifest, prove(key, INDEX_RUN, d.id, document_digest(d)), d.text)
    doc = repository.documents[0]
    proof = prove(key, INDEX_RUN, doc.id, document_digest(doc))
    refusals = {
        "edited text": (proof, doc.text + " (edited)"),
        "another text digest": (
            dataclasses.replace(proof, sha256=document_digest(repository.documents[1])),
            None,
        ),
        "another document's opening": (
            dataclasses.replace(
                proof,
                opening=prove(key, INDEX_RUN, repository.documents[1].id, proof.sha256).opening,
            ),
            None,
        ),
        "another run's key": (prove(bytes(32), INDEX_RUN, doc.id, proof.sha256), None),
        "an id not in the index": (prove(key, INDEX_RUN, "nw-manual-9999", proof.sha256), None),
    }
    for what, (bad, text) in refusals.items():
        with pytest.raises(InclusionError):
            check_inclusion(manifest, bad, text)
            pytest.fail(what)
    with pytest.raises(InclusionError, match="proof is for run 'run-other'"):
        check_inclusion(manifest, dataclasses.replace(proof, run_id="run-other"))


def _with_sha256_entries(manifest: Manifest, **changes) -> Manifest:
    """`manifest` as an older version (3 or 4): entries name ciphertexts by SHA-256 (the
    digests are not recomputed: only the shape is under test)."""
    files = tuple(
        dataclasses.replace(f, ciphertext_sha256=f.ciphertext_blake3, ciphertext_blake3=None)
        for f in manifest.files
    )
    return dataclasses.replace(manifest, files=files, **changes)


def test_old_manifest_versions_still_parse_and_have_no_documents(manifest) -> None:
    v4 = _with_sha256_entries(manifest, version=4)
    assert Manifest.from_bytes(v4.canonical_bytes()).documents == manifest.documents
    v3 = _with_sha256_entries(manifest, version=3, documents=None)
    parsed = Manifest.from_bytes(v3.canonical_bytes())
    assert parsed.version == 3 and parsed.documents is None
    assert "documents" not in json.loads(v3.canonical_bytes())  # (metrics count them)
    with pytest.raises(InclusionError, match="manifest version 3 lists no document digests"):
        check_inclusion(parsed, InclusionProof(INDEX_RUN, "x", "sha256:" + "0" * 64, "00" * 32))
    # the version and the field go together, both ways
    with pytest.raises(ManifestError, match="version 3 cannot list documents"):
        _with_sha256_entries(manifest, version=3)
    with pytest.raises(ManifestError, match="version 4 lists no documents"):
        _with_sha256_entries(manifest, version=4, documents=None)
    # version 5 lists documents where there are some (an index), and none elsewhere
    assert dataclasses.replace(manifest, documents=None).version == 5
    edited = json.loads(manifest.canonical_bytes())
    del edited["documents"]
    with pytest.raises(ManifestError):
        Manifest.from_bytes(json.dumps(edited).encode())


def test_document_list_shape_is_checked() -> None:
    good = "a" * 64
    with pytest.raises(ManifestError, match="sorted and unique"):
        DocumentDigests(SCHEME, ("b" * 64, good))
    with pytest.raises(ManifestError, match="sorted and unique"):
        DocumentDigests(SCHEME, (good, good))
    with pytest.raises(ManifestError, match="64 lowercase hex"):
        DocumentDigests(SCHEME, ("A" * 64,))
    with pytest.raises(ManifestError, match="scheme"):
        DocumentDigests("Not A Scheme!", (good,))


def test_cli_prove_then_check_against_the_verified_index(
    tmp_path, stack, index_uri, repository
) -> None:
    from coco_ai.workloads.rag_index.corpus import to_jsonl

    root = tmp_path / "root.key"
    root.write_bytes(stack.run_key_root)
    repo = tmp_path / "repository.jsonl"
    repo.write_bytes(to_jsonl(repository))
    anchor = tmp_path / "anchor.pem"
    anchor.write_bytes(stack.trust_anchor_pem)
    doc = repository.documents[2]
    proved = _cli(
        "prove",
        *("--index-run", INDEX_RUN, "--run-key-root-file", str(root)),
        *("--repository", str(repo), "--doc-id", doc.id),
    )
    assert proved.returncode == 0, proved.stderr
    proof = json.loads(proved.stdout)
    assert proof["doc_id"] == doc.id and stack.run_key_root.hex() not in proved.stdout
    proof_file = tmp_path / "proof.json"
    proof_file.write_text(proved.stdout)
    check = ("check", "--index", index_uri, "--trust-anchor", str(anchor))
    checked = _cli(*check, "--proof", str(proof_file), "--repository", str(repo))
    assert checked.returncode == 0, checked.stderr
    assert json.loads(checked.stdout)["included"] is True

    # a forged opening, and a proof checked against another trust anchor: exit 2, one line
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps({**proof, "opening": "11" * 32}))
    refused = _cli(*check, "--proof", str(forged))
    assert refused.returncode == 2
    assert "is not in the index of run" in refused.stderr
    other = tmp_path / "other.pem"
    other.write_bytes(stack.tls_ca_pem)  # a real CA, not the attestation anchor
    refused = _cli(
        "check", "--index", index_uri, "--trust-anchor", str(other), "--proof", str(proof_file)
    )
    assert refused.returncode == 2 and "rag document check:" in refused.stderr
    missing = _cli(
        "prove",
        *("--index-run", INDEX_RUN, "--run-key-root-file", str(root)),
        *("--repository", str(repo), "--doc-id", "nw-none"),
    )
    assert missing.returncode == 2 and "has no document 'nw-none'" in missing.stderr
