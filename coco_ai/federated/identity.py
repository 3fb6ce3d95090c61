"""A federation party's identity: which federation, which role, which participant.

The federation is the data owner's id for its membership and credentials, provisioned ahead of
time; each pipeline run that uses it has its own run id (``io.coco-ai.run-id``), which the
pipeline adds to the initdata beside these claims.

The identity is written into the party's initdata (measured into its TEE), so it reaches every
verifier inside the EAR token's ``init_data_claims``: Trustee's resource policy releases the
party's credentials only to that identity, and peers take the identity from the token, never
from what the party says about itself.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from coco_ai.guest.initdata import (
    FEDERATION_KEY,
    FEDERATION_PARTICIPANT_KEY,
    FEDERATION_ROLE_KEY,
)
from coco_ai.kbs.resource_path import ResourcePath

AGGREGATOR = "aggregator"
PARTICIPANT = "participant"
ROLES = (AGGREGATOR, PARTICIPANT)
#: KBS repository of federation credentials; the resource policies' federation_binding_ok rule
#: releases ``<repository>/<federation>/<role>.<participant-id>`` only to that identity.
CREDENTIAL_REPOSITORY = "coco-ai-fl"
# A participant id is also an NVFlare site name, a certificate common name and (after the role
# and a dot) a KBS path segment: no dots, so "<role>.<id>" splits one way only.
_PARTICIPANT_ID = re.compile(r"[a-z0-9](?:[a-z0-9_-]{0,62}[a-z0-9])?")
_FEDERATION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class FederationIdentityError(ValueError):
    """An identity that is malformed, or claims that name no (or a wrong) federation party."""


def check_federation_id(federation: object) -> str:
    """``federation`` if it can name a federation (it is a KBS path segment), else raise."""
    if not isinstance(federation, str) or not _FEDERATION_ID.fullmatch(federation):
        raise FederationIdentityError(
            f"federation id {federation!r} must be 1-128 of [A-Za-z0-9._-], "
            "starting with a letter or digit"
        )
    return federation


@dataclass(frozen=True)
class FederationIdentity:
    federation: str
    role: str
    participant_id: str

    def __post_init__(self) -> None:
        check_federation_id(self.federation)
        if self.role not in ROLES:
            raise FederationIdentityError(
                f"federation role {self.role!r} is not one of {', '.join(ROLES)}"
            )
        if not isinstance(self.participant_id, str) or not _PARTICIPANT_ID.fullmatch(
            self.participant_id
        ):
            raise FederationIdentityError(
                f"participant id {self.participant_id!r} must be 1-64 of [a-z0-9_-], "
                "starting and ending with a letter or digit"
            )

    def claims(self) -> dict[str, str]:
        """The initdata claims naming this identity (``build_initdata(extra=…)``)."""
        return {
            FEDERATION_KEY: self.federation,
            FEDERATION_ROLE_KEY: self.role,
            FEDERATION_PARTICIPANT_KEY: self.participant_id,
        }

    @classmethod
    def from_claims(cls, claims: Mapping[str, Any] | None) -> FederationIdentity:
        """The identity named by ``init_data_claims`` (an EAR token's or an initdata's)."""
        if not isinstance(claims, Mapping):
            raise FederationIdentityError("token carries no init_data_claims")
        missing = [
            key
            for key in (FEDERATION_KEY, FEDERATION_ROLE_KEY, FEDERATION_PARTICIPANT_KEY)
            if not isinstance(claims.get(key), str)
        ]
        if missing:
            raise FederationIdentityError(
                f"init_data_claims name no federation party: missing {', '.join(missing)}"
            )
        return cls(
            federation=claims[FEDERATION_KEY],
            role=claims[FEDERATION_ROLE_KEY],
            participant_id=claims[FEDERATION_PARTICIPANT_KEY],
        )

    def credential_path(self) -> ResourcePath:
        """Where Trustee keeps this party's mTLS credentials."""
        return ResourcePath(
            CREDENTIAL_REPOSITORY, self.federation, f"{self.role}.{self.participant_id}"
        )

    def __str__(self) -> str:
        return f"{self.role} {self.participant_id} of federation {self.federation}"
