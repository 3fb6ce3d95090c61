"""The stand-in's HTTP surface: Trustee's KBS endpoints, status codes and error bodies.

Dispatch mirrors `kbs/src/api_server.rs` `api`: the first segment after `/kbs/v0/` picks a
built-in endpoint (auth, attest, attestation-policy, reference-value, resource-policy) or a
plugin (resource; provisioner on main); errors answer `{"type": ".../errors/<Variant>",
"detail"}` with no Content-Type, 404 for InvalidRequestPath/PluginNotFound and 401 for
everything else, including a policy denial and a missing resource. Request bodies are capped
at 2 MiB (413, as actix answers).

`trustee_version` selects what differs between v0.20.0, v0.21.0 and main (coco_ai.kbs.versions:
`/healthz`, admin auth and its error names, EAR encoding, sampledevice claims, the provisioner
plugin). Behaviour that no Trustee has is off unless named in `extensions` (EXTENSIONS); the
compatibility table in docs/architecture/trustee_dev.md lists every one.

All work runs inline on the event loop: each step is a few milliseconds of CPU, and keeping it
on one thread makes sessions, policy caches and the state directory single-writer.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import secrets
import string
import time
import uuid as uuidlib
from collections.abc import Callable, Iterable
from email.utils import formatdate
from os import PathLike
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from coco_ai import policies
from coco_ai.kbs import errors as kerr
from coco_ai.kbs import versions
from coco_ai.kbs.jwe import encrypt_for_tee
from coco_ai.kbs.wire import PROVISIONER_INITDATA_KEY, parse_resource_path, provisioner_binding
from coco_ai.trustee_dev import jsonbody
from coco_ai.trustee_dev.admin import AdminAuthDenied, AdminConfig
from coco_ai.trustee_dev.attestation import (
    DEFAULT_SESSION_TIMEOUT_S,
    DEFAULT_TOKEN_LIFETIME_S,
    SESSION_COOKIE,
    AttestationService,
    RcarError,
    Sessions,
    parse_request,
)
from coco_ai.trustee_dev.extensions import check_extensions
from coco_ai.trustee_dev.metrics import KbsMetrics
from coco_ai.trustee_dev.policy import (
    AttestationPolicy,
    PolicyCompileError,
    ResourcePolicyEvaluator,
    check_policy,
)
from coco_ai.trustee_dev.state import StateDir, StateError
from coco_ai.trustee_dev.tokens import TokenBroker
from coco_ai.trustee_dev.verifiers import verifiers as version_verifiers

log = logging.getLogger("coco_ai.trustee_dev")

KBS_PREFIX = "/kbs/v0/"
MAX_BODY_BYTES = 2 * 1024 * 1024  # Trustee's payload_request_size default (2 MiB)
RESOURCE_POLICY_ID = policies.RESOURCE_POLICY_ID
RVPS_MESSAGE_VERSION = "0.1.0"
# Trustee's ResourceDesc regex (kbs/src/plugins/implementations/resource/backend.rs).
_RESOURCE_DESC = re.compile(r"[a-zA-Z0-9_\-]+[a-zA-Z0-9_\-.]*")
_POLICY_ID = re.compile(r"[A-Za-z0-9_-]+")
# Trustee main's provisioner: Uuid::new_v5(&Uuid::NAMESPACE_URL, b"provisioner_plugin").
PROVISIONER_NAMESPACE = uuidlib.UUID("feab5599-6854-52bc-95f0-0241c03e620a")
PROVISIONER_KEY_LENGTH = 32  # ProvisionerConfig default key_length
PROVISIONER_REPOSITORY = "default"
PROVISIONER_TAG = "root"

# Trustee: "Plugin internal error" is the whole Display of the variant; the cause is logged.
PLUGIN_INTERNAL_ERROR = "Plugin internal error"


class _Reply(Exception):
    """Short-circuit with a KbsError response."""

    def __init__(self, err: kerr.KbsError) -> None:
        super().__init__(err.detail)
        self.err = err


def _attestation_error(stage: str, reason: str) -> _Reply:
    return _Reply(
        kerr.AttestationError(f"Attestation error: RCAR handshake {stage} failed: {reason}")
    )


def _plugin_error(reason: str) -> _Reply:
    log.info("plugin error: %s", reason)
    return _Reply(kerr.PluginInternalError(PLUGIN_INTERNAL_ERROR))


def _b64url_nopad(text: Any) -> bytes:
    """URL_SAFE_NO_PAD decoding only, as Trustee: '=', '+' and '/' are refused."""
    if not isinstance(text, str) or not re.fullmatch(r"[A-Za-z0-9_-]*", text) or len(text) % 4 == 1:
        raise ValueError("not base64url without padding")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TrusteeStandIn:
    """A development Trustee (KBS + attestation service + RVPS) over one state directory.

    `app` is the ASGI application. `admin` is an AdminConfig (several identities, roles and
    endpoint rules, coco_ai.trustee_dev.admin) or one Ed25519 public key PEM, the shorthand for
    a single admin with every right. `clock` is injectable so tests can expire sessions and
    tokens without sleeping. `trustee_version` is the Trustee release to reproduce (default:
    the one docker-compose.yaml pins); `extensions` opts into behaviour no Trustee has.
    `approved_images` are the images the installed resource policy approves (see
    coco_ai.policies.resource_policy_text); with none it releases nothing.
    """

    def __init__(
        self,
        state_dir: str | PathLike[str],
        admin: AdminConfig | bytes | str,
        *,
        trustee_version: str = versions.DEFAULT_TRUSTEE_VERSION,
        extensions: object = frozenset(),
        policy_set: str = "dev",
        approved_images: Iterable[str] = (),
        reference_values: dict[str, Any] | None = None,
        clock: Callable[[], float] = time.time,
        session_timeout_s: int = DEFAULT_SESSION_TIMEOUT_S,
        token_lifetime_s: int = DEFAULT_TOKEN_LIFETIME_S,
    ) -> None:
        if policy_set not in policies.POLICY_SETS:
            raise ValueError(
                f"unknown policy set {policy_set!r}; known: {', '.join(policies.POLICY_SETS)}"
            )
        self.trustee_version = versions.check_version(trustee_version)
        self.extensions = check_extensions(extensions)
        if isinstance(admin, AdminConfig):
            if admin.trustee_version != self.trustee_version:
                raise ValueError(
                    f"admin config is for Trustee {admin.trustee_version}, the stand-in emulates "
                    f"{self.trustee_version}"
                )
            self._admin_config = admin
        else:
            self._admin_config = AdminConfig.single(admin, self.trustee_version)
        self._clock = clock
        self.state = StateDir(state_dir)
        self.broker = TokenBroker(self.state, self.trustee_version)
        self.metrics = KbsMetrics(self.trustee_version)
        self.sessions = Sessions(clock=clock, timeout_s=session_timeout_s)
        # Like Trustee's built-in defaults: installed when absent, never overwriting uploads. The
        # resource policy approves `approved_images` (none: it releases nothing).
        for policy_id, name in policies.POLICY_SETS[policy_set].items():
            if self.state.get_policy(policy_id) is None:
                self.state.put_policy(policy_id, policies.policy_text(name, approved_images))
        if reference_values is not None:
            self.state.put_reference_values(reference_values)
        elif not (self.state.root / "reference-values.json").exists():
            self.state.put_reference_values(dict(policies.DEV_SAMPLE_REFERENCE_VALUES))
        self._policy_cache: dict[str, AttestationPolicy] = {}
        self._resource_policy = ResourcePolicyEvaluator()
        self.attestation = AttestationService(
            version_verifiers(self.trustee_version, self.extensions),
            self._attestation_policy,
            self.broker,
            clock,
            token_lifetime_s,
        )
        routes = [
            Route("/kbs/v0/{path:path}", self._kbs, methods=["GET", "POST", "PUT", "DELETE"]),
            Route("/metrics", self._metrics, methods=["GET", "POST"]),
        ]
        if versions.has_healthz(self.trustee_version):
            routes.append(Route("/healthz", self._healthz, methods=["GET"]))
        # actix answers an unrouted path (404) or method (405) with an empty body and no
        # Content-Type; Starlette's defaults would add text.
        self.app = Starlette(
            routes=routes, exception_handlers={404: _empty_status, 405: _empty_status}
        )

    @property
    def token_anchor_path(self):
        """The EAR trust anchor (the token CA); never the TLS CA."""
        return self.broker.ca_cert_path

    @property
    def token_signer_path(self):
        """The EAR signer certificate, for relying parties that pin the signer."""
        return self.broker.signer_cert_path

    # -- plumbing ---------------------------------------------------------------------------

    async def _healthz(self, request: Request) -> Response:
        return Response(status_code=200)

    async def _metrics(self, request: Request) -> Response:
        if request.method == "POST":
            return Response(status_code=405)
        return Response(self.metrics.render().encode("utf-8"), status_code=200, media_type=None)

    async def _kbs(self, request: Request) -> Response:
        started = time.perf_counter()
        self.metrics.add_active(1)
        self.metrics.inc("kbs_http_requests_total")
        declared = request.headers.get("content-length")
        self.metrics.observe(
            "kbs_http_request_size_bytes",
            float(declared) if declared and declared.isdigit() else 0.0,
        )
        try:
            response = await self._kbs_response(request)
        finally:
            self.metrics.add_active(-1)
        self.metrics.observe("kbs_http_request_duration_seconds", time.perf_counter() - started)
        # As Trustee's middleware: the response size goes into the request-size histogram.
        self.metrics.observe("kbs_http_request_size_bytes", float(len(response.body)))
        return response

    async def _kbs_response(self, request: Request) -> Response:
        body = await _read_body(request)
        if body is None:
            return PlainTextResponse("A payload reached size limit.", status_code=413)
        try:
            return self._dispatch(request, body)
        except _Reply as reply:
            return _error_response(reply.err)
        except StateError as exc:
            log.error("state directory error: %s", exc)
            return _error_response(kerr.PluginInternalError(PLUGIN_INTERNAL_ERROR))

    def _dispatch(self, request: Request, body: bytes) -> Response:
        raw_path = request.scope.get("raw_path") or request.url.path.encode()
        path = raw_path.decode("latin-1")[len(KBS_PREFIX) :]
        parts = path.split("/")
        # Stricter than Trustee, which would hand these to the plugin: no dot segments, no
        # percent-encoding, no backslashes ever reach a handler or the state directory.
        if any(p in (".", "..") or "%" in p or "\\" in p for p in parts):
            raise _Reply(kerr.InvalidRequestPath(f"Request path {path} is invalid"))
        plugin, rest = parts[0], parts[1:]
        method = request.method
        if plugin == "auth" and method == "POST":
            return self._auth(body)
        if plugin == "attest" and method == "POST":
            return self._attest(request, body)
        if plugin == "attestation-policy" and method == "POST":
            self._admin(request, plugin)
            return self._set_attestation_policy(body)
        if plugin == "reference-value" and method == "GET":
            self._admin(request, plugin)
            return self._get_reference_value("/".join(rest))
        if plugin == "reference-value" and method == "POST":
            self._admin(request, plugin)
            return self._register_reference_value(body)
        if plugin == "resource-policy" and method == "POST":
            self._admin(request, plugin)
            return self._set_resource_policy(body)
        if plugin == "resource-policy" and method == "GET":
            self._admin(request, plugin)
            return JSONResponse([RESOURCE_POLICY_ID])
        if plugin == "resource":
            return self._resource(request, method, rest, body)
        if plugin == "provisioner" and versions.has_provisioner(self.trustee_version):
            return self._provisioner(request, method, rest, body)
        raise _Reply(kerr.PluginNotFound(f"Plugin {plugin} not found"))

    def _admin(self, request: Request, endpoint: str, *, plugin: bool = False) -> None:
        legacy = versions.self_signed_admin_auth(self.trustee_version)
        # What Trustee matches the rules against: `request.uri().to_string()`, i.e. the path as
        # sent (undecoded) plus the query string.
        uri = (request.scope.get("raw_path") or request.url.path.encode()).decode("latin-1")
        if request.scope.get("query_string"):
            uri += "?" + request.scope["query_string"].decode("latin-1")
        try:
            role = self._admin_config.authorize(
                request.headers.get("authorization"), uri, self._clock()
            )
        except AdminAuthDenied as exc:
            log.info("admin access denied for %s: %s", endpoint, exc)
            if legacy:
                # v0.20.0 kbs/src/admin/mod.rs: every refusal becomes AdminAccessDenied.
                err = kerr.AdminAuthError(
                    "Admin auth error: Admin Token could not be verified for any admin persona",
                    variant="AdminAuth",
                )
            elif plugin:
                # v0.21.0+: plugin paths convert admin::Error with `?` (From impl).
                err = kerr.AdminAuthError(
                    f"failed to initialize [admin] configuration: Admin access denied: {exc}",
                    variant="AdminAuthInitialization",
                )
            else:
                err = kerr.AdminAuthError(
                    f"admin access denied for endpoint {endpoint}: Admin access denied: {exc}"
                )
            raise _Reply(err) from None
        log.info("admin %s allowed %s %s", role, request.method, uri)

    # -- RCAR -------------------------------------------------------------------------------

    def _auth(self, body: bytes) -> Response:
        self.metrics.inc("kbs_auth_requests_total")
        try:
            tee = parse_request(body)
        except RcarError as exc:
            self.metrics.inc("kbs_auth_errors_total")
            raise _attestation_error(exc.stage, exc.reason) from None
        self.metrics.inc("kbs_auth_successes_total")
        session = self.sessions.create(tee)
        response = JSONResponse({"nonce": session.nonce, "extra-params": ""})
        self._set_cookie(response, session.id, session.expires_at)
        return response

    def _attest(self, request: Request, body: bytes) -> Response:
        self.metrics.inc("kbs_attestation_requests_total")
        session_id = request.cookies.get(SESSION_COOKIE)
        if not session_id:
            self.metrics.inc("kbs_attestation_errors_total")
            raise _attestation_error("Attest", "cookie not found")
        try:
            jsonbody.loads(body)
        except jsonbody.JsonBodyError as exc:
            self.metrics.inc("kbs_attestation_errors_total")
            raise _attestation_error("Attest", f"deserialize Attestation: {exc}") from None
        session = self.sessions.get(session_id)
        if session is None:
            self.metrics.inc("kbs_attestation_errors_total")
            raise _attestation_error("Attest", "session not found or expired")
        if session.token is None:
            try:
                session.token = self.attestation.attest(session, body)
            except RcarError as exc:
                self.metrics.inc("kbs_attestation_failures_total", session.tee)
                raise _attestation_error(exc.stage, exc.reason) from None
            self.metrics.inc("kbs_attestation_successes_total", session.tee)
        response = JSONResponse({"token": session.token})
        self._set_cookie(response, session.id, session.expires_at)
        return response

    @staticmethod
    def _set_cookie(response: Response, session_id: str, expires_at: float) -> None:
        response.headers.append(
            "set-cookie",
            f"{SESSION_COOKIE}={session_id}; Expires={formatdate(expires_at, usegmt=True)}",
        )

    def _token_claims(self, request: Request) -> dict[str, Any]:
        """The verified claims of the cookie session's token, else of the Bearer token."""
        session = self.sessions.get(request.cookies.get(SESSION_COOKIE))
        token = session.token if session is not None else None
        if token is None:
            scheme, _, value = (request.headers.get("authorization") or "").partition(" ")
            if scheme.lower() != "bearer" or not value.strip():
                raise _Reply(kerr.TokenNotFound("Attestation Token not found"))
            token = value.strip()
        try:
            return self.broker.verify(token, self._clock()).raw
        except kerr.TokenVerifierError as exc:
            raise _Reply(kerr.TokenVerifierError(f"Token Verifier error: {exc.detail}")) from None

    # -- plugins ----------------------------------------------------------------------------

    def _resource(self, request: Request, method: str, rest: list[str], body: bytes) -> Response:
        if method in ("POST", "DELETE"):
            self._admin(request, "resource", plugin=True)
            path = _resource_desc(rest)
            if method == "POST":
                self.state.put_resource(path, body)
                self.metrics.inc("kbs_resource_writes_total", path)
            else:
                # kv_storage.rs delete_secret_resource: an absent key is an error.
                if not self.state.delete_resource(path):
                    raise _plugin_error(f"resource not found: {path}")
                self.metrics.inc("kbs_resource_deletes_total", path)
            return _plugin_response(b"")
        if method != "GET":
            raise _plugin_error("Illegal HTTP method. Only supports `GET`, `POST` and `DELETE`")
        claims = self._token_claims(request)
        descriptor = {
            "plugin": "resource",
            "resource-path": rest,
            "query": dict(request.query_params),
        }
        self._check_resource_policy(claims, descriptor)
        path = _resource_desc(rest)
        record = self.state.get_resource(path)
        self.metrics.inc("kbs_resource_reads_total", path)
        if record is None:
            raise _plugin_error(f"resource not found: {path}")
        response = self._encrypted(claims, record.data)
        self.state.record_release(path, claims, self._clock())
        return response

    def _check_resource_policy(self, claims: dict[str, Any], descriptor: dict[str, Any]) -> None:
        self.metrics.inc("kbs_policy_evaluations_total")
        text = self.state.get_policy(RESOURCE_POLICY_ID) or ""
        if not self._resource_policy.allow(text, claims, descriptor):
            self.metrics.inc("kbs_policy_violations_total")
            raise _Reply(kerr.PolicyDenied("Access denied by policy"))
        self.metrics.inc("kbs_policy_approvals_total")

    @staticmethod
    def _encrypted(claims: dict[str, Any], data: bytes) -> Response:
        pubkey = (
            claims.get("submods", {})
            .get("cpu0", {})
            .get("ear.veraison.annotated-evidence", {})
            .get("runtime_data_claims", {})
            .get("tee-pubkey")
        )
        try:
            jwe = encrypt_for_tee(data, pubkey)
        except (kerr.JweError, TypeError) as exc:
            raise _Reply(kerr.JweError(f"JWE failed: {exc}")) from None
        return JSONResponse(jwe)

    def _provisioner(self, request: Request, method: str, rest: list[str], body: bytes) -> Response:
        """main's provisioner plugin (routed only when the emulated version has it)."""
        if method == "POST" and rest[:1] == ["provision"]:
            self._admin(request, "provisioner", plugin=True)
            return self._provision_vm(body)
        if method == "DELETE" and rest[:1] == ["provision"]:
            self._admin(request, "provisioner", plugin=True)
            if len(rest) < 2:
                raise _plugin_error("missing uuid in path")
            # handle_deprovision ignores the storage result: always "deleted".
            self.state.delete_resource(_provisioner_path(rest[1]), namespace="provisioner")
            return _plugin_response(b'{"status":"deleted"}')
        if method == "GET":
            claims = self._token_claims(request)
            self._check_resource_policy(
                claims,
                {
                    "plugin": "provisioner",
                    "resource-path": rest,
                    "query": dict(request.query_params),
                },
            )
            return self._encrypted(claims, self._provisioned_confdata(rest, claims))
        raise _plugin_error(f"unsupported: {method} /kbs/v0/provisioner/" + "/".join(rest))

    def _provision_vm(self, body: bytes) -> Response:
        """main `handle_provision`: {vm_name, namespace="default"} -> {uuid, resource_path}."""
        try:
            req = jsonbody.loads(body)
            vm_name = req["vm_name"]
            namespace = req.get("namespace", "default")
            if not isinstance(vm_name, str) or not isinstance(namespace, str):
                raise TypeError
        except (ValueError, KeyError, TypeError, AttributeError):
            raise _plugin_error("invalid JSON body") from None
        ident = str(uuidlib.uuid5(PROVISIONER_NAMESPACE, f"{namespace}/{vm_name}"))
        path = f"{PROVISIONER_REPOSITORY}/{ident}/{PROVISIONER_TAG}"
        if self.state.get_resource(path, namespace="provisioner") is None:
            key = "".join(
                secrets.choice(string.ascii_letters + string.digits)
                for _ in range(PROVISIONER_KEY_LENGTH)
            )
            confdata = f'version = "0.1.0"\n\n[data]\n"io.cryptsetup.key.text.root" = "{key}"\n'
            self.state.put_resource(
                path, confdata.encode(), kind="provisioner", uuid=ident, namespace="provisioner"
            )
        return _plugin_response(
            json.dumps({"uuid": ident, "resource_path": path}, separators=(",", ":")).encode()
        )

    def _provisioned_confdata(self, rest: list[str], claims: dict[str, Any]) -> bytes:
        """main `handle_get_resource`: released only to initdata binding this exact path."""
        key = "/".join(rest)
        init_claims = (
            claims.get("submods", {})
            .get("cpu0", {})
            .get("ear.veraison.annotated-evidence", {})
            .get("init_data_claims")
        )
        if not isinstance(init_claims, dict):
            raise _plugin_error("provisioner requires init_data for resource access")
        bound = init_claims.get(PROVISIONER_INITDATA_KEY)
        if not isinstance(bound, str):
            raise _plugin_error(f"init_data missing {PROVISIONER_INITDATA_KEY}")
        if bound != provisioner_binding(key):
            raise _plugin_error(f"init_data resource mismatch: expected {provisioner_binding(key)}")
        try:
            record = self.state.get_resource(key, "provisioner") if len(rest) == 3 else None
        except ValueError:
            record = None
        if record is None:
            raise _plugin_error(f"provisioner resource not found: {key}")
        return record.data

    # -- policies and reference values ------------------------------------------------------

    def _attestation_policy(self, policy_id: str) -> AttestationPolicy | None:
        cached = self._policy_cache.get(policy_id)
        if cached is None:
            text = self.state.get_policy(policy_id)
            if text is None:
                return None
            cached = AttestationPolicy(policy_id, text, self.state.get_reference_values())
            self._policy_cache[policy_id] = cached
        return cached

    def _set_attestation_policy(self, body: bytes) -> Response:
        def fail(reason: str) -> _Reply:
            return _Reply(
                kerr.AttestationError(f"Attestation error: Set Attestation Policy failed: {reason}")
            )

        try:
            req = jsonbody.loads(body)
            policy_id, encoded = req["policy_id"], req["policy"]
        except (ValueError, KeyError, TypeError):
            raise fail("parse set policy request") from None
        if not isinstance(policy_id, str) or not _POLICY_ID.fullmatch(policy_id):
            raise fail("Illegal policy id. Only support alphabet, numeric, `-` or `_`")
        if policy_id == RESOURCE_POLICY_ID:
            raise fail(f"{RESOURCE_POLICY_ID} is the KBS resource policy's id")
        if req.get("type", "rego") != "rego":
            raise fail(f"unsupported policy type {req.get('type')!r}")
        try:
            text = _b64url_nopad(encoded).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            raise fail("policy is not base64url (no padding) UTF-8") from None
        try:
            check_policy(policy_id, text)
        except PolicyCompileError as exc:
            raise fail(f"Failed to load policy: {exc}") from None
        self.state.put_policy(policy_id, text)
        self._policy_cache.clear()
        return Response(status_code=200)

    def _set_resource_policy(self, body: bytes) -> Response:
        def fail(reason: str) -> _Reply:
            return _Reply(kerr.ParsePolicyError(f"Failed to parse policy: {reason}"))

        try:
            req = jsonbody.loads(body)
        except ValueError:
            raise fail("Illegal SetPolicy Request Json") from None
        encoded = req.get("policy") if isinstance(req, dict) else None
        if encoded is None:
            raise fail("No `policy` field inside SetPolicy Request Json")
        if not isinstance(encoded, str):
            raise fail("`policy` field is not a string in SetPolicy Request Json")
        try:
            text = _b64url_nopad(encoded).decode("utf-8")
        except (ValueError, UnicodeDecodeError) as exc:
            raise fail(f"Failed to decode policy: {exc}") from None
        try:
            check_policy(RESOURCE_POLICY_ID, text)
        except PolicyCompileError as exc:
            # Trustee's policy engine rejects it before storing: the old policy stays.
            raise _Reply(
                kerr.PolicyEngineError(f"Policy engine error: Failed to load policy: {exc}")
            ) from None
        self.state.put_policy(RESOURCE_POLICY_ID, text)
        return Response(status_code=200)

    def _register_reference_value(self, body: bytes) -> Response:
        def fail(reason: str) -> _Reply:
            return _Reply(
                kerr.RvpsError(
                    f"RVPS configuration failed: Failed to register reference value: {reason}"
                )
            )

        try:
            message = jsonbody.loads(body)
            payload, kind = message["payload"], message["type"]
            version = message.get("version", RVPS_MESSAGE_VERSION)
        except (ValueError, KeyError, TypeError, AttributeError):
            raise fail("parse message") from None
        if version != RVPS_MESSAGE_VERSION:
            raise fail(f"Version unmatched! Need {RVPS_MESSAGE_VERSION}, given {version}.")
        if kind != "sample":
            raise fail(f"Could not find extractor for {kind}")
        try:
            values = jsonbody.loads(base64.b64decode(payload, validate=True))
        except (binascii.Error, ValueError, TypeError):
            raise fail("base64 decode / deserialize sample provenance") from None
        if not isinstance(values, dict):
            raise fail("deserialize sample provenance: not a JSON object")
        merged = self.state.get_reference_values()
        merged.update(values)
        self.state.put_reference_values(merged)
        self._policy_cache.clear()
        return Response(status_code=200, media_type="application/json")

    def _get_reference_value(self, rv_id: str) -> Response:
        values = self.state.get_reference_values()
        if rv_id not in values:
            raise _Reply(
                kerr.RvpsError(
                    "RVPS configuration failed: Failed to get reference_values: No reference "
                    f"value found for the given id: {rv_id}"
                )
            )
        # serde_json::to_string: compact (kbs/src/attestation/backend.rs query_reference_value)
        return Response(
            json.dumps(values[rv_id], separators=(",", ":")).encode(),
            media_type="application/json",
        )


