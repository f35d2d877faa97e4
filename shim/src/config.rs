//! The runtime configuration, `/etc/husk/config.toml`.
//!
//! Every field is optional; a missing file means all defaults. Unknown fields are
//! refused (a typo must not silently fall back to a default). See docs/configuration.md.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::image::Limits;

/// Where the configuration is read from unless told otherwise.
pub const DEFAULT_PATH: &str = "/etc/husk/config.toml";

/// Smallest VM memory accepted: a Linux guest with the agent needs about this much.
pub const MIN_MEMORY_MIB: u32 = 64;

/// Why the configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {field}: {message}")]
    Invalid {
        path: PathBuf,
        field: &'static str,
        message: String,
    },
}

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub vm: VmDefaults,
    /// Where guest images and converted container images are kept.
    pub state_dir: PathBuf,
    /// Where each pod's runtime state lives (`<run_dir>/<pod-id>/`).
    pub run_dir: PathBuf,
    pub image: ImageSettings,
    pub registry: RegistryConfig,
    pub network: NetworkSettings,
    pub jail: JailSettings,
}

/// The jail husk-vmm runs in (`vm.jail`; crate::jail, docs/security.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JailSettings {
    /// The first uid (and gid) given to a jailed husk-vmm; each live VM has its own.
    /// `uid_base - 1` is the group all jails share for read-only inputs.
    pub uid_base: u32,
    /// How many uids from `uid_base` (the most VMs at once).
    pub uid_count: u32,
    /// The cgroup (v2) under which each VM's cgroup is made, from the hierarchy's root.
    pub cgroup_parent: String,
    /// husk-vmm's own memory on top of the guest's, in `memory.max`.
    pub memory_overhead_mib: u32,
    /// `pids.max` of a VM's cgroup (husk-vmm's threads: one per vCPU and device worker).
    pub pids_max: u32,
}

impl Default for JailSettings {
    fn default() -> Self {
        JailSettings {
            uid_base: 100_000,
            uid_count: 65_536,
            cgroup_parent: "husk".into(),
            memory_overhead_mib: 256,
            pids_max: 256,
        }
    }
}

/// Container networks (docs/network.md): the default CNI network husk defines, where
/// more networks and the CNI plugins are found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkSettings {
    /// The network `husk run` joins without `--network` (husk's own, unless a file in
    /// `config_dir` defines one of that name).
    pub default: String,
    /// The default network's subnet (host-local addresses; the bridge takes the first).
    pub subnet: String,
    /// The default network's Linux bridge.
    pub bridge: String,
    /// Where the CNI plugins are (Debian's containernetworking-plugins).
    pub plugin_dir: PathBuf,
    /// More networks: CNI configuration lists (`*.conflist`, `*.conf`, `*.json`).
    pub config_dir: PathBuf,
}

impl Default for NetworkSettings {
    fn default() -> Self {
        NetworkSettings {
            default: "husk".into(),
            subnet: "10.88.0.0/16".into(),
            bridge: "husk0".into(),
            plugin_dir: PathBuf::from("/usr/lib/cni"),
            config_dir: PathBuf::from("/etc/husk/net.d"),
        }
    }
}

/// Bounds on what an image may make husk read and write (docs/security.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImageSettings {
    /// The most an image's layers may unpack to, all together.
    pub max_unpacked_bytes: u64,
    /// The most an image's layer blobs (compressed) may take, all together; also the
    /// most an oci-archive's blobs may take.
    pub max_layer_bytes: u64,
}

impl Default for ImageSettings {
    fn default() -> Self {
        let l = Limits::default();
        ImageSettings {
            max_unpacked_bytes: l.max_unpacked_bytes,
            max_layer_bytes: l.max_layer_bytes,
        }
    }
}

impl ImageSettings {
    /// The limits image preparation works under.
    pub fn limits(&self) -> Limits {
        Limits {
            max_unpacked_bytes: self.max_unpacked_bytes,
            max_layer_bytes: self.max_layer_bytes,
        }
    }
}

/// How images are pulled from registries.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// Registries (`HOST[:PORT]`) spoken to over plain HTTP (also `--insecure-registry`).
    pub insecure: Vec<String>,
}

/// The size of a VM when neither annotations nor command-line flags say otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VmDefaults {
    pub vcpus: u32,
    pub memory_mib: u32,
    /// A guest kernel to use instead of the guest image's (for PVM hosts, which need a
    /// PVM-enabled kernel).
    pub kernel: Option<PathBuf>,
    /// The size of each container's scratch disk (its writable layer; sparse), as
    /// `husk run --storage-size` takes it: "10g", "512m".
    pub storage_size: String,
    /// Run husk-vmm in its jail (crate::jail); `husk run --no-jail` turns it off once.
    pub jail: bool,
    /// Restore VMs from templates (crate::template; docs/snapshots.md) where their
    /// shape allows; `husk run --no-template` boots once.
    pub templates: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            vm: VmDefaults::default(),
            state_dir: PathBuf::from("/var/lib/husk"),
            run_dir: PathBuf::from("/run/husk"),
            image: ImageSettings::default(),
            registry: RegistryConfig::default(),
            network: NetworkSettings::default(),
            jail: JailSettings::default(),
        }
    }
}

