#!/usr/bin/env python3
"""Turns the per-run JSON files written by bench/run.sh into bench/RESULTS.md (printed on stdout).

Usage: report.py META.json RUN.json...

META.json may name a `criterion` file: a JSON list of {"id", "mean_ns", "low_ns", "high_ns"} (written by run.sh
from Criterion's estimates) that becomes the micro-benchmark table.

Each RUN.json is a ds-loadgen report plus the fields run.sh adds (scenario, case, round, proxy_cpu_s,
upstream_cpu_s, proxy_peak_rss_kb, churn_faults). Rounds of one case are combined: throughput and latency
percentiles as the median over rounds (with the throughput range), CPU per request as total CPU over total
successful requests, errors summed.
"""

import json
import statistics
import sys
from collections import defaultdict

SCENARIO_TITLES = {
    "overhead": "1. Gateway overhead, trivial upstreams",
    "latency": "1b. Added latency at concurrency 1, trivial upstreams",
    "redirect": "2. Redirect mode",
    "pushgateway": "3. Real Pushgateways",
    "churn": "4. Churn: one Pushgateway SIGKILLed and restarted, or SIGSTOPped and SIGCONTed, every few seconds",
    "tls": "5. TLS and basic auth on the listener, against nginx terminating TLS with the same certificate",
}


CASE_ORDER = ["direct", "dynamic-sharding", "dynamic-sharding-multi-thread", "dynamic-sharding-followed",
              "dynamic-sharding-sigkill", "dynamic-sharding-sigstop", "dynamic-sharding-tls",
              "dynamic-sharding-tls-auth", "nginx", "nginx-tls", "nginx-tls-auth-sha", "nginx-tls-auth-bcrypt",
              "haproxy"]

# The tls scenario: each case's plain-HTTP baseline (same server, no TLS, no auth) and its nginx counterpart in the
# same setup; the gateway's cached bcrypt check is set against nginx's {SHA} (one cheap hash per request).
TLS_BASELINE = {"dynamic-sharding-tls": "dynamic-sharding", "dynamic-sharding-tls-auth": "dynamic-sharding",
                "nginx-tls": "nginx", "nginx-tls-auth-sha": "nginx", "nginx-tls-auth-bcrypt": "nginx"}
TLS_NGINX = {"dynamic-sharding": "nginx", "dynamic-sharding-tls": "nginx-tls",
             "dynamic-sharding-tls-auth": "nginx-tls-auth-sha"}
TLS_SETUP = {"dynamic-sharding": ("–", "–"), "nginx": ("–", "–"),
             "dynamic-sharding-tls": ("yes", "–"), "nginx-tls": ("yes", "–"),
             "dynamic-sharding-tls-auth": ("yes", "bcrypt, verified once then cached"),
             "nginx-tls-auth-sha": ("yes", "{SHA}, one SHA-1 per request"),
             "nginx-tls-auth-bcrypt": ("yes", "bcrypt, crypt(3) per request")}


def case_rank(case):
    return CASE_ORDER.index(case) if case in CASE_ORDER else len(CASE_ORDER)


def combine(runs):
    ok = sum(r["ok"] for r in runs)
    elapsed = sum(r["elapsed_s"] for r in runs)
    errors = defaultdict(int)
    for r in runs:
        for kind, count in r["errors"].items():
            errors[kind] += count
    rates = [r["ok_per_s"] for r in runs]

    def median_latency(key):
        return statistics.median(r["latency_us"][key] for r in runs)

    def per_request(key):
        total = sum(r.get(key) or 0.0 for r in runs)
        return total / ok * 1e6 if ok else None

    client_cpu = [r.get("client_cpu_s") for r in runs]
    return {
        "case": runs[0]["case"],
        "proxy": runs[0].get("proxy", ""),
        "rounds": len(runs),
        "concurrency": runs[0]["concurrency"],
        "groups": runs[0]["groups"],
        "rate": statistics.median(rates),
        "rate_min": min(rates),
        "rate_max": max(rates),
        "p50": median_latency("p50"),
        "p90": median_latency("p90"),
        "p99": median_latency("p99"),
        "max": max(r["latency_us"]["max"] for r in runs),
        "requests": sum(r["requests"] for r in runs),
        "ok": ok,
        "errors": dict(errors),
        "errors_total": sum(errors.values()),
        "proxy_cpu_us": per_request("proxy_cpu_s") if runs[0].get("proxy") else None,
        "upstream_cpu_us": per_request("upstream_cpu_s"),
        "client_cpu_share": (sum(client_cpu) / elapsed) if elapsed and None not in client_cpu else None,
        "peak_rss_kb": max(r.get("proxy_peak_rss_kb") or 0 for r in runs),
        "faults": sum(r.get("churn_faults") or 0 for r in runs),
        "tls": next((r["tls"] for r in runs if r.get("tls")), None),
    }


