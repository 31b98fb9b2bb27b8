"""Snapshots of state rebuilt from streams, so a restart is O(live state), not O(history).

A service that folds streams into memory (placement's ledger, the gateway's job view, ...)
saves ``body`` (its own encoding, with its own ``version``) together with the last stream
sequence it folded per stream; at start it loads the newest valid snapshot and follows each
stream from the sequence after it. Stored in the ``SNAPSHOTS`` object store (nats-server
chunks it and nats-py checks its SHA-256 on read) in two slots, ``<owner>.a`` and
``<owner>.b``, written alternately: a crash mid-write or a corrupt slot leaves the other
one, older but whole. The stored bytes start with a CRC-32 of the envelope of their own, so a
snapshot is checked whatever reads it. Each object's description names its generation, so a
start reads only the newer slot (the older one only when the newer is damaged): a snapshot of
tens of MB is read once, not twice. No valid snapshot (first start, both slots damaged, a format
version the code no longer reads): ``load`` returns None and the owner replays the streams
from their start, as before.
"""

from __future__ import annotations

import io
import re
import zlib
from collections.abc import Mapping
from datetime import UTC, datetime

import msgspec
import structlog
from nats.js import JetStreamContext
from nats.js.api import ObjectMeta, ObjectStoreConfig, StorageType
from nats.js.errors import NotFoundError
from nats.js.object_store import ObjectStore

from schemas import subjects as s

_log = structlog.get_logger("snapshots")

SLOTS = ("a", "b")
_GENERATION = re.compile(r"generation (\d+)")


class Envelope(msgspec.Struct, kw_only=True, frozen=True):
    owner: str
    version: int
    """The format of ``body``, the owner's to define; another version is not loaded."""
    generation: int
    """+1 per save: the higher of the two slots is the newer."""
    seqs: dict[str, int]
    """Per stream, the last sequence folded into ``body`` (follow from the next one)."""
    at: datetime
    body: bytes


class Loaded(msgspec.Struct, kw_only=True, frozen=True):
    body: bytes
    seqs: dict[str, int]
    generation: int
    at: datetime


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(Envelope).decode


def seal(owner: str, version: int, generation: int, seqs: Mapping[str, int], body: bytes, at: datetime) -> bytes:
    """The stored bytes of one snapshot: the CRC-32 (4 bytes, big-endian) of the envelope, then the envelope."""
    env = _encode(Envelope(owner=owner, version=version, generation=generation, seqs=dict(seqs), at=at, body=body))
    return zlib.crc32(env).to_bytes(4, "big") + env


def unseal(data: bytes, owner: str, version: int) -> Envelope | None:
    """The envelope of ``data`` if it is whole and of ``owner`` at ``version``, else None."""
    if len(data) < 4 or int.from_bytes(data[:4], "big") != zlib.crc32(data[4:]):
        return None
    try:
        env = _decode(data[4:])
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    return env if env.owner == owner and env.version == version else None


def newest(envelopes: list[Envelope | None]) -> Envelope | None:
    """The valid envelope of the highest generation."""
    valid = [e for e in envelopes if e is not None]
    return max(valid, key=lambda e: e.generation) if valid else None


def due(folded: int, last_at: float, now: float, every_s: float, every_events: int) -> bool:
    """Whether to save again: something was folded since the last save, and either
    ``every_events`` events were or ``every_s`` seconds passed."""
    return folded > 0 and (folded >= every_events or now - last_at >= every_s)


class Snapshots:
    """One owner's two slots in the ``SNAPSHOTS`` object store."""

    def __init__(self, store: ObjectStore, owner: str, version: int) -> None:
        self._store = store
        self.owner = owner
        self.version = version
        self.generation = 0

    @classmethod
    async def open(cls, js: JetStreamContext, owner: str, version: int, replicas: int = 1) -> Snapshots:
        try:
            store = await js.object_store(s.SNAPSHOTS.name)
        except NotFoundError:
            config = ObjectStoreConfig(
                bucket=s.SNAPSHOTS.name,
                description=s.SNAPSHOTS.description,
                storage=StorageType.FILE,
                replicas=replicas,
            )
            store = await js.create_object_store(s.SNAPSHOTS.name, config=config)
        return cls(store, owner, version)

    def _name(self, slot: str) -> str:
        return f"{self.owner}.{slot}"

    async def _generation(self, slot: str) -> int:
        """The generation the slot's object description names; -1 if none (written before
        descriptions were), -2 if there is no object or its meta is unreadable."""
        try:
            info = await self._store.get_info(self._name(slot))
        except Exception:
            return -2
        found = _GENERATION.fullmatch(info.description or "")
        return int(found.group(1)) if found else -1

    async def _read(self, slot: str) -> Envelope | None:
        buffer = io.BytesIO()  # written chunk by chunk (nats-py concatenates bytes otherwise: quadratic)
        try:
            await self._store.get(self._name(slot), writeinto=buffer)
        except NotFoundError:
            return None
        except Exception as e:  # a damaged object (digest mismatch, bad meta): the other slot
            _log.warning("snapshot unreadable", owner=self.owner, slot=slot, error=repr(e))
            return None
        env = unseal(buffer.getvalue(), self.owner, self.version)
        if env is None:
            _log.warning("snapshot invalid", owner=self.owner, slot=slot)
        return env

    async def load(self) -> Loaded | None:
        """The newest valid snapshot, or None (replay from the streams' start)."""
        gens = {slot: await self._generation(slot) for slot in SLOTS}
        newer, older = sorted(SLOTS, key=gens.__getitem__, reverse=True)
        env = await self._read(newer)
        if env is None or gens[newer] <= gens[older]:  # damaged, or generations not named: both
            env = newest([env, await self._read(older)])
        if env is None:
            return None
        self.generation = env.generation
        _log.info("snapshot loaded", owner=self.owner, generation=env.generation, seqs=env.seqs, bytes=len(env.body))
        return Loaded(body=env.body, seqs=env.seqs, generation=env.generation, at=env.at)

    async def save(self, body: bytes, seqs: Mapping[str, int]) -> None:
        """Store ``body`` as the next generation, in the slot of the older one."""
        generation = self.generation + 1
        data = seal(self.owner, self.version, generation, seqs, body, datetime.now(UTC))
        name = self._name(SLOTS[generation % 2])
        await self._store.put(name, data, meta=ObjectMeta(name=name, description=f"generation {generation}"))
        self.generation = generation
        _log.info("snapshot saved", owner=self.owner, generation=generation, seqs=dict(seqs), bytes=len(body))