def _resource_desc(segments: list[str]) -> str:
    """Trustee's ResourceDesc check (3 segments, its regex), else PluginInternalError."""
    if len(segments) != 3 or not all(_RESOURCE_DESC.fullmatch(s) for s in segments):
        raise _plugin_error("illegal ResourceDesc format.")
    try:
        return parse_resource_path("/".join(segments)).url_path()
    except ValueError:
        raise _plugin_error("illegal ResourceDesc format.") from None


def _provisioner_path(ident: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_-]+", ident):
        raise _plugin_error("illegal uuid")
    return f"{PROVISIONER_REPOSITORY}/{ident}/{PROVISIONER_TAG}"


async def _empty_status(request: Request, exc: Exception) -> Response:
    return Response(status_code=getattr(exc, "status_code", 404), media_type=None)


def _plugin_response(body: bytes) -> Response:
    """A plugin's answer: 200 `text/xml` (`HttpResponse::Ok().content_type("text/xml")`)."""
    # Set as a header: Starlette would append "; charset=utf-8" to a text/* media type.
    return Response(body, status_code=200, headers={"content-type": "text/xml"})


async def _read_body(request: Request) -> bytes | None:
    """The request body, or None when it exceeds MAX_BODY_BYTES (checked while streaming)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _error_response(err: kerr.KbsError) -> Response:
    """Trustee's error body, with no Content-Type (kbs/src/error.rs sets none)."""
    body = json.dumps(kerr.error_body(err), separators=(",", ":")).encode("utf-8")
    return Response(body, status_code=kerr.error_status(err), media_type=None)
