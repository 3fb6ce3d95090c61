"""RCAR sessions and evidence appraisal, as Trustee's KBS + built-in attestation service.

`Sessions` is the `kbs-session-id` state machine (Authed → Attested) with an injectable clock.
`AttestationService.attest` follows `kbs/src/attestation/backend.rs` `__attest` and
`attestation-service/src/lib.rs` `evaluate`: nonce check, runtime-data binding per piece of
evidence (CPU over {additional-evidence, nonce, tee-pubkey}, devices over {nonce, tee-pubkey}),
initdata parsing, one appraisal per device with the `default_<class>` policy, EAR issuing.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from coco_ai.guest.initdata import Initdata, InitdataError
from coco_ai.kbs.evidence import DEVICE_ONLY_TEES, KNOWN_TEES
from coco_ai.kbs.wire import PROTOCOL_VERSION, cpu_runtime_data_digest, device_runtime_data_digest
from coco_ai.trustee_dev import jsonbody
from coco_ai.trustee_dev.policy import AttestationPolicy, PolicyEvaluationError
from coco_ai.trustee_dev.tokens import APPRAISAL_POLICY_ID, TokenBroker
from coco_ai.trustee_dev.verifiers import VerificationError, Verifier

SESSION_COOKIE = "kbs-session-id"
DEFAULT_SESSION_TIMEOUT_S = 5 * 60
DEFAULT_TOKEN_LIFETIME_S = 5 * 60
NONCE_BYTES = 32
_INITDATA_DIGESTS = {"sha256": hashlib.sha256, "sha384": hashlib.sha384, "sha512": hashlib.sha512}


class RcarError(Exception):
    """An auth/attest step failed; `stage` is "Auth" or "Attest" as in Trustee's messages."""

    def __init__(self, stage: str, reason: str) -> None:
        super().__init__(reason)
        self.stage = stage
        self.reason = reason


@dataclass
class Session:
    id: str
    tee: str
    nonce: str
    expires_at: float
    token: str | None = None  # set when Attested


@dataclass
class Sessions:
    clock: Callable[[], float]
    timeout_s: int = DEFAULT_SESSION_TIMEOUT_S
    _by_id: dict[str, Session] = field(default_factory=dict)

    def create(self, tee: str) -> Session:
        now = self.clock()
        self._purge(now)
        session = Session(
            id=uuid.uuid4().hex,
            tee=tee,
            nonce=base64.b64encode(secrets.token_bytes(NONCE_BYTES)).decode("ascii"),
            expires_at=now + self.timeout_s,
        )
        self._by_id[session.id] = session
        return session

    def get(self, session_id: str | None) -> Session | None:
        """The live session, or None (unknown or expired; expired ones are dropped)."""
        session = self._by_id.get(session_id) if session_id else None
        if session is not None and session.expires_at < self.clock():
            del self._by_id[session.id]
            return None
        return session

    def _purge(self, now: float) -> None:
        if len(self._by_id) > 1024:
            for sid in [s.id for s in self._by_id.values() if s.expires_at < now]:
                del self._by_id[sid]


def parse_request(body: bytes) -> str:
    """Validate a kbs-types `Request` and return its TEE (raises RcarError("Auth", …))."""
    try:
        request = jsonbody.loads(body)
    except jsonbody.JsonBodyError as exc:
        raise RcarError("Auth", f"deserialize Request: {exc}") from None
    if not isinstance(request, dict) or not isinstance(request.get("version"), str):
        raise RcarError("Auth", "deserialize Request: missing field `version`")
    tee = request.get("tee")
    if not isinstance(tee, str) or tee not in KNOWN_TEES:
        raise RcarError("Auth", f"deserialize Request: unknown variant `{tee}` for field `tee`")
    if "extra-params" not in request:
        raise RcarError("Auth", "deserialize Request: missing field `extra-params`")
    if request["version"] != PROTOCOL_VERSION:
        raise RcarError(
            "Auth",
            f"KBS Client Protocol Version Mismatch: expect ={PROTOCOL_VERSION} while the request "
            f"is {request['version']}",
        )
    return tee


