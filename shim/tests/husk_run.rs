//! System test of the `husk` CLI in the lab (shim/tests/husk_run.sh drives it there):
//! exit codes, env, workdir, users, stdin, stdout/stderr apart, a real workload, an
//! OCI archive, an image pulled from a registry (on the host; run from the cache), `-t`, four VMs at once, `-d` with ps/exec/kill/logs/rm, clean-up after
//! every run and after `kill -9` of husk while its VM runs (no husk-vmm, folder,
//! temporary file, mount or loop device), Ctrl-C passed on, the image's default
//! command, `--rootfs`, storage (a 10 GiB sparse scratch disk by default: 300 MiB, or
//! HUSK_STORAGE_TEST_MIB, written in a 256 MiB VM, `df /` shows the disk, the image gone
//! after the run; `--storage tmpfs`; a full host disk under the scratch disk: the
//! container sees I/O errors and goes on, husk names the host's reason), memory returned by free page reporting after a
//! container frees 300 MiB, volumes (-v rw and :ro, a single file, --tmpfs,
//! --read-only; virtiofsd gone after), a stdout held open by a background process
//! (husk returns), control sequences stripped on a terminal, lo up in the container, readdir's d_ino equal to stat's st_ino
//! on lower and upper files (shim/tests/dino.c), and bad input (125; 127 for a command
//! not in the image; nothing left behind). Every run but the full-disk one is on the default
//! network (the lab's L1 loads the network modules at boot): no veth or IPAM lease is left
//! either.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use husk_tests::require_lab;

