#!/usr/bin/env python3
"""bench/wake.py: scale to zero (issue 21), how long a sleeping target takes to answer.

    bench/wake.py                     # 20 sleep -> wake cycles per target, 500 awake samples
    bench/wake.py --cycles 5 --awake 50 --no-container
    bench/wake.py --kinfra target/debug/kinfra --note "debug build"

One `kinfra runtime up` on loopback with three targets behind routes, all the same static web
server (busybox httpd serving one small JSON file), each with kinfra's HTTP readiness probe:
  proc   a process with scale_to_zero (idle_after = 1h: only this script puts it to sleep)
  plain  the same process without scale_to_zero (the awake baseline)
  ctr    a Docker container resource with scale_to_zero (image made here with `docker import`
         from the host's static busybox; left out, and said so, when no Docker engine answers)

Wake latency: `kinfra runtime sleep NAME`, wait until /__status__ says sleeping (and, for the
container, docker says it is stopped), a short settle, then one GET as an API client
(`Accept: application/json`, so the proxy holds it instead of answering the loading page):
the time from the request's last byte sent to the response's first byte received, on a
connection opened beforehand. Counted only when the answer is the real service's (200 and the
file's body); anything else is counted as a failure with its status. Cycles of proc and ctr
alternate. Awake: the same request to proc, plain and the server directly (its port), round
robin, after each target's first answer. Every figure is a measurement, never asserted.

Writes bench/results/wake-latest.json, a timestamped copy, and bench/wake.md (whose summary
block bench/run puts into RESULTS.md). Every process started here runs in its own process
group and is killed by PID at exit.
"""
import argparse
import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone

ROOT = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
BODY = '{"hello":"awake"}'
IMAGE = "kinfra-bench/busybox:1"
STARTED = []


def log(msg):
    print(f"[wake {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def cleanup():
    for p in STARTED:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass


atexit.register(cleanup)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
signal.signal(signal.SIGINT, lambda *_: sys.exit(130))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values, p):
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, max(0, int(round(p / 100 * (len(v) - 1)))))]


def stats_ms(values):
    ms = [v * 1000 for v in values]
    r = lambda x: None if x is None else round(x, 2)
    return {"n": len(ms), "median_ms": r(pct(ms, 50)), "p90_ms": r(pct(ms, 90)), "p99_ms": r(pct(ms, 99)),
            "min_ms": r(min(ms) if ms else None), "max_ms": r(max(ms) if ms else None)}


