#!/usr/bin/env python3
"""Load one of the project's policy sets into a Trustee KBS over the authenticated admin API.

    python deploy/compose/load_policies.py --kbs-url https://kbs:8080 --kbs-ca CA.pem \
        --admin-key trustee-admin-private.pem --policy-dir coco_ai/policies --policy-set prod-tdx \
        [--reference-values values.json] [--run-key-root run-key-root.bin] \
        [--trustee-version 0.20.0]

The set (coco_ai.policies.POLICY_SETS) maps Trustee policy ids to policy files: the KBS
resource policy and the attestation service's `default_cpu` / `default_gpu` policies. Files are
read from --policy-dir (the mounted coco_ai/policies/), so what Trustee enforces is exactly what
is reviewed in the repository. Each upload must be accepted (Trustee compiles the Rego before
storing it; a refused one keeps the old policy); any error exits non-zero. The SHA-256 of every
uploaded file is printed for the audit log.

--admin-key is the data owner's admin key (persona / role `admin`, every admin endpoint): these
are data-owner actions, which Airflow's credential (run grants only) cannot perform. With
--trustee-version 0.21.0 or main the key signs a token for role `admin` instead of a v0.20.0
self-signed one.

--approved-image (repeatable, host/path@sha256:<hex>) is the data owner's approval of workload
code: the resource policy file is a template, rendered with these images
(coco_ai.policies.render_resource_policy) before upload, and the image security policy that
accepts exactly them (coco_ai.guest.image_policy.image_policy_json) is stored at
kbs:///coco-ai/image-policy/v1, where each run's confidential data hub reads it. Without one the
uploaded resource policy releases nothing (and the image policy rejects every image).

--reference-values takes a JSON object {name: value or [values]} and registers each entry with
RVPS through the KBS (`sample` extractor, as kbs-client set-sample-reference-value does).

--run-key-root takes the data owner's 32-byte run-key root (init_env.py generate writes it) and,
after the policies, stores it at --run-key-root-path (default coco-ai/run-key-root/v1, what
`[coco_ai] run_key_root_uri` names) with the admin API; the TEE derives each run's key from it
(coco_ai/run_keys.py). Same bytes overwrite, so a rerun is harmless. A file that is not exactly
32 bytes is refused (exit 2) before anything is uploaded. Only the path is printed: nothing
derived from the root, not even a digest.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from coco_ai.guest.agent_policy import AgentPolicyError, qualified_pinned_image
    from coco_ai.guest.image_policy import IMAGE_POLICY_PATH, image_policy_json
    from coco_ai.kbs.admin_auth import admin_auth_for
    from coco_ai.kbs.client import KbsAdminClient
    from coco_ai.kbs.errors import KbsError
    from coco_ai.kbs.resource_path import parse_resource_path
    from coco_ai.kbs.versions import DEFAULT_TRUSTEE_VERSION, TRUSTEE_VERSIONS
    from coco_ai.policies import POLICY_SETS, RESOURCE_POLICY_ID, render_resource_policy
    from coco_ai.run_keys import DEFAULT_ROOT, KEY_SIZE

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kbs-url", required=True)
    parser.add_argument("--kbs-ca", type=Path, required=True, help="CA of the KBS HTTPS cert")
    parser.add_argument(
        "--admin-key", type=Path, required=True, help="the data owner's Ed25519 admin key PEM"
    )
    parser.add_argument(
        "--trustee-version",
        choices=TRUSTEE_VERSIONS,
        default=DEFAULT_TRUSTEE_VERSION,
        help="the KBS's Trustee release: picks the admin token style (default %(default)s)",
    )
    parser.add_argument("--policy-dir", type=Path, required=True)
    parser.add_argument("--policy-set", choices=sorted(POLICY_SETS), required=True)
    parser.add_argument(
        "--approved-image",
        action="append",
        default=[],
        metavar="HOST/PATH@sha256:HEX",
        help="a workload image the data owner approves (repeatable; empty values are ignored)",
    )
    parser.add_argument("--reference-values", type=Path, help="JSON {name: value or [values]}")
    parser.add_argument(
        "--run-key-root", type=Path, help=f"the data owner's {KEY_SIZE}-byte run-key root file"
    )
    parser.add_argument(
        "--run-key-root-path",
        default=DEFAULT_ROOT.url_path(),
        help="KBS resource path of the root, repo/type/tag (default: %(default)s)",
    )
    args = parser.parse_args(argv)

    root: bytes | None = None
    if args.run_key_root is not None:
        try:
            root_path = parse_resource_path(args.run_key_root_path)
        except ValueError as exc:
            print(f"load-policies: --run-key-root-path: {exc}", file=sys.stderr)
            return 2
        try:
            root = args.run_key_root.read_bytes()
        except OSError as exc:
            print(
                f"load-policies: cannot read run-key root {args.run_key_root}: {exc.strerror}",
                file=sys.stderr,
            )
            return 2
        if len(root) != KEY_SIZE:
            print(
                f"load-policies: run-key root {args.run_key_root} is {len(root)} bytes, not "
                f"{KEY_SIZE}; refusing to upload anything",
                file=sys.stderr,
            )
            return 2

    try:
        approved = [qualified_pinned_image(image) for image in args.approved_image if image]
    except AgentPolicyError as exc:
        print(f"load-policies: --approved-image: {exc}", file=sys.stderr)
        return 2

    reference_values = {}
    if args.reference_values is not None:
        reference_values = json.loads(args.reference_values.read_text())
        if not isinstance(reference_values, dict):
            print("load-policies: --reference-values must hold a JSON object", file=sys.stderr)
            return 2

    texts = {}
    for policy_id, name in POLICY_SETS[args.policy_set].items():
        path = args.policy_dir / f"{name}.rego"
        if not path.is_file():
            print(f"load-policies: {path} is missing (policy {policy_id})", file=sys.stderr)
            return 2
        texts[policy_id] = path.read_text(encoding="utf-8")
        if policy_id == RESOURCE_POLICY_ID:
            try:
                texts[policy_id] = render_resource_policy(texts[policy_id], approved)
            except ValueError as exc:
                print(f"load-policies: {path}: {exc}", file=sys.stderr)
                return 2

    admin = KbsAdminClient(
        args.kbs_url,
        auth=admin_auth_for(args.trustee_version, args.admin_key.read_bytes()),
        ca_cert=args.kbs_ca.read_bytes(),
        trustee_version=args.trustee_version,
    )
    try:
        for policy_id, rego in texts.items():
            if policy_id == RESOURCE_POLICY_ID:
                admin.set_resource_policy(rego)
            else:
                admin.set_attestation_policy(rego, policy_id)
            digest = hashlib.sha256(rego.encode()).hexdigest()
            print(
                f"load-policies: {policy_id} <- {POLICY_SETS[args.policy_set][policy_id]} "
                f"sha256:{digest}"
            )
        image_policy = image_policy_json(approved).encode()
        admin.set_resource(IMAGE_POLICY_PATH, image_policy)
        print(
            f"load-policies: image policy stored at {IMAGE_POLICY_PATH} "
            f"sha256:{hashlib.sha256(image_policy).hexdigest()} approving "
            + (", ".join(approved) if approved else "no image (nothing is released)")
        )
        for name, values in reference_values.items():
            admin.set_sample_reference_value(name, values)
            print(f"load-policies: reference value {name} registered")
        if root is not None:
            admin.set_resource(root_path, root)
            print(f"load-policies: run-key root stored at {root_path}")
    except KbsError as exc:
        print(f"load-policies: KBS refused: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
