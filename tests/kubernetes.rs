//! `deploy/kubernetes/` checked as far as a machine without a cluster can: every document parses, passes
//! `kubernetes-validate --strict` (the Kubernetes OpenAPI schemas, shipped inside the PyPI package;
//! scripts/install-test-deps.sh puts it in tools/kubernetes-validate), the gateway configs in the ConfigMap pass
//! the real binary's `--config.check`, their `dns_sd` name is the headless Service's SRV name, and the Prometheus
//! scrape config passes `promtool check config`.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_yaml_ng::Value;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn manifest_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("deploy/kubernetes"))
        .expect("deploy/kubernetes")
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 3, "manifests: {files:?}");
    files
}

/// Every document of every manifest file, parsed.
fn documents() -> Vec<Value> {
    let mut documents = Vec::new();
    for file in manifest_files() {
        let text = std::fs::read_to_string(&file).expect("manifest");
        for document in serde_yaml_ng::Deserializer::from_str(&text) {
            let value = Value::deserialize(document)
                .unwrap_or_else(|e| panic!("{}: not YAML: {e}", file.display()));
            if !value.is_null() {
                documents.push(value);
            }
        }
    }
    documents
}

fn find<'a>(documents: &'a [Value], kind: &str, name: &str) -> &'a Value {
    documents
        .iter()
        .find(|d| d["kind"].as_str() == Some(kind) && d["metadata"]["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no {kind} {name} in deploy/kubernetes"))
}

