"""The CLI's output, captured."""

from __future__ import annotations

import asyncio
import io


class Output(io.StringIO):
    """Captures a stream and lets a test wait until some text was written."""

    def __init__(self) -> None:
        super().__init__()
        self.changed = asyncio.Event()

    def write(self, text: str) -> int:
        n = super().write(text)
        self.changed.set()
        return n

    async def wait_for(self, text: str, timeout: float = 10.0) -> None:
        async def until() -> None:
            while text not in self.getvalue():
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(until(), timeout)
