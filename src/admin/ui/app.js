// switchyard status page: polls /api/status every second, follows /api/events/stream, and acts through the
// admin API. Every text from the server goes into the page as text (textContent), never as markup.
"use strict";

const TOKEN_KEY = "switchyard-admin-token";
const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
}

// ---- the admin API, with the token kept in this tab's session storage only ----

class Unauthorized extends Error {}

function token() { return sessionStorage.getItem(TOKEN_KEY); }

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  const t = token();
  if (t) headers["Authorization"] = "Bearer " + t;
  const resp = await fetch(path, Object.assign({}, options, { headers, cache: "no-store" }));
  if (resp.status === 401) {
    askForToken(t ? "The token was not accepted. Enter the admin token:" : null);
    throw new Unauthorized("unauthorized");
  }
  return resp;
}

function askForToken(message) {
  const form = $("token-form");
  if (message) form.querySelector("label").textContent = message;
  form.hidden = false;
  $("token").focus();
}

$("token-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const value = $("token").value.trim();
  if (!value) return;
  sessionStorage.setItem(TOKEN_KEY, value);
  $("token").value = "";
  $("token-form").hidden = true;
  $("forget-token").hidden = false;
  refresh();
  followEvents();
});

$("forget-token").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  if (stream) stream.abort();
  $("forget-token").hidden = true;
  notice("Token forgotten for this tab.");
});

function notice(text, isError) {
  const n = $("notice");
  n.textContent = text;
  n.className = isError ? "error" : "";
  n.hidden = false;
}

// ---- figures ----

const fmtRate = (x) => (x === null || x === undefined ? "–" : x >= 100 ? x.toFixed(0) : x.toFixed(1));
const fmtMs = (x) => (x === null || x === undefined ? "–" : x >= 100 ? x.toFixed(0) + " ms" : x.toFixed(1) + " ms");
const stateClass = (s) => "badge state-" + s.replace(/\s+/g, "-");

function timeOf(rfc3339) {
  if (!rfc3339) return "";
  const d = new Date(rfc3339);
  return isNaN(d) ? rfc3339 : d.toLocaleTimeString();
}

function untilText(rfc3339) {
  if (!rfc3339) return "";
  const s = Math.max(0, Math.round((new Date(rfc3339) - Date.now()) / 1000));
  return s + " s";
}

function figure(label, value, name) {
  return el("div", { class: "figure" },
    el("span", { class: "label", text: label }),
    el("span", { class: "value", text: value, "data-figure": name }));
}

const SVG = "http://www.w3.org/2000/svg";

function chart(history, intervalSeconds) {
  // Up to 15 minutes; a younger history fills the width (at least 2 minutes of it).
  const w = 300, h = 56, points = Math.min(90, Math.max(12, history.length));
  const minutes = Math.round((points * intervalSeconds) / 60);
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("width", w);
  svg.setAttribute("height", h);
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  svg.setAttribute("role", "img");
  const max = Math.max(1, ...history.map((p) => Math.max(p[0], p[1])));
  const line = (index, cls) => {
    if (history.length < 2) return;
    const step = w / (points - 1);
    const start = points - history.length;
    const coords = history.map((p, i) =>
      `${((start + i) * step).toFixed(1)},${(h - 3 - (p[index] / max) * (h - 8)).toFixed(1)}`);
    const pl = document.createElementNS(SVG, "polyline");
    pl.setAttribute("points", coords.join(" "));
    pl.setAttribute("class", cls);
    svg.append(pl);
  };
  line(0, "line-rate");
  line(1, "line-errors");
  const title = document.createElementNS(SVG, "title");
  const last = history[history.length - 1];
  title.textContent = last
    ? `last ${minutes} min: now ${last[0]} req/s, ${last[1]} errors/s`
    : "no history yet";
  svg.append(title);
  return el("div", { class: "chart" }, svg,
    el("span", { class: "legend" },
      el("span", { class: "key-rate", text: "req/s" }), " and ",
      el("span", { class: "key-errors", text: "5xx/s" }),
      `, last ${minutes} min (peak ${fmtRate(max)}/s)`));
}

// ---- actions ----

// Pool names and addresses are percent-encoded; ':' and brackets stay as written (IPv6 addresses).
const part = (s) => encodeURIComponent(s).replace(/%3A/gi, ":").replace(/%5B/gi, "[").replace(/%5D/gi, "]");

