//! Helpers for husk's system tests: running commands in the lab (`tests/lab/run`), which
//! gives a Linux whose `/dev/kvm` boots stock guest kernels on any host, and building the
//! small guests the tests boot.
//!
//! A system test starts with [`require_lab!`]: where the lab cannot run, the test says
//! so on stderr and returns, unless `HUSK_REQUIRE_LAB=1` (set by `make test`), where it
//! fails instead. A test never passes without having run.

pub mod agent;
pub mod cri;
pub mod guest;
pub mod lab;
pub mod registry;

use std::path::PathBuf;

/// The repository's root folder.
pub fn repo_root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(PathBuf::from).unwrap_or(here)
}

/// A fresh temporary folder under `build/tmp/` of the repository, removed on drop.
/// The lab sees the host's root read-only, `/tmp` included, so files here are visible
/// inside it at the same path.
pub fn scratch_dir() -> tempfile::TempDir {
    let base = repo_root().join("build/tmp");
    if let Err(e) = std::fs::create_dir_all(&base) {
        panic!("cannot create {}: {e}", base.display());
    }
    match tempfile::Builder::new().prefix("test-").tempdir_in(&base) {
        Ok(d) => d,
        Err(e) => panic!("cannot create a folder in {}: {e}", base.display()),
    }
}

/// Whether `test` can run on this host: false, after saying on stderr why it is
/// skipped, when one of `tools` is not on PATH (`make setup` installs them); under
/// `HUSK_REQUIRE_LAB` a missing tool fails the test instead.
pub fn tools_present(test: &str, tools: &[&str]) -> bool {
    let missing = tools.iter().find(|t| {
        std::process::Command::new("sh")
            .args(["-c", &format!("command -v {t}")])
            .stdout(std::process::Stdio::null())
            .status()
            .map(|s| !s.success())
            .unwrap_or(true)
    });
    let Some(t) = missing else {
        return true;
    };
    assert!(
        std::env::var_os("HUSK_REQUIRE_LAB").is_none(),
        "{t} is missing (make setup installs it)"
    );
    eprintln!("SKIPPED {test}: {t} is missing (make setup)");
    false
}

/// Builds `husk-vmm` (debug) unless it is already beside `bin`, a binary of the same
/// build (`husk` finds its VMM there). Panics with cargo's failure.
pub fn ensure_husk_vmm(bin: &std::path::Path) {
    ensure_bin(
        bin.parent().unwrap_or(std::path::Path::new(".")),
        "husk-vmm",
        "husk-vmm",
    );
}

/// Builds binary `bin` of package `package` (into cargo's target folder) when `dir`
/// has no such file: a test of one package that runs another's binary.
pub fn ensure_bin(dir: &std::path::Path, package: &str, bin: &str) {
    if dir.join(bin).is_file() {
        return;
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    match std::process::Command::new(cargo)
        .args(["build", "-q", "-p", package, "--bin", bin])
        .status()
    {
        Ok(st) if st.success() => {}
        other => panic!("cargo build -p {package} --bin {bin} failed: {other:?}"),
    }
}

/// Builds the busybox OCI image layout (tests/images/busybox-oci, tag `latest`) at
/// `layout`, and a tar of it at `archive` when given. Panics when the script fails.
pub fn busybox_oci(layout: &std::path::Path, archive: Option<&std::path::Path>) {
    let mut cmd = std::process::Command::new(repo_root().join("tests/images/busybox-oci"));
    cmd.arg(layout).stdout(std::process::Stdio::null());
    if let Some(a) = archive {
        cmd.env("HUSK_OCI_ARCHIVE", a);
    }
    match cmd.status() {
        Ok(st) if st.success() => {}
        other => panic!("tests/images/busybox-oci {}: {other:?}", layout.display()),
    }
}

/// What a `husk run` system test starts from: the guest image (`build/guest`, checked),
/// husk-vmm next to the test's `husk` (built when missing), and a scratch folder with a
/// busybox OCI layout in it.
#[derive(Debug)]
pub struct CliFixture {
    pub guest: PathBuf,
    pub scratch: tempfile::TempDir,
    /// The busybox OCI layout (`oci:<image>`).
    pub image: PathBuf,
}

/// Prepares a [`CliFixture`] for the `husk` binary at `husk`.
pub fn cli_fixture(husk: &std::path::Path) -> CliFixture {
    let guest = repo_root().join("build/guest");
    assert!(
        guest.join("initramfs.img").is_file(),
        "no guest image in {}: run `make guest-image` (make test does)",
        guest.display()
    );
    ensure_husk_vmm(husk);
    let scratch = scratch_dir();
    let image = scratch.path().join("busybox");
    busybox_oci(&image, None);
    CliFixture {
        guest,
        scratch,
        image,
    }
}
