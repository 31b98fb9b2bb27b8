// The connection to nats-server over its websocket listener, kept up for as long as the page is open:
// a refused password, an unreachable server or a dropped connection is shown (never a blank page) and
// retried with a growing delay. Each new connection gets a fresh session (subscriptions, polls).
import { wsconnect } from "../vendor/nats-core.js";

const RETRY_MAX_S = 15;

export function describe(err, config) {
  const text = String(err?.message ?? err ?? "unknown error");
  const name = err?.name ?? "";
  const where = config.servers.join(", ");
  if (name === "AuthorizationError" || /authoriz/i.test(text)) {
    return `NATS refused the console's credentials (user ${config.user} at ${where}): check NATS_CONSOLE_PASSWORD`;
  }
  if (name === "ConnectionError" || /connection|websocket|refused|network/i.test(text)) {
    return `cannot reach NATS at ${where} (${text}): is nats-server running with its websocket listener?`;
  }
  return `NATS connection failed: ${text}`;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// Calls `open(nc)` on each successful connection; `open` returns a function that stops that session.
export async function keepConnected(config, ui, open) {
  let failures = 0;
  for (;;) {
    ui.connection("connecting", `connecting to ${config.servers.join(", ")} as ${config.user}…`);
    let nc;
    try {
      nc = await wsconnect({
        servers: config.servers,
        user: config.user,
        pass: config.password,
        inboxPrefix: config.inbox_prefix, // the only inboxes the console user may read
        name: "natsched-console",
        timeout: 5000,
        maxReconnectAttempts: 10,
        reconnectTimeWait: 1000,
      });
    } catch (err) {
      failures += 1;
      const wait = Math.min(RETRY_MAX_S, 2 ** Math.min(failures - 1, 4));
      ui.connection("error", `${describe(err, config)}. Attempt ${failures} failed; retrying in ${wait} s.`);
      await sleep(wait * 1000);
      continue;
    }
    failures = 0;
    ui.connection("connected", `connected to ${nc.getServer()} as ${config.user}`);
    let stop = () => {};
    try {
      stop = open(nc);
    } catch (err) {
      ui.connection("error", `could not start watching: ${err.message}`);
      nc.close().catch(() => {});
    }
    watchStatus(nc, ui, config).catch(() => {}); // ends with the connection
    const err = await nc.closed();
    try {
      stop();
    } catch {
      // the connection is closed already: its subscriptions and requests are gone with it
    }
    const why = err ? describe(err, config) : "the connection to NATS closed";
    ui.connection("error", `${why}. Reconnecting…`);
    await sleep(1000);
  }
}

async function watchStatus(nc, ui, config) {
  for await (const s of nc.status()) {
    switch (s.type) {
      case "disconnect":
        ui.connection("error", `lost the connection to ${s.server}; reconnecting… (data shown may be stale)`);
        break;
      case "reconnect":
        ui.connection("connected", `reconnected to ${s.server} as ${config.user}`);
        break;
      case "error":
        ui.connection("error", describe(s.error, config));
        break;
      default:
        break;
    }
  }
}

// A request to a micro endpoint: the decoded JSON body, or an Error carrying the ADR-32 code and message.
export async function ask(nc, config, subject, body, timeout = 5000) {
  const msg = await nc.request(subject, JSON.stringify(body), { timeout });
  const code = msg.headers?.get(config.subjects.error_code_header);
  if (code) {
    const err = new Error(msg.headers.get(config.subjects.error_header) || `error ${code}`);
    err.code = Number(code);
    throw err;
  }
  return msg.json();
}
