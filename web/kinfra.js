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
    case "wake": return state === "sleeping" ? "" : (state === "running" ? "already awake" : `not while ${state}`);
    case "sleep": return state === "running" ? "" : (state === "sleeping" ? "already asleep" : `not while ${state}`);
  }
  return "";
}

function makeCard(name) {
  const root = $("card-tpl").content.firstElementChild.cloneNode(true);
  root.dataset.name = name;
  const f = (sel) => root.querySelector(sel);
  const fields = {
    name: f(".name"), state: f(".state"), message: f(".message"), kind: f(".kind"), health: f(".health"),
    progress: f(".progress"), progressBar: f(".progress-bar"), progressText: f(".progress-text"),
    port: f(".port"), pid: f(".pid"), uptime: f(".uptime"), restarts: f(".restarts"),
    cpu: f(".cpu"), mem: f(".mem"), prov: f(".prov"), pstate: f(".provider-state"), syncErr: f(".sync-error"),
    sleepy: f(".sleepy"), sleep: f(".sleep"), plots: f(".plots"),
    logs: f(".logs"), why: f(".why"), res: root.querySelectorAll(".res"),
    buttons: root.querySelectorAll("button.act"), loglink: f(".loglink"),
    cmds: f(".cmds"), cmdList: f(".cmd-list"),
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
  showProgress(f, s.progress);
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
  f.sleepy.hidden = s.sleep == null;
  f.sleep.textContent = sleepText(s, 0);
  for (const b of f.buttons) if (b.dataset.action === "wake" || b.dataset.action === "sleep") b.hidden = s.sleep == null;
  S.logs.set(name, (s.logs || []).slice(-LOG_LINES).map((line) => ({ key: logKey(line), line })));
  renderLogs(name);
  updateButtons(name);
  applyFilter(name);
  if (s.state !== card.root.dataset.plotted) { card.root.dataset.plotted = s.state; historySoon(); }
}

// Long work under way (an image pull, a cloud operation): a bar with the percent when the
// doer reports one (an indeterminate bar otherwise: a percent is never made up) and a line
// like `pulling postgres:16 (downloading)  42% 61.2/145.3 MB  3s`.
function showProgress(f, p) {
  f.progress.hidden = p == null;
  if (p == null) { f.progressBar.removeAttribute("value"); f.progressText.textContent = ""; return; }
  if (p.percent != null) f.progressBar.value = Math.max(0, Math.min(100, p.percent));
  else f.progressBar.removeAttribute("value");
  f.progressText.textContent = progressText(p);
}

function progressText(p) {
  const mb = (n) => (n / 1e6).toFixed(1);
  let out = p.task === "pull" && p.target
    ? (p.phase === "complete" ? `pulled ${p.target}` : `pulling ${p.target} (${p.phase})`)
    : (p.target ? `${p.phase} ${p.target}` : p.phase);
  if (p.percent != null) out += `  ${Math.round(p.percent)}%`;
  if (p.current != null && p.unit === "bytes") out += p.total != null ? ` ${mb(p.current)}/${mb(p.total)} MB` : ` ${mb(p.current)} MB`;
  else if (p.current != null && p.total != null) out += ` ${p.current}/${p.total}${p.unit ? ` ${p.unit}` : ""}`;
  return `${out}  ${fmtUptime(p.elapsed_s || 0)}`;
}

// Where a scale_to_zero target stands, `elapsed` seconds after its status was read:
// "sleeps in 4m 10s", "asleep", "awake: 2 open connections".
function sleepText(s, elapsed) {
  const z = s.sleep;
  if (!z) return "";
  if (s.state === "sleeping") return z.wakes ? `asleep · ${z.wakes} wakes` : "asleep";
  if (z.sleeps_in_s != null) return `sleeps in ${fmtUptime(Math.max(0, z.sleeps_in_s - elapsed))}`;
  if (z.kept_awake_by) return `awake: ${z.kept_awake_by}`;
  return z.wake === "manual" ? "wakes by hand" : "wakes on request";
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

// Lists a provider resource's commands (read when its "Commands" is opened): each with an
// input per parameter (typed by its kind; required ones marked, defaults filled in), a
// "Dry run" and a "Run" button, and its result or problems under the form.
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
    for (const c of commands) ul.appendChild(commandForm(name, c));
  } catch (e) {
    commandLine(ul, `commands: ${e.message || e}`, "cmd-problem");
  }
}

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text != null) e.textContent = text;
  return e;
}

