"""What a wire parser concludes about the bytes it was given: one typed result per kind.

A parser returns exactly one of these and never raises: a name was found (:class:`Named`),
the message is complete and carries none (:class:`Unnamed`), more bytes are needed
(:class:`NeedMore`), the bytes are another protocol (:class:`Foreign`), or they claim to be
this protocol but break its rules (:class:`Malformed`).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Foreign", "Malformed", "Named", "NeedMore", "Unnamed", "WireResult"]


@dataclass(frozen=True, slots=True)
class Named:
    """A complete message naming ``name`` (a valid DNS name, lowercased, no trailing dot).

    ``ech`` is true when a TLS ClientHello carries an encrypted_client_hello extension
    (``name`` is then its outer, visible name); ``alpn`` the offered ALPN protocols.
    """

    name: str
    ech: bool = False
    alpn: tuple[bytes, ...] = ()


@dataclass(frozen=True, slots=True)
class Unnamed:
    """A complete message that carries no DNS name.

    ``address`` is the IP literal sent where a name could go (an HTTP ``Host`` such as
    ``[2001:db8::1]:80``), normalized by :mod:`ipaddress`; ``None`` when nothing was sent.
    """

    address: str | None = None
    ech: bool = False
    alpn: tuple[bytes, ...] = ()


@dataclass(frozen=True, slots=True)
class NeedMore:
    """The bytes so far are a valid beginning; ``at_least`` is the total length needed, if known."""

    at_least: int | None = None


@dataclass(frozen=True, slots=True)
class Foreign:
    """The bytes are not this protocol (``reason`` says what gave it away)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Malformed:
    """The bytes start like this protocol but break its rules (``reason`` says which)."""

    reason: str


#: Everything a wire parser may return.
WireResult = Named | Unnamed | NeedMore | Foreign | Malformed
