"""The pixel-copy implementation in use: the compiled ``_pixels`` unless it is missing or
``VHOSTSUITE_NO_EXTENSIONS`` is set, then the pure-Python reference ``_pixels_py``."""

from ... import NO_EXTENSIONS
from . import _pixels_py

impl = _pixels_py
#: Why the compiled copier could not be used (None: it is in use, or NO_EXTENSIONS asked not to).
IMPORT_ERROR: str | None = None
if not NO_EXTENSIONS:
    try:
        from . import _pixels as _compiled

        impl = _compiled
    except ImportError as e:  # not built, or built for another interpreter
        IMPORT_ERROR = str(e)

PageList = impl.PageList
copy_rect = impl.copy_rect
swizzle_rect = impl.swizzle_rect
check_rect = impl.check_rect
vmsplice = impl.vmsplice
COMPILED = impl is not _pixels_py

__all__ = [
    "PageList", "copy_rect", "swizzle_rect", "check_rect", "vmsplice", "COMPILED", "IMPORT_ERROR", "NO_EXTENSIONS",
]  # fmt: skip
