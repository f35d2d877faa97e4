//! The VM configuration: a JSON file given with `--config` (see docs/vmm-config.md).
//!
//! This is the contract between husk-vmm and whoever starts it: the runtime builds a
//! [`VmConfig`] and serialises it, husk-vmm parses the same type back (unknown fields
//! refused). [`VmConfig::validate`] checks values that serde cannot (ranges, files that
//! must exist) and names the field in its error.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::devices::serial::log::{DEFAULT_MAX_BYTES, MIN_MAX_BYTES};

/// Largest guest memory accepted, in MiB (1 TiB): anything larger is a typo.
pub const MAX_MEMORY_MIB: u64 = 1 << 20;

/// Most vCPUs husk-vmm gives a VM: APIC ids in the MADT and CPUID are 8 bits, and 255
/// is the broadcast id.
pub const MAX_VCPUS: u32 = 254;

/// Longest path a unix socket address holds (`sun_path` is 108 bytes with its NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// Longest kernel command line: the x86 boot protocol's `cmdline_size` of the kernels we
/// boot (COMMAND_LINE_SIZE, 2048 on x86_64).
pub const MAX_CMDLINE: usize = 2048;

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("config field {field}: {message}")]
    Invalid { field: String, message: String },
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// Where the guest's serial console goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SerialOutput {
    /// This process's standard output.
    Stdout,
    /// Discarded (the device still exists, so the guest may write to it).
    None,
    /// Appended to a log file that never grows past `max_bytes` (it keeps the newest
    /// output; see devices/serial/log.rs).
    File { path: PathBuf, max_bytes: u64 },
}

impl SerialOutput {
    /// A capped log file with the default cap (1 MiB).
    pub fn file(path: impl Into<PathBuf>) -> SerialOutput {
        SerialOutput::File {
            path: path.into(),
            max_bytes: DEFAULT_MAX_BYTES,
        }
    }
}

/// The JSON forms of `serial`: "stdout" | "none" | {"file": PATH, "max_bytes": N}.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum RawSerial {
    Word(String),
    File {
        file: PathBuf,
        #[serde(default = "default_serial_max")]
        max_bytes: u64,
    },
}

fn default_serial_max() -> u64 {
    DEFAULT_MAX_BYTES
}

impl<'de> Deserialize<'de> for SerialConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        const EXPECTED: &str = r#"expected "stdout", "none" or {"file": PATH, "max_bytes": N}"#;
        match RawSerial::deserialize(d)
            .map_err(|_| serde::de::Error::custom(format!("serial: {EXPECTED}")))?
        {
            RawSerial::Word(w) if w == "stdout" => Ok(SerialConfig(SerialOutput::Stdout)),
            RawSerial::Word(w) if w == "none" => Ok(SerialConfig(SerialOutput::None)),
            RawSerial::Word(w) => Err(serde::de::Error::custom(format!(
                "serial: unknown value {w:?}, {EXPECTED}"
            ))),
            RawSerial::File { file, max_bytes } => Ok(SerialConfig(SerialOutput::File {
                path: file,
                max_bytes,
            })),
        }
    }
}

impl Serialize for SerialConfig {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match &self.0 {
            SerialOutput::Stdout => RawSerial::Word("stdout".into()),
            SerialOutput::None => RawSerial::Word("none".into()),
            SerialOutput::File { path, max_bytes } => RawSerial::File {
                file: path.clone(),
                max_bytes: *max_bytes,
            },
        }
        .serialize(s)
    }
}

/// The `serial` field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SerialConfig(pub SerialOutput);

impl Default for SerialConfig {
    fn default() -> Self {
        SerialConfig(SerialOutput::Stdout)
    }
}

/// A virtio-blk disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockConfig {
    pub path: PathBuf,
    #[serde(default)]
    pub read_only: bool,
}