// One input for a parameter spec ({name, kind: {type, ...}, required, default, description}).
function paramInput(p) {
  const kind = p.kind || { type: "string" };
  let input;
  switch (kind.type) {
    case "integer":
    case "number":
      input = el("input");
      input.type = "number";
      input.step = kind.type === "integer" ? "1" : "any";
      if (kind.min != null) input.min = String(kind.min);
      if (kind.max != null) input.max = String(kind.max);
      break;
    case "boolean":
      input = el("input");
      input.type = "checkbox";
      input.checked = p.default === true;
      break;
    case "enum":
      input = el("select");
      if (!p.required || p.default == null) input.appendChild(el("option", "", p.required ? "choose…" : "—")).value = "";
      for (const v of kind.values || []) input.appendChild(el("option", "", v)).value = v;
      break;
    case "secret":
      input = el("input");
      input.type = "password";
      input.autocomplete = "off";
      break;
    default:
      input = el("input");
      input.type = "text";
      if (kind.type === "duration") input.placeholder = "e.g. 30s";
  }
  input.name = p.name;
  input.dataset.kind = kind.type;
  if (p.required) { input.required = true; input.setAttribute("aria-required", "true"); }
  if (p.default != null && kind.type !== "boolean") input.value = typeof p.default === "string" ? p.default : JSON.stringify(p.default);
  input.title = p.description || `${p.name} (${kind.type})`;
  return input;
}

// The parameters the form holds: empty fields are left out (the runtime names a missing
// required one); numbers and booleans go typed; text the browser could not read as a number
// goes as it is, for the runtime to name.
function formParams(form) {
  const params = {};
  for (const input of form.querySelectorAll("input, select")) {
    const kind = input.dataset.kind;
    if (kind === "boolean") {
      if (input.checked || input.dataset.touched === "1") params[input.name] = input.checked;
      continue;
    }
    const text = input.value;
    if (text === "") continue;
    if (kind === "integer" || kind === "number") {
      const n = Number(text);
      params[input.name] = Number.isFinite(n) ? n : text;
    } else {
      params[input.name] = text;
    }
  }
  return params;
}

function commandForm(name, c) {
  const li = el("li", "cmd");
  li.dataset.command = c.id;
  const head = el("div", "cmd-head");
  const label = el("span", "cmd-name", c.id);
  label.title = c.description || c.name || c.id;
  head.appendChild(label);
  if (c.confirm) head.appendChild(el("span", "cmd-confirm", "asks to confirm"));
  const dry = el("button", "dry", "Dry run");
  dry.type = "button";
  dry.disabled = !c.dry_run;
  dry.title = c.dry_run ? `plan ${c.id} on ${name}; nothing is sent` : `${c.id} has no dry-run`;
  const run = el("button", c.confirm ? "run danger" : "run", "Run");
  run.type = "button";
  run.title = `${c.id} on ${name}` + (c.confirm ? " (asks to confirm first)" : "");
  if (!S.auth) {
    dry.disabled = run.disabled = true;
    dry.title = run.title = "log in to act";
  }
  head.append(dry, run);
  const form = el("form", "cmd-form");
  form.noValidate = true;
  for (const p of c.params || []) {
    const row = el("label", p.required ? "cmd-param required" : "cmd-param");
    row.dataset.param = p.name;
    const text = el("span", "param-name", p.name);
    if (p.required) {
      const mark = el("abbr", "req", "*");
      mark.title = "required";
      text.appendChild(mark);
    }
    const input = paramInput(p);
    input.addEventListener("change", () => { input.dataset.touched = "1"; });
    row.append(text, input);
    if (p.description) row.appendChild(el("small", "param-desc", p.description));
    form.appendChild(row);
  }
  const out = el("pre", "cmd-result");
  out.hidden = true;
  form.addEventListener("submit", (e) => { e.preventDefault(); if (!dry.disabled) dry.click(); });
  dry.addEventListener("click", () => runCommand(name, c, form, out, dry, true));
  run.addEventListener("click", () => runCommand(name, c, form, out, run, false));
  li.append(head, form, out);
  return li;
}

