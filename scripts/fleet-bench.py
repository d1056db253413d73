#!/usr/bin/env python3
"""The fleet's figures (scripts/bench --fleet runs this; never from the test suite).

Three `moongate run` processes (one worker each) on one PostgreSQL store, a demo upstream
(`moongate echo`), and a steady load on all three from client threads that count every
answer that is not a 200 and time every request:

  convergence   100 writes (PUT /v1/routes/rN) through the first gateway's admin API; for each,
                the time from sending it until all three gateways serve /rN: p50, p99, max.
  zero loss     the same load during those writes, and while PostgreSQL is stopped (fast
                shutdown) for 2 s and started again, then one more write: failed requests.
  scale         one PUT /v1/config of 1,000 routes, 200 upstreams and 100 scripts: the admin
                call's time, the time until all three serve it, each gateway's own apply time
                and CPU (its log); then the load's p99 over two quiet seconds against the two
                seconds from a second such change (every route changed), nothing polling.

Usage: fleet-bench.py MOONGATE_BINARY [--writes N]
"""
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

# The gateways get CPU 0; this driver, its load process, PostgreSQL and the upstream CPU 1.
os.sched_setaffinity(0, {1})


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, seconds=20):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


class Load:
    """Client threads, one kept-alive connection each, at most `rate` requests a second per
    thread; every non-200 answer or connection error is a failure."""

    def __init__(self, ports, per_port=2, rate=200):
        self.stop = False
        self.lock = threading.Lock()
        self.samples = []  # (time sent, seconds)
        self.failures = 0
        self.served = 0
        self.threads = [threading.Thread(target=self.run, args=(p, rate), daemon=True) for p in ports for _ in range(per_port)]
        for t in self.threads:
            t.start()

    def run(self, port, rate):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        gap = 1.0 / rate
        while not self.stop:
            start = time.perf_counter()
            wall = time.time()
            try:
                conn.request("GET", "/svc/x")
                r = conn.getresponse()
                r.read()
                ok = r.status == 200
            except Exception:
                ok = False
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            took = time.perf_counter() - start
            with self.lock:
                self.samples.append((wall, took))
                if ok:
                    self.served += 1
                else:
                    self.failures += 1
            rest = gap - took
            if rest > 0:
                time.sleep(rest)

    def finish(self):
        self.stop = True
        for t in self.threads:
            t.join()


if len(sys.argv) > 1 and sys.argv[1] == "--load":
    # The load in a process of its own (its own interpreter lock: the driver's polling and
    # JSON work must not delay the requests it times). Runs until SIGTERM, then writes its
    # samples (wall-clock start, seconds) and counts to the file named.
    load = Load([int(p) for p in sys.argv[2].split(",")])
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    done.wait()
    load.finish()
    with open(sys.argv[3], "w") as f:
        json.dump({"served": load.served, "failures": load.failures, "samples": load.samples}, f)
    sys.exit(0)

binary = sys.argv[1]
writes = int(sys.argv[sys.argv.index("--writes") + 1]) if "--writes" in sys.argv else 100
state = tempfile.mkdtemp(prefix="moongate-fleet-bench.")
procs = []




pgbin = sorted((d for d in os.listdir("/usr/lib/postgresql")), key=lambda v: int(v))[-1]
pgbin = f"/usr/lib/postgresql/{pgbin}/bin"
as_pg = ["setpriv", "--reuid=postgres", "--regid=postgres", "--clear-groups", "--"] if os.getuid() == 0 else []
if os.getuid() == 0:
    shutil.chown(state, "postgres")
pg_port = free_port()
subprocess.run(as_pg + [f"{pgbin}/initdb", "-D", f"{state}/pg", "-U", "moongate", "--auth=trust", "-N"], check=True, stdout=subprocess.DEVNULL)


def pg_start():
    subprocess.run(["taskset", "-c", "1"] + as_pg + [f"{pgbin}/pg_ctl", "-D", f"{state}/pg", "-l", f"{state}/pg.log", "-w", "start",
                            "-o", f"-p {pg_port} -c listen_addresses=127.0.0.1 -k {state}"], check=True, stdout=subprocess.DEVNULL)


def pg_stop():
    subprocess.run(as_pg + [f"{pgbin}/pg_ctl", "-D", f"{state}/pg", "-m", "fast", "-w", "stop"], check=True, stdout=subprocess.DEVNULL)


