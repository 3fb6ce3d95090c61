"""One confidential run's identity: the references every step of a pipeline passes on.

`RunRefs` is built once, by key release, and is the only thing the later steps receive about
the run: which workload, which image (pinned by digest), which per-run key, which inputs (object
URI, digest, key reference), where the workload stages its output, and the run's initdata with
its digest. Everything in it is public: key *references* (`kbs:///…`), digests and URIs, never a
key. Each invariant has one owner here: the image pin, the initdata claims a TEE of this run must
present (`expected_claims`, from which the initdata itself is built), the staging location, and
the one XCom encoding (`to_xcom` / `from_xcom`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from coco_ai.digest import Digest
from coco_ai.guest.agent_policy import AgentPolicyError, qualified_pinned_image
from coco_ai.guest.initdata import (
    CHECKPOINT_KEY_KEY,
    CUSTOM_KEY_PREFIX,
    IMAGE_DIGEST_KEY,
    RUN_GRANT_KEY,
    RUN_ID_KEY,
    RUN_KEY_ROOT_KEY,
    WORKLOAD_KEY,
    Initdata,
    build_initdata,
    input_key_claim,
)
from coco_ai.kbs.resource_path import ResourcePath, parse_resource_uri
from coco_ai.run_keys import checkpoint_key_path, grant_path

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
RUN_ID_RULE = "[A-Za-z0-9._-], at most 128, not starting with . - _"


class RunRefsError(ValueError):
    """A run reference is missing or malformed (the message names the field)."""


def is_run_id(value: object) -> bool:
    """A run id is safe as a KBS path segment, an initdata claim and an object-store name."""
    return isinstance(value, str) and bool(_RUN_ID.match(value))


def pinned_image(image: object) -> str:
    """``image`` if it is fully qualified and pinned by ``@sha256:<64 hex>``: a tag could be
    re-pointed and would not match the image the run's initdata (agent policy, image digest)
    binds the guest to (coco_ai.guest.agent_policy.qualified_pinned_image)."""
    try:
        return qualified_pinned_image(image)
    except AgentPolicyError as exc:
        raise RunRefsError(f"workload {exc}") from None


def staging_location(staging_root: str, run_id: str) -> str:
    """The run's own prefix under the staging root (one per run, so runs never share one)."""
    root = staging_root.strip().rstrip("/")
    if not root:
        raise RunRefsError("staging root is empty")
    return f"{root}/{run_id}"


@dataclass(frozen=True)
class RunInput:
    """One input of the workload: object URI, its digest, and the key that decrypts it."""

    uri: str
    digest: Digest
    key: ResourcePath | None = None

    def to_xcom(self) -> dict[str, str | None]:
        return {
            "uri": self.uri,
            "digest": str(self.digest),
            "key_uri": self.key.uri() if self.key else None,
        }

    @classmethod
    def from_xcom(cls, name: str, data: Any) -> RunInput:
        if not isinstance(data, Mapping):
            raise RunRefsError(f"input {name!r} must be an object with uri, digest, key_uri")
        uri = data.get("uri")
        if not isinstance(uri, str) or not uri:
            raise RunRefsError(f"input {name!r}: uri is missing")
        try:
            digest = Digest.parse(data.get("digest"))
            key_uri = data.get("key_uri")
            key = parse_resource_uri(key_uri) if key_uri is not None else None
        except ValueError as exc:
            raise RunRefsError(f"input {name!r}: {exc}") from None
        return cls(uri, digest, key)


def run_claims(
    *,
    workload: str,
    run_id: str,
    image: str,
    run_key_root: ResourcePath,
    input_keys: Mapping[str, ResourcePath],
) -> dict[str, str]:
    """The ``io.coco-ai.*`` initdata claims of a run (what `RunRefs.expected_claims` returns).

    Besides the run and its image they name every key the run's TEE may obtain — the run-key
    root and the run's grant (coco_ai.run_keys), each keyed input's key — and the name of the
    run's derived checkpoint key; the resource policies release a key only to a TEE whose
    initdata names it.
    """
    claims = {
        WORKLOAD_KEY: workload,
        RUN_ID_KEY: run_id,
        IMAGE_DIGEST_KEY: pinned_image(image).partition("@")[2],
        CHECKPOINT_KEY_KEY: checkpoint_key_path(run_id).uri(),
        RUN_GRANT_KEY: grant_path(run_id).uri(),
        RUN_KEY_ROOT_KEY: run_key_root.uri(),
    }
    for name, key in input_keys.items():
        claims[input_key_claim(name)] = key.uri()
    return claims


