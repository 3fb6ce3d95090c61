"""One party of a confidential federated fine-tune, inside its TEE: the aggregator or a participant.

Both roles share the fine-tune's discipline (coco_ai.workloads.tee) and add the federation's:

- **Identity.** The party's own attestation token must name, in its init_data claims, this run
  and exactly the party the config names (coco_ai.federated.identity); the party's mTLS
  credentials come from Trustee, whose resource policy releases them only to that identity.
- **Participant.** Fetches its data owner's data-set key and its credentials, decrypts its data
  set in memory into its private workspace, and runs its NVFlare client (secure mode, the Trustee
  CC authorizer checking the aggregator at registration and every ``verify_frequency_s``) until
  the aggregator ends the job. Nothing leaves the TEE but its adapter updates, over mutual TLS
  to the attested aggregator.
- **Aggregator.** Fetches its credentials (with the job submitter's) and derives the run's key,
  runs the NVFlare server, waits for at least ``min_participants`` participants, submits the
  run's job (FedAvg over the LoRA adapter, installed code), relays each round's progress, shuts
  the federation down, then checks the quorum of every round, writes the final global adapter,
  encrypts it under the run's key and signs a manifest whose public ``training_config.json``
  carries the **contribution record**: per round, each accepted participant's update digest,
  data-set digest and the EAR token its peers verified (docs/formats/federated.md §5).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coco_ai.workloads.federated.config import FederatedConfig
from coco_ai.workloads.tee import (
    EXIT_ATTESTATION,
    EXIT_CONFIG,
    EXIT_INTERNAL,
    TeeWorkload,
    WorkloadError,
    private_tmpdir,
    sha256_digest,
)

#: Fewer attested participants than the run's quorum joined, or a round had fewer accepted
#: updates than the quorum: nothing is encrypted, signed or uploaded.
EXIT_QUORUM = 9
#: Where each participant's workspace keeps what the job reads (relative to the NVFlare
#: workspace root: the job is the same for every site).
MODEL_IN_KIT = "local/coco-ai/base_model"
DATA_IN_KIT = "local/coco-ai/data"
ADAPTER_DIR = "adapter"
RECORD_FORMAT = "coco-ai/fl-contributions/v1"


@dataclass(frozen=True)
class FederationResult:
    role: str
    manifest_digest: str | None  # the aggregator's; None for a participant
    staging_uri: str | None
    metrics: dict[str, Any]


def config_document(config: FederatedConfig, contributions: dict[str, Any]) -> bytes:
    """The public ``training_config.json`` of a federation: the validated config with the
    contribution record (canonical JSON; the manifest's ``training_config_digest`` covers it)."""
    from coco_ai.kbs.wire import canonical_json

    return canonical_json({**config.to_dict(), "contributions": contributions})


class FederatedParty(TeeWorkload):
    """One party's run. ``guest`` is a ``GuestClient`` (injected in tests)."""

    NAME = "federated"
    config: FederatedConfig

    def run(self) -> FederationResult:
        with ExitStack() as stack:
            guest = self._guest_client(stack)
            if self.config.party.role == "aggregator":
                result = self._aggregate(guest, stack)
            else:
                result = self._participate(guest, stack)
        self.log("timings: " + ", ".join(f"{k} {v:.2f} s" for k, v in self.timings.items()))
        return result

    # ---- shared ----------------------------------------------------------------------------------

    def _identity(self):
        from coco_ai.federated.identity import FederationIdentity

        party = self.config.party
        return FederationIdentity(party.federation, party.role, party.participant_id)

    def _check_attested_identity(self, guest, trust_dir: Path) -> None:
        """This TEE's own token verifies under the config's trust anchor (and signer) and names
        this run and exactly the party of the config. Writes the anchor and signer into
        ``trust_dir`` for the CC authorizer."""
        from coco_ai.federated.identity import FederationIdentity, FederationIdentityError
        from coco_ai.guest.initdata import RUN_ID_KEY
        from coco_ai.kbs.ear import TokenVerifierError, verify_ear_token

        trust = self.config.trust
        token, _ = self._attestation_token(guest)
        signer = trust.signer_pem.encode() if trust.signer_pem else None
        try:
            verified = verify_ear_token(token, trust.anchor_pem.encode(), signer_pem=signer)
        except TokenVerifierError as exc:
            raise WorkloadError(
                f"this TEE's own attestation token does not verify under the configured trust "
                f"anchor: {exc}",
                EXIT_ATTESTATION,
            ) from None
        trust_dir.mkdir(parents=True, exist_ok=True)
        (trust_dir / "anchor.pem").write_text(trust.anchor_pem)
        if trust.signer_pem:
            (trust_dir / "signer.pem").write_text(trust.signer_pem)
        claims = verified.init_data_claims() or {}
        try:
            attested = FederationIdentity.from_claims(claims)
        except FederationIdentityError as exc:
            raise WorkloadError(f"this TEE's attestation: {exc}", EXIT_ATTESTATION) from None
        if attested != self._identity():
            raise WorkloadError(
                f"this TEE is attested as {attested}, but the config names {self._identity()}",
                EXIT_ATTESTATION,
            )
        if claims.get(RUN_ID_KEY) != self.config.run_id:
            raise WorkloadError(
                f"this TEE is attested for run {claims.get(RUN_ID_KEY)!r}, not "
                f"{self.config.run_id}",
                EXIT_ATTESTATION,
            )
        self.log(f"attested as {attested}")

    def _credentials(self, guest):
        from coco_ai.federated.credentials import CredentialBundle, CredentialError

        identity = self._identity()
        uri = identity.credential_path().uri()
        data = self._fetch_key(guest, uri, "federation credentials", size=None)
        try:
            return CredentialBundle.from_bytes(data, identity)
        except CredentialError as exc:
            raise WorkloadError(f"federation credentials {uri}: {exc}", EXIT_ATTESTATION) from None

    def _kit(self, workspace: Path, bundle, record_dir: Path | None = None) -> Path:
        """This site's NVFlare startup kit, with the Trustee-released credentials and the CC
        components installed, pointed at the aggregator; the aggregator's CC manager records
        every attestation it accepts and every participant it drops in ``record_dir``."""
        from coco_ai.federated.local import POC_SERVER_NAME, prepare_kits, retarget_kit
        from coco_ai.federated.startup_kit import install_confidential_kit
        from coco_ai.workloads.federated.job import JOB_CLASSES

        cfg = self.config
        party, fed = cfg.party, cfg.federation
        prod = prepare_kits(workspace / "poc", party.participants, port=party.server_port)
        site = POC_SERVER_NAME if party.role == "aggregator" else party.participant_id
        kit = prod / site
        retarget_kit(kit, host=party.server_host, server_identity=party.aggregator_id)
        install_confidential_kit(
            kit,
            bundle,
            guest_api_url=cfg.guest_api_url,
            trust_anchor_path=str(workspace / "trust" / "anchor.pem"),
            token_signer_path=str(workspace / "trust" / "signer.pem")
            if cfg.trust.signer_pem
            else None,
            cc_enabled_sites=[party.aggregator_id, *party.participants],
            min_gpus=fed.min_gpus,
            allow_development_evidence=fed.allow_development_evidence,
            verify_frequency_s=fed.verify_frequency_s,
            extra_allowed_classes=JOB_CLASSES,
            run_id=cfg.run_id,  # peers of this pipeline run only
            record_dir=str(record_dir) if record_dir is not None else None,
        )
        return kit

    def _start_site(self, kit: Path, log_path: Path, stack: ExitStack) -> subprocess.Popen:
        from coco_ai.federated.local import POC_SERVER_NAME, start_site, stop_site

        party = self.config.party
        site = POC_SERVER_NAME if party.role == "aggregator" else party.participant_id
        process = start_site(kit, site, party.role, log_path)
        stack.callback(stop_site, process)
        return process

    def _relay(self, log_path: Path, offset: int, keep: Callable[[str], bool]) -> int:
        """Relay the new lines of an NVFlare log that ``keep`` selects; returns the new offset."""
        try:
            with log_path.open("rb") as fh:
                fh.seek(offset)
                data = fh.read()
        except FileNotFoundError:
            return offset
        end = data.rfind(b"\n") + 1
        for line in data[:end].decode(errors="replace").splitlines():
            if keep(line):  # the message, without NVFlare's time, logger and context prefix
                self.log(line.rpartition("] - ")[2] if "] - " in line else line.split(" - ", 3)[-1])
        return offset + end

    # ---- participant -----------------------------------------------------------------------------

    def _participate(self, guest, stack: ExitStack) -> FederationResult:
        cfg = self.config
        phase = self._phase
        with phase("memory_check"):
            self._check_memory(
                {"data set": cfg.dataset.uri, "base model": cfg.base_model.path},
                cfg.tee_memory_bytes,
            )
        private = private_tmpdir("coco-ai-fl-participant-")
        stack.callback(shutil.rmtree, private, ignore_errors=True)
        with phase("keys"):  # the first request attests
            self._check_attested_identity(guest, private / "nvflare" / "trust")
            data_key = self._fetch_key(guest, cfg.dataset.key_uri, "data-set key")
            bundle = self._credentials(guest)
        with phase("dataset"):
            examples, dataset_digest = self._load_dataset(cfg.dataset, data_key)
            del data_key
        with phase("base_model_check"):
            base_dir = self._pinned_model(
                cfg.base_model.path, cfg.base_model.digest, private / "base", "base model"
            )
        with phase("kit"):
            kit = self._kit(private / "nvflare", bundle)
            del bundle
            (kit / MODEL_IN_KIT).parent.mkdir(parents=True, exist_ok=True)
            (kit / MODEL_IN_KIT).symlink_to(base_dir.resolve(), target_is_directory=True)
            data_dir = kit / DATA_IN_KIT
            data_dir.mkdir(parents=True)
            from coco_ai.workloads.dataset import to_jsonl

            site = cfg.party.participant_id
            (data_dir / f"{site}.jsonl").write_bytes(to_jsonl(examples))
            (data_dir / f"{site}.digest").write_text(dataset_digest)
            del examples
        log_path = private / "client.log"
        with phase("federation"):
            process = self._start_site(kit, log_path, stack)
            rounds = self._follow_client(process, log_path)
        self.log(f"done: trained in {rounds} round(s); the aggregator ended the federation")
        return FederationResult("participant", None, None, {"rounds_trained": rounds})

    def _follow_client(self, process: subprocess.Popen, log_path: Path) -> int:
        """Wait for the client to end (the aggregator shuts the federation down when its job
        ends); relay each round's training line. A client that ends on a refused aggregator, or
        runs past the join and job timeouts, fails the party."""
        fed = self.config.federation
        deadline = time.monotonic() + fed.join_timeout_s + fed.job_timeout_s
        offset, rounds = 0, 0
        while True:
            offset = self._relay(log_path, offset, lambda line: "steps, last loss" in line)
            text = log_path.read_text(errors="replace") if log_path.exists() else ""
            rounds = text.count("steps, last loss")
            if process.poll() is not None:
                break
            if time.monotonic() > deadline:
                raise WorkloadError(
                    "the federation did not end within join_timeout_s + job_timeout_s",
                    EXIT_INTERNAL,
                )
            time.sleep(1.0)
        self._relay(log_path, offset, lambda line: "steps, last loss" in line)
        refusal = _first_line(text, ("CC validation failed", "refused", "NotAuthenticated"))
        if rounds == 0:
            detail = f": {refusal}" if refusal else ""
            raise WorkloadError(
                f"the client ended (status {process.returncode}) without training a round" + detail,
                EXIT_ATTESTATION if refusal else EXIT_INTERNAL,
            )
        return rounds

    # ---- aggregator ------------------------------------------------------------------------------

    def _aggregate(self, guest, stack: ExitStack) -> FederationResult:
        from coco_ai.federated.local import POC_ADMIN_KIT, retarget_kit

        cfg = self.config
        phase = self._phase
        with phase("staging_check"):
            self._check_staging()
        with phase("memory_check"):
            self._check_memory({"base model": cfg.base_model.path}, cfg.tee_memory_bytes)
        private = private_tmpdir("coco-ai-fl-aggregator-")
        stack.callback(shutil.rmtree, private, ignore_errors=True)
        with phase("keys"):
            self._check_attested_identity(guest, private / "nvflare" / "trust")
            bundle = self._credentials(guest)
            checkpoint_key = self._run_key(guest)
        with phase("base_model_check"):
            base_dir = self._pinned_model(
                cfg.base_model.path, cfg.base_model.digest, private / "base", "base model"
            )
        record_dir, output_dir = private / "record", private / "global"
        with phase("kit"):
            kit = self._kit(private / "nvflare", bundle, record_dir)
            admin_kit = kit.parent / POC_ADMIN_KIT
            retarget_kit(admin_kit, host="localhost", server_identity=cfg.party.aggregator_id)
            bundle.submitter.write_startup_files(admin_kit / "startup")
            submitter = bundle.submitter.name
            del bundle
            job_dir = private / "job"
            self._write_job(job_dir, base_dir, output_dir, record_dir)
        log_path = private / "server.log"
        with phase("federation"):
            server = self._start_site(kit, log_path, stack)
            joined = self._await_quorum(server, log_path)
            meta = self._run_job(admin_kit, submitter, job_dir, log_path)
        status = meta.get("status")
        if status != "FINISHED:COMPLETED":
            raise WorkloadError(
                f"the federation job ended {status!r}, not FINISHED:COMPLETED" + _detail(log_path),
                EXIT_QUORUM if "quorum" in str(meta).lower() else EXIT_INTERNAL,
            )
        with phase("contributions"):
            contributions = self._contributions(record_dir, joined)
        outputs = private / "checkpoint"
        with phase("write_adapter"):
            metrics = self._write_adapter(base_dir, output_dir, outputs, contributions)

        encrypted = Path(tempfile.mkdtemp(prefix="coco-ai-fl-checkpoint-"))
        stack.callback(shutil.rmtree, encrypted, ignore_errors=True)
        with phase("attest"):  # right before encrypting: created_at inside the token's life
            token, tee_key = self._attestation_token(guest)
        with phase("encrypt"):
            manifest = self._encrypt(outputs, encrypted, checkpoint_key, contributions, metrics)
            del checkpoint_key
            shutil.rmtree(outputs)
        with phase("sign"):
            self._sign(manifest, encrypted, token, tee_key)
            del tee_key
        with phase("upload"):
            self._upload(encrypted)
        self.log(f"done: global adapter {manifest.checkpoint_id} in {cfg.staging_uri}")
        return FederationResult("aggregator", manifest.digest(), cfg.staging_uri, metrics)

    def _write_job(self, job_dir: Path, base_dir: Path, output_dir: Path, record: Path) -> None:
        """The run's NVFlare job (the one FedAvg job), its limits and recipe from the config."""
        from coco_ai.workloads.federated.job import write_fedavg_job

        cfg = self.config
        lora, training, fed = cfg.lora, cfg.training, cfg.federation
        write_fedavg_job(
            job_dir,
            name=f"coco-ai-{cfg.run_id}",
            model_dir=str(base_dir),
            output_dir=str(output_dir),
            min_clients=cfg.min_participants,
            rounds=fed.rounds,
            trainer_args={
                "model_dir": MODEL_IN_KIT,
                "data_dir": DATA_IN_KIT,
                "local_steps": training.local_steps,
                "batch_size": training.batch_size,
                "learning_rate": training.learning_rate,
            },
            lora_args={
                "lora_r": lora.r,
                "lora_alpha": lora.alpha,
                "target_modules": list(lora.target_modules),
            },
            check_args={"max_norm": fed.max_update_norm, "record_dir": str(record)},
            workflow_args={"train_timeout": fed.job_timeout_s},
            seed=training.seed,
        )

    def _await_quorum(self, server: subprocess.Popen, log_path: Path) -> list[str]:
        """Wait until every participant of the run registered (their CC tokens verified), or
        until ``join_timeout_s``; then at least ``min_participants`` must have."""
        cfg = self.config
        expected = cfg.party.participants
        deadline = time.monotonic() + cfg.federation.join_timeout_s
        while True:
            text = log_path.read_text(errors="replace") if log_path.exists() else ""
            joined = [p for p in expected if f"client {p} registered" in text]
            if len(joined) == len(expected) or time.monotonic() > deadline:
                break
            if server.poll() is not None:
                raise WorkloadError(
                    f"the NVFlare server exited with {server.returncode}" + _detail(log_path),
                    EXIT_INTERNAL,
                )
            time.sleep(0.5)
        self.log(f"registered (attested): {', '.join(joined) or 'none'} of {', '.join(expected)}")
        if len(joined) < cfg.min_participants:
            raise WorkloadError(
                f"only {len(joined)} attested participant(s) joined within "
                f"{cfg.federation.join_timeout_s} s; the run's quorum is {cfg.min_participants}",
                EXIT_QUORUM,
            )
        return joined

    def _run_job(self, admin_kit: Path, submitter: str, job_dir: Path, log_path: Path) -> dict:
        """Submit the job as the aggregator's own submitter, relay each round's progress, then
        shut every site down (the participants' workloads end with their clients)."""
        from nvflare.fuel.flare_api.flare_api import new_secure_session

        fed = self.config.federation
        session = new_secure_session(submitter, str(admin_kit), timeout=60.0)
        try:
            job_id = session.submit_job(str(job_dir))
            self.log(f"job {job_id} submitted: {fed.rounds} round(s)")
            offset = 0
            deadline = time.monotonic() + fed.job_timeout_s
            meta: dict = {}
            while time.monotonic() < deadline:
                offset = self._relay(log_path, offset, _round_progress)
                meta = session.get_job_meta(job_id)
                if str(meta.get("status", "")).startswith("FINISHED"):
                    break
                time.sleep(1.0)
            self._relay(log_path, offset, _round_progress)
            if not str(meta.get("status", "")).startswith("FINISHED"):
                with suppress(Exception):
                    session.abort_job(job_id)
                raise WorkloadError(
                    f"the federation job did not finish within {fed.job_timeout_s} s",
                    EXIT_INTERNAL,
                )
            with suppress(Exception):  # the participants' clients end with it
                session.shutdown("client")
            return meta
        finally:
            session.close()

    def _contributions(self, record_dir: Path, joined: list[str]) -> dict[str, Any]:
        """The contribution record: per round, the accepted updates (site, update digest, data
        set digest, steps), and per contributing site the EAR token its attestation was last
        verified with. Every round must have at least ``min_participants`` accepted updates."""
        from coco_ai.federated.cc_manager import DROPPED_DIR
        from coco_ai.workloads.federated.job import REFUSED_RECORD, UPDATES_RECORD

        cfg = self.config
        updates = _read_jsonl(record_dir / UPDATES_RECORD)
        refused = _read_jsonl(record_dir / REFUSED_RECORD)
        rounds: list[dict[str, Any]] = []
        for number in range(cfg.federation.rounds):
            accepted = sorted(
                (u for u in updates if u.get("round") == number), key=lambda u: u["site"]
            )
            if len(accepted) < cfg.min_participants:
                raise WorkloadError(
                    f"round {number} has {len(accepted)} accepted update(s); the run's quorum "
                    f"is {cfg.min_participants}",
                    EXIT_QUORUM,
                )
            rounds.append(
                {
                    "round": number,
                    "accepted": [
                        {
                            "site": u["site"],
                            "update_digest": u["update_digest"],
                            "dataset_digest": u.get("dataset_digest"),
                            "num_steps": u.get("num_steps"),
                            "local_eval_loss": u.get("local_eval_loss"),
                        }
                        for u in accepted
                    ],
                    "refused": sorted(
                        (
                            {"site": r["site"], "reason": r["reason"]}
                            for r in refused
                            if r.get("round") == number
                        ),
                        key=lambda r: r["site"],
                    ),
                }
            )
        contributors = sorted({a["site"] for r in rounds for a in r["accepted"]})
        unknown = sorted(set(contributors) - set(cfg.party.participants))
        if unknown:
            raise WorkloadError(f"updates from sites outside the run: {unknown}", EXIT_INTERNAL)
        dropped = [
            {"site": d.get("site"), "reason": d.get("reason"), "at": d.get("at")}
            for d in (
                json.loads(path.read_text())
                for path in sorted((record_dir / DROPPED_DIR).glob("*.json"))
            )
        ]
        return {
            "format": RECORD_FORMAT,
            "federation": cfg.party.federation,
            "aggregator": cfg.party.aggregator_id,
            "registered": sorted(joined),
            "dropped": dropped,
            "rounds": rounds,
            "participants": {site: self._peer_record(record_dir, site) for site in contributors},
        }

    def _peer_record(self, record_dir: Path, site: str) -> dict[str, Any]:
        """The attestation the aggregator's CC manager last accepted for ``site``."""
        from coco_ai.federated.cc_manager import PEERS_DIR

        path = record_dir / PEERS_DIR / f"{site}.json"
        try:
            peer = json.loads(path.read_text())
        except (OSError, ValueError):
            raise WorkloadError(
                f"no verified attestation is recorded for contributing site {site}",
                EXIT_ATTESTATION,
            ) from None
        token = peer.get("ear_token")
        if not isinstance(token, str) or peer.get("participant_id") != site:
            raise WorkloadError(f"the attestation record of {site} is malformed", EXIT_INTERNAL)
        return {
            "ear_token": token,
            "ear_token_digest": sha256_digest(token.encode()),
            "verified_at": peer.get("verified_at"),
        }

    def _write_adapter(
        self, base_dir: Path, global_dir: Path, outputs: Path, contributions: dict[str, Any]
    ) -> dict[str, Any]:
        """The final global adapter as a PEFT adapter directory, and the run's metrics."""
        import numpy as np

        from coco_ai.workloads.federated.job import (
            GLOBAL_ADAPTER_FILE,
            adapter_model,
            load_adapter_weights,
        )

        cfg = self.config
        try:
            with np.load(global_dir / GLOBAL_ADAPTER_FILE) as saved:
                weights = {k: saved[k] for k in saved.files}
        except OSError as exc:
            raise WorkloadError(f"no global adapter was saved: {exc}", EXIT_INTERNAL) from None
        lora = cfg.lora
        model, _, _ = adapter_model(
            str(base_dir), lora.r, lora.alpha, lora.target_modules, cfg.training.seed
        )
        try:
            load_adapter_weights(model, weights)
        except ValueError as exc:
            raise WorkloadError(f"the global adapter: {exc}", EXIT_INTERNAL) from None
        model.peft_config["default"].base_model_name_or_path = cfg.base_model.path
        model.save_pretrained(outputs / ADAPTER_DIR)
        last = contributions["rounds"][-1]["accepted"]
        steps = sum(a["num_steps"] or 0 for a in last)
        losses = [(a["local_eval_loss"], a["num_steps"] or 0) for a in last]
        eval_loss = (
            sum(loss * n for loss, n in losses) / steps
            if steps and all(isinstance(loss, int | float) for loss, _ in losses)
            else None
        )
        metrics: dict[str, Any] = {
            "rounds": len(contributions["rounds"]),
            "participants": len(contributions["participants"]),
            "min_round_participants": min(len(r["accepted"]) for r in contributions["rounds"]),
        }
        if eval_loss is not None:
            # the participants' held-out loss after the last round, weighted by their steps
            metrics["eval_loss"] = eval_loss
        self.log("metrics: " + json.dumps(metrics, sort_keys=True))
        return metrics

    def _encrypt(self, outputs: Path, dst: Path, key: bytes, contributions, metrics):
        from coco_ai.crypto import encrypt_checkpoint
        from coco_ai.crypto.manifest import CONFIG_FILE
        from coco_ai.kbs.wire import canonical_json

        cfg = self.config
        document = config_document(cfg, contributions)
        manifest = encrypt_checkpoint(
            str(outputs),
            str(dst),
            kek=key,
            key_uri=cfg.checkpoint_key_uri,
            run_id=cfg.run_id,
            meta={
                "base_model_digest": cfg.base_model.digest,
                # what the global model was trained from: the contribution record (which names
                # every contributing participant's data-set digest)
                "dataset_digest": sha256_digest(canonical_json(contributions)),
                "training_config_digest": sha256_digest(document),
                "metrics": metrics,
            },
        )
        (dst / CONFIG_FILE).write_bytes(document)
        self.log(f"global adapter encrypted: {len(manifest.files)} files")
        return manifest


def _round_progress(line: str) -> bool:
    return ("Round " in line and ("started" in line or "finished" in line)) or "refused" in line


def _first_line(text: str, needles: tuple[str, ...]) -> str | None:
    for line in text.splitlines():
        if any(n in line for n in needles):
            return line.strip()[-300:]
    return None


def _detail(log_path: Path) -> str:
    text = log_path.read_text(errors="replace") if log_path.exists() else ""
    line = _first_line(text, ("ERROR", "Exception"))
    return f"; first error: {line}" if line else ""


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            entry = json.loads(line)
            if not isinstance(entry, dict):
                raise WorkloadError(f"{path.name}: a record is not an object", EXIT_CONFIG)
            out.append(entry)
    return out
