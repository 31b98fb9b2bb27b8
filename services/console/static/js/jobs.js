// Jobs: counts by state and the newest jobs (job.list), a search by job id and a job's detail (job.get,
// and job.events for the assignments of every revision). Refreshed after job events, at most once a second.
import { el, fmt } from "./dom.js";

const NEWEST = 200;
const TABLE_ROWS = 50;

export class Jobs {
  constructor(root, config) {
    this.config = config;
    this.ask = null;
    this.jobs = [];
    this.selected = null;
    this.listDirty = false;
    this.detailDirty = false;
    this.busy = false;
    this.countsEl = root.querySelector("#job-counts");
    this.tbody = root.querySelector("#job-table tbody");
    this.noteEl = root.querySelector("#job-note");
    this.detailEl = root.querySelector("#job-detail");
    root.querySelector("#job-search").addEventListener("submit", (e) => {
      e.preventDefault();
      const id = root.querySelector("#job-id").value.trim();
      if (id) this.select(id);
    });
  }

  attach(ask) {
    this.ask = ask;
    this.listDirty = true;
    if (this.selected) this.detailDirty = true;
  }

  detach() {
    this.ask = null;
  }

  // A job event arrived: the list (and the detail, if it is that job) is refreshed by the next tick.
  changed(jobId) {
    this.listDirty = true;
    if (jobId && jobId === this.selected) this.detailDirty = true;
  }

  async tick() {
    if (this.busy || this.ask === null) return;
    this.busy = true;
    try {
      if (this.listDirty) {
        this.listDirty = false;
        await this.refreshList();
      }
      if (this.detailDirty && this.selected) {
        this.detailDirty = false;
        await this.refreshDetail();
      }
    } catch (err) {
      this.noteEl.textContent = `job.list failed: ${err.message}; retrying`;
      this.listDirty = true;
    } finally {
      this.busy = false;
    }
  }

  async refreshList() {
    const reply = await this.ask(this.config.subjects.job_list, { limit: NEWEST });
    this.jobs = reply.jobs;
    const counts = new Map(this.config.states.map((s) => [s, 0]));
    for (const job of this.jobs) counts.set(job.state, (counts.get(job.state) ?? 0) + 1);
    this.countsEl.replaceChildren(
      ...[...counts]
        .filter(([, n]) => n > 0)
        .map(([state, n]) =>
          el("span", { class: `count state-${state}`, "data-count-state": state }, el("b", {}, fmt.int(n)), ` ${state}`),
        ),
    );
    const n = fmt.int(this.jobs.length);
    const scope = reply.next ? `the newest ${n} jobs` : `all ${n} jobs`;
    this.noteEl.textContent = this.jobs.length ? `counts of ${scope}; newest ${TABLE_ROWS} listed` : "no jobs yet";
    this.tbody.replaceChildren(...this.jobs.slice(0, TABLE_ROWS).map((job) => this.row(job)));
  }

  row(job) {
    const spec = job.spec ?? {};
    const where = (job.placement?.assignments ?? []).map((a) => a.node_id ?? a.instance_type).join(", ");
    return el(
      "tr",
      {
        "data-job-id": job.job_id,
        "data-state": job.state,
        class: job.job_id === this.selected ? "selected" : "",
        onclick: () => this.select(job.job_id),
      },
      el("td", { class: "mono" }, job.job_id),
      el("td", {}, spec.name ?? ""),
      el("td", {}, el("span", { class: `state state-${job.state}` }, job.state)),
      el("td", {}, spec.cluster ?? ""),
      el("td", { class: "num" }, spec.replicas ?? ""),
      el("td", { class: "where" }, where),
      el("td", {}, fmt.time(job.submitted_at)),
    );
  }

  select(jobId) {
    this.selected = jobId;
    this.detailDirty = true;
    for (const tr of this.tbody.querySelectorAll("tr")) tr.classList.toggle("selected", tr.dataset.jobId === jobId);
    this.detailEl.replaceChildren(el("p", { class: "muted" }, `loading ${jobId}…`));
    this.tick();
  }

  async refreshDetail() {
    const jobId = this.selected;
    let job;
    try {
      job = await this.ask(this.config.subjects.job_get, { job_id: jobId });
    } catch (err) {
      const text = err.code === 404 ? `no job ${jobId}` : `job.get ${jobId} failed: ${err.message}`;
      this.detailEl.replaceChildren(el("p", { class: "error", "data-job-missing": jobId }, text));
      return;
    }
    let decisions = [];
    try {
      const events = await this.ask(this.config.subjects.job_events, { job_id: jobId });
      decisions = events.events.filter((e) => e.type === this.config.subjects.placement_decided);
    } catch {
      // the revisions are shown from the record alone
    }
    if (jobId === this.selected) this.detailEl.replaceChildren(detail(job, decisions));
  }
}

function detail(job, decisions) {
  const p = job.placement;
  const parts = [
    el("h3", {}, el("span", { class: "mono" }, job.job_id), " ", el("span", { class: `state state-${job.state}` }, job.state)),
  ];
  const explanation = job.reason ?? p?.degraded_reason;
  if (explanation) parts.push(el("p", { class: "explanation", "data-explanation": "" }, explanation));
  if (p?.missing?.length) parts.push(el("p", { class: "error" }, `missing replicas: ${p.missing.join(", ")}`));
  parts.push(el("h4", {}, "Assignments"), revisions(job, decisions));
  if (job.instances.length) {
    parts.push(
      el("h4", {}, "Instances"),
      table(
        ["replica", "instance", "type", "state", "ip"],
        job.instances.map((i) => [i.replica, i.instance_id, i.instance_type, i.state, i.private_ip ?? "–"]),
      ),
    );
  }
  parts.push(
    el("h4", {}, "History"),
    el("ol", { class: "history" }, ...job.history.map((h) => el("li", {}, `${fmt.when(h.at)} `, el("b", {}, h.state)))),
    el("h4", {}, "Spec"),
    el("pre", { class: "spec" }, JSON.stringify(job.spec, null, 2)),
  );
  return el("div", {}, ...parts);
}

function revisions(job, decisions) {
  const p = job.placement;
  if (!p) return el("p", { class: "muted" }, "not placed");
  const changes = new Map((p.revisions ?? []).map((r) => [r.revision, r.changes ?? []]));
  const rows = decisions.length ? decisions : [{ revision: p.revision, at: job.updated_at, assignments: p.assignments }];
  return el(
    "div",
    { class: "revisions" },
    ...rows
      .slice()
      .reverse()
      .map((d) => {
        const moved = changes.get(d.revision ?? 1) ?? d.changes ?? [];
        return el(
          "div",
          { class: "revision", "data-revision": d.revision ?? 1 },
          el("b", {}, `revision ${d.revision ?? 1}`),
          ` ${fmt.when(d.at)} `,
          moved.length
            ? el("span", { class: "muted" }, moved.map((c) => `r${c.replica} ${c.from ?? "–"}→${c.to ?? "–"} (${c.reason})`).join("; "))
            : "",
          el(
            "div",
            { class: "assignments" },
            ...(d.assignments ?? []).map((a) => el("span", { class: "assignment" }, `r${a.replica} ${a.node_id ?? a.instance_type}`)),
          ),
        );
      }),
  );
}

function table(head, rows) {
  return el(
    "table",
    {},
    el("thead", {}, el("tr", {}, ...head.map((h) => el("th", {}, h)))),
    el("tbody", {}, ...rows.map((r) => el("tr", {}, ...r.map((c) => el("td", {}, c))))),
  );
}
