"""A standing pull request on a durable consumer: messages stream into one buffer."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import msgspec
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from services.runtime import direct, natspy


class Puller:
    """A standing pull: messages stream into one buffer; ``fetch`` takes from it.

    nats-py's ``fetch`` waits for each message with its own task, timer and inbox id, and
    a request per fetch costs the server and us a round trip (plus a ``404`` when there is
    nothing) for every few messages. Instead, like the Go and JS clients' ``consume``, a
    pull request for up to ``max_messages`` stays open (``expires`` long) and is topped up
    when less than half of it is still owed, so under steady traffic messages arrive with
    no request of their own.

    Credit accounting: ``_owed`` is what was asked for and neither delivered nor reported
    gone (a ``408``/``409`` status names the messages its request still owed in
    ``Nats-Pending-Messages``). Should a status be lost (reconnect, server restart), every
    request is known to have expired ``expires`` after the last one was sent, and the
    credit is reset then.
    """

    EXPIRES_S = 10.0

    def __init__(self, js: JetStreamContext, stream: str, durable: str, *, max_messages: int = 256) -> None:
        self._nc = natspy.connection(js)
        self._subject = f"{natspy.api_prefix(js)}.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self._inbox = self._nc.new_inbox()
        self._max = max(1, max_messages)
        self._buf: list[Msg] = []
        self._owed = 0
        self._asked_at = 0.0
        self._reconnects = self._reconnect_count()
        self._ready = asyncio.Event()
        self._conflict: str | None = None
        self._sub: Any = None

    async def start(self) -> None:
        self._sub = await direct.subscribe(self._nc, self._inbox, self._on_msg)

    async def stop(self) -> None:
        if self._sub is not None:
            await direct.unsubscribe(self._nc, self._sub)
            self._sub = None

    def _on_msg(self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        status = None if data else direct.status_of(headers)
        if status is None:  # an event (its stored headers are not parsed: nothing reads them)
            self._owed = max(0, self._owed - 1)
            self._buf.append(natspy.message(self._nc, subject, reply, data))
            self._ready.set()
            return
        code, hdrs = status
        if code == "100":  # heartbeat
            return
        # 408 request expired, 409 conflict, 404 nothing (no_wait)
        try:
            gone = int(hdrs.get("Nats-Pending-Messages", 0))
        except ValueError:
            gone = self._owed
        self._owed = max(0, self._owed - gone)
        if code == "409":
            desc = hdrs.get("Description", "conflict")
            if "MaxAckPending" not in desc:  # a full ack window is back-pressure, not an error
                self._conflict = desc
                self._owed = 0
        self._ready.set()

    def _reconnect_count(self) -> int:
        return int(getattr(self._nc, "stats", {}).get("reconnects", 0))

    async def _top_up(self) -> None:
        now = asyncio.get_running_loop().time()
        if self._owed and now - self._asked_at > self.EXPIRES_S + 1.0:
            self._owed = 0  # every request sent so far has expired; its 408 was lost
        if (n := self._reconnect_count()) != self._reconnects:
            self._reconnects, self._owed = n, 0  # a server that restarted forgot our requests
        want = self._max - self._owed - len(self._buf)
        if want * 2 < self._max and self._owed:
            return  # more than half of a full pull is still coming
        if want <= 0:
            return
        self._owed += want
        self._asked_at = now
        request = {"batch": want, "expires": int(self.EXPIRES_S * 1e9)}
        await self._nc.publish(self._subject, _json.encode(request), reply=self._inbox)

    async def fetch(self, batch: int, timeout: float) -> list[Msg]:
        """Up to ``batch`` buffered messages; waits up to ``timeout`` for the first one."""
        await self._top_up()
        if not self._buf:
            self._ready.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready.wait(), timeout)
            if not self._buf and self._conflict is None:
                await self._top_up()  # a request may have ended (408): ask again before the next wait
        if self._conflict is not None:
            reason, self._conflict = self._conflict, None
            raise nats.js.errors.APIError(description=f"pull request conflict: {reason}")
        msgs, self._buf = self._buf[:batch], self._buf[batch:]
        return msgs


_json = msgspec.json.Encoder()
