"""What replication costs, in one run: three gateways with replication.factor 1, 2 and 3, each in front of its own
four real Pushgateways (1.5.1), on one machine.

1. Writes: ds-loadgen pushes (its ~2 KB body, K groups, C connections, D seconds) to each gateway in turn,
   ROUNDS rounds alternating the factors so that drift of the machine spreads over all of them. Reported: pushes
   per second (median over rounds), gateway CPU per push (utime+stime from /proc over the run), the four
   Pushgateways' RSS after the rounds.
2. The de-duplicated view at 10,000 groups, for every factor: the nodes are wiped, then `ds-loadgen --fill-groups`
   pushes each of the 10,000 groups exactly once through the gateway (a shared next-group counter over the
   connections; the run reports how many the gateway acknowledged), bounded by FILL_BOUND seconds. Then the
   gateway's /metrics (what Prometheus scrapes through /-/sd with R >= 2) is read SCRAPES times: bytes, groups
   and series in it, gateway CPU and wall time per scrape, and the Pushgateways' RSS with the groups on them.
   The bytes a Prometheus reading the nodes directly gets (what /-/sd lists at factor 1) are reported too.

Every process is on 127.0.0.1; the run stops by itself: the write rounds are timed, each fill ends at FILL_BOUND
at the latest, each scrape at 60 s.

Usage: python3 -W ignore bench/replication_cost.py > bench/REPLICATION.md  (or `SCENARIOS=replication bench/run.sh`)
Environment: DS_BIN, DS_LOADGEN (release binaries), ROUNDS [3], DURATION [6], CONCURRENCY [16], GROUPS [100],
VIEW_GROUPS [10000], VIEW_SAMPLES [4], VIEW_FACTORS ["1 2 3"], FILL_BOUND [2400], SCRAPES [5]."""
import http.client, json, os, shutil, signal, socket, statistics, subprocess, tempfile, time

