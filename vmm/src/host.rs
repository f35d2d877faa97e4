//! What this host offers a VMM: the KVM API and its backend, vhost devices, tun, and
//! what virtio-fs needs (memfd for shareable guest memory, a virtiofsd to serve it).
//!
//! The backend matters: `kvm_pvm` (pvm.ko) runs only PVM-enabled guest kernels, so a stock
//! distribution kernel will not boot on it; `kvm_intel`/`kvm_amd` run any x86_64 kernel.
//! The backend is read from `/sys/module`, where each loaded module has a folder.

use std::path::{Path, PathBuf};

use kvm_ioctls::{Cap, Kvm};
use serde::Serialize;

/// Which kernel module provides `/dev/kvm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KvmBackend {
    /// Intel VMX.
    KvmIntel,
    /// AMD SVM.
    KvmAmd,
    /// Pagetable-based virtual machine: boots PVM-enabled guest kernels only.
    KvmPvm,
    /// `/dev/kvm` exists but none of the modules above is loaded (built in, or another).
    Unknown,
}

impl KvmBackend {
    /// Whether ordinary (non-PVM) guest kernels boot on this backend.
    pub fn boots_stock_kernels(self) -> bool {
        matches!(self, KvmBackend::KvmIntel | KvmBackend::KvmAmd)
    }

    /// Reads the backend from the module folders under `sys_module` (`/sys/module`).
    /// PVM wins when several are loaded: its presence means the host is itself a PVM
    /// guest or has chosen PVM.
    pub fn detect(sys_module: &Path) -> KvmBackend {
        let loaded = |m: &str| sys_module.join(m).is_dir();
        if loaded("kvm_pvm") {
            KvmBackend::KvmPvm
        } else if loaded("kvm_intel") {
            KvmBackend::KvmIntel
        } else if loaded("kvm_amd") {
            KvmBackend::KvmAmd
        } else {
            KvmBackend::Unknown
        }
    }
}

/// The KVM part of the report: present only when `/dev/kvm` opened.
#[derive(Debug, Clone, Serialize)]
pub struct KvmReport {
    /// `KVM_GET_API_VERSION`; 12 on every Linux since 2.6.22.
    pub api_version: i32,
    pub backend: KvmBackend,
    /// `KVM_CAP_NR_VCPUS`: the recommended vCPU count per VM.
    pub recommended_vcpus: usize,
    /// `KVM_CAP_MAX_VCPUS`: the most vCPUs a VM may have.
    pub max_vcpus: usize,
    /// The capabilities husk-vmm relies on, each as (name, present).
    pub capabilities: Vec<(String, bool)>,
}

/// Everything `husk-vmm check` prints.
#[derive(Debug, Clone, Serialize)]
pub struct HostReport {
    /// `Err(text)` says why `/dev/kvm` could not be used.
    pub kvm: Result<KvmReport, String>,
    pub vhost_vsock: bool,
    pub vhost_net: bool,
    pub tun: bool,
    /// memfd_create works: guest memory can be shared with a vhost-user backend.
    pub memfd: bool,
    /// A virtiofsd binary found in the usual places or on PATH.
    pub virtiofsd: Option<PathBuf>,
}

/// Where distributions install virtiofsd (Debian, Fedora, the old QEMU one) besides PATH.
const VIRTIOFSD_PLACES: &[&str] = &[
    "usr/libexec/virtiofsd",
    "usr/lib/qemu/virtiofsd",
    "usr/local/bin/virtiofsd",
    "usr/bin/virtiofsd",
];

