//! Logs never go to stdout: in plugin mode stdout carries the result the runtime parses.

use std::path::Path;
use std::sync::Mutex;

use tracing_subscriber::EnvFilter;

/// Plugin mode: the configuration's `log_file` (appended to) and `log_level`, read leniently
/// from stdin before it is validated, so that a bad configuration is still logged.
pub fn init_plugin(stdin: &[u8]) {
    let conf: serde_json::Value = serde_json::from_slice(stdin).unwrap_or_default();
    let level = conf.get("log_level").and_then(|v| v.as_str()).unwrap_or("info");
    let file = conf
        .get("log_file")
        .and_then(|v| v.as_str())
        .and_then(|path| std::fs::OpenOptions::new().create(true).append(true).open(Path::new(path)).ok());
    let builder = tracing_subscriber::fmt().with_env_filter(filter(level)).with_ansi(false);
    let _ = match file {
        Some(file) => builder.with_writer(Mutex::new(file)).try_init(),
        None => builder.with_writer(std::io::stderr).try_init(),
    };
}

/// Agent mode: stderr, the container's log.
pub fn init_agent() {
    let level = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_owned());
    let _ = tracing_subscriber::fmt().with_env_filter(filter(&level)).with_writer(std::io::stderr).try_init();
}

fn filter(level: &str) -> EnvFilter {
    EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"))
}
