"""The data owner's image security policy: the guest pulls only approved digests.

The confidential data hub of a run's guest reads ``[image] image_security_policy_uri`` from its
``cdh.toml`` (initdata) and fetches that resource from the KBS before it pulls an image; the
document is a containers-policy.json (containers-policy.json(5), as guest-components' image-rs
reads it): the ``default`` requirement applies to every image no scope names, and a scope of the
``docker`` transport may be a full reference ``host/path@sha256:<hex>``, which image-rs matches
against the image's whole reference first. `image_policy_json` rejects by default and accepts
exactly the approved references. The KBS releases it under the resource policy, so only a guest
of an approved run can read it, and a guest that cannot read it pulls nothing.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from coco_ai.guest.agent_policy import qualified_pinned_image
from coco_ai.kbs.resource_path import ResourcePath

#: Where the data owner stores the image policy; the one definition of its name.
IMAGE_POLICY_PATH = ResourcePath("coco-ai", "image-policy", "v1")
IMAGE_POLICY_URI = IMAGE_POLICY_PATH.uri()


def image_policy_json(approved_images: Iterable[str]) -> str:
    """containers-policy.json accepting only ``approved_images`` (each pinned by digest).

    With no image approved it rejects everything. Deterministic: sorted, compact JSON, so the
    data owner can compare what the KBS holds with what they approved.
    """
    images = sorted({qualified_pinned_image(image) for image in approved_images})
    document = {
        "default": [{"type": "reject"}],
        "transports": {"docker": {image: [{"type": "insecureAcceptAnything"}] for image in images}},
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":")) + "\n"