def fmt_rate(row):
    return f"{row['rate']:,.0f} ({row['rate_min']:,.0f}–{row['rate_max']:,.0f})"


def fmt_num(value, digits=0):
    if value is None:
        return "–"
    return f"{value:,.{digits}f}"


def ratio(value, reference):
    if value is None or not reference:
        return "–"
    return f"{value / reference:.2f}×"


def fmt_errors(row):
    if not row["errors_total"]:
        return "0"
    kinds = ", ".join(f"{kind} {count}" for kind, count in sorted(row["errors"].items()))
    return f"{row['errors_total']} ({kinds})"


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def main():
    with open(sys.argv[1]) as meta_file:
        meta = json.load(meta_file)
    grouped = defaultdict(list)
    for path in sys.argv[2:]:
        with open(path) as run_file:
            run = json.load(run_file)
        grouped[(run["scenario"], run["case"])].append(run)
    rows = defaultdict(dict)
    for (scenario, case), runs in sorted(grouped.items(), key=lambda item: (case_rank(item[0][1]), item[0][1])):
        rows[scenario][case] = combine(sorted(runs, key=lambda r: r["round"]))

    out = ["# Benchmark results: dynamic-sharding side by side", ""]
    partial = meta["scenarios"].split() != meta["all_scenarios"].split() or meta["skipped"]
    if partial:
        missing = [s for s in meta["all_scenarios"].split() if s not in meta["scenarios"].split()]
        out += [
            "> **Partial run.** "
            + (f"Scenarios not run: {', '.join(missing)}. " if missing else "")
            + (f"Gateway instances skipped (binary missing or never ready): {meta['skipped']}. " if meta["skipped"] else "")
            + "Do not compare these numbers with a full run without checking the parameters below.",
            "",
        ]
    if float(meta["load_before"]) > float(meta["nproc"]):
        out += [
            f"> **Busy machine.** The 1-minute load average was {meta['load_before']} on {meta['nproc']} CPUs when "
            "the run started: other work competed with every process here, so absolute numbers are low and noisy. "
            "Rounds alternate cases, so ratios within one table are the figures to read.",
            "",
        ]
    out += [
        f"- Date: {meta['date']}; revision {meta['revision']}",
        f"- Machine: {meta['nproc']} CPUs, {meta['cpu']}, Linux {meta['kernel']}; {meta['pinned']}; "
        f"load average (1, 5, 15 min) {meta['loadavg']}",
        f"- Tools: {meta['nginx']}; {meta['haproxy']}; {meta['pushgateway']}; {meta['rustc']}; "
        f"gateway binary `{meta['gateway']}`",
        f"- Command: `{meta['env']} {meta['command']}`",
        f"- Load: ds-loadgen, PUT of a {meta['body_bytes']} B text-format body (20 gauge/counter samples and one "
        "histogram) round-robin over distinct groups, one keep-alive connection per client worker; "
        "each case ran once per round, rounds alternate all cases.",
        "- Throughput is successful pushes per second, median over rounds (range in brackets); latency "
        "percentiles are medians over rounds of each round's percentile, in µs; CPU per request is the "
        "process's utime+stime from /proc (all nginx/HAProxy processes summed) over all rounds divided by "
        "the successful requests.",
        "",
    ]

    overhead = rows.get("overhead", {})
    if overhead:
        nginx = overhead.get("nginx")
        out += [f"## {SCENARIO_TITLES['overhead']}", "",
                f"Four nginx `return 200` upstreams; concurrency {next(iter(overhead.values()))['concurrency']}, "
                f"{next(iter(overhead.values()))['groups']} groups. Ratios are to nginx "
                "(`hash $request_uri consistent` + upstream keepalive).", ""]
        out.append(table(
            ["case", "ok/s", "ok/s vs nginx", "p50", "p90", "p99", "p99 vs nginx", "proxy CPU µs/req",
             "CPU vs nginx", "client CPU", "errors"],
            [[name, fmt_rate(r), ratio(r["rate"], nginx and nginx["rate"]), fmt_num(r["p50"]), fmt_num(r["p90"]),
              fmt_num(r["p99"]), ratio(r["p99"], nginx and nginx["p99"]), fmt_num(r["proxy_cpu_us"], 1),
              ratio(r["proxy_cpu_us"], nginx and nginx["proxy_cpu_us"]),
              fmt_num(r["client_cpu_share"] and 100 * r["client_cpu_share"]) + "%", fmt_errors(r)]
             for name, r in overhead.items()]))
        out += ["", "`direct` has no proxy: the client talks to one upstream. A client CPU near 100% means the "
                "client was the limit for that case.", ""]

    latency = rows.get("latency", {})
    if latency:
        direct = latency.get("direct")
        out += [f"## {SCENARIO_TITLES['latency']}", "", "One connection, one request at a time.", ""]
        out.append(table(
            ["case", "ok/s", "p50", "p90", "p99", "p50 added over direct", "proxy CPU µs/req", "errors"],
            [[name, fmt_rate(r), fmt_num(r["p50"]), fmt_num(r["p90"]), fmt_num(r["p99"]),
              fmt_num(r["p50"] - direct["p50"]) if direct else "–", fmt_num(r["proxy_cpu_us"], 1), fmt_errors(r)]
             for name, r in latency.items()]))
        out.append("")

    redirect = rows.get("redirect", {})
    if redirect:
        nginx = redirect.get("nginx")
        out += [f"## {SCENARIO_TITLES['redirect']}", "",
                "`dynamic-sharding` in `mode: redirect` against nginx `return 307 http://127.0.0.1:<p>$request_uri`; "
                "a 307 counts as success. `dynamic-sharding-followed` has the client follow the 307 to the trivial "
                "upstream (two exchanges per push; proxy CPU is the gateway's only).", ""]
        out.append(table(
            ["case", "ok/s", "ok/s vs nginx", "p50", "p99", "proxy CPU µs/req", "CPU vs nginx", "errors"],
            [[name, fmt_rate(r), ratio(r["rate"], nginx and nginx["rate"]), fmt_num(r["p50"]), fmt_num(r["p99"]),
              fmt_num(r["proxy_cpu_us"], 1), ratio(r["proxy_cpu_us"], nginx and nginx["proxy_cpu_us"]),
              fmt_errors(r)]
             for name, r in redirect.items()]))
        out.append("")

    pushgateway = rows.get("pushgateway", {})
    if pushgateway:
        out += [f"## {SCENARIO_TITLES['pushgateway']}", "",
                f"Four `prometheus-pushgateway` nodes (in memory) behind the gateway, against the same load straight "
                f"at one Pushgateway; {next(iter(pushgateway.values()))['groups']} groups.", ""]
        out.append(table(
            ["case", "ok/s", "p50", "p90", "p99", "gateway CPU µs/req", "Pushgateway CPU µs/req",
             "gateway CPU / Pushgateways CPU", "errors"],
            [[name, fmt_rate(r), fmt_num(r["p50"]), fmt_num(r["p90"]), fmt_num(r["p99"]),
              fmt_num(r["proxy_cpu_us"], 1), fmt_num(r["upstream_cpu_us"], 1),
              (f"{100 * r['proxy_cpu_us'] / r['upstream_cpu_us']:.1f}%"
               if r["proxy_cpu_us"] is not None and r["upstream_cpu_us"] else "–"),
              fmt_errors(r)]
             for name, r in pushgateway.items()]))
        out.append("")

    churn = rows.get("churn", {})
    if churn:
        calm = pushgateway.get("dynamic-sharding")
        out += [f"## {SCENARIO_TITLES['churn']}", "",
                "Same load as scenario 3 through one gateway while the script faults one of the four Pushgateways "
                "at a time, in turn: `sigkill` kills it and restarts it on the same port after "
                f"{meta.get('churn_downtime', '?')} s; `sigstop` stops it for {meta.get('churn_stoptime', '?')} s "
                "(connections still open, nothing answered: a hung node) and continues it. The cases alternate "
                "within each round. Latencies are those of successful pushes; a push the load generator gave up "
                "on (5 s, `--timeout-ms 5000`) is an error, not a latency.", ""]
        out.append(table(
            ["case", "ok/s", "p50", "p99", "p99 without churn (3)", "max", "faults", "error rate", "errors"],
            [[name, fmt_rate(r), fmt_num(r["p50"]), fmt_num(r["p99"]), fmt_num(calm and calm["p99"]),
              fmt_num(r["max"]), r["faults"],
              f"{100 * r['errors_total'] / r['requests']:.2f}%" if r["requests"] else "–", fmt_errors(r)]
             for name, r in churn.items()]))
        out.append("")

    out += tls_section(meta, rows.get("tls", {}))

    memory = [(scenario, name, r["proxy"], r["peak_rss_kb"]) for scenario in rows for name, r in rows[scenario].items()
              if r["proxy"] and r["peak_rss_kb"]]
    if memory:
        seen = {}
        for scenario, name, proxy, kb in memory:
            seen[proxy] = max(seen.get(proxy, 0), kb)
        out += ["## Peak resident memory (VmHWM at the end of the run, all processes of the proxy)", ""]
        out.append(table(["process", "peak RSS MiB"], [[proxy, f"{kb / 1024:.1f}"] for proxy, kb in sorted(seen.items())]))
        out.append("")

    out += instructions_section(meta)
    out += criterion_section(meta)
    out += targets_section(rows)
    out += profiling_log()
    print("\n".join(out))


