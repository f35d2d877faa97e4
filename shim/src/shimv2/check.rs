//! `husk check`'s containerd lines: whether containerd can run husk's shim (the binary
//! on its PATH) and whether its CRI configuration names the husk runtime.

use std::path::{Path, PathBuf};

/// containerd's configuration file.
pub const CONTAINERD_CONFIG: &str = "/etc/containerd/config.toml";
/// The shim's binary name, as containerd derives it from the runtime type.
pub const SHIM_BINARY: &str = "containerd-shim-husk-v2";

/// Where the shim is: containerd looks on its PATH (and next to itself).
pub fn find_shim() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/bin", "/usr/bin"].map(PathBuf::from))
        .map(|d| d.join(SHIM_BINARY))
        .find(|p| p.is_file())
}

/// The CRI runtime handlers of containerd configuration `text` whose runtime type is
/// husk's.
pub fn husk_handlers(text: &str) -> Vec<String> {
    let Ok(v) = toml::from_str::<toml::Value>(text) else {
        return Vec::new();
    };
    let runtimes = ["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.runtime"]
        .iter()
        .filter_map(|p| {
            v.get("plugins")?
                .get(*p)?
                .get("containerd")?
                .get("runtimes")?
                .as_table()
        })
        .flat_map(|t| t.iter());
    runtimes
        .filter(|(_, r)| {
            r.get("runtime_type").and_then(toml::Value::as_str) == Some(super::RUNTIME_ID)
        })
        .map(|(name, _)| name.clone())
        .collect()
}

/// The lines `husk check` prints about containerd.
pub fn report(config: &Path) -> Vec<String> {
    let mut out = Vec::new();
    match find_shim() {
        Some(p) => out.push(format!(
            "containerd shim: {} (ctr run --runtime {})",
            p.display(),
            super::RUNTIME_ID
        )),
        None => out.push(format!(
            "containerd shim: {SHIM_BINARY} not on PATH (make install; docs/containerd.md)"
        )),
    }
    match std::fs::read_to_string(config) {
        Ok(text) => {
            let h = husk_handlers(&text);
            if h.is_empty() {
                out.push(format!(
                    "containerd CRI: no runtime handler with runtime_type = \"{}\" in {} (docs/containerd.md)",
                    super::RUNTIME_ID,
                    config.display()
                ));
            } else {
                out.push(format!(
                    "containerd CRI: runtime handler(s) {} use husk",
                    h.join(", ")
                ));
            }
        }
        Err(_) => out.push(format!("containerd CRI: {} not readable", config.display())),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_handler() {
        let t = r#"
version = 2
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.husk]
  runtime_type = "io.containerd.husk.v2"
"#;
        assert_eq!(husk_handlers(t), vec!["husk".to_string()]);
        assert!(husk_handlers("version = 2\n").is_empty());
        assert!(husk_handlers("not toml [").is_empty());
    }
}