/// The hybrid vsock device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    /// The guest's context id (3 or more; 0–2 are reserved).
    pub cid: u32,
    /// Host unix socket: host→guest connections connect here; guest→host connections to
    /// port P reach `<uds>_P`.
    pub uds: PathBuf,
}

/// The memory balloon (virtio-balloon), for free page reporting: memory the guest frees
/// goes back to the host instead of staying resident in husk-vmm.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonConfig {
    /// Offer VIRTIO_BALLOON_F_FREE_PAGE_REPORTING (the default).
    #[serde(default = "default_true")]
    pub free_page_reporting: bool,
}

fn default_true() -> bool {
    true
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// Guest kernel: a bzImage or an ELF vmlinux.
    pub kernel: PathBuf,
    #[serde(default)]
    pub initramfs: Option<PathBuf>,
    #[serde(default)]
    pub cmdline: String,
    #[serde(default = "default_vcpus")]
    pub vcpus: u32,
    #[serde(default = "default_memory_mib")]
    pub memory_mib: u64,
    /// Back guest memory with a shared memfd that vhost-user backends can map, instead
    /// of private anonymous memory (faster to fault in: see memory.rs).
    #[serde(default)]
    pub memory_shared: bool,
    #[serde(default)]
    pub serial: SerialConfig,
    #[serde(default)]
    pub block: Vec<BlockConfig>,
    #[serde(default)]
    pub vsock: Option<VsockConfig>,
    #[serde(default)]
    pub rng: bool,
    /// A balloon device; absent or null: none.
    #[serde(default)]
    pub balloon: Option<BalloonConfig>,
    /// Also describe the virtio-mmio devices on the command line (`virtio_mmio.device=`),
    /// for kernels built with CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES and without ACPI.
    #[serde(default)]
    pub virtio_mmio_cmdline: bool,
}

fn default_vcpus() -> u32 {
    1
}

fn default_memory_mib() -> u64 {
    256
}

impl VmConfig {
    /// Reads and parses `path` (not yet validated against the host: see [`validate`]).
    ///
    /// [`validate`]: VmConfig::validate
    pub fn from_file(path: &Path) -> Result<VmConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        VmConfig::from_json(path, &text)
    }

    /// Parses `text`, read from `path` (named in errors).
    pub fn from_json(path: &Path, text: &str) -> Result<VmConfig, ConfigError> {
        serde_json::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Checks the values: ranges (`kvm_max_vcpus` is KVM's limit), files that must
    /// exist, socket path lengths.
    pub fn validate(&self, kvm_max_vcpus: usize) -> Result<(), ConfigError> {
        if self.vcpus == 0 {
            return Err(invalid("vcpus", "must be at least 1"));
        }
        if self.vcpus > MAX_VCPUS {
            return Err(invalid(
                "vcpus",
                format!(
                    "{} is more than husk-vmm's limit of {MAX_VCPUS}",
                    self.vcpus
                ),
            ));
        }
        if self.vcpus as usize > kvm_max_vcpus {
            return Err(invalid(
                "vcpus",
                format!("{} is more than KVM's limit of {kvm_max_vcpus}", self.vcpus),
            ));
        }
        if self.memory_mib == 0 {
            return Err(invalid("memory_mib", "must be at least 1"));
        }
        if self.memory_mib > MAX_MEMORY_MIB {
            return Err(invalid(
                "memory_mib",
                format!(
                    "{} MiB is more than the {MAX_MEMORY_MIB} MiB allowed",
                    self.memory_mib
                ),
            ));
        }
        if let Some(total) = host_memory_mib()
            && self.memory_mib > total
        {
            return Err(invalid(
                "memory_mib",
                format!(
                    "{} MiB is more than this host's {total} MiB",
                    self.memory_mib
                ),
            ));
        }
        check_file("kernel", &self.kernel)?;
        if let Some(initrd) = &self.initramfs {
            check_file("initramfs", initrd)?;
        }
        if self.cmdline.len() >= MAX_CMDLINE {
            return Err(invalid(
                "cmdline",
                format!(
                    "{} bytes, at most {} fit",
                    self.cmdline.len(),
                    MAX_CMDLINE - 1
                ),
            ));
        }
        if let SerialOutput::File { path, max_bytes } = &self.serial.0 {
            if path.as_os_str().is_empty() {
                return Err(invalid("serial.file", "empty path"));
            }
            if *max_bytes < MIN_MAX_BYTES {
                return Err(invalid(
                    "serial.max_bytes",
                    format!("{max_bytes} is less than the {MIN_MAX_BYTES} bytes allowed"),
                ));
            }
        }
        for (i, b) in self.block.iter().enumerate() {
            check_file(&format!("block[{i}].path"), &b.path)?;
        }
        if let Some(v) = &self.vsock {
            if v.cid < 3 || v.cid == u32::MAX {
                return Err(invalid(
                    "vsock.cid",
                    format!("{} is reserved; use 3 to 4294967294", v.cid),
                ));
            }
            // Guest-initiated connections go to `<uds>_<port>`: room for "_4294967295".
            let longest = v.uds.as_os_str().len() + 11;
            if longest > MAX_SOCKET_PATH {
                return Err(invalid(
                    "vsock.uds",
                    format!(
                        "{} is too long for a unix socket with its _PORT suffix \
                         (at most {} bytes)",
                        v.uds.display(),
                        MAX_SOCKET_PATH - 11
                    ),
                ));
            }
        }
        Ok(())
    }
}

fn check_file(field: &str, p: &Path) -> Result<(), ConfigError> {
    match std::fs::metadata(p) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err(invalid(
            field,
            format!("{} is not a regular file", p.display()),
        )),
        Err(e) => Err(invalid(field, format!("{}: {e}", p.display()))),
    }
}

