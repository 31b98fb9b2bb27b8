"""EC2 errors: :class:`AwsError` carries the EC2 code, and :func:`classify` says which way it goes."""

from __future__ import annotations

from enum import Enum


class ErrorKind(Enum):
    CAPACITY = "capacity"
    """This instance type is out of capacity here: try the next ranked type."""
    TRANSIENT = "transient"
    """Throttling, 5xx, connection trouble: retry later (nak with backoff)."""
    PERMANENT = "permanent"
    """Quota, auth, bad image, unsupported: will not go away by retrying."""


CAPACITY_CODES = frozenset(
    {
        "InsufficientInstanceCapacity",
        "InsufficientHostCapacity",
        "InsufficientReservedInstanceCapacity",
        "InsufficientCapacity",
    }
)
TRANSIENT_CODES = frozenset(
    {
        "RequestLimitExceeded",
        "Throttling",
        "ThrottlingException",
        "InternalError",
        "InternalFailure",
        "ServiceUnavailable",
        "Unavailable",
        "RequestTimeout",
        "RequestTimeoutException",
        "ConnectionError",
    }
)


def classify(code: str, http_status: int | None = None) -> ErrorKind:
    """Which way an EC2 error goes; an unknown 5xx is transient, any other unknown code permanent."""
    if code in CAPACITY_CODES:
        return ErrorKind.CAPACITY
    if code in TRANSIENT_CODES:
        return ErrorKind.TRANSIENT
    if http_status is not None and http_status >= 500:
        return ErrorKind.TRANSIENT
    return ErrorKind.PERMANENT


class AwsError(Exception):
    """An EC2 call failed (or a wait for instances did), with the EC2 error code and its kind."""

    def __init__(self, code: str, message: str, *, http_status: int | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.http_status = http_status
        self.kind = classify(code, http_status)


__all__ = ["CAPACITY_CODES", "TRANSIENT_CODES", "AwsError", "ErrorKind", "classify"]
