//! `file_sd`: the Pushgateways are the targets of files in Prometheus' `file_sd_configs` format.

use std::time::Duration;

use serde::Deserialize;

use super::{invalid, ConfigError, PromDuration};

/// Prometheus' `file_sd_configs` default.
pub const DEFAULT_FILE_SD_REFRESH_INTERVAL: Duration = Duration::from_secs(300);

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFileSd {
    #[serde(default)]
    files: Vec<String>,
    refresh_interval: Option<PromDuration>,
}

/// The validated `file_sd` section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileSdConfig {
    /// Globs (`*`, `?`, `[...]` in the file name) of JSON (`.json`) or YAML (`.yml`, `.yaml`) files.
    pub files: Vec<String>,
    /// The files are re-read this often, besides whenever one changes.
    pub refresh_interval: Duration,
}

pub(super) fn validate_file_sd(raw: RawFileSd) -> Result<FileSdConfig, ConfigError> {
    let files: Vec<String> = raw.files.iter().map(|f| f.trim().to_string()).collect();
    if files.is_empty() {
        return Err(invalid(
            "file_sd.files: empty; list the target files, e.g. [/etc/dynamic-sharding/targets/*.json]",
        ));
    }
    for (index, pattern) in files.iter().enumerate() {
        // As in Prometheus: the format follows from the extension, and only the file name may be a pattern.
        if ![".json", ".yml", ".yaml"]
            .iter()
            .any(|ext| pattern.ends_with(ext))
        {
            return Err(invalid(format!(
                "file_sd.files[{index}]: {pattern:?} must end in .json, .yml or .yaml (the file's format)"
            )));
        }
        let directory = std::path::Path::new(pattern)
            .parent()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        if directory.contains(['*', '?', '[']) {
            return Err(invalid(format!(
                "file_sd.files[{index}]: {pattern:?} has a pattern in a directory; only the file name may have one"
            )));
        }
        glob::Pattern::new(pattern).map_err(|e| {
            invalid(format!(
                "file_sd.files[{index}]: {pattern:?} is not a valid glob: {e}"
            ))
        })?;
    }
    let refresh_interval = raw
        .refresh_interval
        .map_or(DEFAULT_FILE_SD_REFRESH_INTERVAL, |d| d.0);
    if refresh_interval.is_zero() {
        return Err(invalid(
            "file_sd.refresh_interval: must be greater than 0, e.g. 5m",
        ));
    }
    Ok(FileSdConfig {
        files,
        refresh_interval,
    })
}
