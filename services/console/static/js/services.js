// Services: every micro service instance ($SRV.STATS, asked every few seconds) with its requests and
// errors per endpoint; an instance that stops answering stays listed as silent, one whose error count
// grew since the last poll is marked as erroring.
import { el, fmt } from "./dom.js";

const WAIT_MS = 1000;

export class Services {
  constructor(root, config) {
    this.config = config;
    this.tbody = root.querySelector("#svc-table tbody");
    this.noteEl = root.querySelector("#svc-note");
    this.instances = new Map();
    this.busy = false;
  }

  async poll(nc) {
    if (this.busy) return;
    this.busy = true;
    const now = Date.now();
    try {
      const replies = await nc.requestMany(this.config.subjects.srv_stats, "", { strategy: "timer", maxWait: WAIT_MS });
      for await (const msg of replies) {
        let stats;
        try {
          stats = msg.json();
        } catch {
          continue;
        }
        const before = this.instances.get(stats.id);
        const errors = (stats.endpoints ?? []).reduce((sum, ep) => sum + (ep.num_errors ?? 0), 0);
        this.instances.set(stats.id, { stats, seen: now, errors, grew: before ? errors > before.errors : errors > 0 });
      }
      this.render(now);
    } catch (err) {
      this.noteEl.textContent = `$SRV.STATS failed: ${err.message}`;
    } finally {
      this.busy = false;
    }
  }

  render(now) {
    const rows = [];
    const all = [...this.instances.values()].sort(
      (a, b) => a.stats.name.localeCompare(b.stats.name) || a.stats.id.localeCompare(b.stats.id),
    );
    for (const inst of all) {
      const s = inst.stats;
      const silent = inst.seen < now;
      const eps = s.endpoints?.length ? s.endpoints : [null];
      for (const ep of eps) {
        const cls = silent ? "silent" : ep && inst.grew && ep.num_errors > 0 ? "erroring" : "";
        rows.push(
          el(
            "tr",
            { class: cls, "data-service": s.name, "data-instance": s.id },
            el("td", {}, s.name),
            el("td", { class: "mono", title: s.id }, s.id.slice(-8)),
            el("td", {}, s.version),
            el("td", {}, silent ? `silent since ${fmt.time(new Date(inst.seen).toISOString())}` : `up ${uptime(s.started, now)}`),
            el("td", {}, ep ? ep.subject : "—"),
            el("td", { class: "num" }, ep ? fmt.int(ep.num_requests) : ""),
            el("td", { class: "num errors" }, ep ? fmt.int(ep.num_errors) : ""),
            el("td", { class: "num" }, ep ? `${fmt.num((ep.average_processing_time ?? 0) / 1e6)} ms` : ""),
            el("td", { class: "last-error" }, ep?.last_error ?? ""),
          ),
        );
      }
    }
    this.tbody.replaceChildren(...rows);
    const names = new Set(all.filter((i) => i.seen === now).map((i) => i.stats.name));
    this.noteEl.textContent = `${all.filter((i) => i.seen === now).length} instances of ${names.size} services answered at ${fmt.time(new Date(now).toISOString())}`;
  }
}

function uptime(started, now) {
  const s = Math.max(0, (now - Date.parse(started)) / 1000);
  if (s < 120) return `${Math.round(s)} s`;
  if (s < 7200) return `${Math.round(s / 60)} min`;
  return `${fmt.num(s / 3600)} h`;
}
