"""Guest side of CoCo: attesters, initdata (with the Kata agent policy and image policy that bind
a run to its image), the guest-components emulator and its client.

Heavy parts (emulator, client) are imported from their modules; this package only re-exports
the dependency-free initdata API.
"""

from coco_ai.guest.initdata import INITDATA_ANNOTATION, Initdata, InitdataError, build_initdata

__all__ = ["INITDATA_ANNOTATION", "Initdata", "InitdataError", "build_initdata"]
