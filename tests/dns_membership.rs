//! `dns_sd` against a real DNS server (dnsmasq on a loopback port): the ring follows A records (and AAAA) as they are added
//! and removed (groups move with the rebalancer, a removed address is drained), SRV records give targets with
//! their ports, and a failing DNS server (NXDOMAIN, SERVFAIL, hung, dead) keeps the last set, says so once and
//! counts it.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::dnsmasq::Dnsmasq;
use common::placement::*;
use common::*;
use reqwest::Method;

const HOSTS: [&str; 3] = ["127.0.0.2", "127.0.0.3", "127.0.0.4"];

/// Refresh every 300 ms; a node joins after one good probe, leaves after two bad ones; rebalance every second.
fn config(dns: &Dnsmasq, dns_sd: &str) -> String {
    format!(
        "dns_sd:\n  refresh_interval: 300ms\n  nameservers: ['{}']\n{dns_sd}\
         health_check: {{interval: 500ms, timeout: 400ms, unhealthy_threshold: 2, healthy_threshold: 1}}\n\
         rebalance: {{interval: 1s, concurrency: 8}}\n",
        dns.addr()
    )
}

fn hosts_file(addresses: &[&str]) -> String {
    addresses.iter().map(|a| format!("{a} pg.test\n")).collect()
}

/// How many discovery look-ups failed so far, from `/-/ring`.
async fn failed_lookups(gateway: &Gateway) -> u64 {
    gateway.ring().await["membership"]["detail"]["discovery"]["failed_lookups"]
        .as_u64()
        .unwrap_or(0)
}

/// The dns_sd discovery metrics of `/-/metrics`: failed look-ups so far, `up`, and the whole exposition (for
/// assertion messages).
async fn discovery_metrics(gateway: &Gateway) -> (f64, f64, String) {
    let metrics = gateway.request(Method::GET, "/-/metrics", "").await.body;
    let failures = metric_sum(
        &metrics,
        "dynamic_sharding_membership_discovery_failures_total{source=\"dns_sd\"",
    );
    let up = metric_sum(
        &metrics,
        "dynamic_sharding_membership_discovery_up{source=\"dns_sd\"",
    );
    (failures, up, metrics)
}

/// Pushes `count` groups and returns their owners as the gateway names them.
async fn push_groups(gateway: &Gateway, count: usize) -> Vec<(String, Labels)> {
    let pushes: Vec<(String, String)> = (0..count)
        .map(|i| {
            (
                format!("/metrics/job/dns/instance/i{i}"),
                format!("# TYPE dns_value gauge\ndns_value {i}\n"),
            )
        })
        .collect();
    put_all(gateway, &pushes).await;
    (0..count)
        .map(|i| {
            (
                format!("/metrics/job/dns/instance/i{i}"),
                labels(&[("job", "dns"), ("instance", &format!("i{i}"))]),
            )
        })
        .collect()
}

