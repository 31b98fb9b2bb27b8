"""``natsched``'s command line: the parser of every command and its options."""

from __future__ import annotations

import argparse

from services.cli import jobspec


def _connection(p: argparse.ArgumentParser, *, given_only: bool) -> None:
    """The connection and output options. ``given_only``: leave an option out of the result
    unless it is given (a command's copy, so ``natsched --server URL ping`` keeps the URL given
    before the command as well as ``natsched ping --server URL``)."""
    none: object = argparse.SUPPRESS if given_only else None
    false: object = argparse.SUPPRESS if given_only else False
    g = p.add_argument_group("connection and output")
    g.add_argument(
        "-s",
        "--server",
        default=none,
        help="NATS URL(s), comma-separated (default: $NATS_URL or nats://127.0.0.1:4222)",
    )
    g.add_argument(
        "--user", default=none, help="NATS user (default: $NATS_USER, else the development user of the command)"
    )
    g.add_argument(
        "--password", default=none, help="NATS password (default: $NATS_PASSWORD, else the development password)"
    )
    g.add_argument(
        "--context",
        default=none,
        metavar="NAME",
        help="URL, user and password of the nats CLI's context NAME"
        " ($XDG_CONFIG_HOME/nats/context/NAME.json; flags win over it, it wins over $NATS_*)",
    )
    g.add_argument(
        "--timeout", type=float, default=none, help="seconds to wait for an answer (default 5; 15 for submit --wait)"
    )
    g.add_argument(
        "--json", action="store_true", default=false, help="plain JSON on stdout (one object per line for watch)"
    )
    g.add_argument(
        "--no-color", action="store_true", default=false, help="no colours (also: NO_COLOR set, or not a terminal)"
    )


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    _connection(common, given_only=True)

    p = argparse.ArgumentParser(
        prog="natsched",
        description="Submit and follow jobs of the natsched cluster scheduler (talks NATS; see docs/OPERATIONS.md).",
    )
    _connection(p, given_only=False)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    c = sub.add_parser("submit", parents=[common], help="submit a job (flags or a JSON/TOML file)")
    jobspec.add_flags(c)
    c.add_argument("--msg-id", help="idempotency key sent as the Nats-Msg-Id header (wins over --request-id)")
    c.add_argument("--wait", action="store_true", help="ask placement.request: wait for the decision and print it")

    c = sub.add_parser("plan", parents=[common], help="what placement would decide for a job now (books nothing)")
    jobspec.add_flags(c)

    c = sub.add_parser("scale", parents=[common], help="resize a live job to N replicas (the latest request wins)")
    c.add_argument("job_id")
    c.add_argument("replicas", type=int, metavar="N")
    c.add_argument("--msg-id", help="idempotency key sent as the Nats-Msg-Id header")

    c = sub.add_parser("get", parents=[common], help="a job's record: state, placement, instances, history")
    c.add_argument("job_id")

    c = sub.add_parser("list", parents=[common], help="jobs, newest first")
    c.add_argument("--state", help="only jobs in this state (pending, placed, failed, ...)")
    c.add_argument("--limit", type=int, default=100, help="jobs per page, 1-1000 (default 100)")
    c.add_argument("--after", help="the cursor printed by the previous page")
    c.add_argument("--all", action="store_true", help="every page, following the cursor")

    c = sub.add_parser("cancel", parents=[common], help="cancel a job")
    c.add_argument("job_id")

    c = sub.add_parser("complete", parents=[common], help="report that a job ended")
    c.add_argument("job_id")
    c.add_argument("--outcome", choices=["succeeded", "failed"], default="succeeded")
    c.add_argument("--message", help="why (free text)")

    c = sub.add_parser("nodes", parents=[common], help="the fleet's summary and its nodes: state, free, reserved")
    c.add_argument("--state", choices=["active", "inactive", "draining", "down"], help="only nodes in this state")
    c.add_argument("--label", help="only nodes with this label, KEY=VALUE")
    c.add_argument("--limit", type=int, default=500, help="nodes per page, 1-5000 (default 500)")
    c.add_argument("--after", help="the cursor printed by the previous page")
    c.add_argument("--all", action="store_true", help="every page, following the cursor")

    c = sub.add_parser("drain", parents=[common], help="drain a node: no new replicas, its replicas move")
    c.add_argument("node_id", metavar="NODE")
    c.add_argument("--reason", help="why (free text, shown in node.draining)")

    c = sub.add_parser("undrain", parents=[common], help="end a node's drain: it takes replicas again")
    c.add_argument("node_id", metavar="NODE")

    c = sub.add_parser("watch", parents=[common], help="live job, placement and cluster events")
    c.add_argument("job_id", nargs="?", help="only this job's events")
    c.add_argument("--history", action="store_true", help="first print the job's past events (job.events)")
    c.add_argument("--until-done", action="store_true", help="stop at the job's final event")
    c.add_argument("--count", type=int, help="stop after this many events")
    c.add_argument("--nodes", action="store_true", help="node status and drain facts too")

    c = sub.add_parser("simulate-nodes", parents=[common], help="publish the status of N simulated nodes")
    c.add_argument("count", type=int, metavar="N")
    c.add_argument("--interval", type=float, default=3.0, help="seconds between rounds (default 3)")
    c.add_argument("--rounds", type=int, help="stop after this many rounds (default: until Ctrl-C)")
    c.add_argument("--seed", type=int, default=42)
    c.add_argument("--prefix", default="node", help="node ids are PREFIX-000, PREFIX-001, ...")
    c.add_argument(
        "--offset", type=int, default=0, help="number the nodes from this one: a second fleet to Ctrl-C (lose) by hand"
    )
    c = sub.add_parser(
        "quota",
        parents=[common],
        help="a tenant's quota; `quota set TENANT --cpu X ...` replaces it (operators)",
        description="natsched quota [TENANT]: the tenant's quota (default: your own, or `default`)."
        " natsched quota set TENANT [--cpu X] [--memory-mb N] [--gpu N] [--jobs N] [--instances N]"
        " [--cpu-hours X]: the tenant's quota from now on; a limit not given is unlimited.",
    )
    c.add_argument("words", nargs="*", metavar="[set] TENANT", help="TENANT, or `set TENANT`")
    c.add_argument("--cpu", type=float, help="cores at once, over the replicas of its running jobs")
    c.add_argument("--memory-mb", type=int, help="MiB of memory at once")
    c.add_argument("--gpu", type=int, help="GPUs at once")
    c.add_argument("--jobs", type=int, help="running jobs at once")
    c.add_argument("--instances", type=int, help="dedicated instances at once")
    c.add_argument("--cpu-hours", type=float, help="cores x hours per rolling 30 days")

    c = sub.add_parser("usage", parents=[common], help="a tenant's usage against its quota (e.g. `cpu 6 of 8`)")
    c.add_argument("tenant", nargs="?", help="default: your own tenant, or `default`")

    c = sub.add_parser("ping", parents=[common], help="the service instances that answer (default timeout 1 s)")
    c.add_argument("name", nargs="?", help="gateway, intake, placement, metadata, provisioner, teardown")
    c.add_argument("--host", help="succeed only if an instance on this host answers (container health checks)")
    return p
