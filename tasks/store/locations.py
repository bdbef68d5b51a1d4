"""What a location string is: a URL (`s3://bucket/prefix`) or a local path.

Kept free of pyarrow, so the command line can tell the two apart before anything heavy loads.
"""

from __future__ import annotations

import re
from typing import Final

_URL: Final = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_url(location: object) -> bool:
    """True for a `scheme://...` string (a Path, or a plain path string, is local)."""
    return isinstance(location, str) and bool(_URL.match(location))
