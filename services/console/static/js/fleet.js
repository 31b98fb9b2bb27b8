// The fleet: every node as a cell of one canvas, coloured by CPU use, grey when inactive, marked when
// draining or lost. Statuses only update a table; the canvas is redrawn by the page's render tick (a few
// times a second), never per message, so 10,000 nodes reporting every 5 s cost ~2,000 small updates a
// second and a handful of redraws.
import { el, fmt } from "./dom.js";

const collator = new Intl.Collator("en", { numeric: true });
const STATES = ["active", "draining", "inactive", "lost"];
const MARKED_MAX = 40;
const COLOURS = Array.from({ length: 11 }, (_, i) => `hsl(${Math.round(130 - 130 * (i / 10))}, 65%, 45%)`);
const GREY = "#c9ccd1";
const LOST = "#2b2d31";
const LOST_MARK = "#e5484d";
const DRAIN_FRAME = "#2f6fed";

export class Fleet {
  constructor(root, config, stats) {
    this.config = config;
    this.stats = stats;
    this.nodes = new Map();
    this.order = [];
    this.needsSort = false;
    this.dirty = true;
    this.pendingSince = null;
    this.hover = null;
    this.canvas = root.querySelector("#fleet-grid");
    this.tip = root.querySelector("#fleet-tip");
    this.countsEl = root.querySelector("#fleet-counts");
    this.markedEl = root.querySelector("#fleet-marked");
    this.totalEl = root.querySelector("#fleet-total");
    this.layout = { cell: 8, cols: 1 };
    this.canvas.addEventListener("mousemove", (e) => this.onHover(e));
    this.canvas.addEventListener("mouseleave", () => this.onHover(null));
  }

  // A node.status event (live) or a node.list item (`listed`: an older picture, never newer than live ones).
  status(s, listed = false) {
    const now = Date.now();
    const at = Date.parse(s?.at);
    if (typeof s.node_id !== "string" || typeof s.state !== "string" || !Number.isFinite(at)) return; // not a status
    if (!listed && now - at > this.config.node_ttl_s * 1000) return; // stale on arrival: placement ignores it too
    let n = this.nodes.get(s.node_id);
    if (n === undefined) {
      n = { id: s.node_id, seen: 0, draining: false };
      this.nodes.set(s.node_id, n);
      this.order.push(n);
      this.needsSort = true;
    }
    const seen = listed ? Math.min(at, now) : now;
    if (seen < n.seen) return;
    n.seen = seen;
    n.state = s.state;
    n.cpuCores = Number(s.cpu_cores) || 0;
    n.cpuFree = Number(s.cpu_free) || 0;
    n.memMb = Number(s.memory_mb) || 0;
    n.memFree = Number(s.memory_free_mb) || 0;
    n.gpus = Number(s.gpus) || 0;
    n.labels = s.labels && typeof s.labels === "object" ? s.labels : {};
    n.techs = Array.isArray(s.technologies) ? s.technologies : [];
    if (listed) {
      n.draining = Boolean(s.draining) || n.draining;
      n.reserved = s.reserved;
    }
    this.touch();
  }

  drain(fact) {
    const n = this.nodes.get(fact?.node_id);
    if (n === undefined) return;
    n.draining = Boolean(fact.draining);
    this.touch();
  }

  touch() {
    this.stats.messages += 1;
    this.dirty = true;
    if (this.pendingSince === null) this.pendingSince = performance.now();
  }

  displayState(n, now) {
    const silent = now - n.seen;
    if (n.state === "down" || silent > this.config.node_lost_s * 1000) return "lost";
    if (n.draining || n.state === "draining") return "draining";
    if (silent > this.config.node_ttl_s * 1000) return "inactive";
    return "active";
  }

  cpuUse(n) {
    return n.cpuCores > 0 ? Math.min(1, Math.max(0, 1 - n.cpuFree / n.cpuCores)) : 0;
  }