fn run(binary: &Path, args: &[&str]) -> (bool, String) {
    let output = Command::new(binary)
        .args(args)
        .output()
        .unwrap_or_else(|error| {
            panic!(
                "cannot run {} ({error}); run scripts/install-test-deps.sh",
                binary.display()
            )
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

fn kubernetes_validate() -> PathBuf {
    std::env::var_os("DS_KUBERNETES_VALIDATE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("tools/kubernetes-validate/bin/kubernetes-validate"))
}

#[test]
fn every_manifest_passes_the_kubernetes_schemas() {
    let files: Vec<String> = manifest_files()
        .iter()
        .map(|f| f.display().to_string())
        .collect();
    let mut args = vec!["--strict"];
    args.extend(files.iter().map(String::as_str));
    let (ok, output) = run(&kubernetes_validate(), &args);
    assert!(ok, "kubernetes-validate --strict:\n{output}");
    let passed = output.matches(" passed for resource ").count();
    assert_eq!(
        passed,
        documents().len(),
        "every document checked:\n{output}"
    );

    // The validator does reject what Kubernetes would.
    let dir = tempfile::tempdir().expect("temp dir");
    let broken = dir.path().join("broken.yaml");
    let text = std::fs::read_to_string(repo().join("deploy/kubernetes/pushgateway.yaml"))
        .expect("pushgateway.yaml")
        .replace("replicas: 3", "replicas: three");
    std::fs::write(&broken, text).expect("write");
    let (ok, output) = run(
        &kubernetes_validate(),
        &["--strict", &broken.display().to_string()],
    );
    assert!(!ok, "a string replica count must fail:\n{output}");
}

#[test]
fn the_gateway_configs_pass_the_binarys_config_check_and_query_the_headless_service() {
    let documents = documents();
    let service = find(&documents, "Service", "pushgateway");
    assert_eq!(
        service["spec"]["clusterIP"].as_str(),
        Some("None"),
        "headless"
    );
    let namespace = service["metadata"]["namespace"]
        .as_str()
        .expect("namespace");
    let port_name = service["spec"]["ports"][0]["name"]
        .as_str()
        .expect("port name");
    let statefulset = find(&documents, "StatefulSet", "pushgateway");
    assert_eq!(
        statefulset["spec"]["serviceName"].as_str(),
        Some("pushgateway")
    );
    let srv_name = format!("_{port_name}._tcp.pushgateway.{namespace}.svc.cluster.local.");

    let config_map = find(&documents, "ConfigMap", "dynamic-sharding");
    let data = config_map["data"].as_mapping().expect("ConfigMap data");
    let dir = tempfile::tempdir().expect("temp dir");
    let mut configs = Vec::new();
    for (key, text) in data {
        let key = key.as_str().expect("key");
        let text = text.as_str().expect("config text");
        let path = dir.path().join(key);
        std::fs::write(&path, text).expect("write config");
        let (ok, output) = run(
            Path::new(env!("CARGO_BIN_EXE_dynamic-sharding")),
            &[
                "--config.check",
                &format!("--config.file={}", path.display()),
            ],
        );
        assert!(ok, "{key}: {output}");
        assert!(
            output.contains("membership source: dns_sd"),
            "{key}: {output}"
        );
        let config: Value = serde_yaml_ng::from_str(text).expect("config YAML");
        assert_eq!(
            config["dns_sd"]["names"][0].as_str(),
            Some(srv_name.as_str()),
            "{key} queries the headless Service's SRV records"
        );
        configs.push((key.to_string(), config));
    }

    // The check does fail, naming the key.
    let mixed = dir.path().join("mixed.yml");
    std::fs::write(
        &mixed,
        "pushgateway: {servers: [a]}\ndns_sd: {names: [pg.test]}\n",
    )
    .expect("write");
    let (ok, output) = run(
        Path::new(env!("CARGO_BIN_EXE_dynamic-sharding")),
        &[
            "--config.check",
            &format!("--config.file={}", mixed.display()),
        ],
    );
    assert!(
        !ok && output.contains("pushgateway.servers and dns_sd"),
        "{output}"
    );

    // Two serving replicas, one rebalancer; their configs differ in rebalance.enabled only.
    let gateway = find(&documents, "Deployment", "dynamic-sharding");
    assert_eq!(gateway["spec"]["replicas"].as_u64(), Some(2));
    let rebalancer = find(&documents, "Deployment", "dynamic-sharding-rebalancer");
    assert_eq!(rebalancer["spec"]["replicas"].as_u64(), Some(1));
    assert_eq!(
        rebalancer["spec"]["strategy"]["type"].as_str(),
        Some("Recreate")
    );
    let config_of = |deployment: &Value| {
        let args = &deployment["spec"]["template"]["spec"]["containers"][0]["args"];
        let flag = args
            .as_sequence()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .find_map(|a| a.strip_prefix("--config.file=/etc/dynamic-sharding/"))
            .expect("--config.file in the ConfigMap's mount");
        configs
            .iter()
            .find(|(key, _)| key == flag)
            .unwrap_or_else(|| panic!("{flag} is not a key of the ConfigMap"))
            .1
            .clone()
    };
    let mut serving = config_of(gateway);
    let mut rebalancing = config_of(rebalancer);
    assert_eq!(serving["rebalance"]["enabled"].as_bool(), Some(false));
    assert_eq!(rebalancing["rebalance"]["enabled"].as_bool(), Some(true));
    serving["rebalance"]["enabled"] = Value::Bool(true);
    rebalancing["rebalance"]["enabled"] = Value::Bool(true);
    assert_eq!(
        serving, rebalancing,
        "the two configs differ only in rebalance.enabled"
    );

    // The clients' Service reaches the serving replicas only.
    let clients = find(&documents, "Service", "dynamic-sharding");
    assert_eq!(
        clients["spec"]["selector"]["app.kubernetes.io/component"].as_str(),
        Some("gateway")
    );
}

#[test]
fn the_prometheus_scrape_config_passes_promtool() {
    let documents = documents();
    let config_map = find(&documents, "ConfigMap", "prometheus-dynamic-sharding");
    let text = config_map["data"]["prometheus.yml"]
        .as_str()
        .expect("prometheus.yml");
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("prometheus.yml");
    std::fs::write(&path, text).expect("write");
    let promtool = std::env::var_os("DS_PROMTOOL_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("promtool"));
    let (ok, output) = run(&promtool, &["check", "config", &path.display().to_string()]);
    assert!(ok, "promtool check config:\n{output}");
    let config: Value = serde_yaml_ng::from_str(text).expect("YAML");
    let pushgateway = config["scrape_configs"]
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|job| job["job_name"].as_str() == Some("pushgateway"))
        .expect("pushgateway job");
    assert_eq!(pushgateway["honor_labels"].as_bool(), Some(true));
}