// What a command's answer says, line by line.
function resultLines(c, body, dryRun) {
  if (dryRun) {
    const planned = [];
    for (const q of body.requests || []) {
      planned.push(`${q.method} ${q.url}`);
      if (q.body != null) planned.push(`  ${JSON.stringify(q.body)}`);
    }
    return [`${c.id} (dry run):`, ...(planned.length ? planned : ["nothing to send"]),
      ...(body.warnings || []).map((w) => `warning: ${w}`)];
  }
  const lines = [`${c.id}: ${body.success ? "done" : "did not succeed"}`];
  if (body.operation) lines.push(`operation ${body.operation}${body.operation_state ? ` ended ${body.operation_state}` : ""}`);
  if (body.data != null) lines.push(typeof body.data === "string" ? body.data : JSON.stringify(body.data, null, 2));
  for (const w of body.warnings || []) lines.push(`warning: ${w}`);
  return lines;
}

// Runs (or dry-runs) a command with the form's parameters; a command that needs confirmation
// asks first and then sends `yes`. Shows the result, or every problem the runtime named.
async function runCommand(name, c, form, out, button, dryRun) {
  const call = { command: c.id, params: formParams(form), dry_run: dryRun };
  if (!dryRun && c.confirm) {
    if (!window.confirm(`Run ${c.id} on ${name}? It needs confirmation.`)) return;
    call.yes = true;
  }
  button.disabled = true;
  let lines, ok = false;
  try {
    const r = await fetch(`/__action__/command/${encodeURIComponent(name)}`, {
      method: "POST",
      credentials: "same-origin",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(call),
    });
    const body = await r.json().catch(() => ({}));
    ok = r.ok && body.success !== false;
    if (r.ok) lines = resultLines(c, body, dryRun);
    else if (r.status === 400) lines = [`${c.id}: refused`, ...(body.problems || [body.error || r.statusText])];
    else lines = [`${c.id}: ${body.error || r.statusText}`];
  } catch (e) {
    lines = [`${c.id}: ${e}`];
  } finally {
    button.disabled = !S.auth || (dryRun && !c.dry_run);
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
  tunnelPanel(report.tunnel);
  const infra = [];
  if (report.bus) infra.push({ k: "bus", v: report.bus });
  if (report.store) infra.push({ k: "store", v: report.store });
  list("infra-box", "infra", infra, (i) => `${i.k}: ${describeInfra(i.v)}`);
  stats();
  drawPlots();
}

// The tunnel panel: its state, name and connections, each public URL (a link), the last
// error. Hidden without [tunnel].
function tunnelPanel(t) {
  const box = $("tunnel-box"), ul = $("tunnel");
  box.hidden = !t;
  if (!t) return;
  box.dataset.state = t.state;
  $("tunnel-state").textContent = t.state;
  ul.replaceChildren();
  const line = (text) => { const li = document.createElement("li"); li.textContent = text; ul.appendChild(li); return li; };
  const conns = t.ready_connections ?? t.connections;
  line(`${t.name}${t.id ? ` (${t.id.slice(0, 8)})` : ""}${conns != null ? ` · ${conns} connections` : ""}`);
  for (const url of t.urls || []) {
    const li = document.createElement("li"), a = document.createElement("a");
    a.href = url; a.textContent = url; a.target = "_blank"; a.rel = "noopener";
    li.appendChild(a); ul.appendChild(li);
  }
  if (t.state !== "running" && t.message) line(t.message).className = "why";
  else if (t.last_error) line(`last error: ${t.last_error}`).className = "why";
}

// The tunnel's block again when its service or the config changed (the stream carries the
// service's own events, not the block).
let tunnelFetch = null;
function refreshTunnel(events) {
  if (tunnelFetch || !events.some((e) => e.service === "tunnel" || e.type === "config_reloaded")) return;
  tunnelFetch = fetch("/__status__", { credentials: "same-origin" })
    .then((r) => r.ok ? r.json() : null)
    .then((report) => { if (report) tunnelPanel(report.tunnel); })
    .catch(() => {})
    .finally(() => { tunnelFetch = null; });
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
    case "command_executed": return `${e.resource}: ${e.command}${e.dry_run ? " (dry run)" : ""} ` +
      (e.success ? "ok" : `failed${e.error ? `: ${e.error}` : ""}`) + (e.operation ? ` (operation ${e.operation})` : "");
    case "runtime_started": return `runtime ${e.project} started`;
    case "runtime_stopping": return `runtime stopping (${e.reason})`;
    default: return `${e.type}${e.service ? ` ${e.service}` : ""}`;
  }
}

