"""RCAR client and admin client for a Trustee KBS (protocol 0.4.0). No Airflow here.

The guest-side flow mirrors CoCo's `rcar_client.rs`: POST /auth → challenge + session cookie,
POST /attest with evidence bound to the nonce and the TEE key → EAR token, then GET resources as
JWE encrypted to the TEE key. The transport is injectable (`httpx.BaseTransport`), so tests can
run the client against an in-process server without patching anything.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie
from pathlib import Path
from typing import Any, Self
from urllib.parse import quote, urlsplit

import httpx

from coco_ai.kbs import versions
from coco_ai.kbs.admin_auth import (
    AdminAuth,
    BearerTokenAdminAuth,
    SelfSignedAdminAuth,
    mint_admin_token,
)
from coco_ai.kbs.errors import (
    AttestationError,
    KbsError,
    KbsTlsError,
    KbsUnavailable,
    PluginInternalError,
    PolicyDenied,
    ResourceDeleteUnconfirmed,
    UnexpectedResponse,
    error_from_response,
)
from coco_ai.kbs.evidence import Attester, tee_evidence
from coco_ai.kbs.jwe import TeeKeyPair
from coco_ai.kbs.wire import (
    PROTOCOL_VERSION,
    ResourcePath,
    b64url_decode,
    b64url_encode,
    provisioner_binding,
    to_resource_path,
)
from coco_ai.net import is_loopback

__all__ = [
    "AdminAuth",
    "BearerTokenAdminAuth",
    "KbsAdminClient",
    "KbsClient",
    "ProvisionedResource",
    "SelfSignedAdminAuth",
    "get_resource_with_token",
    "mint_admin_token",
]

log = logging.getLogger(__name__)

API_PREFIX = "/kbs/v0"
SESSION_COOKIE = "kbs-session-id"
HASH_ALGORITHM = "sha384"  # Trustee's default for every TEE but IBM SE
RESOURCE_MAX_ATTEMPTS = 3  # KBS_GET_RESOURCE_MAX_ATTEMPT in rcar_client.rs
MAX_UPLOAD_BYTES = 2 * 1024 * 1024  # Trustee's default payload_request_size
ATTESTATION_POLICY_IDS = ("default_cpu", "default_gpu", "default_switch", "default_ppcie")
RVPS_MESSAGE_VERSION = "0.1.0"

#: Admin requests: attempts and first backoff (doubling) while Trustee is down or answers 5xx.
ADMIN_ATTEMPTS = 4
ADMIN_RETRY_DELAY_S = 1.0

# Transient conditions worth another handshake; evidence or policy failures are not.
_RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


def _tls_verify(ca_cert: bytes | str | None) -> ssl.SSLContext | bool:
    """An SSL context trusting only `ca_cert` (PEM bytes/text or a file path), else system CAs."""
    if ca_cert is None:
        return True
    if isinstance(ca_cert, bytes):
        pem = ca_cert.decode("ascii", "strict")
    elif "-----BEGIN" in ca_cert:
        pem = ca_cert
    else:
        pem = Path(ca_cert).read_text()
    try:
        return ssl.create_default_context(cadata=pem)
    except ssl.SSLError as exc:
        raise ValueError(f"KBS CA certificate is not a usable PEM certificate: {exc}") from None


def _base_url(url: str, allow_insecure_http: bool) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"KBS URL {url!r} must be http(s)://host[:port]")
    if parts.query or parts.fragment or parts.path not in ("", "/"):
        raise ValueError(f"KBS URL {url!r} must not have a path, query or fragment")
    if parts.scheme == "http" and not allow_insecure_http and not is_loopback(parts.hostname):
        raise ValueError(
            f"refusing plain HTTP to non-loopback KBS {parts.hostname!r}; use https with a "
            "pinned CA (or pass allow_insecure_http=True knowingly)"
        )
    return f"{parts.scheme}://{parts.netloc}"


class _Http:
    """httpx wrapper: base URL, TLS pinning, error mapping. Cookies are handled explicitly."""

    def __init__(
        self,
        url: str,
        *,
        ca_cert: bytes | str | None,
        transport: httpx.BaseTransport | None,
        timeout: float,
        allow_insecure_http: bool,
    ) -> None:
        self.base = _base_url(url, allow_insecure_http)
        self._client = httpx.Client(
            verify=_tls_verify(ca_cert),
            transport=transport,
            timeout=timeout,
            follow_redirects=False,
            trust_env=False,
        )

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._client.request(method, self.base + path, **kwargs)
        except httpx.TimeoutException as exc:
            raise KbsUnavailable(f"{method} {path} timed out: {type(exc).__name__}") from None
        except httpx.TransportError as exc:
            if _caused_by_certificate(exc):
                raise KbsTlsError(
                    f"{method} {path}: the KBS certificate does not verify against the pinned "
                    f"CA: {exc}"
                ) from None
            raise KbsUnavailable(f"{method} {path} failed: {type(exc).__name__}: {exc}") from None
        finally:
            # The session cookie is sent explicitly; never let the jar replay an old one.
            self._client.cookies.clear()
        return response

    def close(self) -> None:
        self._client.close()


def _caused_by_certificate(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    for _ in range(10):  # the chain httpx -> httpcore -> ssl is short; bound it anyway
        if seen is None:
            return False
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _raise_for(response: httpx.Response) -> None:
    if response.is_success:
        return
    raise error_from_response(response.status_code, response.content)


def _json(response: httpx.Response, what: str) -> Any:
    try:
        return response.json()
    except (ValueError, RecursionError):
        raise UnexpectedResponse(f"{what} is not JSON", status=response.status_code) from None


def _session_cookie(response: httpx.Response) -> str | None:
    for header in response.headers.get_list("set-cookie"):
        jar: SimpleCookie = SimpleCookie()
        try:
            jar.load(header)
        except CookieError:
            continue
        if SESSION_COOKIE in jar and jar[SESSION_COOKIE].value:
            return jar[SESSION_COOKIE].value
    return None


def _challenge_extra_params(value: Any) -> dict:
    """`extra-params` of a Challenge: Trustee sends "" (string), IBM SE an object."""
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise UnexpectedResponse("challenge extra-params is a non-JSON string") from None
    if not isinstance(value, dict):
        raise UnexpectedResponse("challenge extra-params is neither a string nor an object")
    return value


def _is_transient(err: KbsError) -> bool:
    if isinstance(err, KbsTlsError):
        return False
    if isinstance(err, KbsUnavailable):
        return True
    return isinstance(err, UnexpectedResponse) and (
        err.status is None or err.status in _RETRY_STATUSES
    )


def _gave_up(err: KbsError, what: str, attempts: int) -> KbsError:
    """``err`` (same type and status) with a detail naming the KBS and the attempts made."""
    return type(err)(
        f"{what}: still failing after {attempts} attempt(s): {err.detail}", status=err.status
    )


def _fetch_resource(
    http: _Http, path: ResourcePath, headers: dict[str, str], tee_key: TeeKeyPair
) -> bytes:
    response = http.request("GET", f"{API_PREFIX}/resource/{path.url_path()}", headers=headers)
    _raise_for(response)
    return tee_key.decrypt(response.content)


class _ClosingClient:
    """Closes its HTTP connection pool on close() or at the end of a `with` block."""

    _http: _Http

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class KbsClient(_ClosingClient):
    """RCAR client: attests the given attesters to a KBS and fetches resources.

    `cpu` produces the primary evidence, `devices` the additional evidence (one attester per
    TEE kind). `initdata_toml` is sent verbatim as `init-data` (its digest must be what the CPU
    evidence carries). `ca_cert` pins the KBS TLS CA. `transport` replaces the network.
    """

    def __init__(
        self,
        url: str,
        cpu: Attester,
        devices: Sequence[Attester] = (),
        *,
        tee_key: TeeKeyPair | None = None,
        initdata_toml: str | None = None,
        ca_cert: bytes | str | None = None,
        transport: httpx.BaseTransport | None = None,
        timeout: float = 30.0,
        handshake_retries: int = 5,
        retry_delay: float = 1.0,
        allow_insecure_http: bool = False,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if handshake_retries < 1:
            raise ValueError("handshake_retries must be at least 1")
        self._http = _Http(
            url,
            ca_cert=ca_cert,
            transport=transport,
            timeout=timeout,
            allow_insecure_http=allow_insecure_http,
        )
        self.cpu = cpu
        self.devices = tuple(devices)
        self.tee_key = tee_key if tee_key is not None else TeeKeyPair.generate()
        self.initdata_toml = initdata_toml
        self.token: str | None = None
        self._session: str | None = None
        self._retries = handshake_retries
        self._delay = retry_delay
        self._sleep = sleep

    @property
    def url(self) -> str:
        return self._http.base

    # -- RCAR handshake -------------------------------------------------------------------
    def attest(self) -> str:
        """Run the RCAR handshake (retrying transient failures with backoff); return the EAR."""
        for attempt in range(1, self._retries + 1):
            try:
                return self._handshake()
            except KbsError as err:
                if not _is_transient(err):
                    raise
                if attempt == self._retries:
                    raise _gave_up(err, f"KBS {self.url}: attestation", attempt) from None
                delay = self._delay * 2 ** (attempt - 1)
                log.info(
                    "KBS handshake attempt %d failed (%s); retry in %.1fs", attempt, err, delay
                )
                self._sleep(delay)
        raise AssertionError("unreachable")

    def _handshake(self) -> str:
        self._session = self.token = None
        request = {
            "version": PROTOCOL_VERSION,
            "tee": self.cpu.tee,
            "extra-params": {"supported-hash-algorithms": [HASH_ALGORITHM]},
        }
        response = self._http.request("POST", f"{API_PREFIX}/auth", json=request)
        _raise_for(response)
        challenge = _json(response, "auth challenge")
        nonce = challenge.get("nonce") if isinstance(challenge, dict) else None
        if not isinstance(nonce, str) or not nonce:
            raise UnexpectedResponse("auth challenge has no nonce", status=response.status_code)
        params = _challenge_extra_params(challenge.get("extra-params"))
        selected = params.get("selected-hash-algorithm", HASH_ALGORITHM)
        if selected != HASH_ALGORITHM:
            raise AttestationError(
                f"KBS selected hash algorithm {selected!r}; this client implements only "
                f"{HASH_ALGORITHM}"
            )
        session = _session_cookie(response)
        if session is None:
            raise UnexpectedResponse(
                f"auth response set no {SESSION_COOKIE} cookie", status=response.status_code
            )

        tee_pubkey = self.tee_key.public_jwk()
        attestation: dict[str, Any] = {
            "runtime-data": {"nonce": nonce, "tee-pubkey": tee_pubkey},
            "tee-evidence": tee_evidence(self.cpu, self.devices, nonce, tee_pubkey),
        }
        if self.initdata_toml is not None:
            attestation["init-data"] = {"format": "toml", "body": self.initdata_toml}
        response = self._http.request(
            "POST",
            f"{API_PREFIX}/attest",
            json=attestation,
            headers={"Cookie": f"{SESSION_COOKIE}={session}"},
        )
        _raise_for(response)
        body = _json(response, "attest response")
        token = body.get("token") if isinstance(body, dict) else None
        if not isinstance(token, str) or token.count(".") != 2:
            raise UnexpectedResponse("attest response has no token", status=response.status_code)
        self._session = _session_cookie(response) or session
        self.token = token
        return token

    # -- resources ------------------------------------------------------------------------
    def get_resource(self, uri_or_path: str | ResourcePath) -> bytes:
        """Fetch and decrypt a resource over the attested session (cookie mode).

        On a 401 (expired session, token rejected, …) re-attest and retry, at most
        RESOURCE_MAX_ATTEMPTS requests in all. A policy denial is final: fresh evidence of the
        same TEE cannot change it. 404 (bad path / plugin) is final too. While the KBS is
        unreachable or answers a transient 5xx, the GET (idempotent) is repeated with the
        handshake's backoff, ``handshake_retries`` requests in all, then fails naming the KBS.
        """
        path = to_resource_path(uri_or_path)
        reattested = transient = 0
        while True:
            if self._session is None:
                self.attest()
            headers = {"Cookie": f"{SESSION_COOKIE}={self._session}"}
            try:
                return _fetch_resource(self._http, path, headers, self.tee_key)
            except KbsError as err:
                if _is_transient(err):
                    transient += 1
                    if transient >= self._retries:
                        raise _gave_up(err, f"KBS {self.url}: {path.uri()}", transient) from None
                    delay = self._delay * 2 ** (transient - 1)
                    log.info("KBS GET %s failed (%s); retry in %.1fs", path.uri(), err, delay)
                    self._sleep(delay)
                    continue
                reattested += 1
                final = reattested == RESOURCE_MAX_ATTEMPTS
                if final or isinstance(err, PolicyDenied) or err.status != 401:
                    raise
                log.info("KBS answered 401 for %s (%s); re-attesting", path.uri(), err.variant)
                self._session = None

    def get_resource_with_token(self, path: str | ResourcePath, token: str) -> bytes:
        """Fetch a resource with `Authorization: Bearer <EAR>` (the token must attest this
        client's TEE key). No retry: a refused token needs a new one from its owner."""
        return _fetch_resource(self._http, to_resource_path(path), _bearer(token), self.tee_key)

    def __repr__(self) -> str:
        devices = [d.tee for d in self.devices]
        return f"KbsClient({self.url!r}, cpu={self.cpu.tee!r}, devices={devices!r})"


def _bearer(token: str) -> dict[str, str]:
    if not isinstance(token, str) or token.count(".") != 2:
        raise ValueError("token must be an EAR JWT (header.payload.signature)")
    return {"Authorization": f"Bearer {token}"}


def get_resource_with_token(
    url: str,
    path: str | ResourcePath,
    token: str,
    tee_key: TeeKeyPair,
    *,
    ca_cert: bytes | str | None = None,
    transport: httpx.BaseTransport | None = None,
    timeout: float = 30.0,
    allow_insecure_http: bool = False,
) -> bytes:
    """Bearer mode without an attester: e.g. a workload holding `/aa/token`'s token and key."""
    headers = _bearer(token)
    resource = to_resource_path(path)
    http = _Http(
        url,
        ca_cert=ca_cert,
        transport=transport,
        timeout=timeout,
        allow_insecure_http=allow_insecure_http,
    )
    try:
        return _fetch_resource(http, resource, headers, tee_key)
    finally:
        http.close()


@dataclass(frozen=True)
class ProvisionedResource:
    """What Trustee main's provisioner plugin answers: `{uuid, resource_path}`."""

    uuid: str
    resource_path: str

    def initdata_binding(self) -> str:
        """The value the guest's initdata must carry under `trustee.kbs.resource`."""
        return provisioner_binding(self.resource_path)


class KbsAdminClient(_ClosingClient):
    """Trustee admin API: policies, resources, reference values, provisioner, liveness.

    `trustee_version` (one of coco_ai.kbs.versions.TRUSTEE_VERSIONS) selects version-specific
    behaviour (the liveness probe); None means "detect": see alive().
    """

    def __init__(
        self,
        url: str,
        *,
        auth: AdminAuth,
        ca_cert: bytes | str | None = None,
        transport: httpx.BaseTransport | None = None,
        timeout: float = 30.0,
        allow_insecure_http: bool = False,
        trustee_version: str | None = None,
        attempts: int = ADMIN_ATTEMPTS,
        retry_delay: float = ADMIN_RETRY_DELAY_S,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self.trustee_version = (
            versions.check_version(trustee_version) if trustee_version is not None else None
        )
        self._attempts = attempts
        self._delay = retry_delay
        self._sleep = sleep
        self._http = _Http(
            url,
            ca_cert=ca_cert,
            transport=transport,
            timeout=timeout,
            allow_insecure_http=allow_insecure_http,
        )
        self._auth = auth

    @property
    def url(self) -> str:
        return self._http.base

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One admin request, retried with backoff while Trustee is unreachable or answers a
        transient 5xx. Every admin call but DELETE is idempotent (a POST replaces what it
        names); a DELETE is sent once, because after a lost answer a repeat finds nothing and
        Trustee reports that as a failure (see delete_resource): its callers repeat the step
        that makes it safe (coco_ai.run_keys.revoke_grant)."""
        headers = {"Authorization": self._auth.authorization(), **kwargs.pop("headers", {})}
        attempts = 1 if method == "DELETE" else self._attempts
        for attempt in range(1, attempts + 1):
            try:
                response = self._http.request(method, API_PREFIX + path, headers=headers, **kwargs)
                _raise_for(response)
                return response
            except KbsError as err:
                if not _is_transient(err):
                    raise
                if attempt == attempts:
                    raise _gave_up(
                        err, f"Trustee KBS {self.url}: {method} {API_PREFIX}{path}", attempts
                    ) from None
                delay = self._delay * 2 ** (attempt - 1)
                log.info("KBS admin %s %s failed (%s); retry in %.1fs", method, path, err, delay)
                self._sleep(delay)
        raise AssertionError("unreachable")

    # -- policies -------------------------------------------------------------------------
    def set_resource_policy(self, rego: str) -> None:
        """Replace the KBS resource policy (`data.policy.allow`); Trustee rejects bad Rego."""
        self._call(
            "POST", "/resource-policy", json={"policy": b64url_encode(_text(rego).encode("utf-8"))}
        )

    def get_resource_policy(self) -> str | None:
        """The Rego text of the deployed resource policy, or None where Trustee hides it.

        Older Trustee answers with the policy base64url-encoded; v0.20 and later answer with the
        JSON list of policy ids only, so the text cannot be read back and a caller that needs it
        to match must upload (sync) it instead.
        """
        body = self._call("GET", "/resource-policy").text.strip()
        if body.startswith("["):
            try:
                ids = json.loads(body)
            except ValueError:
                raise UnexpectedResponse("resource policy listing is malformed") from None
            if not all(isinstance(i, str) for i in ids):
                raise UnexpectedResponse("resource policy listing is not a list of ids")
            return None
        if body.startswith('"'):
            try:
                body = json.loads(body)
            except ValueError:
                raise UnexpectedResponse("resource policy response is malformed") from None
        try:
            return b64url_decode(body).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            raise UnexpectedResponse("resource policy response is not base64url Rego") from None

    def set_attestation_policy(self, rego: str, policy_id: str = "default_cpu") -> None:
        """Upload an attestation (EAR) policy under `default_<class>`.

        A policy under plain "default" is never used for EAR (KBS appends the class), so it is
        refused here rather than silently ignored by Trustee.
        """
        if policy_id not in ATTESTATION_POLICY_IDS:
            raise ValueError(
                f"attestation policy id {policy_id!r} is not one of {ATTESTATION_POLICY_IDS}"
            )
        self._call(
            "POST",
            "/attestation-policy",
            json={
                "type": "rego",
                "policy_id": policy_id,
                "policy": b64url_encode(_text(rego).encode("utf-8")),
            },
        )

    # -- resources ------------------------------------------------------------------------
    def set_resource(self, path: str | ResourcePath, data: bytes) -> None:
        resource = to_resource_path(path)
        if not isinstance(data, bytes):
            raise TypeError("resource data must be bytes")
        if len(data) > MAX_UPLOAD_BYTES:
            raise ValueError(
                f"resource is {len(data)} bytes; KBS accepts at most {MAX_UPLOAD_BYTES} "
                "(store wrapping keys in KBS, not payloads)"
            )
        self._call(
            "POST",
            f"/resource/{resource.url_path()}",
            content=data,
            headers={"Content-Type": "application/octet-stream"},
        )

    def delete_resource(self, path: str | ResourcePath) -> None:
        """Delete a resource; 200 from Trustee means it existed and is gone.

        Raises ResourceDeleteUnconfirmed (a PluginInternalError) when Trustee answers 401
        `PluginInternalError`, which it does for an absent resource and for a storage failure
        alike (see that class): the caller decides whether "maybe absent" is acceptable.
        Every other failure raises as usual.
        """
        resource = to_resource_path(path)
        try:
            self._call("DELETE", f"/resource/{resource.url_path()}")
        except PluginInternalError as err:
            raise ResourceDeleteUnconfirmed(
                err.detail, status=err.status, path=resource.url_path()
            ) from None

    def provision_vm(self, vm_name: str, namespace: str = "default") -> ProvisionedResource:
        """Trustee main's provisioner plugin: `POST /kbs/v0/provisioner/provision`.

        Body `{"vm_name", "namespace"}`; Trustee answers `{"uuid", "resource_path"}` with a uuid5
        of "<namespace>/<vm_name>" and `default/<uuid>/root`, and stores a confdata TOML
        (`io.cryptsetup.key.text.root`) there, released at `/kbs/v0/provisioner/<path>` only to
        a token whose initdata claims bind `trustee.kbs.resource` to
        `kbs+provisioner:///<path>` (`kbs/src/plugins/implementations/provisioner/mod.rs`).
        Idempotent. v0.20.0/v0.21.0 answer 404 PluginNotFound.
        """
        for name, value in (("vm_name", vm_name), ("namespace", namespace)):
            if not isinstance(value, str) or not value:
                raise ValueError(f"{name} must be a non-empty string")
        response = self._call(
            "POST", "/provisioner/provision", json={"vm_name": vm_name, "namespace": namespace}
        )
        result = _json(response, "provision response")
        uuid = result.get("uuid") if isinstance(result, dict) else None
        returned = result.get("resource_path") if isinstance(result, dict) else None
        if not isinstance(uuid, str) or returned != f"default/{uuid}/root":
            raise UnexpectedResponse(
                "provision response is not {uuid, resource_path: default/<uuid>/root}"
            )
        return ProvisionedResource(uuid=uuid, resource_path=returned)

    def deprovision_vm(self, uuid: str) -> None:
        """Trustee main: `DELETE /kbs/v0/provisioner/provision/<uuid>` (answers 200 even when
        nothing was stored: the plugin ignores the storage result)."""
        if not isinstance(uuid, str) or not re.fullmatch(r"[0-9a-f-]{36}", uuid):
            raise ValueError("uuid must be the provisioner's hyphenated uuid")
        self._call("DELETE", f"/provisioner/provision/{uuid}")

    # -- reference values -----------------------------------------------------------------
    def set_sample_reference_value(
        self, name: str, values: Any, *, as_single_value: bool = False
    ) -> None:
        """Register a reference value through RVPS's `sample` extractor.

        Like kbs-client, a single value is wrapped in a list unless `as_single_value`.
        """
        if not isinstance(name, str) or not name:
            raise ValueError("reference value name must be a non-empty string")
        if not as_single_value and not isinstance(values, list):
            values = [values]
        payload = json.dumps({name: values}, separators=(",", ":")).encode("utf-8")
        message = {
            "version": RVPS_MESSAGE_VERSION,
            "type": "sample",
            "payload": base64.b64encode(payload).decode("ascii"),
        }
        self._call("POST", "/reference-value", json=message)

    def get_reference_value(self, name: str) -> Any:
        if not isinstance(name, str) or not name or ".." in name.split("/"):
            raise ValueError("reference value name must be a non-empty id without '..'")
        response = self._call("GET", f"/reference-value/{quote(name, safe=':/')}")
        return _json(response, "reference value")

    # -- health ---------------------------------------------------------------------------
    def alive(self) -> bool:
        """Is the KBS serving requests? One unauthenticated read-only GET, version-aware.

        v0.21.0 and main: `/healthz` (200). v0.20.0 has no `/healthz` (404), so there the probe
        is `/metrics`, which every version serves without auth. With no configured version,
        `/healthz` is tried first and a 404 falls back to `/metrics`. An unreachable KBS, or one
        whose certificate does not verify against the pinned CA, gives False. An unreachable
        KBS or a transient 5xx is probed again with the admin calls' backoff before False.
        """
        paths = (
            [versions.liveness_path(self.trustee_version)]
            if self.trustee_version is not None
            else ["/healthz", "/metrics"]
        )
        for attempt in range(1, self._attempts + 1):
            transient = False
            for path in paths:
                try:
                    status = self._http.request("GET", path).status_code
                except KbsTlsError:
                    return False
                except KbsUnavailable:
                    transient = True
                    break
                if status in _RETRY_STATUSES:
                    transient = True
                    break
                if status != 404:
                    return status == 200
            if not transient:
                return False
            if attempt < self._attempts:
                self._sleep(self._delay * 2 ** (attempt - 1))
        return False

    def __repr__(self) -> str:
        return f"KbsAdminClient({self.url!r}, auth={self._auth!r})"


def _text(rego: str) -> str:
    if not isinstance(rego, str) or not rego.strip():
        raise ValueError("policy must be non-empty Rego text")
    return rego
