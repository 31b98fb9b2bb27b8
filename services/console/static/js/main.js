// The console page: loads /config.json, keeps a NATS connection over websockets (conn.js), feeds the
// panels from subscriptions and requests, and redraws on one tick, at most four times a second.
import { ask, keepConnected } from "./conn.js";
import { Feed } from "./feed.js";
import { Fleet, loadNodes } from "./fleet.js";
import { Jobs } from "./jobs.js";
import { Services } from "./services.js";
import { fmt } from "./dom.js";

const RENDER_MS = 250;
const JOBS_MS = 1000;
const JOBS_FULL_MS = 15000;
const SERVICES_MS = 3000;

// Measured in the page and shown in its footer (and read by tests/bench/console.py).
const stats = {
  messages: 0,
  renders: 0,
  renderMs: 0,
  renderMaxMs: 0,
  lags: [],
  rendered(took, pendingSince) {
    this.renders += 1;
    this.renderMs += took;
    this.renderMaxMs = Math.max(this.renderMaxMs, took);
    if (pendingSince !== null) {
      this.lags.push(performance.now() - pendingSince);
      if (this.lags.length > 600) this.lags.splice(0, this.lags.length - 600);
    }
  },
};

const ui = {
  conn: document.querySelector("#conn"),
  banner: document.querySelector("#banner"),
  connection(state, text) {
    document.body.dataset.conn = state;
    this.conn.dataset.state = state;
    this.conn.textContent = state === "connected" ? "live" : state === "connecting" ? "connecting…" : "offline";
    this.conn.title = text;
    this.banner.textContent = text;
    this.banner.hidden = state === "connected";
    this.banner.dataset.state = state;
  },
};

async function loadConfig() {
  for (let attempt = 1; ; attempt += 1) {
    try {
      const response = await fetch("config.json", { cache: "no-store" });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      return await response.json();
    } catch (err) {
      ui.connection("error", `cannot load the console's config.json (${err.message}); retrying`);
      await new Promise((resolve) => setTimeout(resolve, Math.min(10, attempt) * 1000));
    }
  }
}

function session(nc, config, panels) {
  const { fleet, jobs, feed, services } = panels;
  const s = config.subjects;
  const asker = (subject, body) => ask(nc, config, subject, body);
  const subs = [];
  const on = (subject, handle) =>
    subs.push(
      nc.subscribe(subject, {
        callback: (err, msg) => {
          if (err) return;
          let event;
          try {
            event = msg.json();
          } catch {
            return; // not ours to judge: the services dead-letter malformed events
          }
          if (event === null || typeof event !== "object") return;
          try {
            handle(msg.subject, event);
          } catch (e) {
            console.warn(`ignored a malformed ${msg.subject}`, e);
          }
        },
      }),
    );
  on(s.node_status, (_, e) => fleet.status(e));
  on(s.node_draining, (_, e) => fleet.drain(e));
  for (const subject of s.feed)
    on(subject, (subj, e) => {
      feed.push(subj, e);
      jobs.changed(e.job_id);
    });
  for (const subject of s.job_changes) on(subject, (_, e) => jobs.changed(e.job_id));
  loadNodes(asker, fleet, s.node_list).catch((err) => {
    document.querySelector("#fleet-note").textContent = `node.list failed (${err.message}); live statuses only`;
  });
  jobs.attach(asker);
  services.poll(nc);
  const timers = [
    setInterval(() => jobs.tick(), JOBS_MS),
    setInterval(() => jobs.changed(null), JOBS_FULL_MS),
    setInterval(() => services.poll(nc), SERVICES_MS),
  ];
  return () => {
    timers.forEach(clearInterval);
    jobs.detach();
    for (const sub of subs) {
      try {
        sub.unsubscribe();
      } catch {
        // already closed with the connection
      }
    }
  };
}

async function start() {
  ui.connection("connecting", "loading configuration…");
  const config = await loadConfig();
  const root = document;
  const panels = {
    fleet: new Fleet(root, config, stats),
    jobs: new Jobs(root, config),
    feed: new Feed(root, config),
    services: new Services(root, config),
  };
  window.natschedConsole = { stats, config, panels };
  const footer = document.querySelector("#render-stats");
  let lastFull = 0;
  setInterval(() => {
    const now = Date.now();
    // node states also change with time alone (silent -> inactive -> lost): redraw once a second anyway
    if (panels.fleet.dirty || now - lastFull >= 1000) {
      panels.fleet.render(now);
      lastFull = now;
    }
    panels.feed.render();
    const recent = stats.lags.slice(-20);
    const lag = recent.length ? Math.max(...recent) : 0;
    footer.textContent = `${fmt.int(stats.messages)} updates · ${fmt.int(stats.renders)} redraws · last redraw lag ≤ ${fmt.int(lag)} ms · longest redraw ${fmt.num(stats.renderMaxMs)} ms`;
  }, RENDER_MS);
  keepConnected(config, ui, (nc) => session(nc, config, panels));
}

start();