def _tee_pubkey(value: Any) -> dict[str, str]:
    """kbs-types `TeePubKey`: only its own members survive (Trustee re-serialises the struct)."""
    if isinstance(value, dict) and value.get("kty") == "EC":
        members = ("kty", "crv", "alg", "x", "y")
    elif isinstance(value, dict) and value.get("kty") == "RSA":
        members = ("kty", "alg", "n", "e")
    else:
        raise RcarError("Attest", "deserialize Attestation: tee-pubkey is not an EC or RSA JWK")
    if not all(isinstance(value.get(m), str) for m in members):
        raise RcarError("Attest", f"deserialize Attestation: tee-pubkey needs {members}")
    return {m: value[m] for m in members}


def _initdata(value: Any) -> tuple[bytes, dict[str, Any]] | None:
    """(digest, init_data_claims) of the `init-data` member, as Trustee's parse_init_data."""
    if value is None:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("body"), str):
        raise RcarError("Attest", "deserialize Attestation: init-data needs format and body")
    if value.get("format") != "toml":
        raise RcarError("Attest", f"Unsupported initdata format: {value.get('format')}")
    try:
        initdata = Initdata.parse(value["body"])
    except InitdataError as exc:
        raise RcarError("Attest", f"parse init data: {exc}") from None
    digest = _INITDATA_DIGESTS[initdata.algorithm](value["body"].encode("utf-8")).digest()
    claims = initdata.claims()
    rego = claims.get("policy.rego")
    if isinstance(rego, str) and "policy_data := {" in rego:
        try:
            claims["agent_policy_claims"] = json.loads(rego[rego.index("policy_data := {") + 15 :])
            del claims["policy.rego"]
        except ValueError:
            pass  # Trustee keeps the raw policy when its policy_data is not JSON
    return digest, claims


