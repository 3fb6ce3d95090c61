"""Content digests written ``<algorithm>:<lowercase hex>``: the one rule for reading them.

Standard library only (the workload's configuration validates digests with it inside the TEE).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

#: Algorithm name -> digest size in bytes. Names are Trustee's kbs-types serde names.
ALGORITHMS = {"sha256": 32, "sha384": 48, "sha512": 64}
_HEX = re.compile(r"[0-9a-f]+")


@dataclass(frozen=True)
class Digest:
    """A digest such as ``sha256:<64 hex>``; ``str()`` gives that form back."""

    algorithm: str
    hex: str

    def __post_init__(self) -> None:
        size = ALGORITHMS.get(self.algorithm)
        if size is None:
            raise ValueError(
                f"digest algorithm {self.algorithm!r} is not one of {', '.join(ALGORITHMS)}"
            )
        if len(self.hex) != 2 * size or not _HEX.fullmatch(self.hex):
            raise ValueError(
                f"{self.algorithm} digest must be {2 * size} lowercase hex digits, got {self.hex!r}"
            )

    @classmethod
    def parse(cls, text: object, *, algorithms: tuple[str, ...] = ("sha256",)) -> Digest:
        """Parse ``<algorithm>:<hex>``; only ``algorithms`` are accepted (default sha256)."""
        if not isinstance(text, str) or ":" not in text:
            raise ValueError(f"{text!r} is not a digest of the form <algorithm>:<hex>")
        algorithm, _, hex_ = text.partition(":")
        if algorithm not in algorithms:
            raise ValueError(
                f"digest {text!r}: algorithm must be {' or '.join(algorithms)}, got {algorithm!r}"
            )
        return cls(algorithm, hex_)

    @classmethod
    def of(cls, data: bytes, algorithm: str = "sha256") -> Digest:
        return cls(algorithm, hashlib.new(algorithm, data).hexdigest())

    @property
    def value(self) -> bytes:
        return bytes.fromhex(self.hex)

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"


def is_sha256(text: object) -> bool:
    """True for ``sha256:<64 lowercase hex>``."""
    try:
        Digest.parse(text)
    except ValueError:
        return False
    return True