/// Pushes `layout` to a registry on this host, pulls it with `husk pull` into a state
/// folder of its own and converts it there (the lab cannot reach this host's registry,
/// and converting under TCG is slow): returns the configuration naming that folder and
/// the reference, for `husk run --pull never` in the lab.
fn registry_image(dir: &std::path::Path, layout: &std::path::Path) -> (PathBuf, String) {
    let reg = husk_tests::registry::Registry::start(dir);
    reg.push(layout, "busybox:latest");
    let reference = format!("{}/busybox:latest", reg.host());
    let state = dir.join("registry-state");
    let config = dir.join("registry.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{}\"\n[registry]\ninsecure = [\"{}\"]\n",
            state.display(),
            reg.host()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_husk"))
        .arg("--config")
        .arg(&config)
        .args(["pull", "-q", &reference])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "husk pull {reference}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let image = husk::image::ImageRef::parse(&reference).unwrap();
    husk::image::prepare(&image, &state, dir, &|_| {})
        .unwrap_or_else(|e| panic!("converting {reference}: {e}"));
    (config, reference)
}

#[test]
fn husk_cli_in_the_lab() {
    let lab = require_lab!();
    let guest = husk_tests::repo_root().join("build/guest");
    assert!(
        guest.join("initramfs.img").is_file(),
        "no guest image: run `make guest-image` (make test does)"
    );
    husk_tests::ensure_husk_vmm(std::path::Path::new(env!("CARGO_BIN_EXE_husk")));
    let scratch = husk_tests::scratch_dir();
    let (img, archive) = (
        scratch.path().join("busybox"),
        scratch.path().join("busybox.tar"),
    );
    husk_tests::busybox_oci(&img, Some(&archive));
    let rootfs = scratch.path().join("rootfs");
    husk_tests::agent::busybox_rootfs(&rootfs);
    // dino: readdir's d_ino against lstat's st_ino (busybox's ls -i stats every entry).
    let dino = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/dino.c");
    let st = std::process::Command::new("cc")
        .args(["-static", "-O2", "-o"])
        .arg(rootfs.join("bin/dino"))
        .arg(&dino)
        .status()
        .expect("cc (a C compiler with a static libc) builds tests/dino.c");
    assert!(st.success(), "cc -static tests/dino.c: {st}");
    let (regcfg, regref) = registry_image(scratch.path(), &img);
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/husk_run.sh");
    // What the storage case writes into its 256 MiB VM (HUSK_STORAGE_TEST_MIB=2048 as
    // the issue asks; CI writes 300, the lab's disk I/O being slow). The scratch image
    // lives on the L1's tmpfs, so the L1 gets that much more memory.
    let storage_mib: u32 = std::env::var("HUSK_STORAGE_TEST_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    // Room for four guests at once. One L1 vCPU, as everywhere in the lab: with two,
    // the emulated L1 stalls under load (lab.md), seen here as a `husk` call that never
    // returned and an L2 guest dying of a triple fault early in its boot.
    let r = lab
        .mem_mib(3072 + storage_mib)
        .timeout(Duration::from_secs(2100 + u64::from(storage_mib)))
        .env("HUSK_GUEST_DIR", &guest.display().to_string())
        .env("HUSK_STORAGE_TEST_MIB", &storage_mib.to_string())
        .run(&[
            script.display().to_string(),
            env!("CARGO_BIN_EXE_husk").to_string(),
            img.display().to_string(),
            archive.display().to_string(),
            rootfs.display().to_string(),
            regcfg.display().to_string(),
            regref,
        ])
        .unwrap();
    // The measurements, in the test's output also when it passes.
    for l in r.stderr.lines() {
        if l.starts_with("storage: ")
            || l.starts_with("memory: ")
            || l.contains("timings:")
            || l.starts_with("case ")
        {
            eprintln!("{l}");
        }
    }
    let all = format!("--- stdout\n{}\n--- stderr\n{}", r.stdout, r.stderr);
    assert_eq!(r.code, Some(0), "{all}");
    let cases: HashMap<&str, &str> = r
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("CASE "))
        .filter_map(|l| l.split_once(' '))
        .collect();
    let check = |k: &str, want: &str| {
        assert_eq!(cases.get(k).copied(), Some(want), "case {k}\n{all}");
    };
    check("exit3", "3");
    check("envwd", "hi_/tmp/made/by/husk"); // a missing workdir is made, as by runc
    check("envfile_entrypoint", "file_value/flag");
    check("user", "1000");
    check("usernum", "uid=1234_gid=55");
    check("stdin", "piped");
    check("split", "out/err");
    check(
        "workload",
        cases.get("workload_host").copied().unwrap_or("?"),
    );
    check("archive", "from-archive");
    check("default_cmd", "default-cmd");
    check("rootfs", "from-rootfs_alice");
    check("tty", "/dev/pts/0_both-terminals_xterm");
    check("sigint", "42");
    check("storage_disk_rc", "0");
    check("lo_up", "lo=0x9"); // IFF_UP | IFF_LOOPBACK
    check("dd_disk", "dd-ok");
    check("df_disk", "disk");
    check(
        "ino_disk",
        "etc:same,upper.txt:same,newdir:same,bin:same,passwd:same,group:same,f:same,",
    );
    check("storage_tmpfs", "lo=0x9_ram_t:same_etc:same_bin:same");
    // A full disk on the host under the container's scratch disk.
    check("full_disk", "3_dd-failed_alive_1_0");
    check("scratch_file", "10737418240_sparse");
    check("memory_back", "back");
    check("stdout_held", "bg_4_bounded");
    check("sanitized", "abc\\n");
    check("volumes", "host-file_ro-refused_single_tmpfs-ok_root-ro");
    check("volume_on_host", "from-guest");
    check("virtiofsd_left", "0");
    check("bad_volume", "125");
    check("bad_volume_msg", "1");
    check("parallel", "vm1,vm2,vm3,vm4,");
    check("cache", ".erofs,.json,.lock,");
    check("detach_name", "web");
    check("ps_running", "running");
    assert!(
        cases
            .get("exec")
            .is_some_and(|v| v.starts_with("sleep 600")),
        "exec\n{all}"
    );
    check("rm_running", "125");
    check("ps_after_term", "running");
    check("ps_exited", "exited(137)");
    check("logs", "started");
    check("rm", "0");
    for k in [
        "bad_image",
        "bad_archive",
        "bad_memory",
        "bad_name",
        "bad_tag",
        "bad_storage_size",
        "bad_storage",
    ] {
        check(k, "125");
    }
    check("bad_cmd", "127");
    for k in [
        "after_foreground",
        "after_parallel",
        "after_detached",
        "after_kill9",
        "after_memory",
        "after_volumes",
        "after_bad",
    ] {
        check(
            k,
            "procs=0 dirs=0 tmp=0 mounts=0 loops=0 scratch=0 veth=0 leases=0",
        );
    }
}
