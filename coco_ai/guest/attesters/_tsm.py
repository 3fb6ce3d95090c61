"""Linux configfs-tsm report interface (/sys/kernel/config/tsm/report), kernel >= 6.7.

One report = mkdir an entry, check its provider, write ``inblob``, read ``outblob`` (and
``auxblob``), check ``generation`` is still 1 (nobody else wrote our inblob), rmdir.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path

from coco_ai.guest.attesters._base import AttesterUnavailable, EvidenceError

TSM_REPORT_PATH = Path("/sys/kernel/config/tsm/report")


def tsm_available(root: Path = TSM_REPORT_PATH) -> bool:
    return root.is_dir()


def tsm_report(
    provider: str, inblob: bytes, *, with_aux: bool = False, root: Path = TSM_REPORT_PATH
) -> tuple[bytes, bytes | None]:
    """(outblob, auxblob) from the ``provider`` ("tdx_guest", "sev_guest") for ``inblob``."""
    if not root.is_dir():
        raise AttesterUnavailable(f"configfs-tsm ({root}) is not available on this host")
    entry = root / f"coco-ai-{uuid.uuid4().hex}"
    try:
        entry.mkdir()
    except OSError as exc:
        raise AttesterUnavailable(f"cannot create a configfs-tsm report entry: {exc}") from None
    try:
        found = (entry / "provider").read_text().strip()
        if found != provider:
            raise AttesterUnavailable(
                f"configfs-tsm provider is {found!r}, not {provider!r}: wrong TEE for this attester"
            )
        (entry / "inblob").write_bytes(inblob)
        outblob = (entry / "outblob").read_bytes()
        auxblob = (entry / "auxblob").read_bytes() if with_aux else None
        generation = int((entry / "generation").read_text().strip())
        if generation != 1:
            raise EvidenceError(
                f"configfs-tsm inblob was rewritten concurrently (generation {generation})"
            )
        return outblob, auxblob
    finally:
        # configfs entries are directories that only rmdir removes.
        with contextlib.suppress(OSError):
            os.rmdir(entry)
