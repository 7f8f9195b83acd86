#!/usr/bin/env python3
# Usage: bench/log_capture_supervisord.py [LINES_PER_WRITER=250000] [RUNS=3]
# The supervisord reference for crates/kinfra-supervisor/examples/log_capture.rs (bench/logs.md):
# the same 4 writers `seq -f 'wN %.0f' 1 L`, bench/run's Supervisord class (10 MB rotation,
# 5 backups), end point = the last line of every writer in its file, polled every 0.2 ms;
# lines/s from the earliest writer start (bench/run's Logs method, finer polling).
import importlib.machinery, importlib.util, os, re, shutil, sys, tempfile, time
spec = importlib.util.spec_from_loader("benchrun", importlib.machinery.SourceFileLoader("benchrun", os.path.join(os.path.dirname(os.path.abspath(__file__)), "run")))
br = importlib.util.module_from_spec(spec); spec.loader.exec_module(br)
L = int(sys.argv[1]) if len(sys.argv) > 1 else 250000
runs = int(sys.argv[2]) if len(sys.argv) > 2 else 3
rates = []
for run in range(runs):
    wd = tempfile.mkdtemp(prefix="sup-logs-")
    services = [(f"w{i}", f"date +%s%N > {wd}/start.w{i}; seq -f 'w{i} %.0f' 1 {L}", "no") for i in range(4)]
    s = br.Supervisord(shutil.which("supervisord") or sys.exit("supervisord is not installed (apt-get install supervisor)"), wd, services=services)
    s.start()
    last = {f"w{i}": f"w{i} {L}\n".encode() for i in range(4)}
    done, deadline = set(), time.time() + 120
    while len(done) < 4 and time.time() < deadline:
        for name in last:
            if name in done:
                continue
            p = os.path.join(wd, "logs", f"{name}.log")
            try:
                with open(p, "rb") as fh:
                    fh.seek(0, 2); fh.seek(max(0, fh.tell() - 4096))
                    if fh.read().endswith(last[name]):
                        done.add(name)
            except OSError:
                pass
        time.sleep(0.0002)
    t_done = time.time()
    starts = [int(open(f"{wd}/start.w{i}").read()) / 1e9 for i in range(4)]
    lost = 0
    for i in range(4):
        seen = set()
        for f in s.log_files(f"w{i}"):
            seen.update(int(m) for m in re.findall(rf"w{i} (\d+)", open(f).read()))
        lost += L - len(seen & set(range(1, L + 1)))
    s.stop()
    secs = t_done - min(starts)
    rates.append(4 * L / secs)
    print(f"run {run+1}: supervisord {4*L} lines, lost {lost}, {secs:.3f} s, {4*L/secs:.0f} lines/s")
rates.sort()
print(f"supervisord: median {rates[len(rates)//2]:.0f} lines/s (min {rates[0]:.0f}, max {rates[-1]:.0f})")
