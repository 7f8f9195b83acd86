#!/usr/bin/env python3
"""Event-to-client latency of kinfra's dashboard stream.

Runs `kinfra runtime up` with N sleeping services, restarts them R times through the
dashboard API, and measures, for every event, the time from its emission (the event's own
millisecond timestamp) to:
  - arrival at a raw SSE client (GET /__events__), and
  - the dashboard page in headless Chromium having applied it to the DOM.
Same machine, same clock. Bounded: loopback only, R restarts. Writes JSON to
bench/results/sse_latency.json and prints a summary.

usage: bench/sse_latency.py [--kinfra target/release/kinfra] [--services 10] [--restarts 100]
"""
import argparse, json, os, re, shutil, signal, socket, subprocess, sys, tempfile, threading, time
import urllib.request
from datetime import datetime, timezone


def pct(values, p):
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def parse_ts(ts):
    return datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def webdriver(port, method, path, body=None):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())["value"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kinfra", default="target/release/kinfra")
    ap.add_argument("--services", type=int, default=10)
    ap.add_argument("--restarts", type=int, default=100)
    ap.add_argument("--out", default="bench/results/sse_latency.json")
    a = ap.parse_args()
    kinfra = os.path.abspath(a.kinfra)
    work = tempfile.mkdtemp(prefix="kinfra-bench-")
    cfg = ['[project]\nname = "bench"\n[dashboard]\nlisten = "127.0.0.1:0"\n']
    for i in range(a.services):
        cfg.append(f'[services.s{i:03}]\ncommand = "exec sleep 100000"\nstop_grace = "2s"\n')
    open(os.path.join(work, "kinfra.toml"), "w").write("".join(cfg))
    up = subprocess.Popen([kinfra, "runtime", "up", "--color", "never", "--quiet"], cwd=work,
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    driver = None
    try:
        addr = None
        for line in up.stdout:
            m = re.search(r"dashboard\s+http://([0-9.:]+)/kinfra", line)
            if m:
                addr = m.group(1)
            if "Press Ctrl-C" in line:
                break
        threading.Thread(target=lambda: [None for _ in up.stdout], daemon=True).start()
        token = open(os.path.join(work, ".kinfra", "dashboard.token")).read().strip()
        host, port = addr.split(":")

        # Raw SSE client.
        raw = []
        stop = threading.Event()

        def sse():
            s = socket.create_connection((host, int(port)))
            s.sendall(f"GET /__events__ HTTP/1.1\r\nHost: {addr}\r\n\r\n".encode())
            f = s.makefile("rb")
            event, data = None, ""
            while not stop.is_set():
                line = f.readline().decode().rstrip("\r\n")
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    data += line[6:]
                elif line == "" and event:
                    now = time.time()
                    if event == "events":
                        for e in json.loads(data):
                            raw.append((e["seq"], now - parse_ts(e["timestamp"])))
                    event, data = None, ""
        threading.Thread(target=sse, daemon=True).start()

        # Headless Chromium on the dashboard, recording when each event reached the DOM.
        browser = []
        dport = free_port()
        if shutil.which("chromedriver"):
            driver = subprocess.Popen(["chromedriver", f"--port={dport}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for _ in range(200):
                try:
                    if webdriver(dport, "GET", "/status")["ready"]:
                        break
                except Exception:
                    time.sleep(0.05)
            profile = tempfile.mkdtemp(prefix="kinfra-bench-chrome-")
            sid = webdriver(dport, "POST", "/session", {"capabilities": {"alwaysMatch": {"browserName": "chrome",
                "goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": ["--headless", "--no-sandbox", "--disable-gpu",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
                    f"--user-data-dir={profile}"]}}}})["sessionId"]
            webdriver(dport, "POST", f"/session/{sid}/url", {"url": f"http://{addr}/kinfra"})
            for _ in range(400):
                n = webdriver(dport, "POST", f"/session/{sid}/execute/sync", {"script": "return document.querySelectorAll('.card').length", "args": []})
                if n == a.services:
                    break
                time.sleep(0.05)
            webdriver(dport, "POST", f"/session/{sid}/execute/sync", {"args": [], "script":
                "window.__lat = []; const orig = window.timeline; window.timeline = (evs) => { orig(evs); "
                "const now = Date.now(); for (const e of evs) window.__lat.push([e.seq, now - Date.parse(e.timestamp)]); };"
                "const oup = window.upsert; window.upsert = (n, s) => oup(n, s); return true;"})

        names = [f"s{i:03}" for i in range(a.services)]
        t0 = time.time()
        for i in range(a.restarts):
            req = urllib.request.Request(f"http://{addr}/__action__/restart/{names[i % len(names)]}", method="POST",
                                         headers={"Authorization": f"Bearer {token}"})
            urllib.request.urlopen(req, timeout=30).read()
        took = time.time() - t0
        time.sleep(1.0)
        stop.set()
        if driver:
            browser = webdriver(dport, "POST", f"/session/{sid}/execute/sync", {"script": "return window.__lat", "args": []})
            webdriver(dport, "DELETE", f"/session/{sid}")
        raw_ms = [d * 1000 for _, d in raw]
        br_ms = [float(d) for _, d in browser]
        result = {
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "kernel": os.uname().release, "cpus": os.cpu_count(),
            "kinfra": subprocess.run([kinfra, "--version"], capture_output=True, text=True).stdout.strip(),
            "services": a.services, "restarts": a.restarts, "restart_rate_per_s": round(a.restarts / took, 1),
            "sse_client_ms": {"events": len(raw_ms), "p50": pct(raw_ms, 50), "p99": pct(raw_ms, 99), "max": max(raw_ms) if raw_ms else None},
            "browser_dom_ms": {"events": len(br_ms), "p50": pct(br_ms, 50), "p99": pct(br_ms, 99), "max": max(br_ms) if br_ms else None},
            "bar_p99_ms": 100,
        }
        os.makedirs(os.path.dirname(a.out), exist_ok=True)
        json.dump(result, open(a.out, "w"), indent=2)
        print(json.dumps(result, indent=2))
    finally:
        if driver:
            driver.terminate(); driver.wait()
        up.send_signal(signal.SIGTERM)
        try:
            up.wait(timeout=60)
        except subprocess.TimeoutExpired:
            up.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
