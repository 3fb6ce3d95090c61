"""Object storage: fsspec stores (file:// default, s3://) behind one small interface.

The storage layer knows nothing of checkpoints, manifests or keys; checkpoint transfer and
verification build on it in `coco_ai.crypto.transfer`.
"""

from coco_ai.storage.errors import ObjectIntegrityError
from coco_ai.storage.store import (
    ProgressEvent,
    Store,
    object_digest,
    open_store,
    split_object_uri,
)

__all__ = [
    "ObjectIntegrityError",
    "ProgressEvent",
    "Store",
    "object_digest",
    "open_store",
    "split_object_uri",
]
