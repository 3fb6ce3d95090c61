"""NVFlare's CCManager with each site's name bound to its attested identity, a record of the
attested peers, and a failed re-validation that drops one participant instead of the federation.

NVFlare 2.9's ``CCManager`` verifies the tokens a site presents under the site's name, but calls
``CCAuthorizer.verify(token)`` without that name: any attested TEE could present its token under
any site name. This subclass verifies Trustee tokens with ``verify_peer`` and accepts them only
when the participant id in the token's init_data claims is the site name they came with.

Upstream shuts the whole system down when any check fails. Here:

* a client refused at registration is refused alone;
* the aggregator's periodic cross-site validation asks each registered participant for a fresh
  token and checks it on its own; a participant that gives none, or one that is refused, is
  **dropped**: NVFlare disables it (its session ends, its heartbeats and any re-registration are
  refused; its pending job outcomes are resolved), and every running job is told; the job's
  :class:`DroppedSiteGuard` removes it from the job's clients, so it gets no further task and
  its results are refused ("missing client token"), and aborts a job left with fewer clients
  than its ``min_clients``. The others carry on;
* a participant checks only the aggregator (and itself): other participants are the
  aggregator's to judge. A failing aggregator token still shuts the participant down, as
  upstream: it never sends to, or takes weights from, an unattested aggregator.

With ``record_dir``, every accepted token is written to ``<record_dir>/peers/<site>.json`` and
every drop to ``<record_dir>/dropped/<site>.json`` (docs/formats/federated.md, section 2).

It overrides private methods of the pinned nvflare==2.9.0 (``_verify_participants_tokens``,
``_perform_cross_site_validation``, ``_get_all_cc_enabled_sites``; same signatures and results);
tests/federated/test_cc_manager.py holds them to that.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

from nvflare.apis.event_type import EventType
from nvflare.apis.fl_component import FLComponent
from nvflare.apis.fl_constant import FLContextKey
from nvflare.apis.fl_context import FLContext
from nvflare.apis.fl_exception import NotAuthenticated
from nvflare.apis.job_def import job_from_meta
from nvflare.apis.server_engine_spec import ServerEngineSpec
from nvflare.app_opt.confidential_computing.cc_manager import (
    CC_CHANNEL,
    CC_INFO,
    CC_NAMESPACE,
    CC_TOKEN,
    CC_TOPIC_REQUEST_TOKEN,
    CCManager,
)
from nvflare.fuel.f3.cellnet.core_cell import make_reply
from nvflare.fuel.f3.cellnet.defs import MessageHeaderKey
from nvflare.fuel.f3.cellnet.defs import ReturnCode as F3ReturnCode
from nvflare.fuel.f3.cellnet.fqcn import FQCN
from nvflare.private.defs import ClientType, new_cell_message

from coco_ai.federated.authorizer import AttestedPeer, FederationAuthError, TrusteeCCAuthorizer
from coco_ai.guest.initdata import RUN_ID_KEY

#: Topic on NVFlare's CC channel by which the aggregator's parent process tells a job process
#: to drop a site.
CC_TOPIC_DROP_SITE = "coco_ai_drop_site"
PEERS_DIR = "peers"
DROPPED_DIR = "dropped"


class IdentityBoundCCManager(CCManager):
    """A CCManager whose Trustee tokens must name the site that presents them, and whose
    aggregator drops a participant that fails re-validation (see the module docstring)."""

    def __init__(self, *args, record_dir: str | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.record_dir = Path(record_dir) if record_dir is not None else None
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

    # -- verification (all sites) ---------------------------------------------------------

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
        self._record_peer(site, peer)
        return True

    # -- periodic re-validation ---------------------------------------------------------------

    def _perform_cross_site_validation(self, fl_ctx: FLContext) -> bool:
        engine = fl_ctx.get_engine()
        if not isinstance(engine, ServerEngineSpec):
            # A participant: upstream, over the sites _get_all_cc_enabled_sites leaves it.
            return super()._perform_cross_site_validation(fl_ctx)
        try:
            return self._revalidate_participants(engine, fl_ctx)
        except Exception as exc:  # as upstream: a validation that cannot run fails closed
            self.logger.exception(f"Exception in cross-site validation: {exc}")
            self._shutdown_system(f"Exception in cross-site validation: {exc}", fl_ctx)
            return False

    def _revalidate_participants(self, engine, fl_ctx: FLContext) -> bool:
        own = {self.site_name: self._generate_fresh_tokens_for_validation()}
        error = self._validate_participants_tokens(own)
        if error:
            # The aggregator itself is no longer attested: nobody may train with it.
            self._shutdown_system(f"aggregator's own CC validation failed: {error}", fl_ctx)
            return False
        dropped = []
        for fqcn, site in self._get_all_sites():
            if site == self.site_name:
                continue
            cc_info = self._fresh_site_tokens(engine, fqcn, site)
            if cc_info is None:
                error = "gave no fresh CC token (unreachable, or its TEE produced none)"
            else:
                error = self._validate_participants_tokens({site: cc_info})
            if error:
                self._drop_site(site, error, engine)
                dropped.append(site)
        if dropped:
            self.logger.warning(f"Cross-site validation dropped {dropped}; the others passed")
        else:
            self.logger.info("Cross-site validation passed")
        return True

    def _get_all_cc_enabled_sites(self, fl_ctx: FLContext) -> list[tuple[str, str]]:
        sites = super()._get_all_cc_enabled_sites(fl_ctx)
        if isinstance(fl_ctx.get_engine(), ServerEngineSpec):
            return sites
        # A participant exchanges weights with the aggregator only; the other participants are
        # the aggregator's to check (one failing must not stop this one).
        return [site for site in sites if site[0] == FQCN.ROOT_SERVER]

    def _fresh_site_tokens(self, engine, fqcn: str, site: str) -> list[dict] | None:
        """The fresh CC info ``site`` answers with, or None."""
        try:
            reply = engine.get_cell().send_request(
                target=fqcn,
                channel=CC_CHANNEL,
                topic=CC_TOPIC_REQUEST_TOKEN,
                request=new_cell_message({}, {"requester": self.site_name}),
                timeout=self.get_token_request_timeout,
                optional=True,
            )
        except Exception as exc:  # a transport failure is a missing token
            self.logger.warning(f"no fresh CC token from {site}: {exc}")
            return None
        if reply is None or reply.get_header(MessageHeaderKey.RETURN_CODE) != F3ReturnCode.OK:
            return None
        payload = reply.payload
        # The answer must come from the site registered under that name.
        if not isinstance(payload, dict) or payload.get("site_name") != site:
            return None
        return payload.get("cc_info") or None

    # -- dropping a participant ------------------------------------------------------------

    def _drop_site(self, site: str, reason: str, engine) -> None:
        """Disable ``site`` in the aggregator and remove it from every running job."""
        self.logger.error(f"dropping participant {site} from the federation: {reason}")
        with self._attested_lock:
            self._attested.pop(site, None)
        self._write_record(
            DROPPED_DIR, site, {"site": site, "reason": reason, "at": int(time.time())}
        )
        client = engine.get_client_from_name(site)
        engine.disable_clients([site])
        if client is not None:
            # NVFlare's own handling of a lost client: its pending job outcomes are resolved
            # (a job does not wait for it to end) and its job processes are told.
            engine.server.notify_dead_client(client)
        notice = {"site": site, "reason": reason}
        for job_id in list(engine.run_processes):
            try:
                engine.get_cell().send_request(
                    target=FQCN.join([FQCN.ROOT_SERVER, job_id]),
                    channel=CC_CHANNEL,
                    topic=CC_TOPIC_DROP_SITE,
                    request=new_cell_message({}, notice),
                    timeout=self.get_token_request_timeout,
                    optional=True,
                )
            except Exception as exc:
                self.logger.error(f"could not tell job {job_id} to drop {site}: {exc}")

    # -- the record -----------------------------------------------------------------------

    def _record_peer(self, site: str, peer: AttestedPeer) -> None:
        self._write_record(
            PEERS_DIR,
            site,
            {
                "site": site,
                "role": peer.identity.role,
                "participant_id": peer.identity.participant_id,
                "federation": peer.identity.federation,
                "run_id": (peer.claims.init_data_claims() or {}).get(RUN_ID_KEY),
                "ear_token": peer.ear_token,
                "tee_key_thumbprint": peer.tee_key_thumbprint,
                "verified_at": int(time.time()),
            },
        )

    def _write_record(self, kind: str, site: str, document: dict) -> None:
        if self.record_dir is None:
            return
        folder = self.record_dir / kind
        folder.mkdir(parents=True, exist_ok=True)
        partial = folder / f"{site}.json.partial"
        partial.write_text(json.dumps(document, sort_keys=True) + "\n")
        os.replace(partial, folder / f"{site}.json")


class DroppedSiteGuard(FLComponent):
    """A server job component (``config_fed_server.json``): carries out the aggregator's drop
    notices in the job process, which holds the job's own list of clients.

    Components of the site's ``resources.json`` (the CC manager) do not receive a job's events,
    so the job must list this one for a dropped participant to be removed from it.
    """

    def __init__(self) -> None:
        super().__init__()
        self._engine = None

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        if event_type == EventType.START_RUN:
            self._engine = fl_ctx.get_engine()
            self._engine.get_cell().register_request_cb(
                channel=CC_CHANNEL, topic=CC_TOPIC_DROP_SITE, cb=self._handle_drop_site
            )

    def _handle_drop_site(self, request):
        """In the aggregator's job process: remove the dropped site from this job's clients
        (no further task; its results are refused); abort the job below its minimum."""
        payload = request.payload if isinstance(request.payload, dict) else {}
        site = payload.get("site")
        engine = self._engine
        with engine.new_context() as fl_ctx:
            client = engine.get_client_from_name(site) if isinstance(site, str) else None
            if client is None:
                return make_reply(F3ReturnCode.OK, "", None)
            engine.client_manager.remove_client(client.token)
            remaining = len(engine.get_clients())
            self.log_error(
                fl_ctx,
                f"participant {site} dropped from this job: {payload.get('reason')}; "
                f"{remaining} client(s) remain",
            )
            job = job_from_meta(fl_ctx.get_prop(FLContextKey.JOB_META) or {})
            if remaining < job.min_sites:
                self.system_panic(
                    f"{remaining} attested participant(s) remain, fewer than the job's "
                    f"minimum {job.min_sites}",
                    fl_ctx,
                )
        return make_reply(F3ReturnCode.OK, "", None)
