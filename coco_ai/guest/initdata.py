"""CoCo initdata: the TOML document a pod carries into its TEE, its digest and its annotation.

Format (Trustee ``kbs/docs/initdata.md``, only version 0.1.0 exists)::

    version = "0.1.0"
    algorithm = "sha384"
    [data]
    "aa.toml" = '''...'''          # attestation agent: [token_configs.kbs] url, cert
    "cdh.toml" = '''...'''         # confidential data hub: [kbc] name, url, kbs_cert;
                                   # [image] image_security_policy_uri
    "policy.rego" = '''...'''      # Kata agent policy (coco_ai.guest.agent_policy)
    "io.coco-ai.run-id" = "..."    # custom claims, visible to policies as init_data_claims

The digest is taken over the exact UTF-8 bytes of the TOML text (not canonicalised: one changed
space is another digest), which is why :class:`Initdata` keeps the text it was built or parsed from
and never re-serialises it. Initdata is readable by the untrusted host: never put secrets in it.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import hashlib
import io
import tomllib
from dataclasses import dataclass
from typing import Any

from coco_ai.guest.agent_policy import AgentPolicyError, agent_policy_text
from coco_ai.guest.image_policy import IMAGE_POLICY_URI

INITDATA_ANNOTATION = "io.katacontainers.config.hypervisor.cc_init_data"
INITDATA_VERSION = "0.1.0"
#: Prefix of the project's own ``[data]`` keys; everything else in ``[data]`` is upstream's.
CUSTOM_KEY_PREFIX = "io.coco-ai."
# The claims a run's initdata carries (built by coco_ai.runs.RunRefs; read by the resource
# policies, the workload and every verifier). This is their one definition.
WORKLOAD_KEY = "io.coco-ai.workload"
RUN_ID_KEY = "io.coco-ai.run-id"
IMAGE_DIGEST_KEY = "io.coco-ai.image-digest"
CHECKPOINT_KEY_KEY = "io.coco-ai.checkpoint-key"
RUN_GRANT_KEY = "io.coco-ai.run-grant"
RUN_KEY_ROOT_KEY = "io.coco-ai.run-key-root"
# A federation party's identity (coco_ai.federated.identity): the federation (the data owner's
# id for its membership and credentials, provisioned ahead of any pipeline run; not the run id),
# its role (aggregator or participant) and its participant id. The resource policies release a
# party's credentials only to initdata naming that identity.
FEDERATION_KEY = "io.coco-ai.fl-federation"
FEDERATION_ROLE_KEY = "io.coco-ai.fl-role"
FEDERATION_PARTICIPANT_KEY = "io.coco-ai.fl-participant"


def input_key_claim(input_name: str) -> str:
    """Claim naming the key of a workload input, e.g. ``io.coco-ai.dataset-key``."""
    return f"{CUSTOM_KEY_PREFIX}{input_name}-key"


DATASET_KEY_KEY = input_key_claim("dataset")

# Trustee's kbs-types HashAlgorithm serde names; "sha-384", "SHA384" … are not accepted there.
_ALGORITHMS = {"sha256": hashlib.sha256, "sha384": hashlib.sha384, "sha512": hashlib.sha512}
_AA_TOML = "aa.toml"
_CDH_TOML = "cdh.toml"
AGENT_POLICY_KEY = "policy.rego"
# Annotations travel in pod specs; keep a decompression bomb from reaching tomllib.
_MAX_TOML_BYTES = 1 << 20


class InitdataError(ValueError):
    """Initdata that cannot be built, parsed or decoded (the message says what is wrong)."""


@dataclass(frozen=True)
class Initdata:
    """A validated initdata document; ``toml`` is the exact text whose digest is measured."""

    toml: str
    algorithm: str
    data: dict[str, str]

    def __repr__(self) -> str:
        return f"Initdata(algorithm={self.algorithm!r}, digest={self.digest().hex()[:16]}…)"

    @classmethod
    def parse(cls, toml_text: str | bytes) -> Initdata:
        """Validate version, algorithm and string-valued [data]; keep the text verbatim."""
        if isinstance(toml_text, bytes):
            try:
                toml_text = toml_text.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InitdataError(f"initdata is not UTF-8: {exc}") from None
        if len(toml_text.encode("utf-8")) > _MAX_TOML_BYTES:
            raise InitdataError(f"initdata is larger than {_MAX_TOML_BYTES} bytes")
        try:
            doc = tomllib.loads(toml_text)
        except tomllib.TOMLDecodeError as exc:
            raise InitdataError(f"initdata is not valid TOML: {exc}") from None
        version = doc.get("version")
        if version != INITDATA_VERSION:
            raise InitdataError(
                f"unsupported initdata version {version!r}: only {INITDATA_VERSION!r} exists"
            )
        algorithm = doc.get("algorithm")
        if algorithm not in _ALGORITHMS:
            raise InitdataError(
                f"unsupported initdata algorithm {algorithm!r}: "
                f"expected one of {', '.join(sorted(_ALGORITHMS))}"
            )
        data = doc.get("data", {})
        if not isinstance(data, dict):
            raise InitdataError("initdata [data] must be a table")
        for key, value in data.items():
            if not isinstance(value, str):
                raise InitdataError(f"initdata [data] value {key!r} must be a string")
        extra = set(doc) - {"version", "algorithm", "data"}
        if extra:
            raise InitdataError(f"unknown initdata top-level keys: {', '.join(sorted(extra))}")
        for name in (_AA_TOML, _CDH_TOML):
            if name in data:
                _load_embedded(name, data[name])
        return cls(toml=toml_text, algorithm=algorithm, data=dict(data))

    @classmethod
    def from_annotation(cls, value: str) -> Initdata:
        """Decode an ``io.katacontainers.config.hypervisor.cc_init_data`` value (base64 gzip)."""
        try:
            compressed = base64.b64decode(value.strip(), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InitdataError(f"initdata annotation is not standard base64: {exc}") from None
        try:
            with gzip.GzipFile(fileobj=io.BytesIO(compressed)) as gz:
                raw = gz.read(_MAX_TOML_BYTES + 1)
        except (OSError, EOFError) as exc:
            raise InitdataError(f"initdata annotation is not gzip: {exc}") from None
        if len(raw) > _MAX_TOML_BYTES:
            raise InitdataError(f"initdata is larger than {_MAX_TOML_BYTES} bytes")
        return cls.parse(raw)

    def toml_bytes(self) -> bytes:
        return self.toml.encode("utf-8")

    def digest(self) -> bytes:
        """``algorithm`` digest of the exact TOML bytes (what MRCONFIGID / HOSTDATA hold)."""
        return _ALGORITHMS[self.algorithm](self.toml_bytes()).digest()

    def annotation(self) -> str:
        """Standard base64 of gzip(TOML), deterministic (mtime 0) so a spec renders identically."""
        return base64.b64encode(gzip.compress(self.toml_bytes(), mtime=0)).decode("ascii")

    def claims(self) -> dict[str, Any]:
        """``init_data_claims`` as Trustee derives them: [data] with aa.toml/cdh.toml as tables."""
        claims: dict[str, Any] = dict(self.data)
        for name in (_AA_TOML, _CDH_TOML):
            if name in claims:
                claims[name] = _load_embedded(name, claims[name])
        return claims

    def claim(self, key: str) -> str | None:
        return self.data.get(key)

    @property
    def kbs_url(self) -> str | None:
        """KBS URL the confidential data hub uses (``cdh.toml`` [kbc] url)."""
        return self._kbc().get("url")

    @property
    def kbs_cert(self) -> str | None:
        """PEM the confidential data hub pins for the KBS (``cdh.toml`` [kbc] kbs_cert)."""
        return self._kbc().get("kbs_cert")

    @property
    def image_security_policy_uri(self) -> str | None:
        """Where the confidential data hub reads its image security policy (``cdh.toml``
        [image] image_security_policy_uri)."""
        if _CDH_TOML not in self.data:
            return None
        image = _load_embedded(_CDH_TOML, self.data[_CDH_TOML]).get("image", {})
        return image.get("image_security_policy_uri") if isinstance(image, dict) else None

    def _kbc(self) -> dict[str, Any]:
        if _CDH_TOML not in self.data:
            return {}
        kbc = _load_embedded(_CDH_TOML, self.data[_CDH_TOML]).get("kbc", {})
        return kbc if isinstance(kbc, dict) else {}


def build_initdata(
    kbs_url: str,
    kbs_ca_pem: str | bytes | None,
    extra: dict[str, str] | None = None,
    algorithm: str = "sha384",
    *,
    image: str | None = None,
    module: str | None = None,
) -> Initdata:
    """Initdata pointing the guest's AA and CDH at ``kbs_url`` (pinning ``kbs_ca_pem``).

    ``extra`` holds the project's claims; every key must start with ``io.coco-ai.`` so that it can
    never shadow an upstream key (``aa.toml``, ``cdh.toml``, ``policy.rego``).

    ``image`` (``host/path@sha256:<hex>``) and ``module`` (the workload module it runs) bind the
    guest to that code: ``policy.rego`` becomes the Kata agent policy that starts only this image
    with the launch of ``module``, the image's environment and no volume; ``cdh.toml`` points the
    CDH at the data owner's image policy (`IMAGE_POLICY_URI`), and ``io.coco-ai.image-digest``
    names its digest.
    The resource policies release nothing to initdata without all three; without ``image`` the
    initdata binds no code.
    """
    if algorithm not in _ALGORITHMS:
        raise InitdataError(
            f"unsupported initdata algorithm {algorithm!r}: "
            f"expected one of {', '.join(sorted(_ALGORITHMS))}"
        )
    if not kbs_url.startswith(("http://", "https://")):
        raise InitdataError(f"KBS URL must be http(s)://…, got {kbs_url!r}")
    _check_inline(kbs_url, "KBS URL")
    cert = _check_pem(kbs_ca_pem) if kbs_ca_pem is not None else None

    claims = dict(extra or {})
    agent_policy = None
    if (image is None) != (module is None):
        raise InitdataError("an image binding needs both the image and the workload module")
    if image is not None and module is not None:
        try:
            agent_policy = agent_policy_text(image, module)
        except AgentPolicyError as exc:
            raise InitdataError(str(exc)) from None
        digest = image.partition("@")[2]
        if claims.setdefault(IMAGE_DIGEST_KEY, digest) != digest:
            raise InitdataError(
                f"{IMAGE_DIGEST_KEY} {claims[IMAGE_DIGEST_KEY]!r} is not the digest of {image}"
            )

    aa = ["[token_configs.kbs]", f"url = {_basic(kbs_url)}"]
    cdh = ["[kbc]", 'name = "cc_kbc"', f"url = {_basic(kbs_url)}"]
    if cert is not None:
        # A PEM is base64 plus dashes: it needs no escaping inside a multi-line basic string,
        # and it can hold neither ''' nor """ (checked above), so both quotings nest safely.
        aa.append(f'cert = """\n{cert}"""')
        cdh.append(f'kbs_cert = """\n{cert}"""')
    if agent_policy is not None:
        cdh += ["", "[image]", f"image_security_policy_uri = {_basic(IMAGE_POLICY_URI)}"]
    lines = [
        f'version = "{INITDATA_VERSION}"',
        f'algorithm = "{algorithm}"',
        "",
        "[data]",
        f"\"{_AA_TOML}\" = '''\n" + "\n".join(aa) + "\n'''",
        f"\"{_CDH_TOML}\" = '''\n" + "\n".join(cdh) + "\n'''",
    ]
    if agent_policy is not None:
        # A literal string keeps the Rego verbatim (the template holds no '''), so Trustee's
        # policy.rego claim is exactly agent_policy_text(image, module).
        lines.append(f"\"{AGENT_POLICY_KEY}\" = '''\n{agent_policy}'''")
    for key in sorted(claims):
        value = claims[key]
        if not key.startswith(CUSTOM_KEY_PREFIX) or len(key) == len(CUSTOM_KEY_PREFIX):
            raise InitdataError(
                f"custom initdata key {key!r} must start with {CUSTOM_KEY_PREFIX!r}"
            )
        if not isinstance(value, str):
            raise InitdataError(f"custom initdata value for {key!r} must be a string")
        lines.append(f"{_basic(key)} = {_basic(value)}")
    # Parse what we wrote: the builder and the parser must agree on every document we emit.
    return Initdata.parse("\n".join(lines) + "\n")


def _load_embedded(name: str, text: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InitdataError(f"initdata [data] {name!r} is not valid TOML: {exc}") from None


def _basic(value: str) -> str:
    """A TOML basic string; escapes what TOML forbids raw (quote, backslash, controls, DEL)."""
    out = ['"']
    for ch in value:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _check_inline(value: str, what: str) -> None:
    if any(ord(ch) < 0x20 or ch in "\"'\\" for ch in value):
        raise InitdataError(f"{what} contains quotes, backslashes or control characters")


def _check_pem(pem: str | bytes) -> str:
    text = pem.decode("ascii", errors="replace") if isinstance(pem, bytes) else pem
    text = text.replace("\r\n", "\n").strip() + "\n"
    if "-----BEGIN CERTIFICATE-----" not in text or "-----END CERTIFICATE-----" not in text:
        raise InitdataError("KBS CA must be a PEM certificate (BEGIN/END CERTIFICATE)")
    allowed = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=- \n")
    if not set(text) <= allowed:
        raise InitdataError("KBS CA PEM contains characters other than base64 and headers")
    return text