def tls_section(meta, tls):
    """Scenario tls: CPU per push with TLS and basic auth, each case against its plain baseline and against nginx
    in the same setup."""
    if not tls:
        return []

    def cpu(name):
        row = tls.get(name)
        return row and row["proxy_cpu_us"]

    rows = []
    for name, r in tls.items():
        baseline, counterpart = TLS_BASELINE.get(name), TLS_NGINX.get(name)
        added = (r["proxy_cpu_us"] - cpu(baseline)) if baseline and cpu(baseline) and r["proxy_cpu_us"] else None
        encrypted, auth = TLS_SETUP.get(name, ("?", "?"))
        rows.append([name, encrypted, auth, fmt_rate(r), fmt_num(r["p50"]), fmt_num(r["p99"]),
                     fmt_num(r["proxy_cpu_us"], 1), fmt_num(added, 1),
                     ratio(r["proxy_cpu_us"], cpu(baseline)) if baseline else "–",
                     ratio(r["proxy_cpu_us"], cpu(counterpart)) if counterpart else "–",
                     fmt_num(r["client_cpu_share"] and 100 * r["client_cpu_share"]) + "%", fmt_errors(r)])
    negotiated = sorted({r["tls"] for r in tls.values() if r.get("tls")})
    out = [f"## {SCENARIO_TITLES['tls']}", "",
           f"Four nginx `return 200` upstreams as in scenario 1; concurrency {next(iter(tls.values()))['concurrency']}, "
           f"{next(iter(tls.values()))['groups']} groups, keep-alive connections (one TLS handshake per connection, "
           "then every push inside it). The gateway: `--web.config.file` with `tls_server_config` (rustls) and "
           f"`basic_auth_users` (bcrypt cost {meta.get('tls_bcrypt_cost', '?')}). nginx (OpenSSL): the same "
           "certificate and key, `ssl_session_cache`, the same `hash $request_uri consistent` upstream with "
           "keepalive, `auth_basic` with a {SHA} hash (cheap, the fair counterpart of the gateway's cached check) "
           "or with the same bcrypt hash (checked with crypt(3) on every request: what nginx users get with "
           "`htpasswd -B`). Neither passes the client's `Authorization` on. The client is ds-loadgen (rustls) for "
           "every case; negotiated: " + (", ".join(f"`{n}`" for n in negotiated) or "unknown") + ". "
           "`added` is the case's proxy CPU per push minus its own plain-HTTP row; `vs plain` the ratio to it; "
           "`vs nginx` the ratio to nginx in the same setup (gateway TLS + auth against nginx TLS + {SHA}).", ""]
    out.append(table(["case", "TLS", "auth", "ok/s", "p50", "p99", "proxy CPU µs/push", "added µs/push",
                      "CPU vs plain", "CPU vs nginx", "client CPU", "errors"], rows))
    gateway, bcrypt = cpu("dynamic-sharding-tls-auth"), cpu("nginx-tls-auth-bcrypt")
    if gateway and bcrypt:
        out += ["", f"nginx TLS + bcrypt `auth_basic` used {bcrypt / gateway:,.0f}× the CPU per push of the gateway with "
                "TLS + bcrypt `basic_auth_users` (one bcrypt per request against one per credential pair)."]
    out.append("")
    return out


