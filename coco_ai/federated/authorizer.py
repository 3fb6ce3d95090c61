"""NVFlare 2.9 ``CCAuthorizer`` backed by Trustee: peers prove attestation and identity.

``generate()`` (in the party's TEE) asks its guest components (``/aa/token``) for the EAR token
and the attested TEE key, and returns a compact JWS, signed with that key, over::

    {"ear": <EAR token>, "aud": "coco-ai-federation:<federation>", "nonce": <fresh, 128 bit>,
     "iat": <now>, "sub": <participant id>}

so the token proves possession of the key the EAR token attests (``tee-pubkey``), for this
federation, now. ``verify()`` (in every peer) checks, failing closed on any doubt:

1. the EAR token chains to the attestation trust anchor (and, when pinned, the signer) and is
   within its validity (``coco_ai.kbs.ear.verify_ear_token``);
2. cpu0 and every submod affirming, at least ``min_gpus`` GPUs (``coco_ai.crypto.verify.
   check_policy``), and no sample/sampledevice evidence unless development evidence is allowed;
3. the init_data claims name a party of this federation (another federation's token is a
   replay) in an accepted role, and an accepted participant id; when the verifier is given the
   pipeline run id, the claims name that run too (a party started for an earlier run of the
   same federation is refused);
4. the JWS verifies (ES256 only) with the attested TEE key; its ``sub`` is that participant;
5. ``aud`` is this federation; ``iat`` is no older than ``max_token_age_s`` and not in the
   future, and within the EAR token's validity; the nonce was never seen (replay cache);
6. the party is held by one TEE: the first TEE key accepted for an identity is the only one
   accepted for it afterwards (:class:`IdentityBinding`). Two TEEs running the approved code
   with the same initdata claims are indistinguishable to attestation; this stops the second
   from joining as the same party (a second update, twice the weight). A party whose TEE is
   restarted (a new key) is refused until the federation is started again.

NVFlare's ``CCManager`` calls ``verify(token)`` without the site name the token came with; use
:meth:`TrusteeCCAuthorizer.verify_peer` to learn the attested identity and compare it with the
site (see docs/formats/federated.md).
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from jwcrypto import jwk, jws
from jwcrypto.common import JWException
from nvflare.app_opt.confidential_computing.cc_authorizer import (
    CCAuthorizer,
    CCTokenGenerateError,
)

from coco_ai.crypto.errors import AttestationError, ReplayError
from coco_ai.crypto.verify import VerificationPolicy, check_policy, verify_es256_jws
from coco_ai.federated.identity import (
    ROLES,
    FederationIdentity,
    FederationIdentityError,
    check_federation_id,
)
from coco_ai.guest.client import GuestClient, GuestError
from coco_ai.guest.initdata import RUN_ID_KEY
from coco_ai.kbs.ear import (
    DEVELOPMENT_EVIDENCE,
    EarClaims,
    unverified_claims,
    verify_ear_token,
)
from coco_ai.kbs.errors import KbsError
from coco_ai.kbs.wire import b64url_decode
from coco_ai.runs import RUN_ID_RULE, is_run_id

NAMESPACE = "x-coco-ai-trustee"
TOKEN_TYPE = "coco-ai-fl-cc+jwt"  # noqa: S105 (a JOSE typ, not a secret)
_NONCE_BYTES = 16
_MAX_TOKEN_CHARS = 64 * 1024
# Bounds the replay cache: entries leave after max_token_age_s; past this many live nonces the
# verifier refuses rather than forget one.
_MAX_LIVE_NONCES = 100_000

log = logging.getLogger(__name__)


class FederationAuthError(Exception):
    """A peer token that does not prove an attested party of this federation (says why)."""


def federation_audience(federation: str) -> str:
    return f"coco-ai-federation:{federation}"


@dataclass(frozen=True)
class AttestedPeer:
    """What a verified token proves: who the peer is, and the attestation behind it."""

    identity: FederationIdentity
    claims: EarClaims
    tee_pubkey: dict
    issued_at: int
    ear_token: str  # the verified EAR token, verbatim (the run's record of who took part)

    @property
    def tee_key_thumbprint(self) -> str:
        """RFC 7638 SHA-256 thumbprint (base64url) of the attested TEE key."""
        return jwk.JWK(**{k: self.tee_pubkey[k] for k in ("kty", "crv", "x", "y")}).thumbprint()


class ReplayCache:
    """Nonces seen within the freshness window; a nonce is accepted once."""

    def __init__(self, max_live: int = _MAX_LIVE_NONCES) -> None:
        self._seen: dict[str, float] = {}
        self._max_live = max_live
        self._lock = threading.Lock()

    def admit(self, nonce: str, *, keep_until: float, now: float) -> None:
        with self._lock:
            self._seen = {n: t for n, t in self._seen.items() if t >= now}
            if nonce in self._seen:
                raise FederationAuthError("token nonce was already used (replayed token)")
            if len(self._seen) >= self._max_live:
                raise FederationAuthError("replay cache is full: refusing new tokens")
            self._seen[nonce] = keep_until


class IdentityBinding:
    """Each federation identity → the thumbprint of the one TEE key accepted for it."""

    def __init__(self) -> None:
        self._keys: dict[str, str] = {}
        self._lock = threading.Lock()

    def admit(self, identity: FederationIdentity, thumbprint: str) -> None:
        with self._lock:
            held = self._keys.setdefault(str(identity), thumbprint)
        if held != thumbprint:
            raise FederationAuthError(
                f"{identity} is already held by another TEE (key {held[:16]}…): a second TEE "
                "claiming the same identity is refused"
            )


class TrusteeCCAuthorizer(CCAuthorizer):
    """One party's issuer and verifier of Trustee-attested CC tokens (an NVFlare component).

    Arguments are JSON-friendly so that NVFlare's component config can build it: the guest
    components' API URL, the attestation trust anchor's PEM file (and, in production, the
    attestation service signer's), the federation id, the pipeline run id when only that run's
    parties may take part, and what a peer must show.
    """

    def __init__(
        self,
        guest_api_url: str,
        trust_anchor_path: str,
        federation: str,
        *,
        run_id: str | None = None,
        token_signer_path: str | None = None,
        min_gpus: int = 1,
        allow_development_evidence: bool = False,
        accepted_roles: Iterable[str] = ROLES,
        accepted_participants: Iterable[str] | None = None,
        max_token_age_s: int = 60,
        leeway_s: int = 5,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.guest_api_url = guest_api_url
        self.trust_anchor_pem = _read_pem(trust_anchor_path, "attestation trust anchor")
        self.token_signer_pem = (
            _read_pem(token_signer_path, "attestation token signer")
            if token_signer_path is not None
            else None
        )
        self.federation = check_federation_id(federation)
        self.audience = federation_audience(federation)
        if run_id is not None and not is_run_id(run_id):
            raise ValueError(f"run id {run_id!r} is not a run id ({RUN_ID_RULE})")
        self.run_id = run_id
        if isinstance(min_gpus, bool) or not isinstance(min_gpus, int) or min_gpus < 0:
            raise ValueError(f"min_gpus must be an integer >= 0, got {min_gpus!r}")
        self.min_gpus = min_gpus
        self.allow_development_evidence = bool(allow_development_evidence)
        self.accepted_roles = frozenset(accepted_roles)
        unknown = self.accepted_roles - set(ROLES)
        if not self.accepted_roles or unknown:
            raise ValueError(f"accepted_roles must be a non-empty subset of {ROLES}")
        self.accepted_participants = (
            None if accepted_participants is None else frozenset(accepted_participants)
        )
        for name, value in (("max_token_age_s", max_token_age_s), ("leeway_s", leeway_s)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        if max_token_age_s == 0:
            raise ValueError("max_token_age_s must be positive")
        self.max_token_age_s = max_token_age_s
        self.leeway_s = leeway_s
        self._clock = clock
        self._replay = ReplayCache()
        self._holders = IdentityBinding()

    def get_namespace(self) -> str:
        return NAMESPACE

    def generate(self) -> str:
        """A fresh token from this party's TEE: its EAR token plus proof of its TEE key."""
        try:
            with GuestClient(self.guest_api_url) as guest:
                ear, key_pem = guest.get_token()
        except GuestError as exc:
            raise CCTokenGenerateError(f"guest components gave no token: {exc}") from None
        try:
            identity = FederationIdentity.from_claims(unverified_claims(ear).init_data_claims())
        except (KbsError, FederationIdentityError) as exc:
            raise CCTokenGenerateError(f"this TEE's own token names no party: {exc}") from None
        payload = {
            "ear": ear,
            "aud": self.audience,
            "nonce": base64.urlsafe_b64encode(secrets.token_bytes(_NONCE_BYTES))
            .rstrip(b"=")
            .decode("ascii"),
            "iat": int(self._clock()),
            "sub": identity.participant_id,
        }
        try:
            key = jwk.JWK.from_pem(key_pem)
            sig = jws.JWS(json.dumps(payload, separators=(",", ":")).encode())
            sig.add_signature(key, alg="ES256", protected={"alg": "ES256", "typ": TOKEN_TYPE})
        except (JWException, ValueError, TypeError) as exc:
            raise CCTokenGenerateError(f"cannot sign with the TEE key: {exc}") from None
        return sig.serialize(compact=True)

    def verify(self, token: str) -> bool:
        """NVFlare's check: True only for a token :meth:`verify_peer` accepts (reason logged)."""
        try:
            peer = self.verify_peer(token)
        except FederationAuthError as exc:
            log.warning("CC token refused: %s", exc)
            return False
        log.info("CC token accepted: %s", peer.identity)
        return True

    def verify_peer(self, token: str) -> AttestedPeer:
        """The attested identity behind ``token``; FederationAuthError names what failed."""
        now = self._clock()
        payload = _unverified_payload(token)
        ear = payload.get("ear")
        if not isinstance(ear, str):
            raise FederationAuthError("token carries no EAR token")
        try:
            claims = verify_ear_token(
                ear,
                self.trust_anchor_pem,
                now=now,
                leeway=self.leeway_s,
                signer_pem=self.token_signer_pem,
            )
        except KbsError as exc:
            raise FederationAuthError(f"EAR token refused: {exc.detail}") from None
        self._check_attestation(claims)
        try:
            identity = FederationIdentity.from_claims(claims.init_data_claims())
        except FederationIdentityError as exc:
            raise FederationAuthError(str(exc)) from None
        if identity.federation != self.federation:
            raise FederationAuthError(
                f"token names federation {identity.federation!r}, not {self.federation!r} "
                "(another federation's party)"
            )
        if identity.role not in self.accepted_roles:
            raise FederationAuthError(f"{identity} is not in an accepted role")
        if (
            self.accepted_participants is not None
            and identity.participant_id not in self.accepted_participants
        ):
            raise FederationAuthError(f"{identity} is not a listed participant")
        try:
            tee_pubkey = claims.tee_pubkey()
            key = jwk.JWK(**{k: tee_pubkey[k] for k in ("kty", "crv", "x", "y")})
        except (KbsError, KeyError, TypeError, ValueError, JWException):
            raise FederationAuthError("EAR token attests no usable P-256 TEE key") from None
        try:
            header, signed = verify_es256_jws(token, key)
        except ValueError:
            raise FederationAuthError(
                "token is not signed by the TEE key its EAR token attests (no proof of possession)"
            ) from None
        if header.get("typ") != TOKEN_TYPE:
            raise FederationAuthError(f"token typ is not {TOKEN_TYPE}")
        # The signed bytes, not the unverified read, are what the checks below judge.
        payload = json.loads(signed)
        if payload.get("sub") != identity.participant_id:
            raise FederationAuthError(
                f"token claims participant {payload.get('sub')!r}, its attestation names "
                f"{identity.participant_id!r}"
            )
        if payload.get("aud") != self.audience:
            raise FederationAuthError(
                f"token audience {payload.get('aud')!r} is not {self.audience!r}"
            )
        iat = payload.get("iat")
        if isinstance(iat, bool) or not isinstance(iat, int):
            raise FederationAuthError("token has no integer iat")
        if iat > now + self.leeway_s:
            raise FederationAuthError("token is issued in the future")
        if iat < now - self.max_token_age_s - self.leeway_s:
            raise FederationAuthError(
                f"token is {int(now - iat)} s old, older than {self.max_token_age_s} s (stale)"
            )
        if not claims.issued_at - self.leeway_s <= iat <= claims.expires_at:
            raise FederationAuthError("token was not made while its EAR token was valid")
        nonce = payload.get("nonce")
        if not isinstance(nonce, str) or len(nonce) < 22:
            raise FederationAuthError("token has no 128-bit nonce")
        self._replay.admit(
            nonce, keep_until=iat + self.max_token_age_s + 2 * self.leeway_s, now=now
        )
        self._holders.admit(identity, key.thumbprint())
        return AttestedPeer(
            identity=identity, claims=claims, tee_pubkey=tee_pubkey, issued_at=iat, ear_token=ear
        )

    def _check_attestation(self, claims: EarClaims) -> None:
        # The federation claim is checked with the identity; the run claim only when a run is
        # pinned (check_policy reports a wrong one as a ReplayError).
        policy = VerificationPolicy(
            run_id=self.run_id or self.federation,
            min_gpus=self.min_gpus,
            init_data_claims={RUN_ID_KEY: self.run_id} if self.run_id is not None else {},
        )
        try:
            check_policy(claims, policy)
        except ReplayError as exc:
            raise FederationAuthError(f"token is not of this pipeline run: {exc}") from None
        except AttestationError as exc:
            raise FederationAuthError(f"attestation refused: {exc}") from None
        if not self.allow_development_evidence:
            try:
                development = sorted(
                    f"{name}:{kind}"
                    for name in claims.submod_names()
                    for kind in DEVELOPMENT_EVIDENCE
                    if kind in claims.annotated_evidence(name)
                )
            except KbsError as exc:
                raise FederationAuthError(f"attestation refused: {exc.detail}") from None
            if development:
                raise FederationAuthError(
                    f"development evidence ({', '.join(development)}) proves no hardware; "
                    "refused under a production policy"
                )


def _unverified_payload(token: object) -> dict:
    """The payload read only to find the EAR token; every field is re-read verified later."""
    if not isinstance(token, str) or len(token) > _MAX_TOKEN_CHARS or token.count(".") != 2:
        raise FederationAuthError("token is not a compact JWS")
    try:
        payload = json.loads(b64url_decode(token.split(".")[1]))
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise FederationAuthError("token payload is not base64url JSON") from None
    if not isinstance(payload, dict):
        raise FederationAuthError("token payload is not a JSON object")
    return payload


def _read_pem(path: str | Path, what: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read the {what} {path}: {exc.strerror}") from None
    if b"-----BEGIN " not in data:
        raise ValueError(f"the {what} {path} is not PEM")
    return data
