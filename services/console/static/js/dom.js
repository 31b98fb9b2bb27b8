// Small DOM and formatting helpers: elements are built with textContent, never innerHTML, so event
// payloads (job names, reasons) can never inject markup.
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

const int = new Intl.NumberFormat("en");
const num = new Intl.NumberFormat("en", { maximumFractionDigits: 2 });

export const fmt = {
  int: (v) => int.format(Math.round(v ?? 0)),
  num: (v) => num.format(v ?? 0),
  time: (iso) => (iso ? new Date(iso).toLocaleTimeString("en-GB") : "–"),
  when: (iso) => (iso ? new Date(iso).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z") : "–"),
  ago(ms) {
    if (!Number.isFinite(ms) || ms < 0) return "just now";
    if (ms < 1500) return "just now";
    if (ms < 90_000) return `${Math.round(ms / 1000)} s ago`;
    return `${Math.round(ms / 60_000)} min ago`;
  },
};