BIN = os.path.abspath(os.environ.get("DS_BIN", "target/release/dynamic-sharding"))
LOADGEN = os.path.abspath(os.environ.get("DS_LOADGEN", "target/release/ds-loadgen"))
ROUNDS = int(os.environ.get("ROUNDS", "3"))
DURATION = int(os.environ.get("DURATION", "6"))
CONCURRENCY = int(os.environ.get("CONCURRENCY", "16"))
GROUPS = int(os.environ.get("GROUPS", "100"))
VIEW_GROUPS = int(os.environ.get("VIEW_GROUPS", "10000"))
SCRAPES = int(os.environ.get("SCRAPES", "5"))
# A Pushgateway checks its whole store on every push, so filling it takes time quadratic in its series; the view's
# groups are small (VIEW_SAMPLES gauges and counters, no histogram) to keep the run within minutes.
VIEW_SAMPLES = int(os.environ.get("VIEW_SAMPLES", "4"))
FACTORS = [1, 2, 3]
# The view at VIEW_GROUPS groups is measured for these factors (filling the nodes is what takes the time: about
# R^2 times the R=1 fill, as every node holds R/4 of the copies and checks all it holds on every push).
VIEW_FACTORS = [int(f) for f in os.environ.get("VIEW_FACTORS", "1 2 3").split()]
# Seconds one fill may take (ds-loadgen --duration); groups not pushed by then are reported, not waited for.
FILL_BOUND = int(os.environ.get("FILL_BOUND", "2400"))
work = tempfile.mkdtemp(prefix="ds-replication-bench-")
processes = []


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def cpu(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kb(pid, key="VmRSS"):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def request(port, method, path, timeout=60):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    c.request(method, path)
    r = c.getresponse()
    body = r.read()
    return r.status, body


def wait(port, path="/-/ready"):
    for _ in range(400):
        try:
            if request(port, "GET", path, 2)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise SystemExit(f"127.0.0.1:{port} not ready")


def start(args, name):
    log = open(os.path.join(work, name + ".log"), "w")
    p = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    processes.append(p)
    return p


def load_average():
    return open("/proc/loadavg").read().split()[0]


def print_header():
    print("# Replication: what R copies cost\n")
    print(f"`python3 -W ignore bench/replication_cost.py` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}): "
          f"three release gateways (`--runtime.worker-threads=1`), replication.factor 1, 2, 3, each in front of its "
          f"own four Pushgateways 1.5.1, on one 2-core machine shared with other builds, so absolute numbers are "
          f"noisy; compare the rows of one run. Load average (1 min, 2 CPUs): {writes_load[0]} before the write rounds, "
          f"{writes_load[1]} after them; per view row below.\n", flush=True)


def print_writes():
    print(f"## Writes: ds-loadgen, {CONCURRENCY} connections, {GROUPS} groups, {DURATION} s per run, {ROUNDS} rounds "
          f"alternating the factors\n")
    print("| factor | pushes/s (median) | gateway CPU per push (µs, median) | failed pushes | Pushgateways' RSS after (4 nodes, MiB) |")
    print("|---|---|---|---|---|")
    for factor in FACTORS:
        s = setups[factor]
        runs = s["runs"]
        failed = sum(r["requests"] - r["ok"] for r in runs)
        print(f"| {factor} | {statistics.median(r['ok_per_s'] for r in runs):,.0f} | "
              f"{statistics.median(r['cpu_us'] for r in runs):.0f} | {failed} | {s['rss_after_writes'] / 1024:.0f} |")
    print(f"\n## The de-duplicated view at {VIEW_GROUPS:,} groups (`ds-loadgen --fill-groups {VIEW_GROUPS}`: each "
          f"pushed exactly once, {CONCURRENCY} connections; {VIEW_SAMPLES} gauge/counter samples, no histogram)\n")
    print("| factor | groups acknowledged by the fill | gateway `/metrics`: bytes | groups in it | series | "
          "gateway CPU per scrape (ms) | wall per scrape (ms) | nodes' own `/metrics` summed (bytes) | "
          "Pushgateways' RSS (4 nodes, MiB) | gateway peak RSS (MiB) | time to push the groups (s) | "
          "load average (1 min) before the fill, at the scrapes |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|", flush=True)


def print_view(factor):
    s = setups[factor]
    print(f"| {factor} | {s['fill_acknowledged']} | {s['view_bytes']:,.0f} | {s['view_groups']:,} | "
          f"{s['view_series']:,} | {s['view_cpu_ms']:.0f} | {s['view_wall_ms']:.0f} | {s['direct_bytes']:,} | "
          f"{s['rss_view'] / 1024:.0f} | {s['gateway_rss_peak'] / 1024:.0f} | {s['fill_s']:.0f} | "
          f"{s['fill_load']}, {s['scrape_load']} |", flush=True)


def stop_on_term(*_):
    raise SystemExit("terminated")


signal.signal(signal.SIGTERM, stop_on_term)
setups = {}
try:
    for factor in FACTORS:
        nodes = []
        for index in range(4):
            port = free_port()
            pgw = start(["prometheus-pushgateway", f"--web.listen-address=127.0.0.1:{port}", "--persistence.file=",
                         "--web.enable-admin-api"], f"pgw-r{factor}-{index}")
            nodes.append((port, pgw))
        for port, _ in nodes:
            wait(port)
        servers = ", ".join(f"'127.0.0.1:{port}'" for port, _ in nodes)
        config = os.path.join(work, f"r{factor}.yml")
        open(config, "w").write(
            f"pushgateway:\n  servers: [{servers}]\nreplication: {{factor: {factor}}}\n"
            "health_check: {interval: 1s, timeout: 500ms, unhealthy_threshold: 2, healthy_threshold: 1}\n"
            "read: {timeout: 30s}\n")
        port = free_port()
        gateway = start([BIN, f"--config.file={config}", f"--web.listen-address=127.0.0.1:{port}",
                         "--log.level=warn", "--runtime.worker-threads=1"], f"gateway-r{factor}")
        wait(port)
        setups[factor] = {"port": port, "gateway": gateway, "nodes": nodes, "runs": []}
    time.sleep(2)

    # ---- 1. writes
    writes_load = [load_average()]
    for round_index in range(ROUNDS + 1):
        for factor in FACTORS:
            setup = setups[factor]
            out = os.path.join(work, f"load-r{factor}-{round_index}.json")
            duration = 2 if round_index == 0 else DURATION
            before = cpu(setup["gateway"].pid)
            subprocess.run([LOADGEN, "--target", f"http://127.0.0.1:{setup['port']}", "-c", str(CONCURRENCY),
                            "-d", str(duration), "-k", str(GROUPS), "--timeout-ms", "5000", "--json", out],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
            used = cpu(setup["gateway"].pid) - before
            if round_index == 0:
                continue  # warm-up
            result = json.load(open(out))
            setup["runs"].append({"ok_per_s": result["ok_per_s"], "ok": result["ok"],
                                  "requests": result["requests"], "cpu_us": used * 1e6 / max(result["ok"], 1)})
    writes_load.append(load_average())
    for factor in FACTORS:
        setup = setups[factor]
        setup["rss_after_writes"] = sum(rss_kb(p.pid) for _, p in setup["nodes"])

    print_header()
    print_writes()

    # ---- 2. the de-duplicated view at VIEW_GROUPS groups
    for factor in VIEW_FACTORS:
        setup = setups[factor]
        for port, _ in setup["nodes"]:
            request(port, "PUT", "/api/v1/admin/wipe")
        out = os.path.join(work, f"view-r{factor}.json")
        setup["fill_load"] = load_average()
        fill_started = time.time()
        # Exits non-zero when a group was not acknowledged; the table says how many were, so no check here.
        subprocess.run([LOADGEN, "--target", f"http://127.0.0.1:{setup['port']}", "-c", str(CONCURRENCY),
                        "--fill-groups", str(VIEW_GROUPS), "-d", str(FILL_BOUND), "--samples", str(VIEW_SAMPLES),
                        "--no-histogram", "--timeout-ms", "10000", "--json", out],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=FILL_BOUND + 60)
        setup["fill_s"] = time.time() - fill_started
        fill = json.load(open(out))["fill"]
        setup["fill_acknowledged"] = f"{fill['acknowledged']:,} of {fill['groups']:,}" + (
            f" ({fill['failed']} failed, {fill['not_pushed']} not pushed)" if fill["acknowledged"] < fill["groups"]
            else "")
        setup["scrape_load"] = load_average()
        request(setup["port"], "GET", "/metrics")  # warm-up
        sizes, walls = [], []
        before = cpu(setup["gateway"].pid)
        for _ in range(SCRAPES):
            started = time.time()
            status, body = request(setup["port"], "GET", "/metrics")
            walls.append(time.time() - started)
            assert status == 200, (status, body[:200])
            sizes.append(len(body))
        setup["view_cpu_ms"] = (cpu(setup["gateway"].pid) - before) * 1e3 / SCRAPES
        setup["view_bytes"] = statistics.median(sizes)
        setup["view_wall_ms"] = statistics.median(walls) * 1e3
        setup["view_series"] = sum(1 for line in body.split(b"\n") if line and not line.startswith(b"#"))
        setup["view_groups"] = sum(1 for line in body.split(b"\n") if line.startswith(b"push_time_seconds{"))
        setup["direct_bytes"] = sum(len(request(port, "GET", "/metrics")[1]) for port, _ in setup["nodes"])
        setup["rss_view"] = sum(rss_kb(p.pid) for _, p in setup["nodes"])
        setup["gateway_rss_peak"] = rss_kb(setup["gateway"].pid, "VmHWM")
        print_view(factor)
finally:
    for p in processes:
        p.terminate()
    for p in processes:
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            p.kill()
    shutil.rmtree(work, ignore_errors=True)

print("\nAt factor 1 Prometheus scrapes the nodes directly (`/-/sd` lists them): the \"nodes' own `/metrics`\" "
      "column is what it reads then, with no gateway CPU. At factor 2 and 3 it scrapes the gateway's view, which "
      "reads each node's `/api/v1/metrics`, keeps one copy of each group and merges: the bytes Prometheus gets stay "
      "those of each group once, the gateway's CPU per scrape is the price. Filling the nodes takes long because a "
      "Pushgateway checks its whole store on every push.")