pg_start()
echo_port = free_port()
procs.append(subprocess.Popen(["taskset", "-c", "1", binary, "echo", "--port", str(echo_port)], stdout=subprocess.DEVNULL))
wait_port(echo_port)

token_out = subprocess.run([binary, "admin-token", "bench"], check=True, capture_output=True, text=True).stdout.splitlines()
token = token_out[0].split(": ", 1)[1]
with open(f"{state}/admin.token", "w") as f:
    f.write(token_out[1].split(": ", 1)[1] + "\n")
os.makedirs(f"{state}/policies", exist_ok=True)

gateways = []
for i in range(3):
    port, admin = free_port(), free_port()
    config = f"""
listeners: [{{ address: "127.0.0.1:{port}" }}]
admin: {{ address: "127.0.0.1:{admin}", token_file: {state}/admin.token }}
store: {{ kind: postgres, url: "postgres://moongate@127.0.0.1:{pg_port}/postgres", cache: {state}/cache-{i}.json, poll: 1s }}
access_log: {{ to: "off" }}
scripts: {{ dir: policies }}
upstreams:
  echo: {{ targets: ["127.0.0.1:{echo_port}"] }}
routes:
  - {{ name: svc, match: {{ path_prefix: /svc/ }}, upstream: echo }}
"""
    path = f"{state}/gateway-{i}.yaml"
    with open(path, "w") as f:
        f.write(config)
    log = open(f"{state}/gateway-{i}.log", "w")
    # Gateways on CPU 0 (the upstream and the clients share CPU 1).
    procs.append(subprocess.Popen(["taskset", "-c", "0", binary, "run", "--config", path, "--workers", "1", "--no-watch", "--log-format", "text"], stdout=log, stderr=log))
    wait_port(port)
    wait_port(admin)
    gateways.append({"port": port, "admin": admin, "log": f"{state}/gateway-{i}.log"})