def _with_party(claims: dict[str, str], party: Mapping[str, str]) -> dict[str, str]:
    """The run's claims plus a party's own (a federation party's identity): ``io.coco-ai.``
    keys with string values that name nothing the run's claims already name."""
    for key, value in party.items():
        if not key.startswith(CUSTOM_KEY_PREFIX) or not isinstance(value, str):
            raise RunRefsError(f"party claim {key!r} must be an {CUSTOM_KEY_PREFIX}* string")
        if key in claims:
            raise RunRefsError(f"party claim {key!r} would replace the run's own")
    return {**claims, **party}


def _input_keys(inputs: Mapping[str, RunInput]) -> dict[str, ResourcePath]:
    return {name: item.key for name, item in inputs.items() if item.key is not None}


@dataclass(frozen=True)
class RunRefs:
    """The typed identity of one run (see the module docstring). Build it with `plan`."""

    workload: str
    run_id: str
    image: str
    run_key_root: ResourcePath
    inputs: Mapping[str, RunInput]
    staging_uri: str
    initdata_digest: Digest
    initdata_annotation: str = field(repr=False)
    #: a party's own claims beside the run's (a federation party: its federation, role and id)
    party_claims: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.workload, str) or not _NAME.match(self.workload):
            raise RunRefsError(f"workload {self.workload!r} is not a workload name")
        if not is_run_id(self.run_id):
            raise RunRefsError(f"run id {self.run_id!r} is not a run id ({RUN_ID_RULE})")
        pinned_image(self.image)
        for name in self.inputs:
            if not _NAME.match(name):
                raise RunRefsError(f"input name {name!r} is not a name")
        if self.initdata_digest.algorithm != "sha384":
            raise RunRefsError("the run's initdata digest must be sha384")

    @classmethod
    def plan(
        cls,
        *,
        workload: str,
        module: str,
        run_id: str,
        image: str,
        run_key_root: ResourcePath,
        inputs: Mapping[str, RunInput],
        staging_root: str,
        kbs_url: str,
        kbs_ca_pem: str | bytes | None,
        party_claims: Mapping[str, str] | None = None,
    ) -> RunRefs:
        """The run's references with its initdata, built from exactly `expected_claims`; the
        initdata's agent policy lets the guest launch exactly `module` (the workload kind's).
        ``party_claims``: one party's own claims, for a run of several TEEs (a federation)."""
        party_claims = dict(party_claims or {})
        claims = _with_party(
            run_claims(
                workload=workload,
                run_id=run_id,
                image=image,
                run_key_root=run_key_root,
                input_keys=_input_keys(inputs),
            ),
            party_claims,
        )
        initdata = build_initdata(kbs_url, kbs_ca_pem, claims, image=image, module=module)
        return cls(
            workload=workload,
            run_id=run_id,
            image=image,
            run_key_root=run_key_root,
            inputs=dict(inputs),
            staging_uri=staging_location(staging_root, run_id),
            initdata_digest=Digest(initdata.algorithm, initdata.digest().hex()),
            initdata_annotation=initdata.annotation(),
            party_claims=party_claims,
        )

    @property
    def image_digest(self) -> Digest:
        return Digest.parse(self.image.partition("@")[2])

    @property
    def checkpoint_key(self) -> ResourcePath:
        """The name of the run's checkpoint key (derived in the TEE, see coco_ai.run_keys)."""
        return checkpoint_key_path(self.run_id)

    @property
    def grant(self) -> ResourcePath:
        """Where key release publishes the run's grant."""
        return grant_path(self.run_id)

    def expected_claims(self) -> dict[str, str]:
        """The ``io.coco-ai.*`` init_data_claims a TEE of this run presents to Trustee."""
        return _with_party(
            run_claims(
                workload=self.workload,
                run_id=self.run_id,
                image=self.image,
                run_key_root=self.run_key_root,
                input_keys=_input_keys(self.inputs),
            ),
            self.party_claims,
        )

    def initdata(self) -> Initdata:
        """The run's initdata, decoded from the annotation and checked against the digest."""
        initdata = Initdata.from_annotation(self.initdata_annotation)
        actual = Digest(initdata.algorithm, initdata.digest().hex())
        if actual != self.initdata_digest:
            raise RunRefsError(
                f"initdata annotation digest {actual} differs from the pinned "
                f"{self.initdata_digest}"
            )
        return initdata

    def input(self, name: str) -> RunInput:
        try:
            return self.inputs[name]
        except KeyError:
            raise RunRefsError(f"run {self.run_id} has no input {name!r}") from None

    # -- the one XCom encoding ------------------------------------------------------------------

    def to_xcom(self) -> dict[str, Any]:
        """JSON of references only (what key release pushes and every later step reads)."""
        return {
            "workload": self.workload,
            "run_id": self.run_id,
            "image": self.image,
            "checkpoint_key_uri": self.checkpoint_key.uri(),
            "grant_uri": self.grant.uri(),
            "run_key_root_uri": self.run_key_root.uri(),
            "inputs": {name: item.to_xcom() for name, item in sorted(self.inputs.items())},
            "staging_uri": self.staging_uri,
            "initdata_digest": str(self.initdata_digest),
            "initdata_annotation": self.initdata_annotation,
            "party_claims": dict(sorted(self.party_claims.items())),
        }

    @classmethod
    def from_xcom(cls, data: Any) -> RunRefs:
        """Parse and validate `to_xcom`'s form (XCom is Airflow-writable: trust nothing in it
        beyond its shape; every later check is against what Trustee and the TEE attest)."""
        if isinstance(data, RunRefs):
            return data
        if not isinstance(data, Mapping):
            raise RunRefsError(
                "run references must be key release's output (an object), "
                f"got {type(data).__name__}"
            )
        missing = [
            k
            for k in (
                "workload",
                "run_id",
                "image",
                "run_key_root_uri",
                "inputs",
                "staging_uri",
                "initdata_digest",
                "initdata_annotation",
            )
            if k not in data
        ]
        if missing:
            raise RunRefsError(f"run references lack {', '.join(missing)}")
        inputs = data["inputs"]
        if not isinstance(inputs, Mapping):
            raise RunRefsError("run references: inputs must be an object")
        try:
            run_key_root = parse_resource_uri(data["run_key_root_uri"])
            initdata_digest = Digest.parse(data["initdata_digest"], algorithms=("sha384",))
        except ValueError as exc:
            raise RunRefsError(f"run references: {exc}") from None
        if not isinstance(data["staging_uri"], str) or not data["staging_uri"]:
            raise RunRefsError("run references: staging_uri is missing")
        party_claims = data.get("party_claims") or {}
        if not isinstance(party_claims, Mapping):
            raise RunRefsError("run references: party_claims must be an object")
        refs = cls(
            workload=data["workload"],
            run_id=data["run_id"],
            image=data["image"],
            run_key_root=run_key_root,
            inputs={name: RunInput.from_xcom(name, v) for name, v in inputs.items()},
            staging_uri=data["staging_uri"],
            initdata_digest=initdata_digest,
            initdata_annotation=str(data["initdata_annotation"]),
            party_claims=dict(party_claims),
        )
        refs.expected_claims()  # party claims name nothing the run's claims already name
        initdata = refs.initdata()  # the annotation must be the initdata the digest names
        for key, value in refs.party_claims.items():
            if initdata.claim(key) != value:
                raise RunRefsError(f"run references: party claim {key!r} is not the initdata's")
        for name, derived in (
            ("checkpoint_key_uri", refs.checkpoint_key.uri()),
            ("grant_uri", refs.grant.uri()),
        ):
            if name in data and data[name] != derived:  # informative copies, never an input
                raise RunRefsError(f"run references: {name} is not {derived}")
        return refs