async function act(pool, address, action) {
  try {
    const resp = await api(`/api/pools/${part(pool)}/backends/${part(address)}/${action}`, { method: "POST" });
    const body = await resp.json().catch(() => ({}));
    if (!resp.ok) throw new Error(body.error || `HTTP ${resp.status}`);
    notice(`${address} in ${pool}: ${action === "enable" ? "enabled" : action === "drain" ? "draining" : "disabled"}.`);
  } catch (e) {
    if (e instanceof Unauthorized) notice(`${action} refused: the admin token is missing or wrong.`, true);
    else notice(`${action} ${address} failed: ${e.message}`, true);
  }
  refresh();
}

$("reload").addEventListener("click", async () => {
  const button = $("reload");
  button.disabled = true;
  try {
    const resp = await api("/api/reload", { method: "POST" });
    const body = await resp.json().catch(() => ({}));
    if (!resp.ok) throw new Error(body.error || `HTTP ${resp.status}`);
    const parts = [];
    if (body.backends_added && body.backends_added.length) parts.push("added " + body.backends_added.join(", "));
    if (body.backends_removed && body.backends_removed.length) parts.push("removed " + body.backends_removed.join(", "));
    notice("Config reloaded" + (parts.length ? ": " + parts.join("; ") : ": no backend added or removed") + ".");
  } catch (e) {
    if (e instanceof Unauthorized) notice("Reload refused: the admin token is missing or wrong.", true);
    else notice("Reload failed, still serving the previous config: " + e.message, true);
  } finally {
    button.disabled = false;
  }
  refresh();
});

// ---- pools ----

function backendRow(pool, b) {
  const health = [el("span", { class: stateClass(b.state), text: b.state, "data-state": b.state })];
  if (!b.healthy && b.last_check_error) {
    health.push(el("span", { class: "detail", "data-reason": "", text: "last check: " + b.last_check_error }));
  }
  if (b.draining || b.disabled) {
    health.push(el("span", { class: "detail", text: `${b.active_requests} in flight finishing` }));
  }
  let circuit = b.circuit.replace("_", "-");
  if (b.half_open_at && b.circuit === "open") circuit += `, half-opens in ${untilText(b.half_open_at)}`;
  if (b.ejected_until) circuit += `; ejected for ${untilText(b.ejected_until)}`;
  if (b.slow_start_ends_at) circuit += `; warming up, ${untilText(b.slow_start_ends_at)} left`;
  const weight = b.weight_override !== null && b.weight_override !== undefined
    ? `${b.weight} (override)` : String(b.weight);
  const out = b.draining || b.disabled;
  const actions = el("td", { class: "actions" },
    el("button", { type: "button", "data-action": "drain", disabled: out,
      onclick: () => act(pool, b.address, "drain"), text: "Drain" }),
    el("button", { type: "button", "data-action": "enable", disabled: !out,
      onclick: () => act(pool, b.address, "enable"), text: "Enable" }));
  return el("tr", { "data-backend": b.address },
    el("td", { class: "address", text: b.address }),
    el("td", {}, ...health),
    el("td", { class: "num", text: weight }),
    el("td", { text: circuit }),
    el("td", { class: "num", text: String(b.active_requests) }),
    el("td", { class: "num", text: fmtRate(b.requests_per_second) }),
    el("td", { class: "num", text: fmtRate(b.errors_per_second) }),
    el("td", { class: "num", text: fmtMs(b.p50_ms) }),
    el("td", { class: "num", text: fmtMs(b.p99_ms) }),
    actions);
}

function poolCard(p, intervalSeconds) {
  const usable = `${p.backends_usable}/${p.backends_total}`;
  const head = el("div", { class: "pool-head" },
    el("h2", { text: p.name }),
    el("span", { class: "badge " + (p.backends_usable === 0 ? "badge-bad" : p.backends_usable < p.backends_total ? "badge-warn" : "badge-ok"),
      text: p.backends_usable === 0 ? "no usable backend" : `${usable} usable` }),
    p.panic ? el("span", { class: "badge badge-bad", text: "panic: health ignored" }) : null,
    figure("algorithm", p.algorithm, "algorithm"),
    figure("backends", usable, "usable"),
    figure("req/s", fmtRate(p.requests_per_second), "rate"),
    figure("5xx/s", fmtRate(p.errors_per_second), "errors"),
    figure("p50", fmtMs(p.p50_ms), "p50"),
    figure("p99", fmtMs(p.p99_ms), "p99"),
    p.queue_waiting ? figure("queued", String(p.queue_waiting), "queued") : null,
    chart(p.history, intervalSeconds));
  const table = el("table", {},
    el("thead", {}, el("tr", {}, ...["Backend", "State", "Weight", "Circuit", "In flight", "Req/s", "5xx/s", "p50", "p99", ""]
      .map((t) => el("th", { text: t, class: ["Weight", "In flight", "Req/s", "5xx/s", "p50", "p99"].includes(t) ? "num" : null })))),
    el("tbody", {}, ...p.backends.map((b) => backendRow(p.name, b))));
  return el("section", { class: "pool" + (p.backends_usable === 0 ? " no-usable" : ""), "data-pool": p.name }, head, table);
}

