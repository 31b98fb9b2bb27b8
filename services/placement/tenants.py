"""Tenants' quotas at run time (§8.4): the ``QUOTAS`` bucket, ``quota.set`` / ``quota.get`` /
``tenant.usage``, and the compute-budget check of an accepted job.

``quota.set`` (operators only: refused with 403 when it arrives through a tenant's import, and
nats.conf lets only ``services`` and ``admin`` publish it) writes the tenant's quota to the
bucket; every placement instance watches the bucket (:meth:`Tenants.follow`) and applies each
value, then wakes the jobs waiting at a quota (and degraded jobs) to be tried again. Usage is
the ledger's :class:`~services.placement.quotas.Accounts`, derived from PLACEMENTS: the same
whichever instance answers.

Whose quota is asked: a tenant's request (through its import) is about itself, and a body
naming another tenant is 404 (not revealed); inside the scheduler's account the body names
any tenant (default ``default``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import msgspec
import nats.errors
import nats.js.errors
import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from schemas import events as ev
from schemas import subjects as s
from schemas.replies import Quota, QuotaReply, QuotaRequest, QuotaSetRequest, UsageReply
from services.placement.ports import Clock
from services.placement.quotas import Accounts, QuotaBook, budget_reason
from services.runtime.micro import Endpoint, RequestError
from services.runtime.tenancy import from_tenant_import, tenant_of

__all__ = ["MAX_BODY", "Tenants", "whose"]

log = structlog.get_logger()

MAX_BODY = 4 * 1024
HOURS_FRESH_S = 1.0
"""How long a tenant's cpu-hours sum is reused by the budget check (it grows by at most the
tenant's running cores x 1 s meanwhile)."""
_enc = msgspec.json.Encoder()
_quota = msgspec.json.Decoder(Quota)
_set_request = msgspec.json.Decoder(QuotaSetRequest)
_request = msgspec.json.Decoder(QuotaRequest)


def whose(caller: str, imported: bool, asked: str | None) -> str:
    """The tenant a ``quota.get`` / ``tenant.usage`` is about: a tenant's own (another one it
    names is 404, as if unknown), or inside the scheduler's account the one named (``default``)."""
    if not imported:
        return asked or s.DEFAULT_TENANT
    if asked is not None and asked != caller:
        raise RequestError(404, f"unknown tenant {asked!r}")
    return caller


class Tenants:
    def __init__(self, book: QuotaBook, accounts: Accounts, clock: Clock, changed: Callable[[], None]) -> None:
        self.book = book
        self.accounts = accounts
        self.clock = clock
        self.changed = changed
        """Called when a tenant's quota changed: wake what waits at a quota."""
        self.kv: KeyValue | None = None
        self._hours: dict[str, tuple[float, float]] = {}
        """tenant -> (when, cpu-hours used then): reused for ``HOURS_FRESH_S``."""

    # --- the compute budget ---------------------------------------------------
    def over_budget(self, e: ev.JobAccepted) -> str | None:
        """Why ``e``'s job would exceed its tenant's ``cpu_hours`` budget, or None."""
        quota = self.book.quota(e.tenant)
        if quota.cpu_hours is None:
            return None
        now = self.clock.wall().timestamp()
        at, used = self._hours.get(e.tenant, (-1.0, 0.0))
        if not 0 <= now - at < HOURS_FRESH_S:  # a retry pass asks for each held job: sum once a second
            used = self.accounts.cpu_hours(e.tenant, now)
            self._hours[e.tenant] = (now, used)
        return budget_reason(e.tenant, quota, used, e.spec)

    # --- the bucket -----------------------------------------------------------
    async def bind(self, js: JetStreamContext, replicas: int = 1) -> KeyValue:
        """Bind ``QUOTAS``, creating it when this instance starts first."""
        spec = s.QUOTAS
        try:
            self.kv = await js.key_value(spec.name)
        except nats.js.errors.BucketNotFoundError:
            self.kv = await js.create_key_value(
                bucket=spec.name,
                description=spec.description,
                history=spec.history,
                storage=js_api.StorageType.FILE,
                replicas=replicas,
            )
        return self.kv

    def apply(self, tenant: str, value: bytes | None) -> None:
        """A value of the bucket (None: deleted); an undecodable one is logged and ignored."""
        quota: Quota | None = None
        if value:
            try:
                quota = _quota.decode(value)
            except msgspec.DecodeError:
                log.warning("undecodable quota", tenant=tenant)
                return
        if self.book.put(tenant, quota):
            log.info("quota changed", tenant=tenant, quota=msgspec.to_builtins(self.book.quota(tenant)))
            self.changed()

    async def follow(self, ready: asyncio.Event, stop: asyncio.Event) -> None:
        """Apply the bucket's values, then each change until ``stop``; ``ready`` once the stored
        ones are applied."""
        assert self.kv is not None
        watcher = await self.kv.watchall()
        try:
            while not stop.is_set():
                try:
                    entry = await watcher.updates(timeout=0.5)  # type: ignore[no-untyped-call]
                except nats.errors.TimeoutError:
                    continue
                if entry is None:
                    ready.set()
                    continue
                deleted = entry.operation in (KV_DEL, KV_PURGE)
                self.apply(entry.key, None if deleted else entry.value)
        finally:
            with contextlib.suppress(Exception):
                await watcher.stop()  # type: ignore[no-untyped-call]

    # --- endpoints ------------------------------------------------------------
    def _reply(self, tenant: str) -> QuotaReply:
        quota, source = self.book.of(tenant)
        return QuotaReply(tenant=tenant, quota=quota, source=source)

    async def set(self, msg: Msg) -> bytes:
        """``quota.set``: the tenant's quota from now on, on every instance (operators only)."""
        if from_tenant_import(msg):
            raise RequestError(403, "quota.set is for operators: not allowed from a tenant account")
        req = _set_request.decode(msg.data)
        assert self.kv is not None
        await self.kv.put(req.tenant, _enc.encode(req.quota))
        self.apply(req.tenant, _enc.encode(req.quota))  # this instance at once; the watch brings it too
        log.info("quota set", tenant=req.tenant)
        return _enc.encode(self._reply(req.tenant))

    def _asked(self, msg: Msg) -> str:
        caller = tenant_of(msg)
        req = _request.decode(msg.data) if msg.data.strip() else QuotaRequest()
        return whose(caller, from_tenant_import(msg), req.tenant)

    async def get(self, msg: Msg) -> bytes:
        """``quota.get``: a tenant's quota and where it comes from."""
        return _enc.encode(self._reply(self._asked(msg)))

    async def usage(self, msg: Msg) -> bytes:
        """``tenant.usage``: what a tenant's live jobs hold now and its cpu-hours of the last 30 days."""
        tenant = self._asked(msg)
        at = self.clock.wall()
        usage = self.accounts.usage(tenant, at.timestamp())
        return _enc.encode(UsageReply(tenant=tenant, usage=usage, quota=self.book.quota(tenant), at=at))

    def endpoints(self) -> list[Endpoint]:
        return [
            Endpoint("quota_set", s.QUOTA_SET, self.set, {"request": "QuotaSetRequest", "reply": "QuotaReply"}),
            Endpoint("quota_get", s.QUOTA_GET, self.get, {"request": "QuotaRequest", "reply": "QuotaReply"}),
            Endpoint("tenant_usage", s.TENANT_USAGE, self.usage, {"request": "QuotaRequest", "reply": "UsageReply"}),
        ]