  render(now = Date.now()) {
    const t0 = performance.now();
    if (this.needsSort) {
      this.order.sort((a, b) => collator.compare(a.id, b.id));
      this.needsSort = false;
    }
    const counts = Object.fromEntries(STATES.map((s) => [s, 0]));
    const marked = [];
    const { cell, cols } = this.resize();
    const ctx = this.canvas.getContext("2d");
    const dpr = window.devicePixelRatio || 1;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, this.canvas.width, this.canvas.height);
    const gap = cell >= 6 ? 1 : 0;
    const size = cell - gap;
    for (let i = 0; i < this.order.length; i += 1) {
      const n = this.order[i];
      const state = this.displayState(n, now);
      n.shown = state;
      counts[state] += 1;
      if (state === "lost" || state === "draining") marked.push(n);
      const x = (i % cols) * cell;
      const y = Math.floor(i / cols) * cell;
      if (state === "lost") {
        ctx.fillStyle = LOST;
        ctx.fillRect(x, y, size, size);
        ctx.fillStyle = LOST_MARK;
        ctx.fillRect(x + size / 3, y + size / 3, Math.max(1, size / 3), Math.max(1, size / 3));
        continue;
      }
      const fill = state === "inactive" ? GREY : COLOURS[Math.round(this.cpuUse(n) * 10)];
      if (state === "draining" && size >= 4) {
        ctx.fillStyle = DRAIN_FRAME;
        ctx.fillRect(x, y, size, size);
        const inset = Math.max(1.5, size / 5);
        ctx.fillStyle = fill;
        ctx.fillRect(x + inset, y + inset, size - 2 * inset, size - 2 * inset);
      } else {
        ctx.fillStyle = state === "draining" ? DRAIN_FRAME : fill;
        ctx.fillRect(x, y, size, size);
      }
    }
    this.renderCounts(counts);
    this.renderMarked(marked);
    if (this.hover !== null) this.showTip(this.hover);
    this.dirty = false;
    const took = performance.now() - t0;
    this.stats.rendered(took, this.pendingSince);
    this.pendingSince = null;
  }

  resize() {
    const width = Math.max(200, this.canvas.parentElement.clientWidth);
    const count = Math.max(1, this.order.length);
    const cell = Math.max(3, Math.min(18, Math.floor(Math.sqrt((width * 420) / count))));
    const cols = Math.max(1, Math.floor(width / cell));
    const height = Math.max(cell, Math.ceil(count / cols) * cell);
    const dpr = window.devicePixelRatio || 1;
    if (this.canvas.width !== Math.round(width * dpr) || this.canvas.height !== Math.round(height * dpr)) {
      this.canvas.width = Math.round(width * dpr);
      this.canvas.height = Math.round(height * dpr);
      this.canvas.style.width = `${width}px`;
      this.canvas.style.height = `${height}px`;
    }
    this.layout = { cell, cols };
    return this.layout;
  }

  renderCounts(counts) {
    this.totalEl.textContent = `${fmt.int(this.order.length)} nodes`;
    this.countsEl.replaceChildren(
      ...STATES.map((s) =>
        el("span", { class: `count count-${s}`, "data-count-state": s }, el("b", {}, fmt.int(counts[s])), ` ${s}`),
      ),
    );
  }

  renderMarked(marked) {
    const shown = marked.slice(0, MARKED_MAX);
    const items = shown.map((n) =>
      el("li", { class: `marked marked-${n.shown}`, "data-node-id": n.id, "data-state": n.shown }, `${n.id} ${n.shown}`),
    );
    if (marked.length > shown.length) items.push(el("li", { class: "more" }, `and ${marked.length - shown.length} more`));
    this.markedEl.replaceChildren(...items);
  }

  onHover(e) {
    if (e === null) {
      this.hover = null;
      this.tip.hidden = true;
      return;
    }
    const rect = this.canvas.getBoundingClientRect();
    const { cell, cols } = this.layout;
    const col = Math.floor((e.clientX - rect.left) / cell);
    const row = Math.floor((e.clientY - rect.top) / cell);
    const n = col < cols ? this.order[row * cols + col] : undefined;
    this.hover = n === undefined ? null : { n, x: e.clientX - rect.left, y: e.clientY - rect.top };
    if (this.hover === null) this.tip.hidden = true;
    else this.showTip(this.hover);
  }

  showTip({ n, x, y }) {
    const now = Date.now();
    const labels = Object.entries(n.labels ?? {}).map(([k, v]) => `${k}=${v}`).join(" ");
    const reserved = n.reserved ? ` · reserved ${fmt.num(n.reserved.cpu)} cpu (at load)` : "";
    this.tip.replaceChildren(
      el("b", {}, n.id),
      ` ${this.displayState(n, now)}${n.state !== "active" ? ` (reports ${n.state})` : ""}`,
      el("br"),
      `cpu ${fmt.num(n.cpuCores - n.cpuFree)} / ${fmt.num(n.cpuCores)} used (${Math.round(this.cpuUse(n) * 100)} %)`,
      el("br"),
      `memory ${fmt.int(n.memMb - n.memFree)} / ${fmt.int(n.memMb)} MiB · gpus ${n.gpus}${reserved}`,
      el("br"),
      `${(n.techs ?? []).join(", ")}${labels ? ` · ${labels}` : ""}`,
      el("br"),
      `last status ${fmt.ago(now - n.seen)}`,
    );
    this.tip.style.left = `${x + 14}px`;
    this.tip.style.top = `${y + 14}px`;
    this.tip.hidden = false;
  }
}

// All of node.list, page by page (`after`), then a node's live statuses take over.
export async function loadNodes(ask, fleet, subject) {
  let after = null;
  do {
    const reply = await ask(subject, after ? { limit: 5000, after } : { limit: 5000 });
    for (const item of reply.nodes) fleet.status(item, true);
    after = reply.next;
  } while (after);
}
