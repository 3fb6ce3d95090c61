"""Client of the guest components' REST API (api-server-rest), used by the workload in the TEE.

Works against real CoCo (``http://127.0.0.1:8006`` inside the pod) and against the emulator.
The resource bytes and the TEE private key it returns are secrets: callers keep them in memory.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx

from coco_ai.kbs.wire import to_resource_path

DEFAULT_BASE_URL = "http://127.0.0.1:8006"
# Hardware report_data is 64 bytes; the AA refuses more, so refuse before the round trip.
MAX_RUNTIME_DATA = 64


class GuestError(Exception):
    """A failed guest-components call; ``message`` carries the server's text (e.g. PolicyDeny)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        self.message = message
        self.status = status
        super().__init__(message)

    def __str__(self) -> str:
        where = f"HTTP {self.status}: " if self.status is not None else ""
        return f"{where}{self.message}"

    @property
    def policy_denied(self) -> bool:
        """True when the broker's resource policy refused the request."""
        return "PolicyDeny" in self.message


class GuestClient:
    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        *,
        transport: httpx.BaseTransport | None = None,
        timeout: float = 60.0,
    ) -> None:
        # trust_env=False: a loopback call must never be routed through an HTTP(S)_PROXY.
        self._http = httpx.Client(
            base_url=base_url, transport=transport, timeout=timeout, trust_env=False
        )

    def __enter__(self) -> GuestClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def get_resource(self, uri: str) -> bytes:
        """Plaintext of ``kbs:///repo/type/tag`` as released by the KBS after attestation."""
        try:
            path = to_resource_path(uri)
        except ValueError as exc:
            raise GuestError(f"bad resource URI: {exc}") from None
        return self._get(f"/cdh/resource/{path.url_path()}").content

    def unseal_secret(
        self,
        sealed: str | bytes,
        expected_resource: str | None = None,
        *,
        expected_kid: str | None = None,
    ) -> bytes:
        """Plaintext of a CoCo sealed secret (``sealed.`` JWS, vault type), for code in the TEE.

        Ours, not an api-server-rest route (upstream unseals over the CDH's ttrpc
        ``UnsealSecret``, which a container cannot reach): the kid's public JWK and the named
        resource are fetched with ``get_resource`` and the ES256 signature is verified here,
        by coco_ai.guest.sealed.unseal_secret. Pin ``expected_resource`` (and ``expected_kid``)
        so a swapped secret for another resource is refused. Raises SealedSecretError.
        """
        from coco_ai.guest.sealed import unseal_secret

        return unseal_secret(
            sealed,
            self.get_resource,
            expected_resource=expected_resource,
            expected_kid=expected_kid,
        )

    def get_token(self) -> tuple[str, bytes]:
        """(EAR token, PEM of the TEE private key the token's tee-pubkey belongs to)."""
        body = self._json(self._get("/aa/token", params={"token_type": "kbs"}))
        try:
            return str(body["token"]), str(body["tee_keypair"]).encode("ascii")
        except (KeyError, TypeError) as exc:
            raise GuestError(f"token response lacks {exc}") from None

    def get_evidence(self, runtime_data: bytes) -> dict:
        """Primary TEE evidence whose report data is ``runtime_data`` (at most 64 bytes)."""
        if len(runtime_data) > MAX_RUNTIME_DATA:
            raise GuestError(
                f"runtime_data is {len(runtime_data)} bytes; at most {MAX_RUNTIME_DATA} "
                "(hash larger data first)"
            )
        encoded = base64.urlsafe_b64encode(runtime_data).rstrip(b"=").decode()
        resp = self._get("/aa/evidence", params={"runtime_data": encoded, "encoding": "base64"})
        return self._json(resp)

    def info(self) -> dict:
        return self._json(self._get("/info"))

    def _get(self, path: str, params: dict[str, str] | None = None) -> httpx.Response:
        try:
            resp = self._http.get(path, params=params)
        except httpx.HTTPError as exc:
            raise GuestError(
                f"guest components unreachable at {self._http.base_url}: {exc}"
            ) from None
        if resp.status_code != 200:
            raise GuestError(resp.text.strip() or resp.reason_phrase, resp.status_code)
        return resp

    @staticmethod
    def _json(resp: httpx.Response) -> Any:
        try:
            return json.loads(resp.content)
        except ValueError as exc:
            raise GuestError(f"response is not JSON: {exc}", resp.status_code) from None
