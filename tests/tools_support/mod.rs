//! Helpers shared by the `tools_*` integration tests: temporary directories and configs.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use clawmatrix::config::{Config, ToolProxyConfig};
use serde_json::json;

static NEXT: AtomicU64 = AtomicU64::new(0);

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("clawmatrix-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, p: impl AsRef<Path>) -> PathBuf {
        self.0.join(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A node config named `office-01` with this tool proxy policy.
pub fn config_with(tool_proxy: serde_json::Value) -> Config {
    let v = json!({
        "nodeId": "office-01",
        "secret": "0123456789abcdef",
        "listen": true,
        "toolProxy": tool_proxy,
    });
    match Config::from_json(&v) {
        Ok(v) => v.config,
        Err(e) => panic!("test config invalid: {e}"),
    }
}

/// A `ToolProxyConfig` from allow/deny lists.
pub fn proxy(enabled: bool, allow: &[&str], deny: &[&str]) -> ToolProxyConfig {
    ToolProxyConfig {
        enabled,
        allow: allow.iter().map(|s| s.to_string()).collect(),
        deny: deny.iter().map(|s| s.to_string()).collect(),
        ..ToolProxyConfig::default()
    }
}

/// Live (non-zombie) processes in process group `pgid`, from /proc.
pub fn live_group_members(pgid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f.len() > 2 && f[2] == pgid.to_string() && f[0] != "Z" {
            out.push(pid);
        }
    }
    out
}
