"""JSON Schemas of the wire contract, generated from the msgspec Structs.

Clients in other languages (Go, Java, JavaScript) code against ``schemas/json/``:
one file per request body, reply body and event type, an ``events.json`` with the
tagged union of all events, ``error.json`` for the ADR-32 error body, and an
``index.json`` mapping each subject to its files. Regenerate with ``make schemas``
(``python -m schemas.jsonschema``); ``--check`` only reports stale files, and a unit
test fails when the committed files differ from what :func:`build` produces.

Every file is self-contained (JSON Schema 2020-12, its own ``$defs``), so it can be
used without resolving references across files.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import msgspec
import msgspec.inspect as mi

from schemas import events as ev
from schemas import replies as rp
from schemas import subjects as s
from schemas.jobs import JobRequest, LegacyJobRequest

JSONSchema = dict[str, Any]

DRAFT = "https://json-schema.org/draft/2020-12/schema"
REF_TEMPLATE = "#/$defs/{name}"
OUT_DIR = Path(__file__).resolve().parent / "json"
GENERATED_NOTE = "Generated from the msgspec Structs in schemas/ by `make schemas`; do not edit."


class RequestContract(msgspec.Struct, frozen=True, kw_only=True):
    """What one request subject takes and answers (errors are always ``error.json``)."""

    served_by: str
    request: tuple[Any, ...]
    """The request body: one type, or several alternatives (a ``oneOf``)."""
    reply: tuple[Any, ...]
    """The reply body on success: one type, or several alternatives."""
    description: str


_JOB_SPEC_REQUEST = (JobRequest, LegacyJobRequest)

REQUESTS: dict[str, RequestContract] = {
    s.JOB_SUBMIT: RequestContract(
        served_by="gateway",
        request=_JOB_SPEC_REQUEST,
        reply=(rp.SubmitReply,),
        description="Submit a job (a JobRequest, or the legacy body of the old sampling scheduler).",
    ),
    s.PLACEMENT_REQUEST: RequestContract(
        served_by="gateway",
        request=_JOB_SPEC_REQUEST,
        reply=(ev.PlacementDecided | ev.PlacementFailed | ev.JobRejected,),
        description=(
            "Submit a job and wait for its placement.decided, placement.failed or job.rejected event "
            "(504 with the job_id in the error body when none arrives in time)."
        ),
    ),
    s.JOB_CANCEL: RequestContract(
        served_by="gateway",
        request=(rp.JobRef,),
        reply=(rp.SubmitReply,),
        description="Cancel a job (404 unknown job, 409 already ended).",
    ),
    s.JOB_COMPLETE: RequestContract(
        served_by="gateway",
        request=(rp.CompleteRequest,),
        reply=(rp.SubmitReply,),
        description="Report a job's outcome (404 unknown job, 409 already ended).",
    ),
    s.JOB_GET: RequestContract(
        served_by="metadata",
        request=(rp.JobRef,),
        reply=(rp.JobRecord,),
        description="The job record (404 unknown job).",
    ),
    s.JOB_LIST: RequestContract(
        served_by="metadata",
        request=(rp.ListRequest,),
        reply=(rp.JobListReply,),
        description=(
            "Full job records, newest first, in pages bounded by count (`limit`) and by bytes (a reply always fits "
            "in max_payload), `count` items each, the rest after the opaque cursor `next` (an empty body means {})."
        ),
    ),
    s.JOB_EVENTS: RequestContract(
        served_by="metadata",
        request=(rp.JobEventsRequest,),
        reply=(rp.JobEventsReply,),
        description=(
            "A job's events as published, oldest first, in pages bounded by count and bytes, "
            "the rest after the opaque cursor `next` (404 unknown job)."
        ),
    ),
    s.NODE_LIST: RequestContract(
        served_by="metadata",
        request=(rp.NodeListRequest,),
        reply=(rp.NodeListReply, rp.NodeSummaryReply),
        description=(
            "Known nodes in node_id order (last status, whether active, reserved amounts), in pages bounded by count "
            "and bytes, the rest after the opaque cursor `next`, filtered by `state` and `label`; with "
            "`summary: true`, counts per state and the fleet's capacity in one small reply (an empty body means {})."
        ),
    ),
    s.JOB_SCALE: RequestContract(
        served_by="gateway",
        request=(rp.ScaleRequest,),
        reply=(rp.ScaleReply,),
        description=(
            "Resize a live job to `replicas` (answered once job.scale_requested is stored; 400 bad count, "
            "404 unknown job, 409 ended job). Growth that fits nowhere leaves the job degraded, explained."
        ),
    ),
    s.PLACEMENT_PLAN: RequestContract(
        served_by="placement",
        request=_JOB_SPEC_REQUEST,
        reply=(rp.PlanReply,),
        description=(
            "What would be decided for this JobSpec right now (`decision` and the `preemptions` it would cause, "
            "or the `failure` explanation), booking nothing and storing nothing."
        ),
    ),
    s.NODE_DRAIN: RequestContract(
        served_by="placement",
        request=(rp.NodeDrainRequest,),
        reply=(rp.NodeDrainReply,),
        description=(
            "Drain a node: it takes no new replicas and its replicas move elsewhere (reason `drain`); stored, so it "
            "survives restarts (404 unknown node)."
        ),
    ),
    s.NODE_UNDRAIN: RequestContract(
        served_by="placement",
        request=(rp.NodeUndrainRequest,),
        reply=(rp.NodeDrainReply,),
        description="End a node's drain: it takes replicas again (404 unknown node).",
    ),
    s.QUOTA_SET: RequestContract(
        served_by="placement",
        request=(rp.QuotaSetRequest,),
        reply=(rp.QuotaReply,),
        description=(
            "Operators only: a tenant's quota from now on (stored, replacing the TOML's; null fields unlimited). "
            "Jobs waiting on a concurrent quota are retried at once."
        ),
    ),
    s.QUOTA_GET: RequestContract(
        served_by="placement",
        request=(rp.QuotaRequest,),
        reply=(rp.QuotaReply,),
        description="A tenant's quota and where it comes from (a tenant asks of itself; an empty body means {}).",
    ),
    s.TENANT_USAGE: RequestContract(
        served_by="placement",
        request=(rp.QuotaRequest,),
        reply=(rp.UsageReply,),
        description=(
            "A tenant's usage, derived from the events (running jobs' cpu, memory, gpu, instances; cpu-hours over "
            "the last 30 days), with its quota (a tenant asks of itself; an empty body means {})."
        ),
    ),
}

_EVENT_SUBJECTS: dict[str, str] = {
    s.NODE_STATUS: s.node_status_subject("<node_id>"),
    s.NODE_DRAINING: s.node_draining_subject("<node_id>"),
    s.DEADLETTER: s.deadletter_subject("<service>"),
    s.CLUSTER_INSTANCE_LOST: s.instance_lost_subject("<instance_id>"),
}
"""Event types published on a subject other than their type (one per node / per service)."""


# --- generation ----------------------------------------------------------------
def _children(t: mi.Type) -> Iterable[mi.Type]:
    if isinstance(t, mi.StructType):
        yield from (f.type for f in t.fields)
    elif isinstance(t, mi.UnionType):
        yield from t.types
    elif isinstance(t, mi.ListType | mi.SetType | mi.FrozenSetType | mi.VarTupleType):
        yield t.item_type
    elif isinstance(t, mi.DictType):
        yield t.value_type


def _structs(types: Sequence[Any]) -> dict[str, mi.StructType]:
    """Every Struct reachable from ``types``, by component name."""
    found: dict[str, mi.StructType] = {}
    todo: list[mi.Type] = list(mi.multi_type_info(list(types)))
    while todo:
        t = todo.pop()
        if isinstance(t, mi.StructType):
            if t.cls.__name__ in found:
                continue
            found[t.cls.__name__] = t
        todo.extend(_children(t))
    return found


def _is_datetime(t: mi.Type) -> bool:
    return isinstance(t, mi.DateTimeType)


def _add_datetime_formats(types: Sequence[Any], defs: dict[str, JSONSchema]) -> None:
    """Mark datetime fields ``"format": "date-time"`` (RFC 3339), which msgspec leaves out for naive types."""
    for name, st in _structs(types).items():
        if name not in defs:
            continue
        for field in st.fields:
            prop = defs[name]["properties"][field.encode_name]
            if _is_datetime(field.type):
                prop["format"] = "date-time"
            elif isinstance(field.type, mi.UnionType) and any(_is_datetime(u) for u in field.type.types):
                for branch in prop["anyOf"]:
                    if branch.get("type") == "string":
                        branch["format"] = "date-time"


def _patch(defs: dict[str, JSONSchema]) -> None:
    """What the Structs alone cannot say about the wire."""
    legacy = defs.get(LegacyJobRequest.__name__)
    if legacy is not None:
        # decoded non-strictly: the old scheduler sends the count as a string ("2")
        n = legacy["properties"]["initial_number_of_replicas"]
        rng = {k: n.pop(k) for k in ("minimum", "maximum")}
        del n["type"]
        n["anyOf"] = [{"type": "integer", **rng}, {"type": "string", "pattern": "^[0-9]+$"}]
        n["description"] = "Number of replicas; a string of digits is accepted too (the old scheduler sends '2')."
    events_reply = defs.get(rp.JobEventsReply.__name__)
    if events_reply is not None:
        # msgspec.Raw on our side: each item is an event exactly as it was published
        union, union_defs = msgspec.json.schema_components([ev.AnyEvent], ref_template=REF_TEMPLATE)
        events_reply["properties"]["events"]["items"] = union[0]
        for name, d in union_defs.items():
            defs.setdefault(name, d)


def schema_of(types: Sequence[Any], *, title: str, description: str) -> JSONSchema:
    """A self-contained schema of one type, or a ``oneOf`` of several."""
    roots, defs = msgspec.json.schema_components(list(types), ref_template=REF_TEMPLATE)
    _patch(defs)
    _add_datetime_formats([*types, ev.AnyEvent], defs)  # the events may have been patched in
    out: JSONSchema = {"$schema": DRAFT, "title": title, "description": description, "$comment": GENERATED_NOTE}
    if len(roots) == 1:
        out.update(roots[0])
    else:
        out["oneOf"] = list(roots)
    if defs:
        out["$defs"] = defs
    return out


def _event_subject(event_type: str) -> str:
    return _EVENT_SUBJECTS.get(event_type, event_type)


def _event_stream(event_type: str) -> str:
    subject = _event_subject(event_type).replace("<", "").replace(">", "")
    return next(st.name for st in s.STREAMS if any(s.matches(p, subject) for p in st.subjects))


def _dump(doc: Any) -> str:
    return json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def build() -> dict[str, str]:
    """Every generated file (path relative to ``schemas/json/`` -> text). Pure and deterministic."""
    files: dict[str, str] = {}
    index_requests: dict[str, dict[str, str]] = {}
    for subject, rc in REQUESTS.items():
        req_file, reply_file = f"{subject}.request.json", f"{subject}.reply.json"
        files[req_file] = _dump(schema_of(rc.request, title=f"{subject} request", description=rc.description))
        files[reply_file] = _dump(schema_of(rc.reply, title=f"{subject} reply", description=rc.description))
        index_requests[subject] = {
            "served_by": rc.served_by,
            "request": req_file,
            "reply": reply_file,
            "error": "error.json",
        }
    files["error.json"] = _dump(
        schema_of(
            [rp.ErrorBody],
            title="error reply",
            description=(
                "Body of every error reply, next to the headers Nats-Service-Error and Nats-Service-Error-Code "
                "(400 bad input, 404 unknown job, 409 wrong state, 413 too large, 500 bug, 503 dependency down, "
                "504 not ready in time: job_id is then set)."
            ),
        )
    )
    index_events: dict[str, dict[str, str]] = {}
    for event_type, cls in sorted(ev.EVENT_TYPES.items()):
        path = f"events/{event_type}.json"
        subject = _event_subject(event_type)
        files[path] = _dump(
            schema_of([cls], title=f"{event_type} event", description=f"Published on `{subject}`; tag: type.")
        )
        index_events[event_type] = {"schema": path, "subject": subject, "stream": _event_stream(event_type)}
    files["events.json"] = _dump(
        schema_of(
            [ev.AnyEvent],
            title="any event",
            description="Every event: a union tagged by the field `type` (see `discriminator`).",
        )
    )
    files["index.json"] = _dump(
        {
            "$comment": GENERATED_NOTE,
            "error": "error.json",
            "events": index_events,
            "events_union": "events.json",
            "requests": index_requests,
        }
    )
    return files


# --- writing -----------------------------------------------------------------------
def _on_disk(out_dir: Path) -> dict[str, str]:
    if not out_dir.is_dir():
        return {}
    return {p.relative_to(out_dir).as_posix(): p.read_text() for p in sorted(out_dir.rglob("*.json"))}


def stale(out_dir: Path = OUT_DIR) -> list[str]:
    """Files that differ from the generator's output, are missing, or should no longer exist."""
    want, have = build(), _on_disk(out_dir)
    return sorted(p for p in want.keys() | have.keys() if want.get(p) != have.get(p))


def write(out_dir: Path = OUT_DIR) -> list[str]:
    """Write every schema file, delete generated files that no longer exist; returns the changed paths."""
    want, have = build(), _on_disk(out_dir)
    changed: list[str] = []
    for rel in sorted(have.keys() - want.keys()):
        (out_dir / rel).unlink()
        changed.append(rel)
    for rel, text in want.items():
        if have.get(rel) != text:
            target = out_dir / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
            changed.append(rel)
    return sorted(changed)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args == ["--check"]:
        bad = stale()
        if bad:
            sys.stderr.write("stale JSON Schemas (run `make schemas`): " + ", ".join(bad) + "\n")
            return 1
        sys.stdout.write(f"JSON Schemas in {OUT_DIR} are up to date\n")
        return 0
    if args:
        sys.stderr.write("usage: python -m schemas.jsonschema [--check]\n")
        return 2
    changed = write()
    sys.stdout.write(f"{len(changed)} file(s) changed in {OUT_DIR}\n")
    for rel in changed:
        sys.stdout.write(f"  {rel}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