/// The first virtiofsd in the usual places under `root`, then on PATH (when `root` is `/`).
pub fn find_virtiofsd(root: &Path) -> Option<PathBuf> {
    let fixed = VIRTIOFSD_PLACES.iter().map(|p| root.join(p));
    let on_path: Vec<PathBuf> = if root == Path::new("/") {
        std::env::var_os("PATH")
            .map(|p| {
                std::env::split_paths(&p)
                    .map(|d| d.join("virtiofsd"))
                    .collect()
            })
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    fixed.chain(on_path).find(|p| p.is_file())
}

fn memfd_works() -> bool {
    // SAFETY: the name is a valid NUL-terminated string; memfd_create returns a new fd
    // or -1 and touches no memory of ours.
    let fd = unsafe { libc::memfd_create(c"husk-check".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return false;
    }
    // SAFETY: `fd` was just returned by memfd_create and is closed once, here.
    unsafe { libc::close(fd) };
    true
}

/// The KVM capabilities the VMM's design uses (irqfd and ioeventfd for virtio-mmio, the
/// in-kernel irqchip and PIT, user memory regions, TSC control).
const NEEDED_CAPS: &[(&str, Cap)] = &[
    ("irqchip", Cap::Irqchip),
    ("irqfd", Cap::Irqfd),
    ("ioeventfd", Cap::Ioeventfd),
    ("user_memory", Cap::UserMemory),
    ("set_tss_addr", Cap::SetTssAddr),
    ("pit2", Cap::Pit2),
    ("ext_cpuid", Cap::ExtCpuid),
];

impl HostReport {
    /// Probes this host: opens `/dev/kvm`, reads `/sys/module`, looks for the device nodes.
    pub fn probe() -> HostReport {
        HostReport::probe_at(Path::new("/"))
    }

    /// Probes with `/sys/module` and `/dev` taken under `root` (tests use a fake tree);
    /// KVM itself is only opened when `root` is `/`.
    pub fn probe_at(root: &Path) -> HostReport {
        let p = |rel: &str| -> PathBuf { root.join(rel) };
        let backend = KvmBackend::detect(&p("sys/module"));
        let kvm = if root == Path::new("/") {
            probe_kvm(backend)
        } else if p("dev/kvm").exists() {
            Err("not opened (probe of a fake root)".to_string())
        } else {
            Err("/dev/kvm does not exist".to_string())
        };
        HostReport {
            kvm,
            vhost_vsock: p("dev/vhost-vsock").exists(),
            vhost_net: p("dev/vhost-net").exists(),
            tun: p("dev/net/tun").exists(),
            memfd: memfd_works(),
            virtiofsd: find_virtiofsd(root),
        }
    }

    /// Whether this host can boot a stock distribution kernel with husk-vmm.
    pub fn boots_stock_kernels(&self) -> bool {
        self.kvm
            .as_ref()
            .is_ok_and(|k| k.backend.boots_stock_kernels())
    }

    /// The report as the lines `husk-vmm check` prints.
    pub fn to_text(&self) -> String {
        let yes_no = |b: bool| if b { "yes" } else { "no" };
        let mut s = String::new();
        match &self.kvm {
            Ok(k) => {
                s += &format!("kvm: api version {}\n", k.api_version);
                s += &format!("kvm backend: {}\n", backend_text(k.backend));
                s += &format!(
                    "kvm vcpus: {} recommended, {} at most\n",
                    k.recommended_vcpus, k.max_vcpus
                );
                for (name, present) in &k.capabilities {
                    s += &format!("kvm capability {name}: {}\n", yes_no(*present));
                }
            }
            Err(e) => s += &format!("kvm: unavailable: {e}\n"),
        }
        s += &format!("vhost-vsock: {}\n", yes_no(self.vhost_vsock));
        s += &format!("vhost-net: {}\n", yes_no(self.vhost_net));
        s += &format!("tun: {}\n", yes_no(self.tun));
        s += &format!(
            "vhost-user-fs: memfd {}, virtiofsd {}\n",
            yes_no(self.memfd),
            self.virtiofsd
                .as_ref()
                .map_or("not found".to_string(), |p| p.display().to_string())
        );
        s += &format!(
            "boots stock guest kernels: {}\n",
            yes_no(self.boots_stock_kernels())
        );
        s
    }
}

fn backend_text(b: KvmBackend) -> &'static str {
    match b {
        KvmBackend::KvmIntel => "kvm_intel (hardware VMX)",
        KvmBackend::KvmAmd => "kvm_amd (hardware SVM)",
        KvmBackend::KvmPvm => {
            "kvm_pvm (runs PVM-enabled guest kernels only; use tests/lab/run for stock kernels)"
        }
        KvmBackend::Unknown => "unknown (no kvm_intel, kvm_amd or kvm_pvm module loaded)",
    }
}

fn probe_kvm(backend: KvmBackend) -> Result<KvmReport, String> {
    let kvm = Kvm::new().map_err(|e| format!("cannot open /dev/kvm: {e}"))?;
    let capabilities = NEEDED_CAPS
        .iter()
        .map(|(name, cap)| ((*name).to_string(), kvm.check_extension(*cap)))
        .collect();
    Ok(KvmReport {
        api_version: kvm.get_api_version(),
        backend,
        recommended_vcpus: kvm.get_nr_vcpus(),
        max_vcpus: kvm.get_max_vcpus(),
        capabilities,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn fake_root(modules: &[&str], devs: &[&str]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for m in modules {
            fs::create_dir_all(d.path().join("sys/module").join(m)).unwrap();
        }
        for dev in devs {
            let p = d.path().join(dev);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, b"").unwrap();
        }
        d
    }

    #[test]
    fn pvm_wins_over_hardware_backends() {
        let d = fake_root(&["kvm", "kvm_pvm", "kvm_intel"], &[]);
        assert_eq!(
            KvmBackend::detect(&d.path().join("sys/module")),
            KvmBackend::KvmPvm
        );
        assert!(!KvmBackend::KvmPvm.boots_stock_kernels());
    }

    #[test]
    fn hardware_backends_are_detected() {
        let d = fake_root(&["kvm", "kvm_amd"], &[]);
        assert_eq!(
            KvmBackend::detect(&d.path().join("sys/module")),
            KvmBackend::KvmAmd
        );
        let d = fake_root(&["kvm", "kvm_intel"], &[]);
        assert_eq!(
            KvmBackend::detect(&d.path().join("sys/module")),
            KvmBackend::KvmIntel
        );
        let d = fake_root(&["kvm"], &[]);
        assert_eq!(
            KvmBackend::detect(&d.path().join("sys/module")),
            KvmBackend::Unknown
        );
    }

    #[test]
    fn device_nodes_are_reported() {
        let d = fake_root(&["kvm_amd"], &["dev/net/tun", "dev/vhost-vsock"]);
        let r = HostReport::probe_at(d.path());
        assert!(r.tun && r.vhost_vsock && !r.vhost_net);
        assert!(r.memfd && r.virtiofsd.is_none());
        assert!(r.to_text().contains("virtiofsd not found"));
        let d = fake_root(&[], &["usr/libexec/virtiofsd"]);
        let r = HostReport::probe_at(d.path());
        assert_eq!(r.virtiofsd, Some(d.path().join("usr/libexec/virtiofsd")));
        assert_eq!(r.kvm.as_ref().unwrap_err(), "/dev/kvm does not exist");
        assert!(r.to_text().contains("boots stock guest kernels: no"));
    }

    #[test]
    fn the_real_host_report_is_consistent() {
        // Runs anywhere: where /dev/kvm is missing, the report must say why.
        let r = HostReport::probe();
        match &r.kvm {
            Ok(k) => {
                assert_eq!(k.api_version, 12, "KVM's stable API version is 12");
                assert!(k.max_vcpus >= k.recommended_vcpus);
            }
            Err(e) => assert!(!e.is_empty()),
        }
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains("\"tun\""));
    }
}
