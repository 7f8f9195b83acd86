#!/usr/bin/env python3
"""Event fan-out across a NATS cluster: an event on kinfra node A → node C's dashboard stream.

Starts a three-server NATS cluster (Debian's nats-server, routes between 127.0.0.1 ports,
token authorization) and three kinfra nodes a, b, c (dashboards on 127.0.0.1, 127.0.0.2,
127.0.0.3), each on a different server. Restarts a service on node a R times through a's
dashboard API and measures, for every event of node a, the time from its emission (the
event's own millisecond timestamp) to its arrival at a raw SSE client of node c's
`GET /__fleet__/events`. Same machine, same clock. Bounded: loopback only, R restarts.
Writes JSON to bench/results/fleet_fanout.json and prints a summary.

usage: bench/fleet_fanout.py [--kinfra target/debug/kinfra] [--restarts 50]
"""
import argparse, json, os, re, signal, socket, subprocess, tempfile, threading, time
import urllib.request
from datetime import datetime, timezone

TOKEN = "fleet-bench-token"


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


def wait_until(what, limit, cond):
    deadline = time.time() + limit
    while time.time() < deadline:
        try:
            if cond():
                return
        except Exception:
            pass
        time.sleep(0.05)
    raise SystemExit(f"timed out waiting for {what}")


def start_cluster(work):
    ports = [(free_port(), free_port(), free_port()) for _ in range(3)]
    procs = []
    for i, (port, route, mon) in enumerate(ports):
        routes = ", ".join(f'"nats-route://127.0.0.1:{r}"' for j, (_, r, _) in enumerate(ports) if j != i)
        conf = os.path.join(work, f"nats{i}.conf")
        open(conf, "w").write(
            f'server_name: "n{i}"\nlisten: "127.0.0.1:{port}"\nhttp: "127.0.0.1:{mon}"\n'
            f'authorization {{ token: "{TOKEN}" }}\n'
            f'cluster {{\n  name: "kbench"\n  listen: "127.0.0.1:{route}"\n  routes: [{routes}]\n}}\n')
        procs.append(subprocess.Popen(["nats-server", "-c", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    for _, _, mon in ports:
        wait_until("the NATS cluster's routes", 20, lambda: json.load(
            urllib.request.urlopen(f"http://127.0.0.1:{mon}/routez", timeout=2))["num_routes"] >= 2)
    return procs, [p for p, _, _ in ports]


def start_node(kinfra, work, name, ip, port):
    d = os.path.join(work, name)
    os.makedirs(d)
    open(os.path.join(d, "kinfra.toml"), "w").write(
        f'[project]\nname = "bench"\n[node]\nname = "{name}"\nheartbeat = "1s"\n'
        f'[dashboard]\nlisten = "{ip}:0"\n[bus]\nurl = "nats://127.0.0.1:{port}"\ntoken = "{TOKEN}"\n'
        f'[store]\nenabled = false\n[services.web]\ncommand = "exec sleep 100000"\nstop_grace = "2s"\n')
    env = dict(os.environ, KINFRA_PROXY__HTTP=f"{ip}:0")
    env.pop("KINFRA_LOG", None)
    up = subprocess.Popen([kinfra, "runtime", "up", "--color", "never", "--quiet"], cwd=d, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    addr = None
    for line in up.stdout:
        m = re.search(r"dashboard\s+http://([0-9.:]+)/kinfra", line)
        if m:
            addr = m.group(1)
        if "Press Ctrl-C" in line:
            break
    threading.Thread(target=lambda: [None for _ in up.stdout], daemon=True).start()
    token = open(os.path.join(d, ".kinfra", "dashboard.token")).read().strip()
    return up, addr, token


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kinfra", default="target/debug/kinfra")
    ap.add_argument("--restarts", type=int, default=50)
    ap.add_argument("--out", default="bench/results/fleet_fanout.json")
    a = ap.parse_args()
    kinfra = os.path.abspath(a.kinfra)
    work = tempfile.mkdtemp(prefix="kinfra-bench-fleet-")
    servers, ports = start_cluster(work)
    nodes = []
    try:
        for name, ip, port in zip("abc", ["127.0.0.1", "127.0.0.2", "127.0.0.3"], ports):
            nodes.append(start_node(kinfra, work, name, ip, port))
        (_, a_addr, a_token), _, (_, c_addr, _) = nodes
        wait_until("node c to see every node up", 30, lambda: all(n["state"] == "up" for n in json.load(
            urllib.request.urlopen(f"http://{c_addr}/__fleet__", timeout=2))["nodes"]) and len(json.load(
            urllib.request.urlopen(f"http://{c_addr}/__fleet__", timeout=2))["nodes"]) == 3)

        seen = []
        ready = threading.Event()
        stop = threading.Event()

        def sse():
            host, port = c_addr.split(":")
            s = socket.create_connection((host, int(port)))
            s.sendall(f"GET /__fleet__/events HTTP/1.1\r\nHost: {c_addr}\r\n\r\n".encode())
            f = s.makefile("rb")
            event, data = None, ""
            while not stop.is_set():
                line = f.readline().decode().rstrip("\r\n")
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data += line[5:].strip()
                elif line == "" and event:
                    now = time.time()
                    if event == "ready":
                        ready.set()
                    elif event == "fleet":
                        e = json.loads(data)
                        if e.get("node") == "a":
                            seen.append((e["seq"], now - parse_ts(e["timestamp"])))
                    event, data = None, ""
        threading.Thread(target=sse, daemon=True).start()
        if not ready.wait(10):
            raise SystemExit("node c's fleet stream did not open")

        t0 = time.time()
        for _ in range(a.restarts):
            req = urllib.request.Request(f"http://{a_addr}/__action__/restart/web", method="POST",
                                         headers={"Authorization": f"Bearer {a_token}"})
            urllib.request.urlopen(req, timeout=30).read()
        took = time.time() - t0
        wait_until("the last events at node c", 10, lambda: len(seen) >= 4 * a.restarts)
        stop.set()
        ms = [d * 1000 for _, d in seen]
        result = {
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "kernel": os.uname().release, "cpus": os.cpu_count(),
            "kinfra": subprocess.run([kinfra, "--version"], capture_output=True, text=True).stdout.strip(),
            "binary": a.kinfra, "restarts": a.restarts, "restart_rate_per_s": round(a.restarts / took, 1),
            "a_to_c_sse_ms": {"events": len(ms), "p50": pct(ms, 50), "p99": pct(ms, 99), "max": max(ms) if ms else None},
        }
        os.makedirs(os.path.dirname(a.out), exist_ok=True)
        json.dump(result, open(a.out, "w"), indent=2)
        print(json.dumps(result, indent=2))
    finally:
        for up, _, _ in nodes:
            up.send_signal(signal.SIGTERM)
        for up, _, _ in nodes:
            try:
                up.wait(20)
            except subprocess.TimeoutExpired:
                up.kill()
        for p in servers:
            p.kill()
            p.wait()


if __name__ == "__main__":
    main()