function timeline(events) {
  const ol = $("timeline");
  for (const e of events) {
    if (e.type === "config_reloaded") for (const name of e.removed) remove(name);
    // Progress is shown on the card (the status that came with it), not as timeline rows.
    if (e.type === "progress") continue;
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
  es.addEventListener("events", (e) => { const events = JSON.parse(e.data); timeline(events); refreshTunnel(events); });
  es.addEventListener("logs", (e) => appendLogs(JSON.parse(e.data)));
}

// The sleep countdowns reach zero: read status again (activity since may have moved them;
// a target that fell asleep comes with its state change anyway). At most every 2 s.
let sleepFetch = null, sleepFetchedAt = 0;
function refreshSleep() {
  if (sleepFetch || Date.now() - sleepFetchedAt < 2000) return;
  sleepFetchedAt = Date.now();
  sleepFetch = fetch("/__status__", { credentials: "same-origin" })
    .then((r) => r.ok ? r.json() : null)
    .then((report) => { if (report) for (const [name, s] of Object.entries(report.services)) if (S.cards.has(name)) upsert(name, s); })
    .catch(() => {})
    .finally(() => { sleepFetch = null; });
}

// ---- Plots: the last hour per service (CPU, memory, restarts) and per route (request rate,
// error rate, latency p50/p99), from /kinfra/history. The page asks every HISTORY_POLL ms while
// it is visible (each read records the current 10 s step on the server; nothing is recorded
// while nobody looks), and soon after a state change, so a restart shows at once.
const HISTORY_POLL = 5000;
const H = { error: null, step: 10, span: 3600, window: 3600, now: 0, since: 0, services: new Map(), routes: new Map(), loaded: false, timer: null, busy: false };
const SVG = "http://www.w3.org/2000/svg";
const PW = 120, PH = 34;

function historySoon(delay = 700) {
  if (!H.loaded || document.visibilityState !== "visible") return;
  clearTimeout(H.timer);
  H.timer = setTimeout(loadHistory, delay);
}

// Merges new points into `into` (name -> points): a point replaces the one of its step.
function mergePoints(into, incoming) {
  const cut = H.now - H.span;
  for (const [name, points] of Object.entries(incoming)) {
    const have = (into.get(name) || []).filter((p) => p.t >= cut);
    const first = points.length ? Math.floor(points[0].t / H.step) : Infinity;
    into.set(name, have.filter((p) => Math.floor(p.t / H.step) < first).concat(points));
  }
  for (const name of [...into.keys()]) if (!(name in incoming)) into.delete(name);
}

async function loadHistory() {
  clearTimeout(H.timer);
  // A hidden page asks nothing (visibilitychange asks again when it shows).
  if (H.busy || document.visibilityState !== "visible") return;
  H.busy = true;
  try {
    const r = await fetch(`/kinfra/history?since=${H.since}`, { credentials: "same-origin" });
    H.error = r.ok ? null : `history unavailable (HTTP ${r.status})`;
    if (!r.ok) drawPlots();
    if (r.ok) {
      const v = await r.json();
      H.step = v.step_s; H.span = v.span_s; H.now = v.now; H.since = v.now;
      mergePoints(H.services, v.services);
      mergePoints(H.routes, v.routes);
      H.loaded = true;
      drawPlots();
    }
  } catch (_) {
    // The next poll tries again; until then say why nothing moves.
    H.error = "history unavailable (no connection)";
    drawPlots();
  }
  H.busy = false;
  if (document.visibilityState === "visible") H.timer = setTimeout(loadHistory, HISTORY_POLL);
}

function svgEl(tag, attrs) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  return el;
}

