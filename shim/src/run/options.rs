//! The parsing behind `husk run`'s options: environment files, memory sizes, registries,
//! container names.

use crate::config::{Config, MIN_MEMORY_MIB};

/// Reads an environment file as docker's `--env-file`: one `KEY=VALUE` per line (the
/// value taken as written, no quotes removed), `KEY` alone for this process's value of
/// KEY (skipped when unset), blank lines and lines starting with `#` ignored.
pub fn parse_env_file(path: &std::path::Path) -> Result<Vec<String>, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("--env-file {}: {e}", path.display()))?;
    let mut env = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = match line.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (line.trim_end(), None),
        };
        if key.is_empty() || key.chars().any(char::is_whitespace) {
            return Err(format!(
                "--env-file {} line {}: {key:?} is not a variable name (expected KEY=VALUE)",
                path.display(),
                n + 1
            ));
        }
        match value {
            Some(v) => env.push(format!("{key}={v}")),
            None => {
                if let Ok(v) = std::env::var(key) {
                    env.push(format!("{key}={v}"));
                }
            }
        }
    }
    Ok(env)
}

/// Parses a memory size like docker: a number with an optional b, k, m or g suffix
/// (bytes without one). Returns MiB.
pub fn parse_memory(s: &str) -> Result<u32, String> {
    let t = s.trim().to_ascii_lowercase();
    let (num, mult): (&str, u64) = match t.char_indices().last() {
        Some((i, 'b')) => (&t[..i], 1),
        Some((i, 'k')) => (&t[..i], 1 << 10),
        Some((i, 'm')) => (&t[..i], 1 << 20),
        Some((i, 'g')) => (&t[..i], 1 << 30),
        _ => (&t[..], 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("--memory {s:?}: expected a size such as 512m or 1g"))?;
    let mib = n.saturating_mul(mult) >> 20;
    if mib < u64::from(MIN_MEMORY_MIB) {
        return Err(format!(
            "--memory {s}: at least {MIN_MEMORY_MIB}m is needed (the guest kernel and agent)"
        ));
    }
    u32::try_from(mib).map_err(|_| format!("--memory {s}: too large"))
}

/// The configuration's plain-HTTP registries and `extra` (`--insecure-registry`).
pub fn insecure_registries(config: &Config, extra: &[String]) -> Vec<String> {
    let mut v = config.registry.insecure.clone();
    v.extend(extra.iter().cloned());
    v
}

/// A fresh container name: `husk-` and 12 hex digits.
pub fn random_name() -> String {
    let mut b = [0u8; 6];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut b);
    }
    format!(
        "husk-{}",
        b.iter().map(|x| format!("{x:02x}")).collect::<String>()
    )
}
