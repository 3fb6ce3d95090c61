"""NVFlare's CCManager with each site's name bound to the identity its attestation names.

NVFlare 2.9's ``CCManager`` verifies the tokens a site presents under the site's name, but calls
``CCAuthorizer.verify(token)`` without that name: any attested TEE could present its token under
any site name. This subclass verifies Trustee tokens with ``verify_peer`` and accepts them only
when the participant id in the token's init_data claims is the site name they came with; it also
keeps, per site, the last accepted attestation (for the run's record of who contributed). A
client refused at registration is refused alone (NVFlare's CCManager would register it and shut
the whole system down); a failed periodic cross-site validation still shuts the system down, as
upstream.

It overrides ``CCManager._verify_participants_tokens``, a private method of the pinned
nvflare==2.9.0 (same signature and result); tests/federated/test_cc_manager.py holds it to that.
"""

from __future__ import annotations

import threading

from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import FLContextKey
from nvflare.apis.fl_context import FLContext
from nvflare.apis.fl_exception import NotAuthenticated
from nvflare.app_opt.confidential_computing.cc_manager import (
    CC_INFO,
    CC_NAMESPACE,
    CC_TOKEN,
    CCManager,
)
from nvflare.private.defs import ClientType

from coco_ai.federated.authorizer import AttestedPeer, FederationAuthError, TrusteeCCAuthorizer


class IdentityBoundCCManager(CCManager):
    """A CCManager whose Trustee tokens must name the site that presents them."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._attested: dict[str, AttestedPeer] = {}
        self._attested_lock = threading.Lock()

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        """As CCManager, except that a client whose tokens fail is refused registration
        (NotAuthenticated, which NVFlare's server turns into a failed registration) instead of
        being registered while the whole system shuts down: the others carry on without it."""
        if event_type == EventType.CLIENT_REGISTER_RECEIVED and (
            fl_ctx.get_prop(FLContextKey.CLIENT_TYPE) != ClientType.ADMIN
        ):
            peer_ctx = fl_ctx.get_peer_context()
            cc_info = peer_ctx.get_prop(CC_INFO) if peer_ctx else None
            error = self._validate_participants_tokens(cc_info) if cc_info else "no CC info"
            if error:
                self.logger.error(f"client registration refused: {error}")
                raise NotAuthenticated(f"CC validation failed: {error}")
            self._generate_and_attach_tokens(fl_ctx)
            return
        super().handle_event(event_type, fl_ctx)

    def attested_peers(self) -> dict[str, AttestedPeer]:
        """Site name -> the last attestation accepted from it."""
        with self._attested_lock:
            return dict(self._attested)

    def _verify_participants_tokens(
        self, participants_tokens: dict[str, list[dict[str, str]]]
    ) -> tuple[dict[str, bool], list[str]]:
        result: dict[str, bool] = {}
        invalid: list[str] = []
        for site, cc_info in (participants_tokens or {}).items():
            if site not in self.cc_enabled_sites:
                result[site] = True
                continue
            if not cc_info:
                invalid.append(f"{site} namespace: {{None}} ")
                continue
            for entry in cc_info:
                namespace = entry.get(CC_NAMESPACE, "")
                if self._site_token_ok(site, entry.get(CC_TOKEN, ""), namespace):
                    result[f"{site}.{namespace}"] = True
                else:
                    invalid.append(f"{site} namespace: {{{namespace}}}")
        self.logger.info(f"CC - verified {sorted(result)}; refused {invalid}")
        return result, invalid

    def _site_token_ok(self, site: str, token: str, namespace: str) -> bool:
        verifier = self.cc_verifiers.get(namespace)
        if verifier is None:
            return False
        if not isinstance(verifier, TrusteeCCAuthorizer):
            # Other authorizers (NVFlare's own) keep their upstream behaviour.
            try:
                return bool(verifier.verify(token))
            except Exception as exc:  # an upstream verifier's failure is a refusal
                self.logger.warning(f"CC token of {site} refused: {exc}")
                return False
        try:
            peer = verifier.verify_peer(token)
        except FederationAuthError as exc:
            self.logger.warning(f"CC token of {site} refused: {exc}")
            return False
        if peer.identity.participant_id != site:
            self.logger.warning(
                f"CC token presented by site {site!r} attests {peer.identity}: refused"
            )
            return False
        with self._attested_lock:
            self._attested[site] = peer
        return True
