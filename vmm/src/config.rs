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
        assert_eq!(c, VmConfig::new("/k"));
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
    fn net_devices_parse_validate_and_serialise() {
        let c = parse(
            r#"{"kernel": "/k", "net": [{"tap": "tap0", "mac": "02:aa:bb:cc:dd:0E",
                "mtu": 9000}, {"fd": 7}]}"#,
        )
        .unwrap();
        assert_eq!(c.net.len(), 2);
        assert_eq!(
            c.net[0].mac_bytes(),
            Some([2, 0xaa, 0xbb, 0xcc, 0xdd, 0x0e])
        );
        assert_eq!(c.net[1].fd, Some(7));
        for (i, n) in c.net.iter().enumerate() {
            n.validate(i).unwrap();
            let back: NetConfig = serde_json::from_value(serde_json::to_value(n).unwrap()).unwrap();
            assert_eq!(&back, n);
        }
        let j = serde_json::to_string(&c.net[1]).unwrap();
        assert_eq!(j, r#"{"fd":7}"#);
        let e = parse(r#"{"kernel": "/k", "net": [{"tap": "t", "ip": "1.2.3.4"}]}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `ip`"), "{e}");
        let check = |json: &str| {
            let n: NetConfig = serde_json::from_str(json).unwrap();
            n.validate(1).unwrap_err().to_string()
        };
        let e = check(r#"{}"#);
        assert!(e.starts_with("config field net[1]:"), "{e}");
        let e = check(r#"{"tap": "t", "fd": 4}"#);
        assert!(e.starts_with("config field net[1]:"), "{e}");
        let e = check(r#"{"tap": "a-name-far-too-long"}"#);
        assert!(e.starts_with("config field net[1].tap:"), "{e}");
        let e = check(r#"{"tap": "a/b"}"#);
        assert!(e.starts_with("config field net[1].tap:"), "{e}");
        let e = check(r#"{"fd": 1}"#);
        assert!(e.starts_with("config field net[1].fd:"), "{e}");
        for bad in [
            "02:aa:bb:cc:dd",
            "02:aa:bb:cc:dd:ee:ff",
            "0g:aa:bb:cc:dd:ee",
            "2:aa:bb:cc:dd:eee",
            "03:00:00:00:00:01",
        ] {
            let e = check(&format!(r#"{{"tap": "t", "mac": "{bad}"}}"#));
            assert!(e.starts_with("config field net[1].mac:"), "{bad}: {e}");
        }
        for bad in [0u32, 67, 65536, 4_000_000_000] {
            let e = check(&format!(r#"{{"tap": "t", "mtu": {bad}}}"#));
            assert!(e.starts_with("config field net[1].mtu:"), "{bad}: {e}");
        }
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

    #[test]
    fn fs_shares_parse_and_round_trip() {
        let c = parse(r#"{"kernel": "/k", "fs": [{"tag": "share", "socket": "/run/vfs.sock"}]}"#)
            .unwrap();
        assert_eq!(c.fs[0].tag, "share");
        assert!(c.shared_memory() && !c.memory_shared);
        let json = serde_json::to_string(&c.fs[0]).unwrap();
        let back: FsConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back, c.fs[0]);
        assert!(!parse(r#"{"kernel": "/k"}"#).unwrap().shared_memory());
        let e = parse(r#"{"kernel": "/k", "fs": [{"tag": "a", "path": "/s"}]}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `path`"), "{e}");
    }

    #[test]
    fn fs_validation_names_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let k = dir.path().join("k");
        std::fs::write(&k, b"x").unwrap();
        let check = |fs: &str| {
            parse(&format!(r#"{{"kernel": "{}", "fs": {fs}}}"#, k.display()))
                .unwrap()
                .validate(8)
                .map_err(|e| e.to_string())
        };
        assert!(check(r#"[{"tag": "a", "socket": "/s"}]"#).is_ok());
        let t36 = "t".repeat(36);
        assert!(check(&format!(r#"[{{"tag": "{t36}", "socket": "/s"}}]"#)).is_ok());
        let e = check(r#"[{"tag": "", "socket": "/s"}]"#).unwrap_err();
        assert!(e.starts_with("config field fs[0].tag"), "{e}");
        let e = check(&format!(r#"[{{"tag": "{t36}x", "socket": "/s"}}]"#)).unwrap_err();
        assert!(e.starts_with("config field fs[0].tag"), "{e}");
        let e = check(r#"[{"tag": "a", "socket": "/s"}, {"tag": "a\u0000", "socket": "/s"}]"#)
            .unwrap_err();
        assert!(
            e.starts_with("config field fs[1].tag: contains a NUL"),
            "{e}"
        );
        let e =
            check(r#"[{"tag": "a", "socket": "/s"}, {"tag": "a", "socket": "/t"}]"#).unwrap_err();
        assert!(e.starts_with("config field fs[1].tag"), "{e}");
        let long = "s".repeat(107);
        let e = check(&format!(r#"[{{"tag": "a", "socket": "/{long}"}}]"#)).unwrap_err();
        assert!(e.starts_with("config field fs[0].socket"), "{e}");
        let e = check(r#"[{"tag": "a", "socket": ""}]"#).unwrap_err();
        assert!(e.starts_with("config field fs[0].socket"), "{e}");
    }
}