def admin(method, gw, path, body=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", gw["admin"], timeout=60)
    h = {"Authorization": f"Bearer {token}"}
    h.update(headers or {})
    conn.request(method, path, body=body, headers=h)
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return r.status, data, r.getheader("ETag")


pollers = [http.client.HTTPConnection("127.0.0.1", gw["port"], timeout=5) for gw in gateways]


def serves(i, path):
    try:
        pollers[i].request("GET", path)
        r = pollers[i].getresponse()
        r.read()
        return r.status == 200
    except Exception:
        pollers[i].close()
        pollers[i] = http.client.HTTPConnection("127.0.0.1", gateways[i]["port"], timeout=5)
        return False


def converge(path, start, limit=10.0):
    pending = set(range(len(gateways)))
    while pending:
        for i in list(pending):
            if serves(i, path):
                pending.discard(i)
        if time.perf_counter() - start > limit:
            raise SystemExit(f"{path} not served by {sorted(pending)} within {limit} s")
        if pending:
            time.sleep(0.0005)
    return time.perf_counter() - start


def pct(xs, q):
    xs = sorted(xs)
    return xs[max(0, int(round(len(xs) * q)) - 1)]


try:
    samples_file = f"{state}/load.json"
    load = subprocess.Popen([sys.executable, __file__, "--load", ",".join(str(g["port"]) for g in gateways), samples_file])
    time.sleep(1)
    times = []
    for n in range(writes):
        body = json.dumps({"match": {"path": f"/r{n}"}, "upstream": "echo"})
        start = time.perf_counter()
        status, data, _ = admin("PUT", gateways[0], f"/v1/routes/r{n}", body)
        if status != 200:
            raise SystemExit(f"write {n}: {status} {data[:300]}")
        times.append(converge(f"/r{n}", start))
    ms = [t * 1000 for t in times]
    print(f"convergence: {writes} writes through one gateway, until all 3 serve each: "
          f"p50 {statistics.median(ms):.1f} ms, p99 {pct(ms, 0.99):.1f} ms, max {max(ms):.1f} ms")

    # PostgreSQL stopped and started under load.
    pg_stop()
    down = time.perf_counter()
    status, _, _ = admin("PUT", gateways[0], "/v1/routes/down", json.dumps({"match": {"path": "/down"}, "upstream": "echo"}))
    time.sleep(2)
    pg_start()
    status_back = 0
    start = time.perf_counter()
    while status_back != 200 and time.perf_counter() - start < 15:
        status_back, _, _ = admin("PUT", gateways[1], "/v1/routes/back", json.dumps({"match": {"path": "/back"}, "upstream": "echo"}))
        if status_back != 200:
            time.sleep(0.1)
    back = converge("/back", start, 15)
    print(f"store outage: a write while PostgreSQL was down answered {status}; "
          f"after it started again a write was served by all 3 in {back * 1000:.0f} ms (reconnect back-off included)")

    # Scale: one document of 1,000 routes, 200 upstreams, 100 scripts.
    status, data, etag = admin("GET", gateways[0], "/v1/config")
    document = json.loads(data)
    document["upstreams"] = {f"u{k}": {"targets": [f"127.0.0.1:{echo_port}"]} for k in range(200)}
    document["upstreams"]["echo"] = {"targets": [f"127.0.0.1:{echo_port}"]}
    document["scripts"] = {f"p{k}.lua": f"local n = {k}\nreturn {{ access = function() request.set_header('x-p', tostring(n)) end }}\n"
                           for k in range(100)}
    routes = [{"name": "svc", "match": {"path_prefix": "/svc/"}, "upstream": "echo"}]
    routes += [{"name": f"big{k}", "match": {"path_prefix": f"/big{k}/"}, "upstream": f"u{k % 200}", "policy": f"p{k % 100}.lua"}
               for k in range(999)]
    document["routes"] = routes
    body = json.dumps(document)
    start = time.perf_counter()
    status, data, etag = admin("PUT", gateways[0], "/v1/config", body, {"If-Match": etag, "Content-Type": "application/json"})
    call = time.perf_counter() - start
    if status != 200:
        raise SystemExit(f"scale write: {status} {data[:500]}")
    all3 = converge("/big998/x", start, 30)

    # The latency of requests in flight: two quiet seconds, then two seconds from a second
    # large change (every route changed), with nothing polling the gateways.
    time.sleep(1)
    quiet = time.time()
    time.sleep(2)
    for route in document["routes"][1:]:
        route["strip_prefix"] = True
    change = time.time()
    status, data, _ = admin("PUT", gateways[0], "/v1/config", json.dumps(document), {"If-Match": etag, "Content-Type": "application/json"})
    if status != 200:
        raise SystemExit(f"scale write: {status} {data[:500]}")
    time.sleep(max(0.0, change + 2 - time.time()))
    after = time.time()
    load.send_signal(signal.SIGTERM)
    load.wait(30)
    result = json.load(open(samples_file))

    def p99(since, until):
        xs = sorted(t for s, t in result["samples"] if since <= s < until)
        return xs[int(len(xs) * 0.99) - 1] * 1000 if xs else float("nan"), len(xs)

    p99_before, n_before = p99(quiet, change)
    p99_during, n_during = p99(change, after)
    applied = []
    for gw in gateways:
        for line in open(gw["log"]):
            if "config reloaded" in line and "routes=1000" in line:
                applied.append((int(line.split(" ms=")[1].split()[0]), int(line.split("cpu_ms=")[1].split()[0])))
    print(f"scale: 1,000 routes, 200 upstreams, 100 scripts ({len(body) // 1024} KiB): the PUT took {call * 1000:.0f} ms "
          f"(validate, store, apply here); all 3 served it after {all3 * 1000:.0f} ms; each gateway's own apply: "
          f"{', '.join(f'{a} ms ({c} ms of CPU)' for a, c in applied)} (two changes; the writer installs the generation its "
          f"validation built, hence its ~0 ms)")
    print(f"scale: load p99 {p99_before:.2f} ms over 2 quiet seconds ({n_before} requests), {p99_during:.2f} ms over the 2 s "
          f"from a second such change ({n_during} requests)")
    print(f"zero loss: {result['served']} requests served during all of the above, {result['failures']} failed")
finally:
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
    try:
        pg_stop()
    except Exception:
        pass
    if os.environ.get("MOONGATE_FLEET_KEEP"):
        print(f"kept {state} (the gateways' logs)")
    else:
        shutil.rmtree(state, ignore_errors=True)