class AttestationService:
    def __init__(
        self,
        verifiers: dict[str, Verifier],
        policy_for: Callable[[str], AttestationPolicy | None],
        broker: TokenBroker,
        clock: Callable[[], float],
        token_lifetime_s: int = DEFAULT_TOKEN_LIFETIME_S,
    ) -> None:
        self._verifiers = verifiers
        self._policy_for = policy_for
        self._broker = broker
        self._clock = clock
        self._lifetime = token_lifetime_s

    def attest(self, session: Session, body: bytes) -> str:
        try:
            attestation = jsonbody.loads(body)
        except jsonbody.JsonBodyError as exc:
            raise RcarError("Attest", f"deserialize Attestation: {exc}") from None
        if not isinstance(attestation, dict):
            raise RcarError("Attest", "deserialize Attestation: not a JSON object")
        runtime = attestation.get("runtime-data")
        evidence = attestation.get("tee-evidence")
        if not isinstance(runtime, dict) or not isinstance(evidence, dict):
            raise RcarError("Attest", "deserialize Attestation: runtime-data/tee-evidence missing")
        nonce = runtime.get("nonce")
        if not isinstance(nonce, str):
            raise RcarError("Attest", "deserialize Attestation: runtime-data.nonce missing")
        pubkey = _tee_pubkey(runtime.get("tee-pubkey"))
        # kbs-types `CompositeEvidence`: both members required, additional_evidence a string
        # ("" when there are no devices); serde refuses the body otherwise.
        additional = evidence.get("additional_evidence")
        if "primary_evidence" not in evidence:
            raise RcarError("Attest", "deserialize Attestation: missing field `primary_evidence`")
        if not isinstance(additional, str):
            raise RcarError(
                "Attest",
                "deserialize Attestation: missing field `additional_evidence` (a JSON string, "
                '"" when there are no devices)',
            )
        initdata = _initdata(attestation.get("init-data"))
        if nonce != session.nonce:
            raise RcarError(
                "Attest",
                "the nonce in the handshake session is different from the client side in KBS "
                "protocol's Attestation message",
            )

        pieces: list[tuple[str, Any, bytes, dict[str, Any], bytes | None]] = [
            (
                session.tee,
                evidence["primary_evidence"],
                cpu_runtime_data_digest(nonce, pubkey, additional),
                {"tee-pubkey": pubkey, "nonce": nonce, "additional-evidence": additional},
                initdata[0] if initdata else None,
            )
        ]
        if additional:
            try:
                devices = jsonbody.loads(additional)
            except ValueError:
                raise RcarError("Attest", "additional_evidence is not a JSON map") from None
            if not isinstance(devices, dict):
                raise RcarError("Attest", "additional_evidence is not a JSON map")
            dev_digest = device_runtime_data_digest(nonce, pubkey)
            for tee, dev_evidence in devices.items():
                if tee not in KNOWN_TEES:
                    raise RcarError("Attest", f"unknown variant `{tee}` in additional_evidence")
                pieces.append(
                    (tee, dev_evidence, dev_digest, {"tee-pubkey": pubkey, "nonce": nonce}, None)
                )
        if session.tee in DEVICE_ONLY_TEES:
            raise RcarError("Attest", f"{session.tee} cannot provide primary evidence")

        submods: dict[str, Any] = {}
        counters: dict[str, int] = {}
        for tee, tee_evidence, report_data, runtime_claims, digest in pieces:
            verifier = self._verifiers.get(tee)
            if verifier is None:
                raise RcarError("Attest", f"Verifier evaluate failed: no verifier for TEE {tee}")
            try:
                results = verifier.evaluate(tee_evidence, report_data, digest)
            except VerificationError as exc:
                raise RcarError("Attest", f"Verifier evaluate failed: {exc}") from None
            for claims, tee_class in results:
                annotated = _transform_claims(
                    claims, initdata[1] if initdata else None, runtime_claims, tee
                )
                index = counters.get(tee_class, -1) + 1
                counters[tee_class] = index
                submods[f"{tee_class}{index}"] = self._appraise(tee_class, annotated)
        return self._broker.issue(submods, self._clock(), self._lifetime)

    def _appraise(self, tee_class: str, annotated: dict[str, Any]) -> dict[str, Any]:
        policy_id = f"{APPRAISAL_POLICY_ID}_{tee_class}"
        policy = self._policy_for(policy_id)
        if policy is None:
            raise RcarError("Attest", f"attestation policy {policy_id} is not set")
        try:
            vector, extensions = policy.appraise(annotated)
        except PolicyEvaluationError as exc:
            raise RcarError("Attest", str(exc)) from None
        appraisal: dict[str, Any] = {
            "ear.status": _status(vector),
            "ear.trustworthiness-vector": vector,
            "ear.appraisal-policy-id": APPRAISAL_POLICY_ID,
            "ear.veraison.annotated-evidence": annotated,
        }
        for extension in extensions:
            appraisal[extension["name"]] = extension["value"]
        return appraisal


def _transform_claims(
    claims: dict[str, Any],
    init_data_claims: dict[str, Any] | None,
    runtime_data_claims: dict[str, Any],
    tee: str,
) -> dict[str, Any]:
    """Trustee's `transform_claims`: lift init_data/report_data, nest the rest under the TEE."""
    rest = dict(claims)
    out: dict[str, Any] = {}
    if "init_data" in rest:
        out["init_data"] = rest.pop("init_data")
        out["init_data_claims"] = init_data_claims
    if "report_data" in rest:
        out["report_data"] = rest.pop("report_data")
        out["runtime_data_claims"] = runtime_data_claims
    out[tee] = rest
    return out


def _tier(value: int) -> int:
    """rust-ear TrustClaim::tier: 0 none, 1 affirming, 2 warning, 3 contraindicated."""
    if -1 <= value <= 1:
        return 0
    if -32 <= value < 32:
        return 1
    if -96 <= value < 96:
        return 2
    return 3


def _status(vector: dict[str, int]) -> str:
    worst = max((_tier(v) for v in vector.values()), default=0)
    return ("none", "affirming", "warning", "contraindicated")[worst]
