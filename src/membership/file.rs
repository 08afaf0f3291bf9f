//! `file_sd`: the candidates are the targets of files in Prometheus' file_sd format, JSON or YAML lists of
//! `{targets: [host:port...], labels: {...}}` (the labels are not used: a node is its address).
//!
//! The files matching `file_sd.files` are read every `refresh_interval` and whenever something changes in their
//! directories (inotify through `notify`). A file that cannot be read or parsed keeps its last good targets and
//! its error is reported; a file that no longer exists (or no longer matches) takes its targets with it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use serde::Deserialize;
use tokio::sync::{mpsc, watch};

use super::discovery::{Discovery, PartFailure, Round};
use crate::config::{
    node_address, Config, FileSdConfig, MembershipConfig, DEFAULT_PUSHGATEWAY_PORT,
};

/// After a change, further events this close behind are taken as part of the same write (editors and
/// `kubectl` ConfigMap updates write in several steps).
const SETTLE: Duration = Duration::from_millis(100);

/// One entry of a file_sd file.
#[derive(Debug, Deserialize)]
struct TargetGroup {
    #[serde(default)]
    targets: Vec<String>,
    #[serde(default)]
    #[allow(dead_code)] // Part of the format; a node is identified by its address alone.
    labels: BTreeMap<String, String>,
}

pub struct FileDiscovery {
    settings: FileSdConfig,
    config: watch::Receiver<Arc<Config>>,
    /// Each file's last good targets.
    last_targets: BTreeMap<PathBuf, BTreeSet<String>>,
    changes: mpsc::Receiver<()>,
    changes_tx: mpsc::Sender<()>,
    watcher: Option<RecommendedWatcher>,
    watched: BTreeSet<PathBuf>,
}

impl FileDiscovery {
    pub fn new(settings: FileSdConfig, config: watch::Receiver<Arc<Config>>) -> FileDiscovery {
        let (changes_tx, changes) = mpsc::channel(1);
        FileDiscovery {
            settings,
            config,
            last_targets: BTreeMap::new(),
            changes,
            changes_tx,
            watcher: None,
            watched: BTreeSet::new(),
        }
    }

    fn follow_reload(&mut self) {
        let config = self.config.borrow_and_update().clone();
        if let MembershipConfig::FileSd(settings) = &config.membership {
            if *settings != self.settings {
                self.settings = settings.clone();
            }
        }
    }

    /// Watches the directories of the patterns (again, if one could not be watched before).
    fn watch_directories(&mut self) -> Vec<PartFailure> {
        let mut errors = Vec::new();
        if self.watcher.is_none() {
            let tx = self.changes_tx.clone();
            match notify::recommended_watcher(move |_event| {
                // A full channel already holds a pending change.
                let _ = tx.try_send(());
            }) {
                Ok(watcher) => self.watcher = Some(watcher),
                Err(error) => {
                    errors.push(PartFailure::new(
                        "file_sd",
                        format!("cannot watch files ({error}); they are read every file_sd.refresh_interval"),
                    ));
                    return errors;
                }
            }
        }
        let directories: BTreeSet<PathBuf> = self
            .settings
            .files
            .iter()
            .map(|pattern| directory_of(pattern))
            .collect();
        let Some(watcher) = self.watcher.as_mut() else {
            return errors;
        };
        for stale in self
            .watched
            .difference(&directories)
            .cloned()
            .collect::<Vec<_>>()
        {
            let _ = watcher.unwatch(&stale);
            self.watched.remove(&stale);
        }
        for directory in directories {
            if self.watched.contains(&directory) {
                continue;
            }
            match watcher.watch(&directory, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    self.watched.insert(directory);
                }
                Err(error) => errors.push(PartFailure::new(
                    directory.display().to_string(),
                    format!("cannot watch this directory: {error}"),
                )),
            }
        }
        errors
    }
}