def request(port, path, timeout):
    """One GET as an API client on a fresh connection (HTTP/1.0: the answer is never chunked):
    (seconds from the request sent to the first response byte, status, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        req = f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nAccept: application/json\r\n\r\n".encode()
        t0 = time.perf_counter()
        s.sendall(req)
        first = s.recv(1)
        t1 = time.perf_counter()
        request.first_byte_wall = time.time()
        chunks = [first]
        while True:
            b = s.recv(65536)
            if not b:
                break
            chunks.append(b)
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    try:
        status = int(head.split()[1])
    except (IndexError, ValueError):
        status = 0
    return t1 - t0, status, body.decode(errors="replace").strip()


def docker(*args, check=False):
    r = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=120)
    if check and r.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)}: {r.stderr.strip()}")
    return r.stdout.strip() if r.returncode == 0 else None


def docker_ready():
    """None when a Docker engine answers and the bench image exists (built here when missing),
    else why the container target is left out."""
    if not shutil.which("docker"):
        return "docker is not installed (apt-get install docker.io)"
    if docker("info", "--format", "{{.ServerVersion}}") is None:
        return "no Docker engine answers (start dockerd)"
    if docker("image", "inspect", IMAGE) is not None:
        return None
    bb = shutil.which("busybox")
    if not bb or subprocess.run(["ldd", bb], capture_output=True).returncode == 0:
        return "a static busybox is needed for the image (apt-get install busybox-static)"
    with tempfile.TemporaryDirectory() as d:
        root = os.path.join(d, "root")
        os.makedirs(os.path.join(root, "bin"))
        os.makedirs(os.path.join(root, "tmp"))
        shutil.copy(bb, os.path.join(root, "bin", "busybox"))
        for applet in ("sh", "httpd", "mkdir", "echo"):
            os.symlink("busybox", os.path.join(root, "bin", applet))
        tar = os.path.join(d, "root.tar")
        subprocess.run(["tar", "-C", root, "-cf", tar, "."], check=True)
        docker("import", "--change", "ENV PATH=/bin", tar, IMAGE, check=True)
    log(f"built {IMAGE}")
    return None


def config(dport, pport, www, with_container, probe):
    serve = f"exec busybox httpd -f -p 127.0.0.1:${{PORT}} -h {www}"
    out = [f'[project]\nname = "wake-bench-{os.getpid()}"\nstate_dir = ".kinfra"\nshutdown_timeout = "10s"\n',
           f'[dashboard]\nlisten = "127.0.0.1:{dport}"\n',
           f'[proxy]\nhttp = "127.0.0.1:{pport}"\nthreads = 1\n']
    for name, stz in (("proc", True), ("plain", False)):
        out.append(f"[services.{name}]\ncommand = '''{serve}'''\nport = \"auto\"\nstop_grace = \"2s\"\n"
                   f'health = {{ http = "/data.json", interval = "{probe}" }}\n'
                   + ('scale_to_zero = { idle_after = "1h", wake_timeout = "60s" }\n' if stz else ""))
    if with_container:
        out.append(f'[resources.ctr]\ntemplate = "docker"\nimage = "{IMAGE}"\n'
                   f"command = '''mkdir -p /www && echo '{BODY}' > /www/data.json && exec httpd -f -p 8080 -h /www'''\n"
                   'container_port = 8080\nport = "auto"\nstop_grace = "1s"\n'
                   f'health = {{ http = "/data.json", interval = "{probe}" }}\n'
                   'scale_to_zero = { idle_after = "1h", wake_timeout = "60s" }\n')
    for name in ("proc", "plain") + (("ctr",) if with_container else ()):
        out.append(f'[[routes]]\npath = "/{name}"\nstrip_prefix = true\nservice = "{name}"\n')
    return "".join(out)


class Runtime:
    def __init__(self, binary, work, with_container, probe):
        self.binary, self.work = binary, work
        self.dport, self.pport = free_port(), free_port()
        www = os.path.join(work, "www")
        os.makedirs(www)
        open(os.path.join(www, "data.json"), "w").write(BODY + "\n")
        open(os.path.join(work, "kinfra.toml"), "w").write(config(self.dport, self.pport, www, with_container, probe))
        env = dict(os.environ)
        env.pop("KINFRA_LOG", None)
        self.out = open(os.path.join(work, "up.log"), "ab")
        self.proc = subprocess.Popen([binary, "runtime", "up", "--color", "never", "--quiet"], cwd=work, env=env,
                                     stdin=subprocess.DEVNULL, stdout=self.out, stderr=self.out,
                                     start_new_session=True)
        STARTED.append(self.proc)

    def status(self):
        try:
            _, code, body = request(self.dport, "/__status__", 5)
            return json.loads(body)["services"] if code == 200 else {}
        except (OSError, ValueError, KeyError):
            return {}

    def wait(self, what, cond, limit=90):
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"kinfra exited ({self.proc.returncode}) waiting for {what}: {self.log_tail()}")
            v = cond(self.status())
            if v:
                return v
            time.sleep(0.02)
        raise RuntimeError(f"timed out after {limit} s waiting for {what}: {self.status()}\n{self.log_tail()}")

    def log_tail(self):
        self.out.flush()
        return "".join(open(os.path.join(self.work, "up.log"), errors="replace").readlines()[-20:])

    def cli(self, *args):
        r = subprocess.run([self.binary, "runtime", *args], cwd=self.work, capture_output=True, text=True,
                           timeout=120)
        if r.returncode != 0:
            raise RuntimeError(f"kinfra runtime {' '.join(args)}: {r.stdout}{r.stderr}")

    def stop(self):
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


class StateEvents:
    """Follows the dashboard's event stream (GET /__events__): every state change with its
    own timestamp (kinfra's wall clock, milliseconds), to split a wake into its parts."""

    def __init__(self, port):
        self.changes = []  # (timestamp, service, to)
        self.lock = threading.Lock()
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.sendall(f"GET /__events__ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        self.sock.settimeout(None)
        threading.Thread(target=self.read, daemon=True).start()

    def read(self):
        f = self.sock.makefile("rb")
        event, data = None, ""
        try:
            for raw in f:
                line = raw.decode(errors="replace").rstrip("\r\n")
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    data += line[6:]
                elif line == "":
                    if event == "events":
                        for e in json.loads(data):
                            if e.get("type") == "state_changed":
                                ts = datetime.strptime(e["timestamp"], "%Y-%m-%dT%H:%M:%S.%fZ")
                                ts = ts.replace(tzinfo=timezone.utc).timestamp()
                                with self.lock:
                                    self.changes.append((ts, e["service"], e["to"]))
                    event, data = None, ""
        except (OSError, ValueError):
            pass

    def first(self, service, to, after):
        """The timestamp of the first change of service to state to at or after after."""
        with self.lock:
            return next((ts for ts, s, t in self.changes if s == service and t == to and ts >= after - 0.001), None)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def container_running(project):
    ids = docker("ps", "-aq", "--filter", f"label=dev.kinfra.project={project}") or ""
    states = [docker("inspect", "-f", "{{.State.Running}}", i) for i in ids.split()]
    return len(states), sum(1 for s in states if s == "true")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kinfra", default=os.environ.get("KINFRA_BIN") or os.path.join(ROOT, "target/release/kinfra"))
    ap.add_argument("--cycles", type=int, default=20, help="sleep -> wake cycles per target (default 20)")
    ap.add_argument("--awake", type=int, default=500, help="awake requests per path (default 500)")
    ap.add_argument("--probe", default="100ms", help="the targets' readiness probe interval (default 100ms)")
    ap.add_argument("--no-container", action="store_true")
    ap.add_argument("--max-seconds", type=float, default=900, help="stop starting cycles after this long")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench"), help="where wake.md and results/ go")
    ap.add_argument("--note", help="a line recorded with the results")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory (for debugging)")
    args = ap.parse_args()
    args.kinfra = os.path.abspath(args.kinfra)
    t_start = time.monotonic()
    if not os.access(args.kinfra, os.X_OK):
        raise SystemExit(f"no kinfra binary at {args.kinfra} (cargo build --release -p kinfra, or --kinfra PATH)")
    skipped = "--no-container" if args.no_container else docker_ready()
    with_container = skipped is None
    targets = ["proc"] + (["ctr"] if with_container else [])
    work = tempfile.mkdtemp(prefix="kinfra-wake-")
    project = f"wake-bench-{os.getpid()}"
    rt = Runtime(args.kinfra, work, with_container, args.probe)
    res = {"schema": 1, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "kinfra_binary": os.path.realpath(args.kinfra),
           "kinfra_binary_built": datetime.fromtimestamp(os.path.getmtime(args.kinfra), timezone.utc)
           .isoformat(timespec="seconds"),
           "git_commit": subprocess.run(["git", "-C", ROOT, "rev-parse", "--short=12", "HEAD"], capture_output=True,
                                        text=True).stdout.strip() or None,
           "cpus": os.cpu_count(), "loadavg_start": open("/proc/loadavg").read().split()[:3], "note": args.note,
           "method": {"cycles": args.cycles, "awake_requests": args.awake, "probe_interval": args.probe,
                      "server": "busybox httpd, one static JSON file", "container_skipped": skipped}}
    try:
        everyone = ["proc", "plain"] + (["ctr"] if with_container else [])
        rt.wait("every target running and healthy",
                lambda s: all(s.get(n, {}).get("state") == "running" and s[n].get("health") == "healthy"
                              for n in everyone), limit=120)
        ports = {n: rt.status()[n]["port"] for n in everyone}
        events = StateEvents(rt.dport)
        # Each route answers once before anything is measured (the proxy's view settles).
        for n in everyone:
            deadline = time.monotonic() + 30
            while request(rt.pport, f"/{n}/data.json", 10)[1] != 200:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"/{n} never answered 200 through the proxy")
                time.sleep(0.05)

        # Awake: the same request through the proxy to proc (scale_to_zero), plain (without) and
        # directly to proc's port, round robin.
        awake = {"proc": [], "plain": [], "direct": []}
        for _ in range(args.awake):
            for key, port, path in (("proc", rt.pport, "/proc/data.json"), ("plain", rt.pport, "/plain/data.json"),
                                    ("direct", ports["proc"], "/data.json")):
                secs, code, body = request(port, path, 10)
                if code == 200 and body == BODY:
                    awake[key].append(secs)
        res["awake"] = {k: stats_ms(v) for k, v in awake.items()}
        log(f"awake: {res['awake']}")

        wakes = {t: [] for t in targets}
        to_ready = {t: [] for t in targets}
        released = {t: [] for t in targets}
        failures = {t: [] for t in targets}
        cycles_done = 0
        for i in range(args.cycles):
            if time.monotonic() - t_start > args.max_seconds:
                log(f"stopping after {i} cycles: --max-seconds {args.max_seconds}")
                break
            for t in (targets if i % 2 == 0 else list(reversed(targets))):
                rt.cli("sleep", t)
                rt.wait(f"{t} sleeping", lambda s: s.get(t, {}).get("state") == "sleeping")
                if t == "ctr":
                    total, running = container_running(project)
                    if total != 1 or running:
                        failures[t].append(f"{total} containers, {running} running while asleep")
                # The proxy follows state changes through events, a moment after the status.
                time.sleep(0.3)
                try:
                    sent = time.time()
                    secs, code, body = request(rt.pport, f"/{t}/data.json", 90)
                    answered = request.first_byte_wall
                except OSError as e:
                    failures[t].append(f"{type(e).__name__}: {e}")
                    continue
                if code == 200 and body == BODY:
                    wakes[t].append(secs)
                    # kinfra's own moment of "running" (ready: the probe passed), from its event.
                    ready, deadline = None, time.monotonic() + 5
                    while ready is None and time.monotonic() < deadline:
                        ready = events.first(t, "running", sent)
                        if ready is None:
                            time.sleep(0.01)
                    if ready is not None:
                        to_ready[t].append(ready - sent)
                        released[t].append(answered - ready)
                else:
                    failures[t].append(f"status {code}: {body[:120]}")
                rt.wait(f"{t} running", lambda s: s.get(t, {}).get("state") == "running")
            cycles_done = i + 1
        res["wake"] = {t: dict(stats_ms(wakes[t]), failures=len(failures[t]), failure_samples=failures[t][:5],
                               request_to_running=stats_ms(to_ready[t]), running_to_first_byte=stats_ms(released[t]))
                       for t in targets}
        events.close()
        res["method"]["cycles_done"] = cycles_done
        log(f"wake: {res['wake']}")
    finally:
        rt.stop()
        cleanup()
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    res["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
    res["duration_s"] = round(time.monotonic() - t_start, 1)

    results = os.path.join(args.out, "results")
    os.makedirs(results, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    text = json.dumps(res, indent=2) + "\n"
    open(os.path.join(results, f"{stamp}-wake.json"), "w").write(text)
    open(os.path.join(results, "wake-latest.json"), "w").write(text)
    open(os.path.join(args.out, "wake.md"), "w").write(render(res))
    log(f"wrote {results}/wake-latest.json and {args.out}/wake.md in {res['duration_s']} s")
    return 0


def fmt(x):
    return "–" if x is None else f"{x:,.1f}" if x < 100 else f"{x:,.0f}"


def render(res):
    m = res["method"]
    L = ["# Scale to zero: wake latency",
         "",
         "Measured with `bench/wake.py` (the method is in its header and in [README.md](README.md#scale-to-zero-wake-latency)); "
         "a measurement, never an assertion. Generated from `bench/results/wake-latest.json`.",
         "",
         "<!-- summary -->",
         f"Wake: request arrives at the proxy → first byte from the woken service, over {m.get('cycles_done', 0)} "
         f"sleep → wake cycles per target (`kinfra runtime sleep`, then one held GET as an API client; readiness "
         f"probe every {m['probe_interval']}; the same busybox httpd everywhere).",
         "",
         "| sleeping target | wakes | median ms | p90 ms | min ms | max ms | failures | request → running, median ms | running → first byte, median / p90 ms |",
         "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    names = {"proc": "process (`[services]`)", "ctr": "container (`[resources]`, Docker)"}
    for t, w in res.get("wake", {}).items():
        a, b = w.get("request_to_running", {}), w.get("running_to_first_byte", {})
        L.append(f"| {names.get(t, t)} | {w['n']} | {fmt(w['median_ms'])} | {fmt(w['p90_ms'])} | "
                 f"{fmt(w['min_ms'])} | {fmt(w['max_ms'])} | {w['failures']} | {fmt(a.get('median_ms'))} | "
                 f"{fmt(b.get('median_ms'))} / {fmt(b.get('p90_ms'))} |")
    if m.get("container_skipped"):
        L.append(f"| container | – | – | – | – | – | left out: {m['container_skipped']} | – | – |")
    L += ["", "\"Request → running\" ends at kinfra's own `state_changed` event to `running` (the readiness "
          "probe passed; its millisecond timestamp against the harness's wall clock at the request); \"running → "
          "first byte\" is then what the held request waits for the proxy to release it, plus the forward and the "
          "server's answer."]
    L += ["", f"Awake, the same request ({m['awake_requests']} each, round robin): what a target with "
          "`scale_to_zero` pays per request while it is awake (activity recording), beside the same "
          "server without it and reached directly.", "",
          "| awake path | requests | median ms | p99 ms |", "|---|---:|---:|---:|"]
    labels = {"proc": "proxy → process with `scale_to_zero`", "plain": "proxy → the same process without it",
              "direct": "direct to the process (no proxy)"}
    for k, a in res.get("awake", {}).items():
        L.append(f"| {labels.get(k, k)} | {a['n']} | {a['median_ms']:.3f} | {a['p99_ms']:.3f} |"
                 if a["n"] else f"| {labels.get(k, k)} | 0 | – | – |")
    a = res.get("awake", {})
    if a.get("proc", {}).get("n") and a.get("plain", {}).get("n"):
        L += ["", f"Hold overhead while awake (median, `scale_to_zero` − without): "
              f"{(a['proc']['median_ms'] - a['plain']['median_ms']) * 1000:+.0f} µs; p99: "
              f"{(a['proc']['p99_ms'] - a['plain']['p99_ms']) * 1000:+.0f} µs."]
    L += ["", f"Run: {res['date']}, commit `{res['git_commit']}`, binary `{res['kinfra_binary']}` "
          f"(built {res['kinfra_binary_built']}), {res['cpus']} cores, load average "
          f"{' '.join(res['loadavg_start'])} at start, {' '.join(res['loadavg_end'])} at end, "
          f"{res['duration_s']} s." + (f" Note: {res['note']}" if res.get("note") else ""),
          "<!-- /summary -->", ""]
    return "\n".join(L)


if __name__ == "__main__":
    sys.exit(main())
