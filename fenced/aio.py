"""Small asyncio helpers that fenced needs in more than one place."""

from __future__ import annotations

import asyncio


async def wait_event(event: asyncio.Event, timeout: float | None) -> bool:
    """Wait until ``event`` is set or ``timeout`` seconds passed; True if it was set.

    Unlike ``asyncio.wait_for`` on Python 3.11, a cancellation of the caller is never
    lost when it races with the timeout (CPython gh-86296): ``Refresher.stop()`` and a
    SIGTERM under load rely on the waiting task really ending when cancelled.
    """
    if event.is_set():
        return True
    if timeout is None:
        await event.wait()
        return True
    waiter = asyncio.ensure_future(event.wait())
    try:
        done, _ = await asyncio.wait({waiter}, timeout=max(0.0, timeout))
    finally:
        waiter.cancel()
    return bool(done)
