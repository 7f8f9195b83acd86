// kinfra dashboard: live state over SSE (/__events__), one card per service, updated in place.
"use strict";

const S = {
  services: new Map(),   // name -> status
  cards: new Map(),      // name -> { root, fields }
  logs: new Map(),       // name -> [{key, line}]
  received: new Map(),   // name -> Date.now() when uptime_s was read
  filter: "all",
  query: "",
  auth: false,
};
const LOG_LINES = 8;
const TIMELINE = 200;

const $ = (id) => document.getElementById(id);

function fmtUptime(secs) {
  const d = Math.floor(secs / 86400), h = Math.floor(secs / 3600) % 24, m = Math.floor(secs / 60) % 60, s = secs % 60;
  if (d > 0) return `${d}d ${h}h`;
  if (h > 0) return `${h}h ${m}m`;
  if (m > 0) return `${m}m ${s}s`;
  return `${s}s`;
}
function fmtBytes(n) {
  const u = ["B", "KiB", "MiB", "GiB"]; let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${u[i]}`;
}

function stateGroup(state) {
  if (state === "running") return "running";
  if (state === "pending" || state === "starting" || state === "stopping") return "starting";
  if (state === "failed" || state === "backoff") return "error";
  return "stopped";
}

// Which actions make sense in a state, and why not otherwise.
function availability(state, action) {
  if (!S.auth) return "log in to act";
  switch (action) {
    case "restart": return (state === "stopping" || state === "pending") ? `not while ${state}` : "";
    case "stop": return ["running", "starting", "backoff", "pending", "maintenance"].includes(state) ? "" : `already ${state}`;
    case "start": return ["stopped", "failed", "completed", "sleeping"].includes(state) ? "" : `already ${state}`;
    case "maintenance": return "";
  }
  return "";
}

function makeCard(name) {
  const root = $("card-tpl").content.firstElementChild.cloneNode(true);
  root.dataset.name = name;
  const f = (sel) => root.querySelector(sel);
  const fields = {
    name: f(".name"), state: f(".state"), message: f(".message"), kind: f(".kind"), health: f(".health"),
    port: f(".port"), pid: f(".pid"), uptime: f(".uptime"), restarts: f(".restarts"),
    cpu: f(".cpu"), mem: f(".mem"), prov: f(".prov"), pstate: f(".provider-state"), syncErr: f(".sync-error"),
    logs: f(".logs"), why: f(".why"), res: root.querySelectorAll(".res"),
    buttons: root.querySelectorAll("button.act"), loglink: f(".loglink"),
    cmds: f(".cmds"), cmdList: f(".cmd-list"), cmdOut: f(".cmd-out"),
  };
  fields.name.textContent = name;
  fields.loglink.href = `/__logs__/${encodeURIComponent(name)}`;
  fields.cmds.addEventListener("toggle", () => { if (fields.cmds.open) loadCommands(name); });
  for (const b of fields.buttons) {
    b.addEventListener("click", () => {
      let action = b.dataset.action;
      if (action === "maintenance") action = S.services.get(name)?.state === "maintenance" ? "maintenance-off" : "maintenance-on";
      act(action, name, b);
    });
  }
  // Keep cards in name order.
  const names = [...S.cards.keys(), name].sort();
  const next = names[names.indexOf(name) + 1];
  $("cards").insertBefore(root, next ? S.cards.get(next).root : null);
  const card = { root, fields };
  S.cards.set(name, card);
  return card;
}

function renderLogs(name) {
  const card = S.cards.get(name);
  if (!card) return;
  const pre = card.fields.logs;
  pre.replaceChildren();
  for (const { line } of S.logs.get(name) || []) {
    const div = document.createElement("div");
    div.className = `l-${line.level}` + (line.stream === "system" ? " s-system" : "");
    div.textContent = line.message;
    pre.appendChild(div);
  }
  pre.scrollTop = pre.scrollHeight;
}

const logKey = (l) => `${l.timestamp}|${l.stream}|${l.message}`;

function upsert(name, s) {
  S.services.set(name, s);
  S.received.set(name, Date.now());
  const card = S.cards.get(name) || makeCard(name);
  const f = card.fields;
  card.root.dataset.state = s.state;
  f.state.textContent = s.state;
  f.message.textContent = s.status_message || "";
  f.kind.textContent = s.kind;
  f.health.textContent = s.health;
  f.health.className = `health ${s.health}`;
  f.port.textContent = s.port ?? "–";
  f.pid.textContent = s.pid ?? "–";
  f.uptime.textContent = s.uptime_s != null ? fmtUptime(s.uptime_s) : "–";
  f.restarts.textContent = s.restarts;
  const hasRes = s.cpu_percent != null || s.memory_bytes != null;
  for (const el of f.res) el.hidden = !hasRes;
  if (hasRes) {
    f.cpu.textContent = s.cpu_percent != null ? `${s.cpu_percent.toFixed(1)}%` : "–";
    f.mem.textContent = s.memory_bytes != null ? fmtBytes(s.memory_bytes) : "–";
  }
  // Usable vs in sync: the provider's own word, and a failing poll never hidden.
  f.prov.hidden = s.provider_state == null;
  f.pstate.textContent = s.provider_state ?? "";
  const syncFailed = s.last_sync != null && !s.last_sync.ok;
  f.syncErr.hidden = !syncFailed;
  f.syncErr.textContent = syncFailed ? `sync failed: ${s.last_sync.error || "unknown error"}` : "";
  f.cmds.hidden = !isProviderResource(s);
  S.logs.set(name, (s.logs || []).slice(-LOG_LINES).map((line) => ({ key: logKey(line), line })));
  renderLogs(name);
  updateButtons(name);
  applyFilter(name);
}

// A provider resource (not a process or a container) has typed commands.
function isProviderResource(s) {
  return s.provider_state != null || !["process", "docker"].includes(s.kind);
}

function commandLine(ul, text, cls) {
  const li = document.createElement("li");
  if (cls) li.className = cls;
  li.textContent = text;
  ul.appendChild(li);
}

// Lists a provider resource's commands (read when its "Commands" is opened), each with a
// dry-run button.
async function loadCommands(name) {
  const card = S.cards.get(name);
  if (!card) return;
  const ul = card.fields.cmdList;
  ul.replaceChildren();
  try {
    const r = await fetch(`/__commands__/${encodeURIComponent(name)}`, { credentials: "same-origin" });
    const body = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error(body.error || r.statusText);
    const commands = body.commands || [];
    if (commands.length === 0) commandLine(ul, "no commands", "cmd-none");
    for (const c of commands) {
      const li = document.createElement("li");
      li.dataset.command = c.id;
      const label = document.createElement("span");
      label.className = "cmd-name";
      label.textContent = c.id;
      label.title = c.description || c.name || c.id;
      const b = document.createElement("button");
      b.className = "dry";
      b.textContent = "Dry run";
      b.disabled = !c.dry_run;
      b.title = c.dry_run ? `plan ${c.id} on ${name}; nothing is sent` : `${c.id} has no dry-run`;
      b.addEventListener("click", () => dryRun(name, c.id, b));
      li.append(label, b);
      ul.appendChild(li);
    }
  } catch (e) {
    commandLine(ul, `commands: ${e.message || e}`, "cmd-problem");
  }
}

// Dry-runs a command with no parameters: shows the planned requests, or what is wrong.
async function dryRun(name, command, button) {
  const card = S.cards.get(name);
  if (!card) return;
  const out = card.fields.cmdOut;
  button.disabled = true;
  let lines, ok = false;
  try {
    const r = await fetch(`/__action__/command/${encodeURIComponent(name)}`, {
      method: "POST",
      credentials: "same-origin",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ command, params: {}, dry_run: true }),
    });
    const body = await r.json().catch(() => ({}));
    ok = r.ok;
    if (r.ok) {
      const planned = (body.requests || []).map((q) => `${q.method} ${q.url}`);
      lines = [`${command} (dry run):`, ...(planned.length ? planned : ["nothing to send"]),
        ...(body.warnings || []).map((w) => `warning: ${w}`)];
    } else {
      lines = [`${command}:`, ...(body.problems || [body.error || r.statusText])];
    }
  } catch (e) {
    lines = [`${command}: ${e}`];
  } finally {
    button.disabled = false;
  }
  out.textContent = lines.join("\n");
  out.classList.toggle("problem", !ok);
  out.hidden = false;
}

function updateButtons(name) {
  const card = S.cards.get(name), s = S.services.get(name);
  if (!card || !s) return;
  const reasons = [];
  for (const b of card.fields.buttons) {
    if (b.dataset.action === "maintenance") b.textContent = s.state === "maintenance" ? "End maintenance" : "Maintenance";
    const why = availability(s.state, b.dataset.action);
    b.disabled = why !== "";
    b.title = why ? `${b.dataset.action}: ${why}` : `${b.dataset.action} ${name}`;
    if (why && !reasons.includes(why)) reasons.push(why);
  }
  card.fields.why.textContent = S.auth ? "" : "read-only: log in to act";
}

function remove(name) {
  const card = S.cards.get(name);
  if (card) card.root.remove();
  S.cards.delete(name); S.services.delete(name); S.logs.delete(name); S.received.delete(name);
}

function matches(name, s) {
  if (S.filter !== "all" && stateGroup(s.state) !== S.filter) return false;
  if (!S.query) return true;
  const hay = `${name} ${s.state} ${s.kind} ${s.status_message || ""} ${s.port ?? ""}`.toLowerCase();
  return hay.includes(S.query);
}

function applyFilter(name) {
  const card = S.cards.get(name), s = S.services.get(name);
  if (card && s) card.root.hidden = !matches(name, s);
}

function applyAllFilters() {
  for (const name of S.cards.keys()) applyFilter(name);
  $("empty").hidden = [...S.cards.values()].some((c) => !c.root.hidden) || S.cards.size === 0;
}

function stats() {
  let running = 0, starting = 0, error = 0;
  for (const s of S.services.values()) {
    if (s.state === "running") running++;
    else if (s.state === "pending" || s.state === "starting") starting++;
    else if (s.state === "failed" || s.state === "backoff") error++;
  }
  $("stat-total").textContent = S.services.size;
  $("stat-running").textContent = running;
  $("stat-starting").textContent = starting;
  $("stat-error").textContent = error;
  $("empty").hidden = [...S.cards.values()].some((c) => !c.root.hidden) || S.cards.size === 0;
}

function list(boxId, listId, items, text) {
  const box = $(boxId), ul = $(listId);
  box.hidden = !items || items.length === 0;
  ul.replaceChildren();
  for (const item of items || []) {
    const li = document.createElement("li");
    li.textContent = text(item);
    ul.appendChild(li);
  }
}

function applySnapshot(report) {
  $("project").textContent = report.project;
  document.title = `kinfra — ${report.project}`;
  const names = new Set(Object.keys(report.services));
  for (const name of [...S.cards.keys()]) if (!names.has(name)) remove(name);
  for (const [name, s] of Object.entries(report.services)) upsert(name, s);
  list("routes-box", "routes", report.routes, (r) => `${r.host || "*"}${r.path} → ${r.service || r.upstream}`);
  list("certs-box", "certs", report.certificates, (c) =>
    `${c.domain} — ${c.state}${c.not_after ? `, expires ${c.not_after}` : ""}${c.last_error ? ` (${c.last_error})` : ""}`);
  const infra = [];
  if (report.bus) infra.push({ k: "bus", v: report.bus });
  if (report.store) infra.push({ k: "store", v: report.store });
  list("infra-box", "infra", infra, (i) => `${i.k}: ${describeInfra(i.v)}`);
  stats();
}

// One line for a subsystem's status object: backend/engine, state, and its counters.
function describeInfra(v) {
  if (typeof v !== "object" || v === null) return String(v);
  const parts = [];
  const backend = v.backend && typeof v.backend === "object" ? v.backend.kind : v.backend || v.engine;
  if (backend) parts.push(String(backend).replace("_", "-"));
  if (v.backend && v.backend.url) parts.push(v.backend.url);
  if (v.location) parts.push(v.location);
  if (v.state) parts.push(v.state);
  const always = new Set(["published", "written"]);
  for (const k of ["published", "dropped", "buffered", "reconnects", "written", "queued", "failures", "abandoned", "lagged"]) {
    if (typeof v[k] === "number" && (v[k] > 0 || always.has(k))) parts.push(`${v[k]} ${k}`);
  }
  if (v.last_error) parts.push(`last error: ${v.last_error}`);
  return parts.join(" · ");
}

function describe(e) {
  switch (e.type) {
    case "state_changed": return `${e.service}: ${e.from} → ${e.to}${e.message ? ` (${e.message})` : ""}`;
    case "health_changed": return `${e.service}: ${e.health}`;
    case "process_started": return `${e.service}: started pid ${e.pid}`;
    case "process_exited": return `${e.service}: pid ${e.pid} exited (${e.exit.code != null ? `code ${e.exit.code}` : `signal ${e.exit.signal}`})`;
    case "restart_scheduled": return `${e.service}: restart #${e.attempt} in ${e.delay_ms} ms`;
    case "crash_loop": return `${e.service}: crash loop after ${e.failures} failures`;
    case "port_assigned": return `${e.service}: port ${e.port}`;
    case "config_reloaded": return `config reloaded: +[${e.added}] −[${e.removed}] ↻[${e.changed}]`;
    case "config_rejected": return `config rejected: ${e.error}`;
    case "cert_issued": return `certificate for ${e.domains.join(", ")} ${e.renewal ? "renewed" : "issued"}, expires ${e.not_after}`;
    case "cert_renewal_failed": return `certificate for ${e.domains.join(", ")} failed (attempt ${e.attempt}): ${e.error}`;
    case "bus_state_changed": return `bus: ${e.state}${e.message ? ` (${e.message})` : ""}`;
    case "maintenance_changed": return `${e.service === "*" ? "everything" : e.service}: maintenance ${e.on ? "on" : "off"}`;
    case "runtime_started": return `runtime ${e.project} started`;
    case "runtime_stopping": return `runtime stopping (${e.reason})`;
    default: return `${e.type}${e.service ? ` ${e.service}` : ""}`;
  }
}