def profiling_log():
    """bench/PROFILING.md (hand-written: what profiling found and each fix's before/after), appended as is."""
    import os
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "PROFILING.md")
    try:
        with open(path) as log_file:
            return [log_file.read().rstrip(), ""]
    except OSError:
        return []


def fmt_ns(ns):
    if ns >= 1e6:
        return f"{ns / 1e6:,.2f} ms"
    if ns >= 1e3:
        return f"{ns / 1e3:,.2f} µs"
    return f"{ns:,.1f} ns"


def instructions_section(meta):
    """User-space instructions per successful push of each proxy under callgrind (run.sh's `instructions`)."""
    path = meta.get("instructions")
    if not path:
        return []
    try:
        with open(path) as instructions_file:
            results = {r["name"]: r for r in json.load(instructions_file)}
    except (OSError, ValueError) as error:
        return ["## Instructions per push (callgrind)", "", f"Not available: {error}.", ""]

    def per_push(name):
        r = results.get(name)
        return r["instructions"] / r["ok"] if r and r["ok"] and r["instructions"] else None

    rows = []
    for name, reference in [("dynamic-sharding", "nginx"), ("nginx", "nginx"), ("haproxy", "nginx"),
                            ("dynamic-sharding-redirect", "nginx-redirect"), ("nginx-redirect", "nginx-redirect")]:
        value, base = per_push(name), per_push(reference)
        if value is None:
            continue
        rows.append([name, f"{value:,.0f}", ratio(value, base) if base else "–", f"{results[name]['ok']:,}"])
    if not rows:
        return []
    return ["## Instructions per push (callgrind)", "",
            "Each proxy alone under `valgrind --tool=callgrind` (one process, one thread), four nginx `return 200` "
            f"upstreams, `ds-loadgen -c 4`: 500 pushes unmeasured, then {meta.get('instruction_requests', '?')} "
            "measured. User-space instructions only: the kernel's share (loopback TCP, the same system calls for "
            "every proxy) is not counted. Unlike the timed tables, these counts do not depend on how busy the "
            "machine is, so they are the figures to compare between runs. Ratios: proxies to nginx "
            "`hash $request_uri consistent`, redirects to nginx `return 307`.", "",
            table(["case", "instructions per push", "vs nginx", "pushes measured"], rows), ""]