impl Default for VmDefaults {
    fn default() -> Self {
        VmDefaults {
            vcpus: 1,
            // A ceiling, not a cost: free page reporting gives back what the guest
            // frees, so a job's peak does not stay (docs/cli.md, "Memory").
            memory_mib: 1024,
            kernel: None,
            storage_size: "10g".into(),
            jail: true,
            templates: true,
        }
    }
}

impl Config {
    /// `vm.storage_size` in bytes (checked when the file was read).
    pub fn storage_size(&self) -> u64 {
        crate::scratch::parse_size(&self.vm.storage_size).unwrap_or(crate::scratch::DEFAULT_SIZE)
    }

    /// Reads `path`; a missing file gives the defaults.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Config::parse(path, &text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Config::default()),
            Err(source) => Err(ConfigError::Read {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Parses `text` (read from `path`, which errors name) and checks the values.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        config.check(path)?;
        Ok(config)
    }

    fn check(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |field, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            field,
            message,
        };
        if self.vm.vcpus == 0 {
            return Err(invalid("vm.vcpus", "must be at least 1".into()));
        }
        if self.vm.memory_mib < MIN_MEMORY_MIB {
            return Err(invalid(
                "vm.memory_mib",
                format!(
                    "{} MiB is below the {MIN_MEMORY_MIB} MiB a guest needs",
                    self.vm.memory_mib
                ),
            ));
        }
        crate::scratch::parse_size(&self.vm.storage_size)
            .map_err(|m| invalid("vm.storage_size", m))?;
        for (field, n) in [
            ("image.max_unpacked_bytes", self.image.max_unpacked_bytes),
            ("image.max_layer_bytes", self.image.max_layer_bytes),
        ] {
            if n == 0 {
                return Err(invalid(field, "must be at least 1".into()));
            }
        }
        for (field, p) in [("state_dir", &self.state_dir), ("run_dir", &self.run_dir)] {
            if !p.is_absolute() {
                return Err(invalid(
                    field,
                    format!("{} is not an absolute path", p.display()),
                ));
            }
        }
        match crate::network::cni::parse_cidr(&self.network.subnet) {
            Ok((std::net::IpAddr::V4(_), len)) if (8..=30).contains(&len) => {}
            Ok(_) => {
                return Err(invalid(
                    "network.subnet",
                    format!("{}: an IPv4 subnet from /8 to /30", self.network.subnet),
                ));
            }
            Err(m) => return Err(invalid("network.subnet", m)),
        }
        let b = &self.network.bridge;
        if b.is_empty()
            || b.len() > 15
            || !b
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.'))
        {
            return Err(invalid(
                "network.bridge",
                format!("{b:?} is not an interface name (at most 15 bytes)"),
            ));
        }
        if self.network.default == "none" || self.network.default.is_empty() {
            return Err(invalid(
                "network.default",
                "a network's name (\"none\" is always there)".into(),
            ));
        }
        for (field, p) in [
            ("network.plugin_dir", &self.network.plugin_dir),
            ("network.config_dir", &self.network.config_dir),
        ] {
            if !p.is_absolute() {
                return Err(invalid(
                    field,
                    format!("{} is not an absolute path", p.display()),
                ));
            }
        }
        let j = &self.jail;
        if j.uid_base == 0 || j.uid_count == 0 || j.uid_base.checked_add(j.uid_count).is_none() {
            return Err(invalid(
                "jail.uid_base",
                format!(
                    "uids {}..{}+{}: the base and count must be at least 1 and fit in 32 bits",
                    j.uid_base, j.uid_base, j.uid_count
                ),
            ));
        }
        if j.pids_max == 0 {
            return Err(invalid("jail.pids_max", "must be at least 1".into()));
        }
        let parent = j.cgroup_parent.trim_matches('/');
        if parent.is_empty()
            || parent
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(invalid(
                "jail.cgroup_parent",
                format!(
                    "{:?}: a relative cgroup path such as \"husk\"",
                    j.cgroup_parent
                ),
            ));
        }
        for h in &self.registry.insecure {
            if !crate::registry::reference::valid_registry(h) {
                return Err(invalid(
                    "registry.insecure",
                    format!("{h:?} is not HOST[:PORT]"),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_file_gives_defaults() {
        let d = tempfile::tempdir().unwrap();
        let c = Config::load(&d.path().join("none.toml")).unwrap();
        assert_eq!(c, Config::default());
        assert_eq!((c.vm.vcpus, c.vm.memory_mib), (1, 1024));
    }

    #[test]
    fn partial_file_keeps_other_defaults() {
        let c = Config::parse(Path::new("c.toml"), "[vm]\nmemory_mib = 512\n").unwrap();
        assert_eq!(c.vm.memory_mib, 512);
        assert_eq!(c.vm.vcpus, 1);
        assert_eq!(c.run_dir, Path::new("/run/husk"));
        assert_eq!(c.image.limits(), crate::image::Limits::default());
    }

    #[test]
    fn image_limits() {
        let c = Config::parse(
            Path::new("c.toml"),
            "[image]\nmax_unpacked_bytes = 1048576\nmax_layer_bytes = 4096\n",
        )
        .unwrap();
        assert_eq!(
            (c.image.max_unpacked_bytes, c.image.max_layer_bytes),
            (1 << 20, 4096)
        );
        let e = Config::parse(Path::new("c.toml"), "[image]\nmax_layer_bytes = 0\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "c.toml: image.max_layer_bytes: must be at least 1"
        );
    }

    #[test]
    fn unknown_fields_are_refused_with_the_file_named() {
        let e = Config::parse(Path::new("/etc/husk/config.toml"), "[vm]\nmemory = 512\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("/etc/husk/config.toml: "), "{e}");
        assert!(e.contains("unknown field `memory`"), "{e}");
    }

    #[test]
    fn bad_values_name_the_field() {
        let e = Config::parse(Path::new("c.toml"), "[vm]\nvcpus = 0\n").unwrap_err();
        assert_eq!(e.to_string(), "c.toml: vm.vcpus: must be at least 1");
        let e = Config::parse(Path::new("c.toml"), "[vm]\nmemory_mib = 8\n").unwrap_err();
        assert!(e.to_string().starts_with("c.toml: vm.memory_mib: 8 MiB"));
        let e = Config::parse(Path::new("c.toml"), "run_dir = \"run\"\n").unwrap_err();
        assert!(e.to_string().starts_with("c.toml: run_dir: "));
        let e = Config::parse(Path::new("c.toml"), "[vm]\nstorage_size = \"1k\"\n").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("c.toml: vm.storage_size: 1k: at least"),
            "{e}"
        );
        let c = Config::parse(Path::new("c.toml"), "[vm]\nstorage_size = \"20g\"\n").unwrap();
        assert_eq!(c.storage_size(), 20 << 30);
        assert_eq!(Config::default().storage_size(), 10 << 30);
        let e =
            Config::parse(Path::new("c.toml"), "[registry]\ninsecure = [\"a b\"]\n").unwrap_err();
        assert!(
            e.to_string().starts_with("c.toml: registry.insecure: "),
            "{e}"
        );
        let c = Config::parse(
            Path::new("c.toml"),
            "[registry]\ninsecure = [\"127.0.0.1:5000\"]\n",
        );
        assert_eq!(c.unwrap().registry.insecure, ["127.0.0.1:5000"]);
        let e = Config::parse(Path::new("c.toml"), "[vm]\nvcpus = \"two\"\n").unwrap_err();
        assert!(e.to_string().contains("invalid type"), "{e}");
    }

    #[test]
    fn network_settings() {
        let c = Config::parse(
            Path::new("c.toml"),
            "[network]\nsubnet = \"10.200.0.0/24\"\nbridge = \"br-test\"\n",
        )
        .unwrap();
        assert_eq!(c.network.subnet, "10.200.0.0/24");
        assert_eq!(c.network.default, "husk");
        for (text, field) in [
            ("[network]\nsubnet = \"10.0.0.0\"\n", "network.subnet"),
            ("[network]\nsubnet = \"fd00::/64\"\n", "network.subnet"),
            ("[network]\nsubnet = \"10.0.0.0/31\"\n", "network.subnet"),
            (
                "[network]\nbridge = \"a-very-long-bridge-name\"\n",
                "network.bridge",
            ),
            ("[network]\ndefault = \"none\"\n", "network.default"),
            ("[network]\nplugin_dir = \"cni\"\n", "network.plugin_dir"),
        ] {
            let e = Config::parse(Path::new("c.toml"), text)
                .unwrap_err()
                .to_string();
            assert!(e.starts_with(&format!("c.toml: {field}: ")), "{text}: {e}");
        }
    }

    #[test]
    fn jail_settings() {
        let c = Config::default();
        assert!(c.vm.jail);
        assert_eq!(
            (c.jail.uid_base, c.jail.cgroup_parent.as_str()),
            (100_000, "husk")
        );
        let c = Config::parse(Path::new("c.toml"), "[vm]\njail = false\n").unwrap();
        assert!(!c.vm.jail);
        for (text, field) in [
            ("[jail]\nuid_base = 0\n", "jail.uid_base"),
            ("[jail]\nuid_base = 4294967000\n", "jail.uid_base"),
            ("[jail]\npids_max = 0\n", "jail.pids_max"),
            ("[jail]\ncgroup_parent = \"../x\"\n", "jail.cgroup_parent"),
            ("[jail]\ncgroup_parent = \"/\"\n", "jail.cgroup_parent"),
        ] {
            let e = Config::parse(Path::new("c.toml"), text)
                .unwrap_err()
                .to_string();
            assert!(e.starts_with(&format!("c.toml: {field}: ")), "{text}: {e}");
        }
    }

    #[test]
    fn unreadable_file_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        // A folder where the file should be.
        let e = Config::load(d.path()).unwrap_err();
        assert!(matches!(e, ConfigError::Read { .. }));
    }
}
