#!/usr/bin/env python3
"""Idle cost of a kinfra runtime, taken apart (bench/idle.md).

Starts `BIN runtime up` with N services (`exec sleep 1000NN`, the same as bench/run's
supervisor section) in a fresh directory, waits until `/__status__` reports all of them running,
lets it settle (SETTLE seconds, default 2; CPU/memory sampling goes on 2 s after the last status
read; `runtime up` pages its startup code out 15 s after start, kinfra::pages, so SETTLE=20 sees
the steady state), then over WINDOW seconds measures, for every process of the runtime (kinfra, its managed
nats-server, the guardian shell; not the services):

- CPU: utime + stime ticks from /proc/PID/stat, and the precise figure from the threads'
  /proc/PID/task/TID/schedstat run time;
- wake-ups per thread: the schedstat timeslice count before and after the window (a thread that
  sleeps and wakes counts one per wake-up);
- RSS per process (/proc/PID/statm) and the main process's smaps_rollup; the full smaps is kept
  in the run directory (smaps_main.txt) for a breakdown by mapping;
- the binary's pages in the page cache (`fincore`), mapped or not.

Options: `--strace` (strace -f -tt of the window into strace.txt: every syscall with its
thread), `--perf` (perf record -g of the window into perf.data), KEY=VALUE (environment of the
runtime). Everything it starts runs in its own process group and is stopped at the end.

usage: bench/idle.py BIN N WINDOW [--strace] [--perf] [KEY=VALUE ...]
"""
import glob
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def children(pid):
    out = []
    for f in glob.glob(f"/proc/{pid}/task/*/children"):
        try:
            out.extend(int(x) for x in open(f).read().split())
        except OSError:
            pass
    return out


def tree(pid):
    seen, todo = [], [pid]
    while todo:
        q = todo.pop()
        if q not in seen:
            seen.append(q)
            todo.extend(children(q))
    return seen


def comm(pid):
    try:
        return open(f"/proc/{pid}/comm").read().strip()
    except OSError:
        return "?"


def ticks(pid):
    try:
        f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return int(f[11]) + int(f[12])
    except OSError:
        return 0


def threads(pid):
    """tid -> (name, run time ns, timeslices)."""
    out = {}
    for t in glob.glob(f"/proc/{pid}/task/*"):
        try:
            ss = open(f"{t}/schedstat").read().split()
            out[int(t.rsplit("/", 1)[1])] = (open(f"{t}/comm").read().strip(), int(ss[0]), int(ss[2]))
        except OSError:
            pass
    return out


