"""Embedded stand-in of Trustee (KBS protocol 0.4.0) for development and tests.

Never a production broker: it verifies only Trustee's `sample`/`sampledevice` evidence, and the
production policies deny exactly that evidence.
"""

from coco_ai.trustee_dev.app import TrusteeStandIn
from coco_ai.trustee_dev.server import RunningServer, serve_in_thread

__all__ = ["RunningServer", "TrusteeStandIn", "serve_in_thread"]
