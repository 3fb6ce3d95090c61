"""`TrusteeHook`: the `trustee` connection type, a thin layer over `coco_ai.kbs.KbsAdminClient`.

Connection (all fields live in ``extra``; the form is declared in
``coco_ai_airflow.provider_info``)::

    AIRFLOW_CONN_TRUSTEE_DEFAULT='{"conn_type": "trustee", "extra": {
        "kbs_url": "https://kbs.example:8080",
        "ca_cert": "-----BEGIN CERTIFICATE-----...",        # TLS CA of the KBS (optional)
        "admin_secret": "-----BEGIN PRIVATE KEY-----...",   # Ed25519 key PEM, or an admin JWT
        "admin_auth": "self-signed",                        # or "bearer" (Trustee v0.21+)
        "credential": "airflow",                            # or "data-owner" (loopback only)
        "trustee_version": "0.20.0",                        # or "0.21.0", "main"; absent: probe
        "timeout_s": 30, "attempts": 4, "retry_delay_s": 1}}'  # optional: while Trustee is down

The admin credential is registered with Airflow's secrets masker as soon as it is read.

The connection carries no trust: Airflow users and tasks can write it. The attestation trust
anchor and the pinned EAR signer come from the data owner's signed policy
(``[coco_ai] owner_public_key`` / ``owner_policy``, coco_ai.owner_policy). A connection that still
holds the fields earlier versions read for them (``trust_anchor``, ``token_signer``) is refused
with an error saying so, so that nobody believes those values are still applied.

Whose credential it is (``credential``): ``airflow`` (the default) is Airflow's own, allowed by
Trustee to write and delete run grants only (coco_ai.kbs.admin_acl): on v0.20.0 Airflow's persona
key (``self-signed``), on v0.21.0+ a token for role ``airflow`` that the data owner minted
(``bearer``). ``data-owner`` declares the data owner's all-powerful credential, which lets the
attestation gate compare and sync policies; it is a development convenience and is refused
unless ``kbs_url`` is a loopback address.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from airflow.sdk import BaseHook
from airflow.sdk.log import mask_secret

from coco_ai.kbs import versions
from coco_ai.net import is_loopback

if TYPE_CHECKING:
    from coco_ai.kbs.client import KbsAdminClient

ADMIN_AUTH_STYLES = ("self-signed", "bearer")
AIRFLOW_CREDENTIAL = "airflow"
DATA_OWNER_CREDENTIAL = "data-owner"
CREDENTIALS = (AIRFLOW_CREDENTIAL, DATA_OWNER_CREDENTIAL)
#: Fields earlier versions read trust from; refused now (see the module docstring).
LEGACY_TRUST_FIELDS = ("trust_anchor", "token_signer")


class TrusteeConnectionError(ValueError):
    """The `trustee` connection is incomplete or malformed (the message names the field)."""


@dataclass(frozen=True)
class TrusteeSettings:
    """The parsed `trustee` connection. `admin_secret` never appears in the repr."""

    kbs_url: str
    ca_cert_pem: str | None
    admin_auth: str
    admin_secret: str | None = field(repr=False)
    trustee_version: str | None = None  # None: the client probes (coco_ai.kbs.versions)
    credential: str = AIRFLOW_CREDENTIAL  # whose admin credential admin_secret is
    # Requests while Trustee is down or slow: per-request timeout, attempts, first backoff.
    timeout_s: float = 30.0
    attempts: int = 4
    retry_delay_s: float = 1.0

    @property
    def holds_data_owner_credential(self) -> bool:
        return self.credential == DATA_OWNER_CREDENTIAL

    @classmethod
    def from_extra(cls, extra: dict[str, Any]) -> TrusteeSettings:
        legacy = [name for name in LEGACY_TRUST_FIELDS if str(extra.get(name) or "").strip()]
        if legacy:
            names = " and ".join(repr(n) for n in legacy)
            raise TrusteeConnectionError(
                f"trustee connection: {names} {'is' if len(legacy) == 1 else 'are'} no longer "
                "read from the connection, which Airflow users can change: the attestation trust "
                "anchor and token signer come only from the data owner's signed policy "
                "([coco_ai] owner_public_key and owner_policy, docs/formats/owner-policy.md). "
                "Remove them from the connection (e.g. re-import it with "
                "`airflow connections import --overwrite`)"
            )
        url = str(extra.get("kbs_url") or "").strip().rstrip("/")
        if not url:
            raise TrusteeConnectionError("trustee connection: 'kbs_url' is required")
        parts = urlsplit(url)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise TrusteeConnectionError(f"trustee connection: kbs_url {url!r} is not http(s)://")
        # Plain HTTP only on loopback: the key broker's admin API must never cross a network
        # in clear text (the stand-ins refuse it too).
        if parts.scheme == "http" and not is_loopback(parts.hostname):
            raise TrusteeConnectionError(
                f"trustee connection: kbs_url {url!r} uses plain HTTP off loopback; use https"
            )
        auth = str(extra.get("admin_auth") or "self-signed")
        if auth not in ADMIN_AUTH_STYLES:
            raise TrusteeConnectionError(
                f"trustee connection: admin_auth {auth!r} is not one of "
                f"{', '.join(ADMIN_AUTH_STYLES)}"
            )
        credential = str(extra.get("credential") or AIRFLOW_CREDENTIAL)
        if credential not in CREDENTIALS:
            raise TrusteeConnectionError(
                f"trustee connection: credential {credential!r} is not one of "
                f"{', '.join(CREDENTIALS)}"
            )
        # The data owner's credential can rewrite the resource policy: Airflow may hold it only
        # for a development KBS on this machine, never for a Trustee that guards real data.
        if credential == DATA_OWNER_CREDENTIAL and not is_loopback(parts.hostname):
            raise TrusteeConnectionError(
                f"trustee connection: a data-owner credential is accepted only for a loopback "
                f"KBS (development); {url} is not one. Give Airflow its own credential "
                "(docs/OPERATIONS.md, Trustee admin credentials)"
            )
        version = str(extra.get("trustee_version") or "").strip() or None
        if version is not None:
            try:
                version = versions.check_version(version)
            except ValueError as exc:
                raise TrusteeConnectionError(f"trustee connection: {exc}") from None
        retry = {
            name: _positive(extra, name, kind, default)
            for name, kind, default in (
                ("timeout_s", float, cls.timeout_s),
                ("attempts", int, cls.attempts),
                ("retry_delay_s", float, cls.retry_delay_s),
            )
        }
        return cls(
            **retry,
            kbs_url=url,
            ca_cert_pem=_pem_or_none(extra, "ca_cert"),
            admin_auth=auth,
            admin_secret=(str(extra["admin_secret"]).strip() or None)
            if extra.get("admin_secret")
            else None,
            trustee_version=version,
            credential=credential,
        )


def _positive(extra: dict[str, Any], name: str, kind: type, default: float) -> Any:
    value = extra.get(name)
    if value is None or value == "":
        return default
    try:
        number = kind(value)
    except (TypeError, ValueError):
        number = None
    if number is None or isinstance(value, bool) or not number > 0:
        raise TrusteeConnectionError(f"trustee connection: {name} must be a positive number")
    return number


def _pem_or_none(extra: dict[str, Any], name: str) -> str | None:
    value = str(extra.get(name) or "").strip()
    if not value:
        return None
    if "-----BEGIN CERTIFICATE-----" not in value:
        raise TrusteeConnectionError(f"trustee connection: {name!r} is not a PEM certificate")
    return value + "\n"


def _mask_credential(secret: str) -> None:
    mask_secret(secret)
    # A PEM may be logged line by line (or re-wrapped); mask its base64 body lines as well.
    for line in secret.splitlines():
        line = line.strip()
        if line and not line.startswith("-----"):
            mask_secret(line)


class TrusteeHook(BaseHook):
    """Admin access to a Trustee KBS (policies, resources, per-run keys, reference values).

    Example::

        hook = TrusteeHook("trustee_default")
        client = hook.get_conn()            # coco_ai.kbs.client.KbsAdminClient
        client.alive()
    """

    conn_name_attr = "trustee_conn_id"
    default_conn_name = "trustee_default"
    conn_type = "trustee"
    hook_name = "Trustee (CoCo Key Broker)"

    def __init__(self, trustee_conn_id: str = default_conn_name) -> None:
        super().__init__()
        self.trustee_conn_id = trustee_conn_id

    @cached_property
    def settings(self) -> TrusteeSettings:
        conn = self.get_connection(self.trustee_conn_id)
        settings = TrusteeSettings.from_extra(conn.extra_dejson)
        if settings.admin_secret:
            _mask_credential(settings.admin_secret)
        return settings

    def get_conn(self) -> KbsAdminClient:
        """An admin client authenticated in the connection's style (TLS pinned to its CA)."""
        from coco_ai.kbs.client import BearerTokenAdminAuth, KbsAdminClient, SelfSignedAdminAuth

        s = self.settings
        if not s.admin_secret:
            raise TrusteeConnectionError(
                f"trustee connection {self.trustee_conn_id!r}: 'admin_secret' is required for "
                "admin operations"
            )
        if s.admin_auth == "bearer":
            auth: Any = BearerTokenAdminAuth(s.admin_secret)
        else:
            auth = SelfSignedAdminAuth(s.admin_secret.encode())
        return KbsAdminClient(
            s.kbs_url,
            auth=auth,
            ca_cert=s.ca_cert_pem,
            trustee_version=s.trustee_version,
            timeout=s.timeout_s,
            attempts=s.attempts,
            retry_delay=s.retry_delay_s,
        )

    def test_connection(self) -> tuple[bool, str]:
        try:
            with self.get_conn() as client:
                alive = client.alive()
        except Exception as exc:  # the UI shows the message; any failure is a failed test
            return False, f"{type(exc).__name__}: {exc}"
        return (True, "KBS is alive") if alive else (False, "KBS liveness probe failed")
