"""The body of ``job.submit`` from a JSON/TOML file and command-line flags (flags win).

The CLI does not validate the spec itself: the gateway does, and its 400 names the field.
"""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from pathlib import Path
from typing import Any, get_args

from schemas.types import Cluster, PreemptionPolicy, Strategy


class SpecError(ValueError):
    """The file or a flag cannot be read."""


def read_file(path: str) -> dict[str, Any]:
    """A JSON (or, by suffix, TOML) object; ``-`` reads JSON from stdin."""
    try:
        if path == "-":
            data: Any = json.load(sys.stdin)
        elif path.endswith(".toml"):
            with open(path, "rb") as f:
                data = tomllib.load(f)
        else:
            data = json.loads(Path(path).read_text())
    except OSError as e:
        raise SpecError(f"cannot read {path}: {e.strerror or e}") from None
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
        raise SpecError(f"{path} is not valid {'TOML' if path.endswith('.toml') else 'JSON'}: {e}") from None
    if not isinstance(data, dict):
        raise SpecError(f"{path} must hold an object (the JobSpec), not {type(data).__name__}")
    return data


def _label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise SpecError(f"--label wants KEY=VALUE, not {text!r}")
    return key, value


def _near(text: str) -> dict[str, float]:
    try:
        lat, lon, km = (float(x) for x in text.split(","))
    except ValueError:
        raise SpecError(f"--near wants LAT,LON,MAX_KM, not {text!r}") from None
    return {"lat": lat, "lon": lon, "max_km": km}


def build(args: argparse.Namespace) -> dict[str, Any]:
    """The file's object (if any) with every given flag set on top."""
    body = read_file(args.file) if args.file else {}

    def put(path: tuple[str, ...], value: Any) -> None:
        if value is None:
            return
        node = body
        for key in path[:-1]:
            child = node.get(key)
            if not isinstance(child, dict):
                child = node[key] = {}
            node = child
        node[path[-1]] = value

    put(("name",), args.name)
    put(("technology",), args.technology)
    put(("replicas",), args.replicas)
    put(("cluster",), args.cluster)
    put(("strategy",), args.strategy)
    put(("max_runtime_s",), args.max_runtime_s)
    put(("priority",), args.priority)
    put(("request_id",), args.request_id)
    put(("resources", "cpu"), args.cpu)
    put(("resources", "memory_mb"), args.memory_mb)
    put(("resources", "gpu"), args.gpu)
    if args.label:
        put(("constraints", "labels"), dict(_label(text) for text in args.label))
    if args.node:
        put(("constraints", "nodes"), list(args.node))
    if args.spread:
        put(("constraints", "spread"), True)
    put(("constraints", "spread_by"), args.spread_by)
    if args.near:
        put(("constraints", "near"), _near(args.near))
    put(("preemption",), args.preemption)
    put(("workload", "image"), args.image)
    put(("workload", "probability_definition"), args.probability_definition)
    if args.arg:
        put(("workload", "args"), list(args.arg))
    return body


def add_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--file", help="JobSpec as JSON, or TOML by the .toml suffix; '-' reads JSON from stdin")
    p.add_argument("--name", help="job name (required unless in the file)")
    p.add_argument("--technology", help="docker, unikernel, ... (default from the configuration)")
    p.add_argument("--replicas", type=int)
    p.add_argument("--cpu", type=float, help="cores per replica (fractions allowed)")
    p.add_argument("--memory-mb", type=int, help="MiB per replica")
    p.add_argument("--gpu", type=int, help="GPUs per replica")
    p.add_argument("--cluster", choices=get_args(Cluster))
    p.add_argument("--strategy", choices=get_args(Strategy), help="nearest needs --near")
    p.add_argument("--label", action="append", metavar="KEY=VALUE", help="node label constraint (repeatable)")
    p.add_argument("--node", action="append", metavar="NODE_ID", help="allowed node (repeatable)")
    p.add_argument("--spread", action="store_true", help="never two replicas on one node")
    p.add_argument("--spread-by", metavar="LABEL_KEY", help="spread replicas evenly over this label's values (zone)")
    p.add_argument("--near", metavar="LAT,LON,MAX_KM", help="only nodes within MAX_KM of this point")
    p.add_argument("--preemption", choices=get_args(PreemptionPolicy), help="may this job take lower priorities' room")
    p.add_argument("--image", help="workload image")
    p.add_argument("--probability-definition", help="workload probability definition (gs://...)")
    p.add_argument("--arg", action="append", help="workload argument (repeatable)")
    p.add_argument("--max-runtime-s", type=int)
    p.add_argument("--priority", type=int, help="0-1000, higher is placed first when jobs wait")
    p.add_argument("--request-id", help="idempotency key: the same key gives the same job")