def criterion_section(meta):
    path = meta.get("criterion")
    if not path:
        return []
    try:
        with open(path) as criterion_file:
            results = json.load(criterion_file)
    except (OSError, ValueError) as error:
        return ["## Micro-benchmarks (Criterion)", "", f"Not available: {error}.", ""]
    if not results:
        return []
    out = ["## Micro-benchmarks (Criterion)", "",
           f"`{meta.get('criterion_command', 'cargo bench')}`, run before the HTTP scenarios on the same machine. "
           "Mean time per call with Criterion's 95% confidence interval. `ring_owner` is one lookup, "
           "`ring_owner_and_successor` the pair the proxy path computes with retries on, `ring_build` the rebuild "
           "on a membership change; the last path segment is the node count.", ""]
    out.append(table(["benchmark", "mean", "95% interval"],
                     [[f"`{r['id']}`", fmt_ns(r["mean_ns"]), f"{fmt_ns(r['low_ns'])} – {fmt_ns(r['high_ns'])}"]
                      for r in results]))
    out.append("")
    return out


def verdict(met):
    if met is None:
        return "not measured"
    return "**met**" if met else "**missed**"


def targets_section(rows):
    """Where each target of issue 7 stands in this run, computed from the tables above."""
    checks = []
    overhead = rows.get("overhead", {})
    ds, nginx = overhead.get("dynamic-sharding"), overhead.get("nginx")
    if ds and nginx and ds["proxy_cpu_us"] and nginx["proxy_cpu_us"]:
        checks.append(["Proxy: CPU per request ≤ nginx", f"{ds['proxy_cpu_us']:.1f} vs {nginx['proxy_cpu_us']:.1f} µs "
                       f"({ds['proxy_cpu_us'] / nginx['proxy_cpu_us']:.2f}×)",
                       verdict(ds["proxy_cpu_us"] <= nginx["proxy_cpu_us"])])
        checks.append(["Proxy: throughput ≥ nginx", f"{ds['rate']:,.0f} vs {nginx['rate']:,.0f} ok/s "
                       f"({ds['rate'] / nginx['rate']:.2f}×)", verdict(ds["rate"] >= nginx["rate"])])
    else:
        checks.append(["Proxy: CPU per request and throughput vs nginx", "–", verdict(None)])
    latency = rows.get("latency", {})
    ds, direct, nginx = latency.get("dynamic-sharding"), latency.get("direct"), latency.get("nginx")
    if ds and direct:
        added = ds["p50"] - direct["p50"]
        reference = f"; nginx adds {nginx['p50'] - direct['p50']:,.0f} µs" if nginx else ""
        checks.append(["Proxy: p50 added over direct ≤ 20 µs at concurrency 1",
                       f"{added:,.0f} µs{reference}", verdict(added <= 20)])
    else:
        checks.append(["Proxy: p50 added over direct ≤ 20 µs at concurrency 1", "–", verdict(None)])
    redirect = rows.get("redirect", {})
    ds, nginx = redirect.get("dynamic-sharding"), redirect.get("nginx")
    if ds and nginx and ds["proxy_cpu_us"] and nginx["proxy_cpu_us"]:
        checks.append(["Redirect: ≥ 90% of nginx `return 307` requests/s",
                       f"{ds['rate'] / nginx['rate']:.0%}", verdict(ds["rate"] >= 0.9 * nginx["rate"])])
        checks.append(["Redirect: CPU per request ≤ nginx", f"{ds['proxy_cpu_us']:.1f} vs {nginx['proxy_cpu_us']:.1f} µs",
                       verdict(ds["proxy_cpu_us"] <= nginx["proxy_cpu_us"])])
    else:
        checks.append(["Redirect: requests/s and CPU vs nginx", "–", verdict(None)])
    ds = rows.get("pushgateway", {}).get("dynamic-sharding")
    if ds and ds["proxy_cpu_us"] is not None and ds["upstream_cpu_us"]:
        share = ds["proxy_cpu_us"] / ds["upstream_cpu_us"]
        checks.append(["Real Pushgateways: gateway CPU ≤ 10% of the Pushgateways'", f"{share:.1%}", verdict(share <= 0.10)])
    else:
        checks.append(["Real Pushgateways: gateway CPU ≤ 10% of the Pushgateways'", "–", verdict(None)])
    for fault, what in [("sigkill", "kills"), ("sigstop", "stops")]:
        ds = rows.get("churn", {}).get(f"dynamic-sharding-{fault}")
        target = f"Churn ({fault.upper()}): zero client-visible errors (proxy mode)"
        if ds:
            checks.append([target, f"{ds['errors_total']} errors in {ds['requests']:,} requests, {ds['faults']} {what}",
                           verdict(ds["errors_total"] == 0)])
        else:
            checks.append([target, "–", verdict(None)])
    gateway_rows = [r for scenario in rows.values() for r in scenario.values()
                    if r["proxy"].startswith("ds-") and r["peak_rss_kb"]]
    if gateway_rows:
        peak = max(r["peak_rss_kb"] for r in gateway_rows) / 1024
        fastest = max(r["rate"] for r in gateway_rows)
        checks.append(["Peak RSS < 30 MiB at 10k requests/s",
                       f"{peak:.1f} MiB at most, over instances that served up to {fastest:,.0f} ok/s",
                       verdict(peak < 30) + ("" if fastest >= 10_000 else " (below 10k req/s on this machine)")])
    return ["## Targets", "", "Computed from the tables above (same run).", "",
            table(["target", "this run", "status"], checks), ""]


if __name__ == "__main__":
    main()
