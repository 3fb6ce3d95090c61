"""`coco-ai policy`: render the data owner's resource policy and image policy for approved images.

Both are printed to stdout, ready for `POST /kbs/v0/resource-policy` and for the KBS resource
`kbs:///coco-ai/image-policy/v1`; nothing is uploaded.
"""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "policy",
        help="render the data owner's resource policy and image policy",
        description="Render the policies that release keys only to approved workload images.",
    )
    sub = parser.add_subparsers(dest="policy_command", required=True)
    image_help = "an approved workload image, host/path@sha256:<hex> (repeatable)"

    render = sub.add_parser(
        "render",
        help="the KBS resource policy approving --image",
        description="Print the resource policy of --kind with the approved images filled in; "
        "without --image it approves nothing and releases nothing.",
    )
    render.add_argument("--kind", choices=("prod", "dev"), required=True)
    render.add_argument("--image", action="append", default=[], help=image_help)
    render.add_argument(
        "--module",
        action="append",
        default=None,
        help="a workload module the images may launch (repeatable; default: every workload's)",
    )
    render.set_defaults(func=_render)

    image_policy = sub.add_parser(
        "image-policy",
        help="the containers-policy.json accepting only --image",
        description="Print the image security policy the guest's CDH reads from "
        "kbs:///coco-ai/image-policy/v1: reject by default, accept only the approved digests.",
    )
    image_policy.add_argument("--image", action="append", default=[], help=image_help)
    image_policy.set_defaults(func=_image_policy)


def _render(args: argparse.Namespace) -> int:
    from coco_ai.policies import resource_policy_text

    try:
        sys.stdout.write(resource_policy_text(args.kind, args.image, args.module))
    except ValueError as exc:
        print(f"coco-ai policy render: {exc}", file=sys.stderr)
        return 2
    return 0


def _image_policy(args: argparse.Namespace) -> int:
    from coco_ai.guest.image_policy import image_policy_json

    try:
        sys.stdout.write(image_policy_json(args.image))
    except ValueError as exc:
        print(f"coco-ai policy image-policy: {exc}", file=sys.stderr)
        return 2
    return 0