async fn owners(gateway: &Gateway, groups: &[(String, Labels)]) -> BTreeMap<Labels, String> {
    let mut owners = BTreeMap::new();
    for (path, labels) in groups {
        owners.insert(labels.clone(), gateway.owner_of(path).await);
    }
    owners
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ring_follows_a_records_and_a_removed_address_is_drained() {
    let port = free_port_on(&HOSTS);
    let mut nodes = Vec::new();
    for host in HOSTS {
        nodes.push(Pushgateway::start_on(host, port).await);
    }
    let [a, b, c] = [&nodes[0], &nodes[1], &nodes[2]];
    let dns = Dnsmasq::start(&hosts_file(&HOSTS[..2]), &[]).await;
    let gateway = Gateway::start(&config(
        &dns,
        &format!("  names: [pg.test]\n  type: A\n  port: {port}\n"),
    ))
    .await;
    wait_for_ring(&gateway, &[a, b]).await;
    let ring = gateway.ring().await;
    assert_eq!(ring["membership"]["source"], "dns_sd", "{ring}");
    assert!(
        ring["membership"]["detail"]["discovery"]["last_success"].is_string(),
        "{ring}"
    );
    let groups = push_groups(&gateway, 40).await;

    // An address that appears joins; the rebalancer moves its groups to it.
    dns.set_hosts(&hosts_file(&HOSTS)).await;
    wait_for_ring(&gateway, &[a, b, c]).await;
    let owners_of_three = owners(&gateway, &groups).await;
    assert!(
        owners_of_three.values().any(|owner| *owner == c.addr()),
        "some of 40 groups belong to the new node: {owners_of_three:?}"
    );
    let placed = wait_until_every_group_is_once_on_its_owner(
        &nodes.iter().collect::<Vec<_>>(),
        &owners_of_three,
    )
    .await;
    assert_eq!(placed.len(), 40);

    // An address that disappears is drained like a server removed by a reload: it is still up, but keeps nothing.
    dns.set_hosts(&hosts_file(&HOSTS[1..])).await;
    wait_for_ring(&gateway, &[b, c]).await;
    let owners_of_two = owners(&gateway, &groups).await;
    wait_until_every_group_is_once_on_its_owner(&nodes.iter().collect::<Vec<_>>(), &owners_of_two)
        .await;
    assert!(a.groups().await.is_empty(), "the removed node is drained");
    assert!(
        gateway
            .log_text()
            .contains("node left the membership; draining"),
        "the rebalancer drained it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_records_give_targets_with_their_ports() {
    let nodes = Pushgateway::start_many(2).await;
    // A numeric target name needs no resolving of its own when the gateway connects (a Kubernetes pod name
    // would go through the system resolver, as in Prometheus).
    let srv: Vec<String> = nodes
        .iter()
        .map(|n| format!("_pushgateway._tcp.pg.test,127.0.0.1,{}", n.port()))
        .collect();
    let dns = Dnsmasq::start("", &srv).await;
    let gateway = Gateway::start(&config(&dns, "  names: [_pushgateway._tcp.pg.test]\n")).await;
    wait_for_ring(&gateway, &[&nodes[0], &nodes[1]]).await;
    let sd: serde_json::Value =
        serde_json::from_str(&gateway.request(Method::GET, "/-/sd", "").await.body)
            .expect("/-/sd JSON");
    assert_eq!(
        sd[0]["labels"]["__meta_dynamic_sharding_membership_source"], "dns_sd",
        "{sd}"
    );
    let groups = push_groups(&gateway, 10).await;
    let owners = owners(&gateway, &groups).await;
    wait_until_every_group_is_once_on_its_owner(&[&nodes[0], &nodes[1]], &owners).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_dns_server_keeps_the_last_set_says_so_once_and_counts() {
    let port = free_port_on(&HOSTS[..2]);
    let a = Pushgateway::start_on(HOSTS[0], port).await;
    let b = Pushgateway::start_on(HOSTS[1], port).await;
    let mut dns = Dnsmasq::start(&hosts_file(&HOSTS[..2]), &[]).await;
    let gateway = Gateway::start(&config(
        &dns,
        &format!("  names: [pg.test]\n  type: A\n  port: {port}\n"),
    ))
    .await;
    wait_for_ring(&gateway, &[&a, &b]).await;

    // NXDOMAIN: the name is gone from the server; the ring stays.
    dns.set_hosts("").await;
    let failing = |min_failures: u64| {
        let gateway = &gateway;
        async move {
            let ring = gateway.ring().await;
            let discovery = &ring["membership"]["detail"]["discovery"];
            discovery["failed_lookups"].as_u64().unwrap_or(0) >= min_failures
                && discovery["failing_since"].is_string()
        }
    };
    wait_until(secs(30), Duration::from_millis(100), || failing(3))
        .await
        .expect("the failed look-ups show in /-/ring");
    let ring = gateway.ring().await;
    let discovery = &ring["membership"]["detail"]["discovery"];
    assert!(
        discovery["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("NXDOMAIN"),
        "{discovery}"
    );
    assert_eq!(
        ring_nodes(&ring),
        vec![a.addr(), b.addr()],
        "NXDOMAIN keeps the last set"
    );

    // Back, then the server hangs: queries time out, the ring stays.
    dns.set_hosts(&hosts_file(&HOSTS[..2])).await;
    let recovered = || async {
        gateway.ring().await["membership"]["detail"]["discovery"]["failing_since"].is_null()
    };
    wait_until(secs(30), Duration::from_millis(100), recovered)
        .await
        .expect("the look-ups succeed again");
    let failures_before = failed_lookups(&gateway).await;
    dns.pause();
    wait_until(secs(30), Duration::from_millis(100), || {
        failing(failures_before + 2)
    })
    .await
    .expect("look-ups against a hung server time out and are counted");
    let ring = gateway.ring().await;
    assert!(
        ring["membership"]["detail"]["discovery"]["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("timed out"),
        "{ring}"
    );
    assert_eq!(
        ring_nodes(&ring),
        vec![a.addr(), b.addr()],
        "timeouts keep the last set"
    );
    dns.resume();
    wait_until(secs(30), Duration::from_millis(100), recovered)
        .await
        .expect("the look-ups succeed again");

    // Then the server dies: the ring stays again.
    let failures_before = failed_lookups(&gateway).await;
    dns.kill();
    wait_until(secs(30), Duration::from_millis(100), || {
        failing(failures_before + 3)
    })
    .await
    .expect("look-ups against a dead server fail and are counted");
    let ring = gateway.ring().await;
    assert_eq!(
        ring_nodes(&ring),
        vec![a.addr(), b.addr()],
        "a dead DNS server keeps the last set"
    );
    let (failures, up, metrics) = discovery_metrics(&gateway).await;
    assert!(failures >= 6.0, "{metrics}");
    assert_eq!(up, 0.0, "{metrics}");
    // Three outages, each logged once when it starts and once when it ends, however many look-ups failed. A
    // look-up may also time out on its own (the query timeout is the 300 ms refresh interval, short on a loaded
    // machine): that is one more outage, announced and ended once too, so starts are counted against ends.
    let log = gateway.log_text();
    let started = log
        .matches("membership discovery failed; keeping the last known addresses")
        .count();
    let ended = log.matches("membership discovery succeeds again").count();
    assert!(started >= 3, "{started} outages logged:\n{log}");
    assert_eq!(
        started,
        ended + 1,
        "each outage announced once (the last one goes on), not once per failed look-up:\n{log}"
    );
    // Pushes still go through.
    let groups = push_groups(&gateway, 4).await;
    let owners = owners(&gateway, &groups).await;
    wait_until_every_group_is_once_on_its_owner(&[&a, &b], &owners).await;
}

/// `membership.detail.discovery` of `/-/ring`.
async fn discovery(gateway: &Gateway) -> serde_json::Value {
    gateway.ring().await["membership"]["detail"]["discovery"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servfail_keeps_the_last_set_says_so_once_counts_and_shows_the_server_failure() {
    let port = free_port_on(&HOSTS[..2]);
    let a = Pushgateway::start_on(HOSTS[0], port).await;
    let b = Pushgateway::start_on(HOSTS[1], port).await;
    let hosts = hosts_file(&HOSTS[..2]);
    // The upstream knows the name as well: what fails is the resolver the gateway asks, not the data.
    let upstream = Dnsmasq::start(&hosts, &[]).await;
    let resolver = Dnsmasq::start_validating_forwarder(&hosts, &upstream).await;
    let gateway = Gateway::start(&config(
        &resolver,
        &format!("  names: [pg.test]\n  type: A\n  port: {port}\n"),
    ))
    .await;
    wait_for_ring(&gateway, &[&a, &b]).await;
    let before = discovery(&gateway).await;
    let success_before = before["last_success"].as_str().map(str::to_owned);
    assert!(success_before.is_some(), "{before}");
    assert!(before["failing_since"].is_null(), "{before}");

    // The resolver stops answering the name itself: it forwards it, cannot validate the answer, says SERVFAIL.
    resolver.set_hosts("").await;
    wait_until(secs(30), Duration::from_millis(100), || async {
        discovery(&gateway).await["failed_lookups"]
            .as_u64()
            .unwrap_or(0)
            >= 5
    })
    .await
    .unwrap_or_else(|e| {
        panic!(
            "five SERVFAIL look-ups counted: {e}\n{}",
            gateway.log_text()
        )
    });
    assert!(
        resolver.log_text().contains("validation pg.test is BOGUS"),
        "the SERVFAIL comes from the resolver's validation:\n{}",
        resolver.log_text()
    );
    let ring = gateway.ring().await;
    let during = &ring["membership"]["detail"]["discovery"];
    let last_error = during["last_error"].as_str().unwrap_or_default();
    for expected in [
        "dns_sd.names[0] \"pg.test\" (A)",
        &format!(
            "nameserver {} answered SERVFAIL (server failure",
            resolver.addr()
        ),
    ] {
        assert!(last_error.contains(expected), "{expected:?} in {during}");
    }
    assert_eq!(
        during["failing"],
        serde_json::json!([{
            "part": "dns_sd.names[0] \"pg.test\" (A)",
            "error": last_error.split_once(": ").map(|(_, error)| error).unwrap_or_default(),
        }]),
        "{during}"
    );
    // The last success is the last look-up before the outage (RFC 3339 in UTC: text order is time order).
    let last_success = during["last_success"].as_str().map(str::to_owned);
    let failing_since = during["failing_since"].as_str().map(str::to_owned);
    assert!(
        failing_since.is_some() && last_success >= success_before && last_success < failing_since,
        "{during}"
    );
    let failed_so_far = during["failed_lookups"].as_u64().unwrap_or(0);
    assert_eq!(
        ring_nodes(&ring),
        vec![a.addr(), b.addr()],
        "SERVFAIL keeps the last set"
    );
    let (failures, up, metrics) = discovery_metrics(&gateway).await;
    assert!(failures >= 5.0, "{metrics}");
    assert_eq!(up, 0.0, "{metrics}");
    // The status page shows it too: the failing name with the server failure, and the last success.
    let section = gateway.status_page_section("membership").await;
    assert!(section.contains("data-state=\"failing\""), "{section}");
    assert!(
        section.contains(&format!(
            "<td class=\"mono\">dns_sd.names[0] &quot;pg.test&quot; (A)</td><td class=\"err\">nameserver {} \
             answered SERVFAIL (server failure",
            resolver.addr()
        )),
        "{section}"
    );
    assert!(
        section.contains("<dd id=\"discovery-last-success\">20"),
        "{section}"
    );
    // Pushes are still routed to the nodes the name last resolved to.
    let groups = push_groups(&gateway, 6).await;
    let placed = owners(&gateway, &groups).await;
    wait_until_every_group_is_once_on_its_owner(&[&a, &b], &placed).await;
    wait_until(secs(30), Duration::from_millis(100), || async {
        discovery(&gateway).await["failed_lookups"]
            .as_u64()
            .unwrap_or(0)
            > failed_so_far
    })
    .await
    .expect("the look-ups go on failing");
    let still = discovery(&gateway).await;
    assert_eq!(
        still["last_success"].as_str().map(str::to_owned),
        last_success,
        "failed look-ups leave the last success as it was: {still}"
    );

    // The name resolves again: the outage ends, and each end of it was logged once.
    resolver.set_hosts(&hosts).await;
    wait_until(secs(30), Duration::from_millis(100), || async {
        discovery(&gateway).await["failing_since"].is_null()
    })
    .await
    .expect("the look-ups succeed again");
    let after = discovery(&gateway).await;
    assert!(
        after["last_success"].as_str().map(str::to_owned) > last_success,
        "a new last success: {after}"
    );
    assert_eq!(after["failing"], serde_json::json!([]), "{after}");
    // One warning when the outage began and one line when it ended, however many look-ups failed. A look-up may
    // also time out on its own (the query timeout is the 300 ms refresh interval, short on a loaded machine):
    // that is one more outage, begun and ended once too, so starts are counted against ends.
    let log = gateway.log_text();
    let started = log
        .matches("membership discovery failed; keeping the last known addresses")
        .count();
    let ended = log.matches("membership discovery succeeds again").count();
    assert!(started >= 1, "{log}");
    assert_eq!(
        started, ended,
        "one warning for each outage and one line for its end, however many look-ups failed:\n{log}"
    );
    assert!(
        log.lines().any(|line| line
            .contains("membership discovery failed; keeping the last known addresses")
            && line.contains("SERVFAIL")),
        "the warning says why:\n{log}"
    );
    let (_, up, metrics) = discovery_metrics(&gateway).await;
    assert_eq!(up, 1.0, "{metrics}");
    assert_eq!(ring_nodes(&gateway.ring().await), vec![a.addr(), b.addr()]);
    let section = gateway.status_page_section("membership").await;
    assert!(
        section.contains("data-state=\"ok\"") && section.contains("answered SERVFAIL"),
        "ok again, the last error still shown: {section}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_applies_new_dns_sd_settings_but_not_another_source() {
    let port = free_port_on(&HOSTS);
    let mut nodes = Vec::new();
    for host in HOSTS {
        nodes.push(Pushgateway::start_on(host, port).await);
    }
    let hosts = format!("{}{} other.test\n", hosts_file(&HOSTS[..2]), HOSTS[2]);
    let dns = Dnsmasq::start(&hosts, &[]).await;
    let settings = |name: &str| format!("  names: [{name}]\n  type: A\n  port: {port}\n");
    let gateway = Gateway::start(&config(&dns, &settings("pg.test"))).await;
    wait_for_ring(&gateway, &[&nodes[0], &nodes[1]]).await;

    std::fs::write(gateway.config_path(), config(&dns, &settings("other.test")))
        .expect("rewrite config");
    gateway.signal("HUP");
    wait_for_ring(&gateway, &[&nodes[2]]).await;

    // Another source needs a restart: the reload says so and the ring stays.
    std::fs::write(
        gateway.config_path(),
        format!("pushgateway: {{servers: ['{}']}}\n", nodes[0].addr()),
    )
    .expect("rewrite config");
    gateway.signal("HUP");
    wait_until(secs(30), Duration::from_millis(100), || async {
        gateway
            .log_text()
            .contains("the membership source changed; the new source takes effect after a restart")
    })
    .await
    .expect("the reload warns");
    let ring = gateway.ring().await;
    assert_eq!(ring["membership"]["source"], "dns_sd");
    assert_eq!(ring_nodes(&ring), vec![nodes[2].addr()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aaaa_records_give_ipv6_nodes() {
    let port = free_port_on(&["::1"]);
    let node = Pushgateway::start_on("::1", port).await;
    let dns = Dnsmasq::start("::1 pg6.test\n", &[]).await;
    let gateway = Gateway::start(&config(
        &dns,
        &format!("  names: [pg6.test]\n  type: AAAA\n  port: {port}\n"),
    ))
    .await;
    wait_for_ring(&gateway, &[&node]).await;
    assert_eq!(node.addr(), format!("[::1]:{port}"));
    let groups = push_groups(&gateway, 3).await;
    let owners = owners(&gateway, &groups).await;
    wait_until_every_group_is_once_on_its_owner(&[&node], &owners).await;
}
