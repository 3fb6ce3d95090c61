"""The public provenance of a checkpoint: attestation summary, references, checks, registry.

What the Airflow provenance view shows, built without Airflow and without any key. Sources are
public by construction: the checkpoint's manifest, manifest signature and EAR token (stored
beside the ciphertext; the ciphertext is only hashed, never decrypted), the model signature
bundle (hashed and verified), the registry's provenance tags, and the run's references. Every
value that leaves this module passes `public_reference`, which lets through only the shapes a
reference has (digest, ``kbs:///`` URI, object-store URI, status word, identifier, number); a
field that holds anything else is withheld, so even a key planted in XCom is not displayed.

The verification is a list of `Check`s from a `Verifier`. Today's verifier re-runs the keyless
chain of `coco_ai.crypto` / `coco_ai.promotion` (`KeylessChainVerifier`); an independent
verifier plugs in by implementing the same `verify(subject) -> Verification`.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from coco_ai.check_status import FAILED, NOT_RUN, PASSED
from coco_ai.crypto.manifest import MANIFEST_FILE, SIGNATURE_FILE, TOKEN_FILE

if TYPE_CHECKING:
    from coco_ai.runs import RunRefs

WITHHELD = "(withheld: not a public reference)"

_DIGEST = re.compile(r"^sha(256|384|512):[0-9a-f]{64,128}$")
_HEX = re.compile(r"^[0-9a-f]{64,128}$")
_B64_DIGEST = re.compile(r"^[A-Za-z0-9+/]{43}=$|^[A-Za-z0-9+/]{64}$|^[A-Za-z0-9+/]{86}==$")
_KBS_URI = re.compile(r"^kbs:///[A-Za-z0-9._-]+/[A-Za-z0-9._-]+/[A-Za-z0-9._-]+$")
_STORE_URI = re.compile(r"^(file|s3|gs|az|memory)://[A-Za-z0-9._~/@:+-]{1,1000}$")
_IMAGE = re.compile(r"^[a-z0-9][a-z0-9._/:-]{0,250}@sha256:[0-9a-f]{64}$")
_WORD = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._:+/-]{0,200}$")
# Key material as text: a long base64 run mixing cases and digits, or a long hex run.
_B64_RUN = re.compile(r"[A-Za-z0-9+/=]{40,}")
_HEX_RUN = re.compile(r"[0-9a-fA-F]{32,}")


def _keylike(text: str) -> bool:
    if _HEX_RUN.search(text):
        return True
    return any(
        re.search(r"[a-z]", run) and re.search(r"[A-Z]", run) and re.search(r"[0-9]", run)
        for run in _B64_RUN.findall(text)
    )


def public_reference(value: Any) -> Any:
    """`value` if it has the shape of a public reference, else the `WITHHELD` marker.

    Digests, base64 or hex digests where a verifier reports one, ``kbs:///`` resource URIs,
    object-store URIs, images pinned by digest, numbers, booleans and short words. Anything
    that could be key material (a long unbroken run of base64/hex outside a digest or URI
    position) is withheld.
    """
    if value is None or isinstance(value, bool | int | float):
        return value
    if not isinstance(value, str):
        return WITHHELD
    if _DIGEST.match(value) or _KBS_URI.match(value) or _IMAGE.match(value):
        return value
    if _STORE_URI.match(value):
        return value
    if _WORD.match(value) and not _keylike(value):
        return value
    return WITHHELD


def public_digest(value: Any) -> Any:
    """A digest as a verifier reports it (``sha256:…``, bare hex, or base64 of 32/48/64 bytes)."""
    if isinstance(value, str) and (
        _DIGEST.match(value) or _HEX.match(value) or _B64_DIGEST.match(value)
    ):
        return value
    return public_reference(value)


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # PASSED, FAILED or NOT_RUN
    reason: str


@dataclass(frozen=True)
class Verification:
    verifier: str
    checks: tuple[Check, ...]

    @property
    def verdict(self) -> str:
        """The verdict: "verified" only when every check passed, "failed" otherwise."""
        if self.checks and all(c.status == PASSED for c in self.checks):
            return "verified"
        return "failed"

    def to_dict(self) -> dict[str, Any]:
        return {
            "verifier": self.verifier,
            "verdict": self.verdict,
            "checks": [asdict(c) for c in self.checks],
        }


@dataclass(frozen=True)
class Subject:
    """What is verified and what it must prove (references only)."""

    checkpoint_uri: str
    run_id: str
    initdata_digest: str | None = None  # lowercase hex of this run's initdata digest
    image_digest: str | None = None  # "sha256:<hex>"
    min_gpus: int = 0
    signature_uri: str | None = None  # OpenSSF model signature bundle (None: not promoted)
    registry_tags: Mapping[str, str] = field(default_factory=dict)  # coco-ai.* tags, if any
    # The run's references (key release output). When given, the policy is the pipeline's own:
    # the token must carry exactly this run's initdata digest and every claim key release wrote.
    run_refs: RunRefs | None = None


class Verifier(Protocol):
    name: str

    def verify(self, subject: Subject) -> Verification: ...


class KeylessChainVerifier:
    """Re-runs the keyless chain of `coco_ai.crypto` and `coco_ai.promotion` on the stored bytes.

    Checks, in order; a check whose input an earlier failure made meaningless is "not run":
    token (chain to the trust anchor, valid when the manifest was signed), attestation policy
    (cpu0 and every GPU affirming, enough GPUs, this run's initdata digest, run id and image),
    manifest signature (by the attested TEE key, within the token's validity, this run's),
    ciphertext (exact object set, sizes, SHA-256), model signature (OpenSSF, promotion key),
    registry (the version's tags name these digests).
    """

    name = "coco_ai keyless chain (coco_ai.crypto + coco_ai.promotion)"

    def __init__(
        self,
        *,
        trust_anchor_pem: bytes,
        signing_public_key_path: str | None = None,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        self._anchor = trust_anchor_pem
        self._signing_public_key = signing_public_key_path
        self._options = dict(storage_options or {})

    def verify(self, subject: Subject) -> Verification:
        from coco_ai.crypto.errors import CheckpointError
        from coco_ai.crypto.transfer import read_manifest, verify_objects
        from coco_ai.crypto.verify import check_policy, verify_signed_manifest
        from coco_ai.kbs.ear import verify_ear_token
        from coco_ai.kbs.errors import KbsError
        from coco_ai.storage import open_store

        checks: list[Check] = []

        def add(name: str, ok: bool | None, reason: str) -> bool:
            status = NOT_RUN if ok is None else PASSED if ok else FAILED
            checks.append(Check(name, status, reason))
            return bool(ok)

        def skip(*names: str, why: str) -> Verification:
            for n in names:
                add(n, None, why)
            return Verification(self.name, tuple(checks))

        rest = ("attestation policy", "manifest signature", "ciphertext", "model signature")
        try:
            store = open_store(subject.checkpoint_uri, **self._options)
            manifest, manifest_bytes = read_manifest(store)
            signature = _text(store, SIGNATURE_FILE)
            token = _text(store, TOKEN_FILE)
        except (CheckpointError, OSError, ValueError) as exc:
            add("attestation token", False, f"checkpoint unreadable: {exc}")
            return skip(*rest, "registry", why="the checkpoint could not be read")
        if not token:
            add("attestation token", False, f"no {TOKEN_FILE} in the checkpoint")
            return skip(*rest, "registry", why="no attestation token")
        try:
            claims = verify_ear_token(token, self._anchor, now=manifest.created_at)
            add(
                "attestation token",
                True,
                "signature chains to the trust anchor; valid when the manifest was created "
                f"(iat {claims.issued_at} <= {manifest.created_at} <= exp {claims.expires_at})",
            )
        except KbsError as exc:
            add("attestation token", False, exc.detail)
            claims = None
        policy = _policy(subject)
        if claims is None:
            add("attestation policy", None, "the token did not verify")
        else:
            try:
                check_policy(claims, policy)
                gpus = len(claims.gpu_submods())
                add(
                    "attestation policy",
                    True,
                    f"cpu0 and {gpus} GPU(s) affirming (policy: at least {subject.min_gpus}); "
                    + _binding_reason(subject),
                )
            except CheckpointError as exc:
                add("attestation policy", False, str(exc))
        try:
            _, _, signer = verify_signed_manifest(
                manifest_bytes, signature, token, trust_anchor_pem=self._anchor, policy=policy
            )
            from jwcrypto import jwk

            add(
                "manifest signature",
                True,
                "ES256 by the attested TEE key (JWK thumbprint "
                f"{thumbprint_digest(jwk.JWK(**signer).thumbprint())}) "
                f"within the token's validity; manifest belongs to run {manifest.run_id}",
            )
        except (CheckpointError, ValueError) as exc:
            add("manifest signature", False, str(exc))
        try:
            verify_objects(store, manifest)
            add(
                "ciphertext",
                True,
                f"{len(manifest.files)} encrypted object(s) match the manifest's sizes and SHA-256",
            )
        except (CheckpointError, OSError, ValueError) as exc:
            add("ciphertext", False, str(exc))
        self._model_signature(subject, add)
        self._registry(subject, manifest.digest(), token, signature, add)
        return Verification(self.name, tuple(checks))

    def _model_signature(self, subject: Subject, add) -> None:
        from coco_ai.promotion import SignatureInvalid, verify_model_signature

        if not subject.signature_uri:
            add("model signature", False, "no model signature: the checkpoint was not promoted")
            return
        if not self._signing_public_key:
            add("model signature", None, "no promotion public key is configured")
            return
        try:
            verify_model_signature(
                subject.checkpoint_uri,
                public_key_path=self._signing_public_key,
                signature_uri=subject.signature_uri,
                storage_options=self._options,
            )
            add("model signature", True, f"{subject.signature_uri} verifies with the promotion key")
        except (SignatureInvalid, OSError, ValueError) as exc:
            add("model signature", False, str(exc))

    def _registry(
        self, subject: Subject, manifest_digest: str, token: str, signature: str | None, add
    ) -> None:
        import hashlib

        tags = subject.registry_tags
        if not tags:
            add("registry", False, "no registry version records this checkpoint")
            return
        want = {
            "coco-ai.manifest_digest": manifest_digest,
            "coco-ai.token_digest": "sha256:" + hashlib.sha256(token.encode()).hexdigest(),
        }
        if signature is not None:
            want["coco-ai.checkpoint_uri"] = subject.checkpoint_uri
        wrong = [k for k, v in want.items() if tags.get(k) != v]
        if wrong:
            add(
                "registry",
                False,
                "registry tags differ from the stored checkpoint: " + ", ".join(wrong),
            )
        else:
            add("registry", True, "the version's tags name this manifest, token and checkpoint")


def _policy(subject: Subject):
    from coco_ai.crypto.verify import VerificationPolicy
    from coco_ai.guest.initdata import IMAGE_DIGEST_KEY, RUN_ID_KEY

    if subject.run_refs is not None:
        return VerificationPolicy.for_refs(subject.run_refs, min_gpus=subject.min_gpus)
    claims = {RUN_ID_KEY: subject.run_id}
    if subject.image_digest:
        claims[IMAGE_DIGEST_KEY] = subject.image_digest
    digest = subject.initdata_digest
    return VerificationPolicy(
        run_id=subject.run_id,
        min_gpus=subject.min_gpus,
        init_data_claims=claims,
        init_data_digest=bytes.fromhex(digest) if digest else None,
    )


def _binding_reason(subject: Subject) -> str:
    if subject.run_refs is not None:
        refs = subject.run_refs
        return (
            f"initdata digest {refs.initdata_digest} and its {len(refs.expected_claims())} "
            f"claims (run {refs.run_id}, image, key URIs) are this run's"
        )
    parts = [f"initdata names run {subject.run_id}"]
    if subject.image_digest:
        parts.append(f"image {subject.image_digest}")
    if subject.initdata_digest:
        parts.append(f"initdata digest {subject.initdata_digest}")
    return ", ".join(parts)


def _text(store, name: str) -> str | None:
    return store.read_bytes(name).decode() if store.exists(name) else None


# ---- the attestation summary -------------------------------------------------------------------


def attestation_summary(token: str) -> dict[str, Any]:
    """TEE type, each submod's status, trust vector and appraisal policy, initdata binding.

    Read from the token's payload *without* trusting it: whether the token verifies is the
    verification's "attestation token" check, shown beside this summary.
    """
    from coco_ai.kbs.ear import parse_ear_claims

    try:
        payload = json.loads(_b64url(token.split(".")[1]))
        claims = parse_ear_claims(payload)
    except Exception as exc:  # malformed in any way: the summary says so
        return {"error": f"the attestation token is unreadable: {type(exc).__name__}"}
    submods = []
    for name in claims.submod_names():
        sub = claims.submod(name)
        vector = sub.get("ear.trustworthiness-vector")
        submods.append(
            {
                "name": public_reference(name),
                "status": public_reference(sub.get("ear.status")),
                "trust_vector": {
                    public_reference(k): public_reference(v)
                    for k, v in (vector.items() if isinstance(vector, dict) else ())
                },
                "policy_id": public_reference(sub.get("ear.appraisal-policy-id")),
            }
        )
    tee = None
    init_data = None
    bound: dict[str, Any] = {}
    try:
        evidence = claims.annotated_evidence("cpu0")
        tees = sorted(
            k
            for k, v in evidence.items()
            if isinstance(v, dict) and k not in ("init_data_claims", "runtime_data_claims")
        )
        tee = tees[0] if tees else None
        init_data = claims.init_data()
        bound = {
            public_reference(k): public_reference(v)
            for k, v in (claims.init_data_claims() or {}).items()
            if isinstance(v, str | int | float | bool)
        }
    except Exception:  # noqa: S110 -- a token without cpu0 evidence still lists submods
        pass
    return {
        "tee": public_reference(tee),
        "issued_at": claims.issued_at,
        "expires_at": claims.expires_at,
        "submods": submods,
        "initdata_digest": public_digest(init_data),
        "initdata_binds": bound,
    }


def _b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# ---- the whole record --------------------------------------------------------------------------

#: Fields holding a digest as a verifier reports it (base64 or bare hex allowed); every other
#: field must have a reference's shape, so a key planted where a URI belongs is withheld.
_VERIFIER_DIGEST_FIELDS = frozenset({"init_data"})


def _field(name: str, value: Any) -> Any:
    if name == "tee_key_thumbprint":
        return thumbprint_digest(value)
    return public_digest(value) if name in _VERIFIER_DIGEST_FIELDS else public_reference(value)


def thumbprint_digest(thumbprint: Any) -> Any:
    """An RFC 7638 JWK thumbprint (base64url of SHA-256) as ``sha256:<hex>``.

    The same digest, in the one shape the view accepts for a digest (a bare base64 run cannot
    be told apart from key material).
    """
    try:
        raw = _b64url(thumbprint)
    except (TypeError, ValueError):
        return WITHHELD
    return "sha256:" + raw.hex() if len(raw) == 32 else WITHHELD


#: Keys of the run's references (key release output, `RunRefs.to_xcom`) that the view shows;
#: each of its ``inputs`` adds ``<input> uri``, ``<input> digest`` and ``<input> key_uri``.
RUN_REF_FIELDS = (
    "workload",
    "run_id",
    "image",
    "grant_uri",
    "run_key_root_uri",
    "checkpoint_key_uri",
    "staging_uri",
    "initdata_digest",
)
_INPUT_FIELDS = ("uri", "digest", "key_uri")


def run_ref_fields(run_refs: Mapping[str, Any] | None) -> dict[str, Any]:
    """The displayed run references, flat, each a public reference (or withheld)."""
    if not isinstance(run_refs, Mapping):
        return {}
    shown = {k: _field(k, run_refs[k]) for k in RUN_REF_FIELDS if k in run_refs}
    inputs = run_refs.get("inputs")
    for name, item in sorted(inputs.items()) if isinstance(inputs, Mapping) else ():
        for k in _INPUT_FIELDS:
            if isinstance(item, Mapping) and item.get(k) is not None:
                shown[f"{public_reference(name)} {k}"] = public_reference(item[k])
    return shown


def released_key_uris(run_refs: Mapping[str, Any] | None) -> dict[str, Any]:
    """What Trustee releases to the run's TEE, by reference (coco_ai.run_keys): the run's grant,
    the run-key root and each input's key; and the checkpoint key's name (derived in the TEE)."""
    shown = run_ref_fields(run_refs)
    named = {"grant_uri": "run grant", "run_key_root_uri": "run-key root"}
    keys = {label: shown[k] for k, label in named.items() if k in shown}
    keys.update({k.removesuffix("_uri"): v for k, v in shown.items() if k.endswith(" key_uri")})
    if "checkpoint_key_uri" in shown:
        keys["checkpoint key (derived in the TEE)"] = shown["checkpoint_key_uri"]
    return keys


#: Registry tags (without the ``coco-ai.`` prefix) that the view shows.
REGISTRY_FIELDS = (
    "run_id",
    "checkpoint_uri",
    "manifest_digest",
    "token_digest",
    "signature_uri",
    "signature_digest",
    "key_uri",
    "image_digest",
    "init_data",
    "tee",
    "gpu_count",
    "tee_key_thumbprint",
    "promotion_policy_digest",
    "base_model_digest",
    "dataset_digest",
    "training_config_digest",
)


def provenance_record(
    subject: Subject,
    verifier: Verifier,
    *,
    run_refs: Mapping[str, Any] | None = None,
    registry: Mapping[str, Any] | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything the view shows, references only (see the module docstring).

    `registry` is ``{"model_name", "version", "aliases", "versions": [{version, run_id,
    manifest_digest, aliases}]}`` or None when the checkpoint was not registered.
    """
    from coco_ai.storage import open_store

    record: dict[str, Any] = {
        "checkpoint_uri": public_reference(subject.checkpoint_uri),
        "run_id": public_reference(subject.run_id),
        "run_refs": run_ref_fields(run_refs),
        "released_keys": released_key_uris(run_refs),
    }
    try:
        store = open_store(subject.checkpoint_uri, **dict(storage_options or {}))
        from coco_ai.crypto.transfer import read_manifest

        manifest, _ = read_manifest(store)
        token = _text(store, TOKEN_FILE)
        record["manifest"] = {
            "digest": public_reference(manifest.digest()),
            "key_uri": public_reference(manifest.key_uri),
            "created_at": manifest.created_at,
            "files": len(manifest.files),
            "base_model_digest": public_reference(manifest.base_model_digest),
            "dataset_digest": public_reference(manifest.dataset_digest),
            "training_config_digest": public_reference(manifest.training_config_digest),
        }
        record["attestation"] = attestation_summary(token) if token else {"error": "no token"}
    except Exception as exc:
        record["manifest"] = {"error": f"unreadable: {type(exc).__name__}"}
        record["attestation"] = {"error": "no checkpoint to read the token from"}
    verification = verifier.verify(subject)
    record["verification"] = verification.to_dict()
    for c in record["verification"]["checks"]:
        c["reason"] = _public_sentence(c["reason"])
    tags = subject.registry_tags
    record["registry"] = None
    if registry is not None:
        record["registry"] = {
            "model_name": public_reference(registry.get("model_name")),
            "version": public_reference(registry.get("version")),
            "aliases": [public_reference(a) for a in registry.get("aliases") or ()],
            "provenance": {
                k: _field(k, tags[f"coco-ai.{k}"])
                for k in REGISTRY_FIELDS
                if f"coco-ai.{k}" in tags
            },
            "versions": [
                {k: public_reference(v.get(k)) for k in ("version", "run_id", "manifest_digest")}
                | {"aliases": [public_reference(a) for a in v.get("aliases") or ()]}
                for v in registry.get("versions") or ()
            ],
        }
    base = subject.checkpoint_uri.rstrip("/")
    record["artefacts"] = [
        {"name": "checkpoint", "uri": public_reference(subject.checkpoint_uri)},
        {"name": "manifest", "uri": public_reference(f"{base}/{MANIFEST_FILE}")},
        {"name": "manifest signature", "uri": public_reference(f"{base}/{SIGNATURE_FILE}")},
        {"name": "attestation token", "uri": public_reference(f"{base}/{TOKEN_FILE}")},
    ]
    if subject.signature_uri:
        record["artefacts"].append(
            {"name": "model signature", "uri": public_reference(subject.signature_uri)}
        )
    return record


def _public_sentence(text: str) -> str:
    """A check's reason with base64 runs that could be key material replaced.

    Reasons quote digests (hex, kept: a verifier's own words) and paths; they are written by
    the verifier, so this only guards against a message that quotes untrusted bytes.
    """
    return _B64_RUN.sub(
        lambda m: (
            "…" if _keylike(m.group(0)) and not _HEX_RUN.fullmatch(m.group(0)) else m.group(0)
        ),
        text,
    )
