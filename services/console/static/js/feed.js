// The live feed of placement events (decided, failed, degraded, released) as they happen: messages are
// queued by the subscription and put on the page by the render tick, newest first, the last 200 kept.
import { el, fmt } from "./dom.js";

const KEEP = 200;

export class Feed {
  constructor(root, config) {
    this.config = config;
    this.list = root.querySelector("#feed-list");
    this.pending = [];
  }

  push(subject, event) {
    this.pending.push({ subject, event });
  }

  render() {
    if (this.pending.length === 0) return;
    const items = this.pending.splice(0).slice(-KEEP).reverse().map(({ subject, event }) => item(subject, event));
    this.list.prepend(...items);
    while (this.list.childElementCount > KEEP) this.list.lastElementChild.remove();
  }
}

function item(subject, e) {
  const kind = subject.split(".").pop();
  return el(
    "li",
    { class: `feed feed-${kind}`, "data-job-id": e.job_id, "data-type": subject },
    el("span", { class: "at" }, fmt.time(e.at)),
    el("span", { class: `kind kind-${kind}` }, kind),
    el("span", { class: "mono" }, e.job_id),
    el("span", { class: "what" }, summary(kind, e)),
  );
}

function summary(kind, e) {
  switch (kind) {
    case "decided": {
      const where = (e.assignments ?? []).map((a) => a.node_id ?? a.instance_type);
      const shown = where.slice(0, 4).join(", ") + (where.length > 4 ? ` +${where.length - 4}` : "");
      const rev = (e.revision ?? 1) > 1 ? `rev ${e.revision}: ` : "";
      const why = (e.changes ?? []).map((c) => c.reason).filter((r, i, all) => all.indexOf(r) === i);
      return `${rev}${e.cluster} ${e.strategy} → ${shown}${why.length ? ` (${why.join(", ")})` : ""}`;
    }
    case "failed":
      return e.reason;
    case "degraded":
      return `replicas ${(e.missing ?? []).join(", ")} missing: ${e.reason}`;
    default:
      return e.reason ?? "";
  }
}
