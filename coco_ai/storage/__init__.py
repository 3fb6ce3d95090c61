"""Object storage for checkpoints: fsspec stores (file:// default, s3://) and transfers."""

from coco_ai.storage.store import ProgressEvent, Store, open_store  # noqa: I001  (store first)
from coco_ai.storage.checkpoints import (
    copy_checkpoint,
    is_complete,
    read_manifest,
    upload_checkpoint,
    verify_objects,
)

__all__ = [
    "ProgressEvent",
    "Store",
    "copy_checkpoint",
    "is_complete",
    "open_store",
    "read_manifest",
    "upload_checkpoint",
    "verify_objects",
]
