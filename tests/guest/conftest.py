"""Fixtures for the guest tests: a throwaway CA certificate to pin in initdata."""

from __future__ import annotations

import pytest
from pki import pem, self_signed_ca


@pytest.fixture(scope="session")
def ca_pem() -> bytes:
    return pem(self_signed_ca("coco-ai test KBS CA", days=1)[1])
