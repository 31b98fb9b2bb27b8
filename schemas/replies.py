"""Request and reply bodies of the request-reply endpoints, and the error body."""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from schemas.types import JobId, JobState, Outcome, ShortText


class _Inbound(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class SubmitReply(msgspec.Struct, kw_only=True):
    job_id: str
    state: JobState


class JobRef(_Inbound):
    job_id: JobId


class CompleteRequest(_Inbound):
    job_id: JobId
    outcome: Outcome
    message: ShortText | None = None


class ListRequest(_Inbound):
    state: JobState | None = None
    limit: Annotated[int, Meta(ge=1, le=1000)] = 100
    after: Annotated[str, Meta(max_length=512)] | None = None


class ErrorDetail(msgspec.Struct, kw_only=True, omit_defaults=True):
    code: int
    message: str
    field: str | None = None
    job_id: str | None = None


class ErrorBody(msgspec.Struct, kw_only=True):
    error: ErrorDetail