// One small chart: `lines` are arrays of {t, v} (v null where nothing was measured), drawn
// over the last hour with a break where the page was not looking; `now` is its caption.
function plot(container, kind, label, lines, now, step = false) {
  let fig = container.querySelector(`.plot[data-kind="${kind}"]`);
  if (!fig) {
    fig = document.createElement("figure");
    fig.className = "plot"; fig.dataset.kind = kind;
    const cap = document.createElement("figcaption");
    const name = document.createElement("span"); name.textContent = label;
    cap.append(name, document.createElement("b"));
    fig.append(cap, svgEl("svg", { viewBox: `0 0 ${PW} ${PH}`, preserveAspectRatio: "none", role: "img" }));
    container.appendChild(fig);
  }
  const svg = fig.querySelector("svg");
  const valid = lines.map((pts) => pts.filter((p) => p.v != null && isFinite(p.v)));
  const count = valid.reduce((n, pts) => n + pts.length, 0);
  fig.querySelector("b").textContent = now;
  fig.dataset.points = count;
  fig.dataset.last = JSON.stringify(valid.map((pts) => pts.length ? pts[pts.length - 1] : null));
  svg.setAttribute("aria-label", `${label}, ${fmtWindow(H.window)}: ${now}`);
  svg.replaceChildren(svgEl("title", {}));
  svg.firstChild.textContent = `${label}, ${fmtWindow(H.window)}`;
  if (count === 0) {
    // Said in HTML over the empty chart (SVG text would stretch with the chart's width).
    fig.dataset.empty = H.error || (H.loaded ? "no data yet" : "loading…");
    return;
  }
  delete fig.dataset.empty;
  const left = H.now - H.window;
  const max = Math.max(...valid.flat().map((p) => p.v), 0) || 1;
  const x = (t) => Math.max(0, Math.min(PW, (t - left) / H.window * PW));
  const y = (v) => PH - 2 - (v / max) * (PH - 4);
  valid.forEach((pts, i) => {
    // Segments: a gap of more than 2.5 steps (nobody looked) breaks the line.
    let d = "", prev = null, area = "";
    const segs = [];
    for (const p of pts) {
      if (!prev || p.t - prev.t > H.step * 2.5) segs.push([]);
      segs[segs.length - 1].push(p);
      prev = p;
    }
    for (const seg of segs) {
      if (seg.length === 1) {
        svg.appendChild(svgEl("circle", { cx: x(seg[0].t).toFixed(1), cy: y(seg[0].v).toFixed(1), r: 1.6, class: `dot l${i}` }));
        continue;
      }
      const path = seg.map((p, j) => {
        const at = `${x(p.t).toFixed(1)},${y(p.v).toFixed(1)}`;
        // A count (restarts) steps up where it changed rather than sloping.
        return j === 0 ? `M${at}` : step ? `H${x(p.t).toFixed(1)}V${y(p.v).toFixed(1)}` : `L${at}`;
      }).join("");
      d += path;
      if (i === 0) area += `${path}L${x(seg[seg.length - 1].t).toFixed(1)},${PH}L${x(seg[0].t).toFixed(1)},${PH}Z`;
    }
    if (area) svg.appendChild(svgEl("path", { d: area, class: "area" }));
    if (d) svg.appendChild(svgEl("path", { d, class: `line l${i}`, "vector-effect": "non-scaling-stroke" }));
  });
}

const series = (points, f) => points.map((p) => ({ t: p.t, v: f(p) }));
const lastOf = (points, f) => { for (let i = points.length - 1; i >= 0; i--) { const v = f(points[i]); if (v != null) return v; } return null; };
const fmtMs = (v) => v == null ? "–" : v < 10 ? `${v.toFixed(1)} ms` : `${Math.round(v)} ms`;

