"""Is a host name sent on the wire a valid DNS name? The check every wire parser shares.

The rules are the configuration's for host names (ASCII letters, digits, ``-`` and ``_``;
labels of 1-63 characters not starting or ending with ``-``; at most 253 characters; not
all-numeric in the last label, which would be an IPv4 address), so a name that passes here
can be compared with the names a policy allows.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["MAX_NAME", "dns_name"]

#: The longest DNS name in text form, without the trailing dot.
MAX_NAME: Final = 253
_LABEL_RE: Final = re.compile(rb"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")


def dns_name(raw: bytes) -> str | None:
    """``raw`` lowercased as a DNS name, or ``None`` when it is not one.

    A trailing dot is refused: TLS SNI carries names without it (RFC 6066 section 3), and
    in HTTP ``Host`` it would be a second spelling of a name that servers may treat apart.
    """
    if not raw or len(raw) > MAX_NAME:
        return None
    name = raw.lower()
    labels = name.split(b".")
    if not all(_LABEL_RE.fullmatch(label) for label in labels):
        return None
    if labels[-1].isdigit():
        return None
    return name.decode("ascii")