function timeline(events) {
  const ol = $("timeline");
  for (const e of events) {
    if (e.type === "config_reloaded") for (const name of e.removed) remove(name);
    const li = document.createElement("li");
    const t = document.createElement("time");
    t.textContent = (e.timestamp || "").slice(11, 19);
    li.append(t, document.createTextNode(describe(e)));
    ol.insertBefore(li, ol.firstChild);
  }
  while (ol.children.length > TIMELINE) ol.lastChild.remove();
  stats();
}

function appendLogs(lines) {
  const touched = new Set();
  for (const line of lines) {
    const arr = S.logs.get(line.service);
    if (!arr) continue;
    const key = logKey(line);
    if (arr.some((x) => x.key === key)) continue;
    arr.push({ key, line });
    while (arr.length > LOG_LINES) arr.shift();
    touched.add(line.service);
  }
  for (const name of touched) renderLogs(name);
}

function notice(text) {
  const n = $("notice");
  n.textContent = text;
  n.hidden = !text;
  if (text) setTimeout(() => { if (n.textContent === text) n.hidden = true; }, 8000);
}

async function act(action, name, button) {
  button.disabled = true;
  try {
    const r = await fetch(`/__action__/${action}/${encodeURIComponent(name)}`, { method: "POST", credentials: "same-origin" });
    const body = await r.json().catch(() => ({}));
    if (!r.ok || !body.success) notice(`${action} ${name}: ${body.error || r.statusText}`);
  } catch (e) {
    notice(`${action} ${name}: ${e}`);
  } finally {
    updateButtons(name);
  }
}