// The time the plots cover: the last hour, or less while the history is younger (at least
// two minutes), so a fresh page does not squeeze its first points into the right edge.
function plotWindow() {
  let oldest = H.now;
  for (const m of [H.services, H.routes]) for (const pts of m.values()) if (pts.length) oldest = Math.min(oldest, pts[0].t);
  return Math.min(H.span, Math.max(120, H.now - oldest));
}
const fmtWindow = (secs) => secs >= 3600 ? "last hour" : `last ${Math.round(secs / 60)} min`;

function drawPlots() {
  H.window = plotWindow();
  $("traffic-box").querySelector(".plot-span").textContent = fmtWindow(H.window);
  for (const [name, card] of S.cards) {
    const points = H.services.get(name) || [];
    const s = S.services.get(name) || {};
    const box = card.fields.plots;
    const cpu = lastOf(points, (p) => p.cpu), mem = lastOf(points, (p) => p.mem);
    plot(box, "cpu", "cpu", [series(points, (p) => p.cpu)], cpu != null ? `${cpu.toFixed(1)}%` : (s.state === "running" ? "–" : s.state || "–"));
    plot(box, "memory", "memory", [series(points, (p) => p.mem)], mem != null ? fmtBytes(mem) : "–");
    plot(box, "restarts", "restarts", [series(points, (p) => p.restarts)], points.length ? `${points[points.length - 1].restarts}` : `${s.restarts ?? "–"}`, true);
  }
  const box = $("traffic-box"), div = $("traffic");
  const names = [...H.routes.keys()];
  box.hidden = names.length === 0 && $("routes-box").hidden;
  if (names.length === 0) {
    if (!div.querySelector(".plot-empty")) div.replaceChildren();
    if (!div.firstChild) { const p = document.createElement("p"); p.className = "plot-empty"; div.appendChild(p); }
    div.firstChild.textContent = H.error || (H.loaded ? "No requests through the proxy yet." : "Loading…");
    return;
  }
  div.querySelector(".plot-empty")?.remove();
  for (const el of [...div.querySelectorAll(".route-plots")]) if (!H.routes.has(el.dataset.route)) el.remove();
  for (const name of names) {
    let sec = [...div.querySelectorAll(".route-plots")].find((el) => el.dataset.route === name);
    if (!sec) {
      sec = document.createElement("section"); sec.className = "route-plots"; sec.dataset.route = name;
      const h = document.createElement("h3");
      // The proxy labels requests no route matched (its own 404 pages) `none`.
      h.textContent = name === "none" ? "no route matched" : name;
      const plots = document.createElement("div"); plots.className = "plots";
      sec.append(h, plots); div.appendChild(sec);
    }
    const points = H.routes.get(name), plots = sec.querySelector(".plots");
    const last = points[points.length - 1] || {};
    plot(plots, "rate", "requests", [series(points, (p) => p.rate)], `${(last.rate ?? 0).toFixed(2)}/s`);
    plot(plots, "errors", "errors", [series(points, (p) => p.error_rate == null ? null : p.error_rate * 100)],
      last.error_rate != null ? `${(last.error_rate * 100).toFixed(1)}%` : "–");
    plot(plots, "latency", "p50 / p99", [series(points, (p) => p.p50_ms), series(points, (p) => p.p99_ms)],
      `${fmtMs(lastOf(points, (p) => p.p50_ms))} / ${fmtMs(lastOf(points, (p) => p.p99_ms))}`);
  }
}

function tick() {
  const now = Date.now();
  let due = false;
  for (const [name, s] of S.services) {
    if (s.sleep && s.state === "running") {
      const card = S.cards.get(name);
      const elapsed = Math.floor((now - (S.received.get(name) || now)) / 1000);
      if (card) card.fields.sleep.textContent = sleepText(s, elapsed);
      if (s.sleep.sleeps_in_s != null && s.sleep.sleeps_in_s - elapsed <= 0) due = true;
    }
  }
  if (due) refreshSleep();
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
  loadHistory();
  document.addEventListener("visibilitychange", () => { if (document.visibilityState === "visible") loadHistory(); });
});
