"""The web console under a large fleet, measured in the browser: ``python -m tests.bench console``.

Starts nats-server (the repo's nats.conf, its websocket listener), PostgreSQL, gateway, intake, placement
and metadata, a simulated fleet (``BENCH_CONSOLE_NODES``, default 10,000, each reporting every
``BENCH_CONSOLE_INTERVAL_S``, default 5 s, through ``python -m services.simnodes``) and the console's
static server; opens the page in headless Chromium (Debian's, through Playwright) and, once it shows every
node, measures for ``BENCH_CONSOLE_S`` seconds (default 30) while a job is submitted every 2 s:

- frames: ``requestAnimationFrame`` intervals in the page (frames per second, p50/p99/max interval, frames
  longer than 50 ms) and long tasks (``PerformanceObserver('longtask')``);
- updates: node statuses applied per second, fleet redraws per second, redraw time (mean, max) and update
  lag (from the first status not yet drawn to the redraw that drew it: p50/p95/max), from the page's own
  counters (``window.natschedConsole.stats``);
- CPU: the renderer's main-thread busy time (CDP ``Performance.getMetrics`` TaskDuration) and the CPU time
  of every Chromium process (``/proc``), as a share of one core over the window.

Writes the screenshot ``docs/console.png`` (the README shows it) unless ``BENCH_CONSOLE_SCREENSHOT=0``.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

from schemas import subjects as s
from services.console import ConsoleServer
from services.console.config import encode, page_config
from services.devstack import ServiceProcess, spawn_service
from services.runtime.config import Timeouts
from services.runtime.credentials import client_environ, password
from tests.support.browser import CHROMIUM, CHROMIUM_ARGS
from tests.support.servers import REPO, create_database, wait_for_services
from tests.support.system import servers_only

TICKS = os.sysconf("SC_CLK_TCK")

_PROBE = """() => {
  const w = window.__bench = {frames: [], longtasks: [], last: performance.now()};
  const s = window.natschedConsole.stats;
  w.start = {messages: s.messages, renders: s.renders, renderMs: s.renderMs};
  s.lags.length = 0; s.renderMaxMs = 0;
  const tick = (t) => { w.frames.push(t - w.last); w.last = t; if (!w.stop) requestAnimationFrame(tick); };
  requestAnimationFrame(tick);
  new PerformanceObserver((list) => { for (const e of list.getEntries()) w.longtasks.push(e.duration); })
    .observe({type: "longtask"});
}"""
_RESULT = """() => {
  const w = window.__bench; w.stop = true;
  const s = window.natschedConsole.stats;
  return {frames: w.frames, longtasks: w.longtasks, lags: s.lags, renderMaxMs: s.renderMaxMs,
          messages: s.messages - w.start.messages, renders: s.renders - w.start.renders,
          renderMs: s.renderMs - w.start.renderMs};
}"""


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def _descendants(root: int) -> set[int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _chromium_cpu_s() -> tuple[float, float]:
    """CPU seconds (user + system) of our Chromium processes: (all of them, the renderers)."""
    total = renderers = 0.0
    for pid in _descendants(os.getpid()):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if b"chromium" not in cmdline:
            continue
        cpu = (int(fields[11]) + int(fields[12])) / TICKS
        total += cpu
        if b"--type=renderer" in cmdline:
            renderers += cpu
    return total, renderers


async def _metrics(cdp: Any) -> dict[str, float]:
    reply = await cdp.send("Performance.getMetrics")
    return {m["name"]: m["value"] for m in reply["metrics"]}


async def _measure(url: str, nodes: int, window_s: float, submit: Any, shot: Path | None) -> dict[str, Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 1000})
            cdp = await page.context.new_cdp_session(page)
            await cdp.send("Performance.enable")
            t0 = time.perf_counter()
            await page.goto(url)
            total = page.locator("#fleet-total")
            await page.wait_for_function(
                "n => window.natschedConsole && window.natschedConsole.panels.fleet.order.length >= n",
                arg=nodes,
                timeout=120_000,
            )
            all_shown_s = time.perf_counter() - t0
            await asyncio.sleep(5)  # warm-up: the first node.list pages and the first full redraws
            await page.evaluate(_PROBE)
            m0, c0, w0 = await _metrics(cdp), _chromium_cpu_s(), time.perf_counter()
            submitted = 0
            while time.perf_counter() - w0 < window_s:
                await submit(submitted)
                submitted += 1
                await asyncio.sleep(2)
            m1, c1, w1 = await _metrics(cdp), _chromium_cpu_s(), time.perf_counter()
            r = await page.evaluate(_RESULT)
            shown = await total.inner_text()
            if shot is not None:
                await page.screenshot(path=shot, full_page=True)
        finally:
            await browser.close()
    wall = w1 - w0
    frames = [f for f in r["frames"][1:] if f > 0]
    return {
        "nodes": nodes,
        "shown": shown,
        "window_s": round(wall, 1),
        "jobs_submitted": submitted,
        "all_nodes_shown_s": round(all_shown_s, 1),
        "fps": round(len(frames) / wall, 1),
        "frame_ms_p50": round(_pct(frames, 0.5), 1),
        "frame_ms_p99": round(_pct(frames, 0.99), 1),
        "frame_ms_max": round(max(frames, default=0), 1),
        "frames_over_50ms": sum(1 for f in frames if f > 50),
        "longtasks": len(r["longtasks"]),
        "longtask_ms_max": round(max(r["longtasks"], default=0), 1),
        "updates_per_s": round(r["messages"] / wall),
        "redraws_per_s": round(r["renders"] / wall, 2),
        "redraw_ms_mean": round(r["renderMs"] / max(1, r["renders"]), 1),
        "redraw_ms_max": round(r["renderMaxMs"], 1),
        "lag_ms_p50": round(_pct(r["lags"], 0.5)),
        "lag_ms_p95": round(_pct(r["lags"], 0.95)),
        "lag_ms_max": round(max(r["lags"], default=0)),
        "main_thread_busy_pct": round(100 * (m1["TaskDuration"] - m0["TaskDuration"]) / wall, 1),
        "script_pct": round(100 * (m1["ScriptDuration"] - m0["ScriptDuration"]) / wall, 1),
        "renderer_cpu_pct": round(100 * (c1[1] - c0[1]) / wall, 1),
        "chromium_cpu_pct": round(100 * (c1[0] - c0[0]) / wall, 1),
        "load_avg": round(os.getloadavg()[0], 2),
    }


async def run() -> dict[str, Any]:
    nodes = int(os.environ.get("BENCH_CONSOLE_NODES", "10000"))
    interval = os.environ.get("BENCH_CONSOLE_INTERVAL_S", "5")
    window_s = float(os.environ.get("BENCH_CONSOLE_S", "30"))
    shot = None if os.environ.get("BENCH_CONSOLE_SCREENSHOT") == "0" else REPO / "docs" / "console.png"
    procs: list[ServiceProcess] = []
    async with servers_only("console") as b:
        try:
            env = {**b.env, "DATABASE_URL": await create_database(b.admin_url, "bench_console")}
            names = ("metadata", "placement", "gateway", "intake")
            procs += [spawn_service(n, env, log_path=b.tmp / f"{n}.log") for n in names]
            await wait_for_services(b.nc, names, timeout=60)
            fleet_env = {**env, **client_environ("node")}
            args = ["--count", str(nodes), "--interval", interval]
            procs.append(spawn_service("simnodes", fleet_env, args, log_path=b.tmp / "simnodes.log"))

            async def projected() -> bool:
                reply = await b.nc.request(s.NODE_LIST, b'{"summary": true}', timeout=30)
                return bool(json.loads(reply.data).get("summary", {}).get("total", 0) >= nodes)

            deadline = time.monotonic() + 300
            while not await projected():
                if time.monotonic() > deadline:
                    raise TimeoutError(f"console bench: {nodes} nodes not projected in 300 s")
                await asyncio.sleep(0.5)

            async def submit(i: int) -> None:
                body = {"name": f"bench-{i}", "replicas": 1 + i % 3, "resources": {"cpu": 1 + i % 4}}
                await b.nc.request(s.JOB_SUBMIT, json.dumps(body).encode(), timeout=10)

            config = page_config((b.nats.websocket_url,), "console", password("console"), Timeouts())
            with ConsoleServer(encode(config), log_dir=b.tmp) as web:
                return await _measure(web.url, nodes, window_s, submit, shot)
        finally:
            for proc in procs:
                proc.stop()


def markdown(result: dict[str, Any]) -> str:
    r = result
    rows = [
        ("nodes shown (status every " + os.environ.get("BENCH_CONSOLE_INTERVAL_S", "5") + " s)", r["shown"]),
        ("page open → every node drawn", f"{r['all_nodes_shown_s']} s"),
        ("frames per second (rAF)", r["fps"]),
        ("frame interval p50 / p99 / max", f"{r['frame_ms_p50']} / {r['frame_ms_p99']} / {r['frame_ms_max']} ms"),
        ("frames over 50 ms", r["frames_over_50ms"]),
        ("long tasks (longest)", f"{r['longtasks']} ({r['longtask_ms_max']} ms)"),
        ("node updates applied per second", r["updates_per_s"]),
        ("fleet redraws per second", r["redraws_per_s"]),
        ("redraw time mean / max", f"{r['redraw_ms_mean']} / {r['redraw_ms_max']} ms"),
        ("update lag p50 / p95 / max", f"{r['lag_ms_p50']} / {r['lag_ms_p95']} / {r['lag_ms_max']} ms"),
        ("renderer main thread busy (script)", f"{r['main_thread_busy_pct']} % ({r['script_pct']} %)"),
        ("CPU: renderer / all Chromium processes", f"{r['renderer_cpu_pct']} % / {r['chromium_cpu_pct']} % of a core"),
        ("jobs submitted meanwhile; load average", f"{r['jobs_submitted']}; {r['load_avg']}"),
    ]
    lines = [f"### Web console, {r['nodes']} simulated nodes, {r['window_s']} s in headless Chromium", ""]
    lines += ["| measure | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]
    return "\n".join(lines) + "\n"