let failures = 0;

async function refresh() {
  try {
    const resp = await api("/api/status");
    if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
    const status = await resp.json();
    failures = 0;
    render(status);
    setLive(true);
  } catch (e) {
    if (!(e instanceof Unauthorized)) {
      failures += 1;
      setLive(false, e.message);
    }
  }
}

function setLive(ok, why) {
  const live = $("live");
  if (ok) {
    live.className = "badge badge-ok";
    live.textContent = "live";
  } else {
    live.className = "badge badge-bad";
    live.textContent = "not reachable" + (why ? ": " + why : "");
  }
}

function render(status) {
  $("version").textContent = "v" + status.version;
  const pools = status.pools;
  const bad = pools.filter((p) => p.backends_usable === 0).length;
  const summary = $("summary");
  summary.textContent = bad
    ? `${bad} of ${pools.length} pools without a usable backend`
    : `${pools.length} pool${pools.length === 1 ? "" : "s"}, all with usable backends`;
  summary.className = "summary badge " + (bad ? "badge-bad" : "badge-ok");
  const container = $("pools");
  const cards = pools.map((p) => poolCard(p, status.history_interval_seconds));
  if (!cards.length) cards.push(el("p", { class: "empty", text: "No pools configured." }));
  container.replaceChildren(...cards);
}

// ---- events ----

const shown = new Set();

function eventItem(e) {
  const where = [e.pool, e.backend].filter(Boolean).join(" / ");
  return el("li", { class: "level-" + e.level, "data-kind": e.kind, "data-id": e.id },
    el("span", { class: "when", text: `${timeOf(e.at)} · ${e.kind.replace(/_/g, " ")}` }), " ",
    where ? el("span", { class: "where", text: where }) : null,
    el("span", { class: "message", text: e.message }));
}

function addEvent(e, newest) {
  if (shown.has(e.id)) return;
  shown.add(e.id);
  const list = $("events");
  if (newest) list.prepend(eventItem(e));
  else list.append(eventItem(e));
  while (list.children.length > 500) {
    const last = list.lastElementChild;
    shown.delete(Number(last.dataset.id));
    last.remove();
  }
}

async function loadEvents() {
  try {
    const resp = await api("/api/events");
    if (!resp.ok) return;
    const body = await resp.json();
    // Newest first from the server; anything newer than what is shown goes on top, in order.
    const fresh = body.events.filter((e) => !shown.has(e.id)).reverse();
    for (const e of fresh) addEvent(e, true);
  } catch (_) { /* shown by the status poll */ }
}

let following = false;
let stream = null;

// EventSource cannot send the Authorization header, and the token never goes into a URL: read the stream
// with fetch instead. The stream is opened first and the backlog read after, so nothing falls in between; the
// server ends the stream when this tab falls behind, and the reconnect reads the backlog again.
async function followEvents() {
  if (following) return;
  following = true;
  stream = new AbortController();
  try {
    const resp = await api("/api/events/stream", { signal: stream.signal });
    if (!resp.ok || !resp.body) throw new Error(`HTTP ${resp.status}`);
    loadEvents();
    const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
        if (data) {
          try { addEvent(JSON.parse(data), true); } catch (_) { /* a partial line: skip */ }
        }
      }
    }
  } catch (e) {
    if (e instanceof Unauthorized) { following = false; return; }
  }
  following = false;
  // Reconnect (it catches up on whatever happened meanwhile), unless the token was forgotten.
  if (!stream.signal.aborted) setTimeout(followEvents, 2000);
}

if (token()) $("forget-token").hidden = false;
refresh();
setInterval(refresh, 1000);
followEvents();
