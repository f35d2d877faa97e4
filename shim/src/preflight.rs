//! Checks made before a run that this host can boot the guest at all, so that a run
//! that cannot work says so at once instead of after a minute of emulation.
//!
//! Today one case: KVM provided by `kvm_pvm` (lab.md, "KVM here is PVM") runs only
//! PVM-enabled guest kernels; the guest image's stock Debian kernel spins in its
//! decompressor for about a minute and dies with "KVM internal error". `husk check`
//! reports the same from husk-vmm's host probe. A kernel set in `vm.kernel` is trusted
//! (it may be a PVM-enabled one).

use std::path::Path;

use husk_vmm::host::KvmBackend;

use crate::config::Config;

/// Why this host cannot run the guest.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error(
        "this host's KVM is kvm_pvm, which boots only PVM-enabled guest kernels: the guest \
         image's stock kernel would not boot here (husk check shows why). Run husk inside the \
         lab (tests/lab/run -- husk run ..., or `make demo`), or set vm.kernel in the \
         configuration (--config, default /etc/husk/config.toml) to a PVM-enabled guest kernel"
    )]
    PvmHost,
}

/// Checks this host (its `/sys/module`) against the configuration.
pub fn check(config: &Config) -> Result<(), PreflightError> {
    check_at(config, Path::new("/sys/module"))
}

/// [`check`] with the module folders read under `sys_module` (tests use a fake one).
pub fn check_at(config: &Config, sys_module: &Path) -> Result<(), PreflightError> {
    let backend = KvmBackend::detect(sys_module);
    if backend == KvmBackend::KvmPvm && config.vm.kernel.is_none() {
        tracing::warn!(?backend, "the guest kernel cannot boot on this host");
        return Err(PreflightError::PvmHost);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pvm_hosts_need_a_kernel_of_their_own() {
        let d = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        std::fs::create_dir_all(d.path().join("kvm_amd")).unwrap();
        assert!(check_at(&config, d.path()).is_ok());
        std::fs::create_dir_all(d.path().join("kvm_pvm")).unwrap();
        let e = check_at(&config, d.path()).unwrap_err().to_string();
        assert!(e.contains("kvm_pvm") && e.contains("tests/lab/run") && e.contains("vm.kernel"));
        config.vm.kernel = Some("/boot/vmlinuz-pvm".into());
        assert!(
            check_at(&config, d.path()).is_ok(),
            "a configured kernel is trusted"
        );
    }
}
