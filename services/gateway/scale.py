"""``job.scale``: resize a live job (§8.3).

The gateway validates the count, checks the job against its job-state view (the one
``job.cancel`` uses, :class:`services.gateway.lifecycle.JobStates`), stores
``job.scale_requested`` in JOBS and answers ``{"job_id", "replicas", "state":
"scale_requested"}`` once it is stored. Placement turns the request into a new revision.

Changes are not serialised: a request made while an earlier one is still being applied is
stored too, and the latest wins (placement reads the requests in stream order). So a 409 means
only that the job has ended or is being cancelled.

Idempotency as for a submit: the ``Nats-Msg-Id`` header (or ``request_id``; the header wins)
makes the event id deterministic, so a retry is dropped by the stream's duplicate window and
answered with the count stored first (the first one stands, even if the body differs).

A tenant resizes only its own jobs: another tenant's job is a 404, as an unknown one (§8.4).
"""

from __future__ import annotations

import hashlib
import uuid

import msgspec
import structlog
from nats.aio.msg import Msg

from schemas import events as ev
from schemas import subjects as s
from schemas.replies import ScaleReply, ScaleRequest
from schemas.states import CANCELLING, TERMINAL_STATES
from services.gateway.handlers import idempotency_key
from services.gateway.lifecycle import Lifecycle
from services.runtime.micro import RequestError
from services.runtime.tenancy import tenant_of

log = structlog.get_logger()

SCALE_REQUESTED = "scale_requested"
"""The ``state`` of a ``job.scale`` reply: the request is stored (not a job state)."""

_decoder = msgspec.json.Decoder(ScaleRequest)
_stored_decoder = msgspec.json.Decoder(ev.JobScaleRequested)
_enc = msgspec.json.Encoder()


def check_count(replicas: int, max_replicas: int) -> None:
    """400 naming ``replicas`` when the count is above the configured limit (the schema
    already refuses 0, negatives and non-integers)."""
    if replicas > max_replicas:
        raise RequestError(400, f"replicas {replicas} above the limit of {max_replicas}", field="replicas")


def refusal(job_id: str, state: str) -> RequestError | None:
    """The 409 for a job that cannot be resized in ``state`` (ended or being cancelled), else None."""
    if state in TERMINAL_STATES:
        return RequestError(409, f"job {job_id} already ended: {state}", job_id=job_id)
    if state == CANCELLING:
        return RequestError(409, f"job {job_id} is being cancelled", job_id=job_id)
    return None


def scale_event_id(job_id: str, key: str | None) -> str:
    """``<job_id>:job.scale_requested:<digest of the key>`` (unique when there is no key)."""
    tail = hashlib.sha256(key.encode()).hexdigest()[:32] if key else uuid.uuid4().hex
    return f"{ev.event_id_for(job_id, s.JOB_SCALE_REQUESTED)}:{tail}"


class Scaler:
    def __init__(self, lifecycle: Lifecycle, max_replicas: int) -> None:
        self.lifecycle = lifecycle
        self.max_replicas = max_replicas

    async def scale(self, msg: Msg) -> bytes:
        tenant = tenant_of(msg)
        req = _decoder.decode(msg.data)
        check_count(req.replicas, self.max_replicas)
        state = await self.lifecycle.state(req.job_id, tenant)
        refused = refusal(req.job_id, state)
        if refused is not None:
            raise refused
        key = idempotency_key(msg, req.request_id)
        event = ev.JobScaleRequested(
            event_id=scale_event_id(req.job_id, key), job_id=req.job_id, replicas=req.replicas, idempotency_key=key
        )
        replicas = await self._store(event)
        log.info("scale requested", job_id=req.job_id, replicas=replicas, was=state)
        return _enc.encode(ScaleReply(job_id=req.job_id, replicas=replicas, state=SCALE_REQUESTED))

    async def _store(self, event: ev.JobScaleRequested) -> int:
        """Store the request; the count that stands (an earlier one with the same key wins)."""
        js = self.lifecycle.js
        try:
            ack = await self.lifecycle.publisher.publish(event)
            if not ack.duplicate or not ack.seq:
                return event.replicas
            stored = await js.get_msg(s.JOBS.name, ack.seq)
            return _stored_decoder.decode(stored.data or b"").replicas
        except msgspec.DecodeError:
            return event.replicas
        except Exception as e:
            log.warning("publish job.scale_requested failed", job_id=event.job_id, error=repr(e))
            raise RequestError(
                503, "the job store (JetStream) is unavailable; retry with the same request_id", job_id=event.job_id
            ) from e


__all__ = ["SCALE_REQUESTED", "Scaler", "check_count", "refusal", "scale_event_id"]
