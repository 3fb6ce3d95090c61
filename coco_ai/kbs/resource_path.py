"""`kbs:///repo/type/tag` resource URIs and paths: the one rule for naming a KBS resource.

Standard library only, so that the workload's configuration (which runs in images without the
crypto stack) validates URIs with exactly the rule the KBS client uses.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# kbs:///repo/type/tag and kbs+resource:///repo/type/tag both address the `resource` plugin.
RESOURCE_URI_SCHEMES = ("kbs://", "kbs+resource://")

_SEGMENT_RE = re.compile(r"[A-Za-z0-9._-]+")

#: The same rule as `parse_resource_uri`, as a regular expression for declarative checks (the
#: DAG's trigger form, JSON schemas); tests/kbs/test_wire.py holds the two to agreement.
RESOURCE_URI_PATTERN = (
    r"^kbs(\+resource)?://[^/?#]*/(?:(?!\.\.?/)[A-Za-z0-9._-]+/){2}(?!\.\.?$)[A-Za-z0-9._-]+$"
)


def validate_segment(s: str) -> str:
    """Return `s` if it is a safe resource-path segment, else raise ValueError.

    Only [A-Za-z0-9._-]+ is allowed, so percent-encoding, slashes, backslashes and control
    characters can never reach a server path; '.' and '..' are refused outright.
    """
    if not isinstance(s, str) or not s:
        raise ValueError("resource path segment is empty")
    if s in (".", ".."):
        raise ValueError(f"resource path segment {s!r} is a relative-path component")
    if not _SEGMENT_RE.fullmatch(s):
        raise ValueError(
            f"resource path segment {s!r} has characters outside [A-Za-z0-9._-] "
            "(percent-encoding, slashes and backslashes are refused)"
        )
    return s


@dataclass(frozen=True)
class ResourcePath:
    """A KBS `resource` plugin path: repository / type / tag."""

    repo: str
    type: str
    tag: str

    def __post_init__(self) -> None:
        for seg in (self.repo, self.type, self.tag):
            validate_segment(seg)

    def uri(self) -> str:
        return f"kbs:///{self.repo}/{self.type}/{self.tag}"

    def url_path(self) -> str:
        return f"{self.repo}/{self.type}/{self.tag}"

    def __str__(self) -> str:
        return self.uri()


def parse_resource_path(path: str) -> ResourcePath:
    """Parse "repo/type/tag" (no scheme, no leading slash) into a ResourcePath."""
    if not isinstance(path, str):
        raise ValueError("resource path must be a string")
    segments = path.split("/")
    if len(segments) != 3:
        raise ValueError(
            f"resource path {path!r} must have exactly 3 segments repo/type/tag, "
            f"got {len(segments)}"
        )
    return ResourcePath(*(validate_segment(s) for s in segments))


def parse_resource_uri(uri: str) -> ResourcePath:
    """Parse `kbs:///repo/type/tag` or `kbs+resource:///repo/type/tag`.

    As in CoCo's CDH, any host:port in the authority is ignored (the configured KBS is used).
    Queries, fragments, more or fewer than three segments, empty segments, '.', '..',
    percent-encoded bytes and backslashes are all refused.
    """
    if not isinstance(uri, str):
        raise ValueError("resource URI must be a string")
    for scheme in RESOURCE_URI_SCHEMES:
        if uri.startswith(scheme):
            rest = uri[len(scheme) :]
            break
    else:
        raise ValueError(f"resource URI {uri!r} must start with kbs:/// or kbs+resource:///")
    if "?" in rest or "#" in rest:
        raise ValueError(f"resource URI {uri!r} must not carry a query or fragment")
    slash = rest.find("/")
    if slash < 0:
        raise ValueError(f"resource URI {uri!r} has no path")
    return parse_resource_path(rest[slash + 1 :])


def to_resource_path(uri_or_path: str | ResourcePath) -> ResourcePath:
    """Accept a ResourcePath, a `kbs:///…` URI or a bare `repo/type/tag` path."""
    if isinstance(uri_or_path, ResourcePath):
        return uri_or_path
    if isinstance(uri_or_path, str) and "://" in uri_or_path:
        return parse_resource_uri(uri_or_path)
    return parse_resource_path(uri_or_path)