/// The host's memory in MiB, from /proc/meminfo.
fn host_memory_mib() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<VmConfig, ConfigError> {
        VmConfig::from_json(Path::new("vm.json"), json)
    }

    #[test]
    fn full_config_parses() {
        let c = parse(
            r#"{"kernel": "/k", "initramfs": "/i", "cmdline": "quiet", "vcpus": 2,
                "memory_mib": 512, "serial": {"file": "/tmp/console.log"},
                "block": [{"path": "/d.img", "read_only": true}],
                "vsock": {"cid": 3, "uds": "/run/v.sock"}, "rng": true,
                "balloon": {"free_page_reporting": true}}"#,
        )
        .unwrap();
        assert_eq!(c.vcpus, 2);
        assert_eq!(
            c.balloon,
            Some(BalloonConfig {
                free_page_reporting: true
            })
        );
        assert_eq!(c.serial.0, SerialOutput::file("/tmp/console.log"));
        assert!(c.block[0].read_only && c.rng);
        assert_eq!(c.vsock.unwrap().cid, 3);
    }

    #[test]
    fn config_round_trips_through_json() {
        let c = parse(
            r#"{"kernel": "/k", "initramfs": "/i", "cmdline": "quiet", "vcpus": 2,
                "memory_mib": 512, "serial": {"file": "/c.log", "max_bytes": 65536},
                "block": [{"path": "/d.img", "read_only": true}],
                "vsock": {"cid": 3, "uds": "/run/v.sock"}, "rng": true,
                "balloon": {"free_page_reporting": false}}"#,
        )
        .unwrap();
        let text = serde_json::to_string(&c).unwrap();
        assert_eq!(parse(&text).unwrap(), c);
        for serial in [
            SerialOutput::Stdout,
            SerialOutput::None,
            SerialOutput::file("/x"),
        ] {
            let mut c2 = c.clone();
            c2.serial = SerialConfig(serial);
            assert_eq!(parse(&serde_json::to_string(&c2).unwrap()).unwrap(), c2);
        }
        assert_eq!(
            c.serial.0,
            SerialOutput::File {
                path: "/c.log".into(),
                max_bytes: 65536
            }
        );
    }

    #[test]
    fn defaults_apply() {
        let c = parse(r#"{"kernel": "/k"}"#).unwrap();
        assert_eq!((c.vcpus, c.memory_mib), (1, 256));
        assert_eq!(c.serial.0, SerialOutput::Stdout);
        assert!(c.block.is_empty() && c.vsock.is_none() && !c.rng && c.balloon.is_none());
        let c = parse(r#"{"kernel": "/k", "balloon": null}"#).unwrap();
        assert!(c.balloon.is_none());
        let c = parse(r#"{"kernel": "/k", "balloon": {}}"#).unwrap();
        assert_eq!(
            c.balloon,
            Some(BalloonConfig {
                free_page_reporting: true
            })
        );
        let c = parse(r#"{"kernel": "/k", "serial": "none"}"#).unwrap();
        assert_eq!(c.serial.0, SerialOutput::None);
    }

    #[test]
    fn unknown_and_bad_fields_are_named() {
        let e = parse(r#"{"kernel": "/k", "memory": 5}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `memory`"), "{e}");
        let e = parse(r#"{"kernel": "/k", "serial": "tty"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("serial"), "{e}");
        let e = parse(r#"{"kernel": "/k", "block": [{"path": "/x", "ro": true}]}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `ro`"), "{e}");
        let e = parse(r#"{"kernel": "/k", "balloon": {"reporting": true}}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `reporting`"), "{e}");
        let e = parse(r#"{"kernel": "/k", "balloon": true}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("BalloonConfig"), "{e}");
        let e = parse(r#"{"vcpus": 1}"#).unwrap_err().to_string();
        assert!(e.contains("missing field `kernel`"), "{e}");
    }

    #[test]
    fn validation_names_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let k = dir.path().join("k");
        std::fs::write(&k, b"x").unwrap();
        let base = format!(r#""kernel": "{}""#, k.display());
        let check = |extra: &str| {
            parse(&format!("{{{base}{extra}}}"))
                .unwrap()
                .validate(8)
                .map_err(|e| e.to_string())
        };
        assert!(check("").is_ok());
        assert!(
            check(r#", "vcpus": 0"#)
                .unwrap_err()
                .starts_with("config field vcpus:")
        );
        assert!(
            check(r#", "vcpus": 300"#)
                .unwrap_err()
                .contains("husk-vmm's limit of 254")
        );
        assert!(
            check(r#", "vcpus": 9"#)
                .unwrap_err()
                .contains("KVM's limit of 8")
        );
        assert!(
            check(r#", "memory_mib": 0"#)
                .unwrap_err()
                .starts_with("config field memory_mib")
        );
        assert!(
            check(r#", "memory_mib": 99999999"#)
                .unwrap_err()
                .contains("memory_mib")
        );
        assert!(
            check(r#", "initramfs": "/nonexistent/i""#)
                .unwrap_err()
                .contains("initramfs")
        );
        let long = "x".repeat(100);
        let e = check(&format!(r#", "vsock": {{"cid": 3, "uds": "/{long}"}}"#)).unwrap_err();
        assert!(e.starts_with("config field vsock.uds"), "{e}");
        let e = check(r#", "vsock": {"cid": 2, "uds": "/v"}"#).unwrap_err();
        assert!(e.starts_with("config field vsock.cid"), "{e}");
        let e = parse(r#"{"kernel": "/nonexistent/k"}"#)
            .unwrap()
            .validate(8)
            .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("config field kernel: /nonexistent/k"),
            "{e}"
        );
        let e = check(r#", "serial": {"file": "/c.log", "max_bytes": 10}"#).unwrap_err();
        assert!(e.starts_with("config field serial.max_bytes"), "{e}");
        let e = check(&format!(r#", "cmdline": "{}""#, "a".repeat(3000))).unwrap_err();
        assert!(e.starts_with("config field cmdline"), "{e}");
    }
}