async function session() {
  try {
    const r = await fetch("/kinfra/session", { credentials: "same-origin" });
    const s = await r.json();
    S.auth = !!s.authenticated;
  } catch (_) { S.auth = false; }
  const el = $("session");
  el.replaceChildren();
  if (S.auth) {
    const form = document.createElement("form");
    form.method = "post"; form.action = "/kinfra/logout";
    const b = document.createElement("button"); b.textContent = "Log out";
    form.append("signed in ", b);
    el.appendChild(form);
  } else {
    const a = document.createElement("a");
    a.href = "/kinfra/login"; a.textContent = "Log in to act";
    el.append("read-only · ", a);
  }
  for (const name of S.cards.keys()) updateButtons(name);
}

function connect() {
  const es = new EventSource("/__events__");
  const conn = $("conn");
  es.onopen = () => { conn.textContent = "live"; conn.className = "conn live"; };
  es.onerror = () => { conn.textContent = "reconnecting…"; conn.className = "conn down"; };
  es.addEventListener("snapshot", (e) => applySnapshot(JSON.parse(e.data)));
  es.addEventListener("services", (e) => {
    for (const [name, s] of Object.entries(JSON.parse(e.data))) upsert(name, s);
    stats();
  });
  es.addEventListener("events", (e) => timeline(JSON.parse(e.data)));
  es.addEventListener("logs", (e) => appendLogs(JSON.parse(e.data)));
}

function tick() {
  const now = Date.now();
  for (const [name, s] of S.services) {
    if (s.uptime_s == null || s.state !== "running") continue;
    const card = S.cards.get(name);
    const extra = Math.floor((now - (S.received.get(name) || now)) / 1000);
    if (card) card.fields.uptime.textContent = fmtUptime(s.uptime_s + extra);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("search").addEventListener("input", (e) => { S.query = e.target.value.trim().toLowerCase(); applyAllFilters(); });
  for (const chip of document.querySelectorAll(".chip")) {
    chip.addEventListener("click", () => {
      for (const c of document.querySelectorAll(".chip")) c.classList.toggle("on", c === chip);
      S.filter = chip.dataset.filter;
      applyAllFilters();
    });
  }
  session();
  connect();
  setInterval(tick, 1000);
});