def main():
    binary, n, window = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    flags = sys.argv[4:]
    work = f"/tmp/kinfra-idle-{n}-{os.getpid()}"
    os.makedirs(work)
    dport, pport = free_port(), free_port()
    cfg = ['[project]\nname = "bench"\nstate_dir = ".kinfra"\nshutdown_timeout = "10s"\n',
           f'[dashboard]\nlisten = "127.0.0.1:{dport}"\n', f'[proxy]\nhttp = "127.0.0.1:{pport}"\nthreads = 1\n']
    for i in range(n):
        cfg.append(f"[services.s{i:03}]\ncommand = '''exec sleep {100000 + i}'''\nrestart = \"always\"\n"
                   'stop_grace = "2s"\nbackoff = { initial = "0s" }\ncrash_loop = { max_failures = 0 }\n')
    open(f"{work}/kinfra.toml", "w").write("".join(cfg))
    env = dict(os.environ)
    env.pop("KINFRA_LOG", None)
    env.update(dict(a.split("=", 1) for a in flags if "=" in a and not a.startswith("--")))
    p = subprocess.Popen([binary, "runtime", "up", "--color", "never", "--quiet"], cwd=work, env=env,
                         stdin=subprocess.DEVNULL, stdout=open(f"{work}/up.log", "wb"),
                         stderr=subprocess.STDOUT, start_new_session=True)
    try:
        t0 = time.time()
        while True:
            if time.time() - t0 > 120:
                sys.exit("not all running within 120 s")
            try:
                st = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{dport}/__status__", timeout=2).read())
                if len(st["services"]) == n and all(s["state"] == "running" for s in st["services"].values()):
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        print(f"all running after {time.time() - t0:.2f}s", flush=True)
        time.sleep(float(os.environ.get("SETTLE", "2")))
        pid = p.pid
        services = set(c for c in children(pid) if comm(c) == "sleep")
        rt = [q for q in tree(pid) if q not in services]
        th0 = {q: threads(q) for q in rt}
        c0 = {q: ticks(q) for q in rt}
        w0 = time.time()
        extra = []
        if "--strace" in flags:
            extra.append(subprocess.Popen(["strace", "-f", "-tt", "-p", str(pid), "-o", f"{work}/strace.txt"],
                                          stderr=subprocess.DEVNULL))
        if "--perf" in flags:
            extra.append(subprocess.Popen(["perf", "record", "-g", "-o", f"{work}/perf.data", "-p", str(pid),
                                           "--", "sleep", str(window)],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        time.sleep(window)
        for e in extra:
            e.send_signal(signal.SIGINT)
            e.wait()
        w1 = time.time()
        c1 = {q: ticks(q) for q in rt}
        th1 = {q: threads(q) for q in rt}
        hz = os.sysconf("SC_CLK_TCK")
        secs = w1 - w0
        total_ns = 0
        rows = []
        for q in rt:
            ns = sum(v[1] - th0[q][t][1] for t, v in th1[q].items() if t in th0[q])
            total_ns += ns
            rows.append(f"  {q} {comm(q)}: {(c1[q] - c0[q]) * 1000 / hz:.0f} ms in ticks, "
                        f"{ns / 1e6:.1f} ms run time = {ns / 1e7 / secs:.3f} %")
        print(f"CPU over {secs:.1f} s: {total_ns / 1e7 / secs:.3f} % (run time {total_ns / 1e6:.1f} ms; "
              f"ticks {sum(c1[q] - c0[q] for q in rt) * 1000 / hz:.0f} ms)")
        print("\n".join(rows))
        for q in rt:
            per = sorted(((v[2] - th0[q][t][2], (v[1] - th0[q][t][1]) / 1e6, t, v[0])
                          for t, v in th1[q].items() if t in th0[q]), reverse=True)
            woke = sum(r[0] for r in per)
            print(f"  {comm(q)} ({q}): {len(th1[q])} threads, {woke} wake-ups ({woke / secs:.1f}/s)")
            for r in per[:8]:
                if r[0]:
                    print(f"    {r[3]:<20} tid {r[2]}: {r[0]} wake-ups, {r[1]:.1f} ms")
        page = os.sysconf("SC_PAGE_SIZE")
        total = 0
        for q in rt:
            try:
                rss = int(open(f"/proc/{q}/statm").read().split()[1]) * page
            except OSError:
                continue
            total += rss
            print(f"RSS {comm(q)} ({q}): {rss / 2**20:.1f} MiB")
        print(f"RSS runtime: {total / 2**20:.1f} MiB")
        open(f"{work}/smaps_main.txt", "w").write(open(f"/proc/{pid}/smaps").read())
        rollup = dict(line.split(":", 1) for line in open(f"/proc/{pid}/smaps_rollup").read().splitlines()[1:])
        print("main process: " + ", ".join(f"{k} {rollup[k].strip()}" for k in ("Rss", "Anonymous", "Pss_File")))
        # The binary's pages in the page cache (whoever maps them): shows whether pages that
        # left the resident set left memory too (kinfra::pages) or only the page tables.
        try:
            res = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", binary],
                                 capture_output=True, text=True, check=True).stdout.strip()
            print(f"page cache: {int(res) / 2**20:.1f} MiB of {os.path.getsize(binary) / 2**20:.1f} MiB of {binary}")
        except (OSError, ValueError, subprocess.CalledProcessError) as e:
            print(f"page cache: fincore failed ({e})")
    finally:
        try:
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(30)
        except (OSError, subprocess.TimeoutExpired):
            os.killpg(p.pid, signal.SIGKILL)
        print("work", work)


if __name__ == "__main__":
    main()
