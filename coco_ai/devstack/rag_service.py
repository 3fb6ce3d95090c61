"""The retrieval service on the embedded default: the service (coco_ai.workloads.rag_serve) in
this process beside its own guest-components emulator, whose initdata makes it a ``rag_serve``
run of an index run, against a running Trustee (the stand-in); and attested callers beside their
own emulators. Development only: the emulators produce sample evidence.

What Kubernetes mode does with a Kata pod and its initdata annotation, this does with an
emulator: the service itself sees only its guest API URL and its config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coco_ai.workloads.rag_serve.identity import (  # noqa: F401 (issue_…: the devstack's API)
    SERVICE_MODULE,
    caller_claims,
    issue_caller_credential,
    service_claims,
)

CALLER_MODULE = "coco_ai.workloads.rag_serve.client"


@dataclass
class RagServiceStack:
    url: str
    run_id: str
    guest_url: str
    config: Any = field(repr=False)  # ServeConfig
    running: Any = field(repr=False)  # coco_ai.workloads.rag_serve.server.RunningService
    guest: Any = field(repr=False)  # the service's emulator (RunningServer)

    @property
    def service(self):
        return self.running.service

    def tls_context(self):
        """An SSL context trusting exactly the service's certificate (for the owner's tests and
        tools that talk to it without the verifying client)."""
        import ssl

        context = ssl.create_default_context(cadata=self.running.certificate_pem.decode())
        context.check_hostname = False
        return context

    def stop(self) -> None:
        self.running.stop()
        self.guest.stop()

    def __enter__(self) -> RagServiceStack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_emulator(
    trustee_url: str,
    trustee_ca_pem: bytes,
    claims: dict[str, str],
    *,
    image: str,
    module: str,
    gpus: int = 1,
):
    """A guest-components emulator (served on loopback) whose initdata carries ``claims`` and
    binds ``image`` running ``module``, with ``gpus`` sample GPUs (the resource policies release
    keys only with at least ``min_gpus`` = 1 attested GPU); a guest emulator RunningServer."""
    from coco_ai.guest import emulator as guest_emulator
    from coco_ai.guest.initdata import build_initdata

    initdata = build_initdata(trustee_url, trustee_ca_pem, claims, image=image, module=module)
    return guest_emulator.serve_in_thread(
        guest_emulator.GuestComponentsEmulator(initdata, gpus=gpus)
    )


def start_caller(
    trustee_url: str, trustee_ca_pem: bytes, *, caller_id: str, run_id: str, image: str
):
    """An attested caller's TEE: an emulator whose initdata names ``caller_id``'s credential."""
    claims = caller_claims(run_id=run_id, image=image, caller_id=caller_id)
    return start_emulator(trustee_url, trustee_ca_pem, claims, image=image, module=CALLER_MODULE)


def start_rag_service(
    state_dir: str | Path,
    *,
    trustee_url: str,
    trustee_ca_pem: bytes,
    trust_anchor_pem: bytes,
    image: str,
    run_id: str,
    index_run_id: str,
    index_uri: str,
    index_manifest_digest: str,
    embedder_path: str,
    callers: list[str],
    credential_refresh_s: float = 30.0,
    limits: dict[str, int] | None = None,
    generator_path: str | None = None,
    generator_digest: str | None = None,
    clock=None,
    out=None,
) -> RagServiceStack:
    """Start the service of ``index_run_id`` on a free loopback port (the data owner published
    the index's key and admitted the callers first: identity.publish_index_key and
    issue_caller_credential); raises
    coco_ai.workloads.tee.WorkloadError (with its exit code) when it refuses to start. ``out``
    receives the service's log lines (default stdout); ``clock`` is the service's clock.
    ``generator_path``: answer generatively with that model, whose digest the initdata pins
    (``generator_digest``, by default the directory's own)."""
    from coco_ai.workloads.models import model_digest
    from coco_ai.workloads.rag_serve.config import ServeConfig
    from coco_ai.workloads.rag_serve.server import serve
    from coco_ai.workloads.rag_serve.service import ServiceStartup

    state = Path(state_dir)
    state.mkdir(parents=True, exist_ok=True)
    anchor_file = state / "trust-anchor.pem"
    anchor_file.write_bytes(trust_anchor_pem)
    claims = service_claims(
        run_id=run_id,
        image=image,
        index_run_id=index_run_id,
        index_manifest_digest=index_manifest_digest,
        trust_anchor_pem=trust_anchor_pem,
        callers=callers,
        generator_digest=(
            None if generator_path is None else generator_digest or model_digest(generator_path)
        ),
    )
    guest = start_emulator(trustee_url, trustee_ca_pem, claims, image=image, module=SERVICE_MODULE)
    try:
        config = ServeConfig.from_dict(
            {
                "run_id": run_id,
                "index_uri": index_uri,
                "embedder_path": embedder_path,
                "trust_anchor_file": str(anchor_file),
                "guest_api_url": guest.url,
                "port": 0,
                "store_attempts": 2,
                "store_backoff_s": 0.05,
                "credential_refresh_s": credential_refresh_s,
                "limits": limits or {},
                **(
                    {}
                    if generator_path is None
                    else {"answer_mode": "generative", "generator_path": generator_path}
                ),
            }
        )
        startup = ServiceStartup(config, out=out)
        loaded = startup.start() if clock is None else startup.start(clock=clock)
        running = serve(loaded, config, log=startup.log)
    except BaseException:
        guest.stop()
        raise
    return RagServiceStack(running.url, run_id, guest.url, config, running, guest)
