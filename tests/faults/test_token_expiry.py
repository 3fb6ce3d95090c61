"""Attestation expiring during a long job: the workload's EAR token (and the KBS session bound to
it) expires while it trains; before signing, the guest re-attests with the same TEE key, and the
verifier accepts the checkpoint, whose creation time falls inside the fresh token's validity.
No long-lived token is assumed anywhere."""

from __future__ import annotations

import time

from coco_ai.crypto.manifest import TOKEN_FILE
from coco_ai.kbs.ear import verify_ear_token
from coco_ai.trustee_dev.state import StateDir
from coco_ai.workloads.dataset import to_jsonl

# the fine-tune workload as the workloads tier runs it (its fixtures: tests/faults/conftest.py)
from tests.workloads.test_workload_e2e import RUN_ID, make_config, run_workload

LIFETIME_S = 3  # the stand-in's EAR token lifetime (Trustee's default: 300 s)
MARGIN_S = 1.5  # the guest re-attests this long before its token expires (signing fits in it)


def test_token_expiring_mid_training_is_renewed_before_signing(
    tmp_path_factory,
    tmp_path,
    tiny_model,
    examples,
    matrix,
):
    from coco_ai.crypto import verify_checkpoint
    from coco_ai.crypto.verify import VerificationPolicy
    from coco_ai.devstack.workload import start_local_stack

    state = tmp_path_factory.mktemp("trustee")
    with start_local_stack(
        state, RUN_ID, token_lifetime_s=LIFETIME_S, token_refresh_margin_s=MARGIN_S
    ) as stack:
        store = tmp_path / "store"
        store.mkdir()
        (store / "northwind.jsonl.enc").write_bytes(stack.encrypt_dataset(to_jsonl(examples)))
        # long enough that the key-release token has expired before the checkpoint is signed,
        # also where training is fast (bf16 on a CPU that has it)
        cfg = make_config(tmp_path, stack, store, tiny_model, training__epochs=20)
        started = time.monotonic()
        proc = run_workload(tmp_path, cfg)
        took = time.monotonic() - started
        assert proc.returncode == 0, proc.stderr

        releases = StateDir(state).releases()
        keys_released_at = min(r["at"] for r in releases)
        verified = verify_checkpoint(
            cfg["staging_uri"],
            trust_anchor_pem=stack.trust_anchor_pem,
            policy=VerificationPolicy.for_run(RUN_ID),
        )
        token = (tmp_path / "staging" / RUN_ID / TOKEN_FILE).read_text()
        created = verified.manifest.created_at
        signing = verify_ear_token(token, stack.trust_anchor_pem, now=created)
        # the token the keys were released under was dead when the signing token was issued
        assert signing.issued_at > keys_released_at + LIFETIME_S, (took, signing.issued_at)
        assert signing.issued_at <= created <= signing.expires_at
    matrix(
        component="Trustee",
        fault=f"EAR token ({LIFETIME_S} s lifetime) expired mid training",
        step="workload signing",
        outcome="recovered",
        recover_s=took,
        keys_left="none (the run's keys as usual)",
        artefacts_left="none (checkpoint signed under a fresh token)",
    )
