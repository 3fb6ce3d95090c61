"""Rego evaluation with regopy, as Trustee's policy engine does it.

Trustee registers `query_reference_value(id)` as a host function backed by RVPS. regopy cannot
register host functions, so a second module in the same package defines it over `data`:
``query_reference_value(id) := data.reference_values[id]`` (null for an unknown id, as Trustee
returns). The policy files themselves stay byte-identical to what a real Trustee receives.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from coco_ai.policies import load_regopy as _rego

if TYPE_CHECKING:
    import regopy

REFERENCE_VALUE_SHIM = """package policy

query_reference_value(id) := value if {
	value := data.reference_values[id]
} else := null
"""
_SHIM_MODULE = "coco_ai_reference_values"
_EXTENSIONS_RULE = re.compile(r"^extensions\b", re.MULTILINE)
_TRUST_CLAIMS_RULE = re.compile(r"^(default\s+)?trust_claims\b", re.MULTILINE)
TRUST_CLAIM_NAMES = (
    "instance-identity",
    "configuration",
    "executables",
    "file-system",
    "hardware",
    "runtime-opaque",
    "storage-opaque",
    "sourced-data",
)


class PolicyCompileError(ValueError):
    """The Rego text does not compile (syntax or well-formedness error)."""


class PolicyEvaluationError(RuntimeError):
    """A policy evaluated to something Trustee would refuse (no trust claims, bad values)."""


def _first_error_lines(exc: Exception, limit: int = 6) -> str:
    text = str(exc)
    lines = [line for line in text.splitlines() if line.strip()]
    return " | ".join(lines[:limit])[:600]


def check_policy(policy_id: str, text: str) -> None:
    """Compile `text` the way it will be evaluated; raise PolicyCompileError when it fails."""
    interp = _rego().Interpreter()
    try:
        interp.add_module(policy_id, text)
        interp.add_module(_SHIM_MODULE, REFERENCE_VALUE_SHIM)
        interp.set_input_term("{}")
        out = interp.query("data.policy")
    except _rego().RegoError as exc:
        raise PolicyCompileError(_first_error_lines(exc)) from None
    if not out.ok():
        raise PolicyCompileError(_first_error_lines(Exception(str(out))))


def _values(output: regopy.Output) -> list[Any] | None:
    """The expression values of a query; None when undefined or failed (fail closed)."""
    if not output.ok():
        return None
    try:
        parsed = json.loads(str(output))
    except ValueError:
        return None
    if not isinstance(parsed, dict):
        return None  # "undefined"
    expressions = parsed.get("expressions")
    return expressions if isinstance(expressions, list) else None


def _single_value(output: regopy.Output) -> Any:
    values = _values(output)
    return values[0] if values is not None and len(values) == 1 else None


class AttestationPolicy:
    """One attestation policy compiled (regopy bundle) with the reference values it uses.

    Compiling once and evaluating the bundle per device costs a fifth of a plain query.
    """

    def __init__(self, policy_id: str, text: str, reference_values: dict[str, Any]) -> None:
        self._interp = _rego().Interpreter()
        # Trustee treats a policy without `extensions` as having none, and one without a
        # `trust_claims` rule as setting every claim to 0 (status "none"): the policy engine
        # maps "not a valid rule path" to None and the broker then calls
        # `trust_vector.set_all(0)` (attestation-service/src/ear_token/broker.rs, v0.20.0
        # through main).
        self._has_extensions = bool(_EXTENSIONS_RULE.search(text))
        self._has_trust_claims = bool(_TRUST_CLAIMS_RULE.search(text))
        query = "data.policy.trust_claims" if self._has_trust_claims else "true"
        if self._has_extensions:
            query += "; data.policy.extensions"
        try:
            self._interp.add_module(policy_id, text)
            self._interp.add_module(_SHIM_MODULE, REFERENCE_VALUE_SHIM)
            self._interp.add_data_json(json.dumps({"reference_values": reference_values}))
            self._bundle = self._interp.build(query)
        except _rego().RegoError as exc:
            raise PolicyCompileError(_first_error_lines(exc)) from None
        self.policy_id = policy_id

    def appraise(self, claims: dict[str, Any]) -> tuple[dict[str, int], list[dict[str, Any]]]:
        """(trust vector, extensions) for one device's annotated evidence."""
        try:
            self._interp.set_input_term(json.dumps(claims))
            values = _values(self._interp.query_bundle(self._bundle)) or [None]
        except _rego().RegoError as exc:
            raise PolicyEvaluationError(
                f"policy {self.policy_id} failed: {_first_error_lines(exc)}"
            ) from None
        vector = values[0] if self._has_trust_claims else dict.fromkeys(TRUST_CLAIM_NAMES, 0)
        extensions = values[1] if self._has_extensions and len(values) == 2 else []
        if not isinstance(vector, dict) or not vector:
            raise PolicyEvaluationError(
                f"policy {self.policy_id} produced no trust claims (At least one policy claim "
                "must be set.)"
            )
        checked: dict[str, int] = {}
        for name, value in vector.items():
            if name not in TRUST_CLAIM_NAMES:
                raise PolicyEvaluationError(f"policy {self.policy_id}: unknown claim {name!r}")
            if not isinstance(value, int) or isinstance(value, bool) or not -128 <= value <= 127:
                raise PolicyEvaluationError(
                    f"policy {self.policy_id}: trust claim {name!r} is not an int8 ({value!r})"
                )
            checked[name] = value
        if extensions is None:
            extensions = []
        if not isinstance(extensions, list) or not all(
            isinstance(e, dict) and isinstance(e.get("name"), str) and "value" in e
            for e in extensions
        ):
            raise PolicyEvaluationError(f"policy {self.policy_id}: malformed extensions")
        return checked, extensions


class ResourcePolicyEvaluator:
    """`data.policy.allow` with input = token claims and data = request descriptor.

    regopy merges rather than replaces `data`, so a compiled bundle is bound to one descriptor;
    bundles are kept per (policy text, descriptor), since the same few resources are requested
    again and again. Anything but boolean true (false, undefined, an error) denies.
    """

    def __init__(self, max_entries: int = 256) -> None:
        self._cache: OrderedDict[tuple[str, str], tuple[regopy.Interpreter, Any]] = OrderedDict()
        self._max = max_entries

    def allow(self, text: str, claims: dict[str, Any], request: dict[str, Any]) -> bool:
        descriptor = json.dumps(request, sort_keys=True)
        key = (hashlib.sha256(text.encode()).hexdigest(), descriptor)
        try:
            entry = self._cache.pop(key, None)
            if entry is None:
                interp = _rego().Interpreter()
                interp.add_module("resource-policy", text)
                interp.add_data_json(descriptor)
                entry = (interp, interp.build("data.policy.allow"))
            self._cache[key] = entry
            while len(self._cache) > self._max:
                self._cache.popitem(last=False)
            interp, bundle = entry
            interp.set_input_term(json.dumps(claims))
            return _single_value(interp.query_bundle(bundle)) is True
        except _rego().RegoError:
            return False


def evaluate_resource_policy(text: str, claims: dict[str, Any], request: dict[str, Any]) -> bool:
    """One-off evaluation; the server keeps a ResourcePolicyEvaluator."""
    return ResourcePolicyEvaluator(max_entries=1).allow(text, claims, request)
