"""A real full disk for the fault tier: a small tmpfs mounted in a new user and mount namespace
(``unshare -rm``: no root needed, invisible outside the namespace, gone when it ends)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# mount, run the command, then say what it left on the tmpfs (last line of stderr)
_ON_TMPFS = (
    'mount -t tmpfs -o "size=$1" tmpfs "$2" || exit 99; dir=$2; shift 2; "$@"; rc=$?; '
    'echo "left on the tmpfs: $(ls -A "$dir")" >&2; exit $rc'
)


def on_tmpfs(mountpoint: Path, size: str, argv: list[str]) -> list[str]:
    """``argv`` run with a tmpfs of ``size`` (``mount -o size=``, e.g. ``8m``) on ``mountpoint``;
    give the result to :func:`in_mount_namespace`."""
    return ["sh", "-c", _ON_TMPFS, "sh", size, str(mountpoint), *argv]


def in_mount_namespace(
    argv: list[str], *, env: dict[str, str] | None = None, timeout_s: float = 120
) -> subprocess.CompletedProcess:
    """``argv`` as root of a new user and mount namespace (the repo on ``PYTHONPATH``); skips
    the test where the kernel forbids unprivileged user namespaces."""
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"no unprivileged mount namespace here: {probe.stderr.decode().strip()}")
    return subprocess.run(
        ["unshare", "-rm", *argv],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        timeout=timeout_s,
    )