fn directory_of(pattern: &str) -> PathBuf {
    match Path::new(pattern).parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

impl Discovery for FileDiscovery {
    fn name(&self) -> &'static str {
        "file_sd"
    }

    async fn discover(&mut self) -> Round {
        self.follow_reload();
        let mut errors = self.watch_directories();
        let mut present = BTreeSet::new();
        for (index, pattern) in self.settings.files.iter().enumerate() {
            let paths = match glob::glob(pattern) {
                Ok(paths) => paths,
                Err(error) => {
                    errors.push(PartFailure::new(
                        format!("file_sd.files[{index}] {pattern:?}"),
                        error.to_string(),
                    ));
                    continue;
                }
            };
            for entry in paths {
                let path = match entry {
                    Ok(path) => path,
                    Err(error) => {
                        // Unreadable while listing: keep what that file gave last time.
                        present.insert(error.path().to_path_buf());
                        errors.push(PartFailure::new(
                            error.path().display().to_string(),
                            format!("cannot list it: {}", error.error()),
                        ));
                        continue;
                    }
                };
                present.insert(path.clone());
                match read_targets(&path).await {
                    Ok(targets) => {
                        self.last_targets.insert(path, targets);
                    }
                    Err(error) => {
                        errors.push(PartFailure::new(path.display().to_string(), error));
                    }
                }
            }
        }
        self.last_targets.retain(|path, _| present.contains(path));
        Round {
            addresses: self.last_targets.values().flatten().cloned().collect(),
            failures: errors,
        }
    }

    async fn wait(&mut self) {
        let interval = self.settings.refresh_interval;
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            Some(()) = self.changes.recv() => {
                tokio::time::sleep(SETTLE).await;
                while self.changes.try_recv().is_ok() {}
            }
            changed = self.config.changed() => if changed.is_err() {
                std::future::pending::<()>().await;
            },
        }
    }
}

async fn read_targets(path: &Path) -> Result<BTreeSet<String>, String> {
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|e| format!("cannot read: {e}"))?;
    parse_targets(path, &text)
}

/// The targets of one file; the format follows from the extension, as in Prometheus.
pub fn parse_targets(path: &Path, text: &str) -> Result<BTreeSet<String>, String> {
    let json = path.extension().is_some_and(|ext| ext == "json");
    let groups: Vec<TargetGroup> = if json {
        serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?
    } else if text.trim().is_empty() {
        Vec::new()
    } else {
        serde_yaml_ng::from_str(text).map_err(|e| format!("invalid YAML: {e}"))?
    };
    let mut targets = BTreeSet::new();
    for (group_index, group) in groups.iter().enumerate() {
        for (index, target) in group.targets.iter().enumerate() {
            let node = node_address(target, DEFAULT_PUSHGATEWAY_PORT)
                .map_err(|e| format!("[{group_index}].targets[{index}]: {e}"))?;
            targets.insert(node);
        }
    }
    Ok(targets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_and_yaml_target_groups() {
        let json = r#"[{"targets": ["10.0.0.1:9091", "10.0.0.2"], "labels": {"env": "prod"}}, {"targets": ["10.0.0.1:9091"]}]"#;
        assert_eq!(
            parse_targets(Path::new("a.json"), json).unwrap(),
            BTreeSet::from(["10.0.0.1:9091".to_string(), "10.0.0.2:9091".to_string()])
        );
        let yaml = "- targets: ['[::1]:9100']\n  labels: {a: b}\n";
        assert_eq!(
            parse_targets(Path::new("a.yml"), yaml).unwrap(),
            BTreeSet::from(["[::1]:9100".to_string()])
        );
        assert_eq!(
            parse_targets(Path::new("a.yaml"), "").unwrap(),
            BTreeSet::new()
        );
    }

    #[test]
    fn a_broken_file_says_where() {
        let err = parse_targets(Path::new("a.json"), "[{\"targets\": [").unwrap_err();
        assert!(err.contains("invalid JSON"), "{err}");
        let err = parse_targets(Path::new("a.yml"), "- targets: ['u:p@h:1']\n").unwrap_err();
        assert!(err.contains("[0].targets[0]"), "{err}");
        assert!(!err.contains("u:p@"), "no credentials quoted: {err}");
    }
}
