// Full log view of one service: backlog plus live tail over SSE, with search and filters.
"use strict";
const MAX = 20000;
const name = decodeURIComponent(location.pathname.split("/").filter(Boolean).pop() || "");
const all = [];
let query = "", level = "", stream = "";
const $ = (id) => document.getElementById(id);

function visible(l) {
  if (level && l.level !== level) return false;
  if (stream && l.stream !== stream) return false;
  return !query || l.message.toLowerCase().includes(query);
}

function row(l) {
  const div = document.createElement("div");
  div.className = `l-${l.level}` + (l.stream === "system" ? " s-system" : "");
  const ts = document.createElement("span"); ts.className = "ts"; ts.textContent = `${l.timestamp} `;
  const st = document.createElement("span"); st.className = "st"; st.textContent = `${l.stream.padEnd(6)} `;
  div.append(ts, st);
  if (query) {
    const msg = l.message, low = msg.toLowerCase();
    let i = 0, at;
    while ((at = low.indexOf(query, i)) !== -1) {
      div.append(document.createTextNode(msg.slice(i, at)));
      const m = document.createElement("mark"); m.textContent = msg.slice(at, at + query.length); div.append(m);
      i = at + query.length;
    }
    div.append(document.createTextNode(msg.slice(i)));
  } else {
    div.append(document.createTextNode(l.message));
  }
  return div;
}

function rerender() {
  const box = $("lines");
  box.replaceChildren(...all.filter(visible).map(row));
  $("shown").textContent = box.children.length;
  if ($("follow").checked) window.scrollTo(0, document.body.scrollHeight);
}

function add(l) {
  all.push(l);
  if (all.length > MAX) { all.shift(); const first = $("lines").firstChild; if (first) first.remove(); }
  $("count").textContent = all.length;
  if (visible(l)) {
    $("lines").appendChild(row(l));
    $("shown").textContent = $("lines").children.length;
    if ($("follow").checked) window.scrollTo(0, document.body.scrollHeight);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("service").textContent = name;
  document.title = `kinfra — logs of ${name}`;
  $("download").href = `/__logs__/${encodeURIComponent(name)}?format=text&download=1&lines=100000`;
  $("search").addEventListener("input", (e) => { query = e.target.value.trim().toLowerCase(); rerender(); });
  $("level").addEventListener("change", (e) => { level = e.target.value; rerender(); });
  $("stream").addEventListener("change", (e) => { stream = e.target.value; rerender(); });
  const es = new EventSource(`/__logs__/${encodeURIComponent(name)}/stream?backlog=5000`);
  es.onopen = () => { $("conn").textContent = "live"; $("conn").className = "conn live"; };
  es.onerror = () => { $("conn").textContent = "reconnecting…"; $("conn").className = "conn down"; all.length = 0; $("lines").replaceChildren(); };
  es.addEventListener("line", (e) => add(JSON.parse(e.data)));
  es.addEventListener("skipped", (e) => add({ timestamp: "", level: "warn", stream: "system", message: `(${e.data} lines skipped: too fast)` }));
});
