"""Change notification for the management API's event stream."""

from __future__ import annotations

import asyncio

__all__ = ["ChangeHub"]


class ChangeHub:
    """A version counter that waiters block on; ``changed()`` is cheap and safe from any task."""

    def __init__(self) -> None:
        self.version = 0
        self._event = asyncio.Event()

    def changed(self) -> None:
        self.version += 1
        event, self._event = self._event, asyncio.Event()
        event.set()

    async def wait_after(self, version: int, wait_s: float) -> int:
        """Wait until the version moves past ``version`` or ``wait_s`` passes; return it."""
        if self.version != version:
            return self.version
        event = self._event
        try:
            async with asyncio.timeout(wait_s):
                await event.wait()
        except TimeoutError:
            pass
        return self.version
