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

/// A virtio-net device on a tap: `{"tap": NAME}` (created or attached by husk-vmm) or
/// `{"fd": N}` (an open tap inherited from the runtime), exactly one of them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tap: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fd: Option<i32>,
    /// `aa:bb:cc:dd:ee:ff`; a random locally administered address when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// Offered to the guest (VIRTIO_NET_F_MTU), 68 to 65535.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
}

/// Smallest MTU an IPv4 host must accept (RFC 791).
pub const MIN_MTU: u32 = 68;
/// Longest interface name (IFNAMSIZ less its NUL).
pub const MAX_TAP_NAME: usize = 15;

/// Parses `aa:bb:cc:dd:ee:ff` (hex, either case); multicast addresses are refused, since
/// an interface cannot have one.
pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let bad = || format!("{s:?} is not a MAC address like aa:bb:cc:dd:ee:ff");
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        let p = parts.next().ok_or_else(bad)?;
        if p.len() != 2 {
            return Err(bad());
        }
        *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    if mac[0] & 1 != 0 {
        return Err(format!("{s} is a multicast address"));
    }
    Ok(mac)
}

impl NetConfig {
    /// The MAC address, if one is configured and valid.
    pub fn mac_bytes(&self) -> Option<[u8; 6]> {
        self.mac.as_deref().and_then(|m| parse_mac(m).ok())
    }

    /// Checks `net[i]`.
    fn validate(&self, i: usize) -> Result<(), ConfigError> {
        match (&self.tap, self.fd) {
            (Some(_), Some(_)) | (None, None) => {
                return Err(invalid(
                    format!("net[{i}]"),
                    r#"give exactly one of "tap" (a name) and "fd" (an inherited tap)"#,
                ));
            }
            (Some(name), None) => {
                if name.is_empty() || name.len() > MAX_TAP_NAME {
                    return Err(invalid(
                        format!("net[{i}].tap"),
                        format!("{name:?}: 1 to {MAX_TAP_NAME} bytes"),
                    ));
                }
                if name.contains(['/', '\0']) || name.chars().any(char::is_whitespace) {
                    return Err(invalid(
                        format!("net[{i}].tap"),
                        format!("{name:?} is not an interface name"),
                    ));
                }
            }
            (None, Some(fd)) => {
                if fd < 3 {
                    return Err(invalid(
                        format!("net[{i}].fd"),
                        format!("{fd} is standard input, output or error, or negative"),
                    ));
                }
            }
        }
        if let Some(m) = &self.mac {
            parse_mac(m).map_err(|e| invalid(format!("net[{i}].mac"), e))?;
        }
        if let Some(mtu) = self.mtu
            && !(MIN_MTU..=u32::from(u16::MAX)).contains(&mtu)
        {
            return Err(invalid(
                format!("net[{i}].mtu"),
                format!("{mtu} is outside {MIN_MTU}..=65535"),
            ));
        }
        Ok(())
    }
}

/// A virtio-fs share served by a vhost-user backend (virtiofsd).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsConfig {
    /// The name the guest mounts (`mount -t virtiofs TAG DIR`): 1 to 36 bytes, no NUL.
    pub tag: String,
    /// The backend's listening unix socket (virtiofsd `--socket-path`).
    pub socket: PathBuf,
}

/// Longest virtio-fs tag (virtio 1.2, 5.11.4).
pub const MAX_FS_TAG: usize = 36;

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
    pub net: Vec<NetConfig>,
    #[serde(default)]
    pub vsock: Option<VsockConfig>,
    #[serde(default)]
    pub rng: bool,
    /// virtio-fs shares; when any is given, guest memory is the shared memfd whatever
    /// `memory_shared` says (the backend maps it).
    #[serde(default)]
    pub fs: Vec<FsConfig>,

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
    /// A VM that boots `kernel` with every other field at its default (what a JSON file
    /// with only `kernel` gives); callers set the rest with struct update syntax, so
    /// that a new field does not break them.
    pub fn new(kernel: impl Into<PathBuf>) -> VmConfig {
        VmConfig {
            kernel: kernel.into(),
            initramfs: None,
            cmdline: String::new(),
            vcpus: default_vcpus(),
            memory_mib: default_memory_mib(),
            memory_shared: false,
            serial: SerialConfig::default(),
            block: Vec::new(),
            net: Vec::new(),
            fs: Vec::new(),
            vsock: None,
            rng: false,
            balloon: None,
            virtio_mmio_cmdline: false,
        }
    }

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
        for (i, n) in self.net.iter().enumerate() {
            n.validate(i)?;
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
        self.validate_fs()
    }

    fn validate_fs(&self) -> Result<(), ConfigError> {
        for (i, f) in self.fs.iter().enumerate() {
            let tag = f.tag.as_bytes();
            if tag.is_empty() || tag.len() > MAX_FS_TAG {
                return Err(invalid(
                    format!("fs[{i}].tag"),
                    format!(
                        "{:?} is {} bytes, 1 to {MAX_FS_TAG} allowed",
                        f.tag,
                        tag.len()
                    ),
                ));
            }
            if tag.contains(&0) {
                return Err(invalid(format!("fs[{i}].tag"), "contains a NUL byte"));
            }
            if self.fs[..i].iter().any(|o| o.tag == f.tag) {
                return Err(invalid(
                    format!("fs[{i}].tag"),
                    format!("{:?} is used by an earlier share", f.tag),
                ));
            }
            let len = f.socket.as_os_str().len();
            if len == 0 || len > MAX_SOCKET_PATH {
                return Err(invalid(
                    format!("fs[{i}].socket"),
                    format!(
                        "{} is {len} bytes, 1 to {MAX_SOCKET_PATH} fit in a unix socket address",
                        f.socket.display()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Whether guest memory must be the shared memfd: asked for, or needed by a
    /// vhost-user backend.
    pub fn shared_memory(&self) -> bool {
        self.memory_shared || !self.fs.is_empty()
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
#[path = "config_tests.rs"]
mod tests;
