//! husk-vmm's jail (shim/src/jail/) on a process of the test's own, no VM: this test
//! binary is exec'd through the same code path as husk-vmm (`Jail::prepare`, `apply`,
//! the spawner) and, inside, reports what it sees and may do (the `jail_probe` helper).
//! The jail needs cgroup v2 with the memory and pids controllers: where this host lacks
//! them (a v1 host: this project's machines), the test runs itself inside the lab,
//! whose L1 mounts cgroup2 at /sys/fs/cgroup. Needs root.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use husk::config::JailSettings;
use husk::jail::{Files, Jail, JailSpec};

const PROBE_ENV: &str = "HUSK_JAIL_PROBE";

/// Whether this host's cgroup v2 offers what the jail needs.
fn host_has_cgroup2_controllers() -> Result<(), String> {
    let mount = husk::jail::cgroup::find_mount().map_err(|e| e.to_string())?;
    let c = std::fs::read_to_string(mount.join("cgroup.controllers")).unwrap_or_default();
    for want in ["memory", "pids"] {
        if !c.split_whitespace().any(|x| x == want) {
            return Err(format!(
                "{}/cgroup.controllers has no {want} ({:?})",
                mount.display(),
                c.trim()
            ));
        }
    }
    Ok(())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn jail_confines_a_process() {
    if !is_root() {
        if std::env::var("HUSK_REQUIRE_LAB").is_ok_and(|v| v == "1") {
            panic!("jail_confines_a_process needs root");
        }
        eprintln!("SKIPPED jail_confines_a_process: needs root (mounts, namespaces, cgroups)");
        return;
    }
    match host_has_cgroup2_controllers() {
        Ok(()) => confine(),
        Err(why) => {
            eprintln!("jail_confines_a_process: not on this host ({why}): in the lab");
            let lab = husk_tests::require_lab!();
            let t0 = Instant::now();
            let r = lab
                .timeout(Duration::from_secs(300))
                .run_test("jail_confines_a_process_inside")
                .unwrap();
            eprintln!(
                "--- lab ({:.1} s)\n{}\n{}",
                t0.elapsed().as_secs_f64(),
                r.stdout,
                r.stderr
            );
            assert_eq!(r.code, Some(0), "the jail test failed inside the lab");
            assert!(
                r.stdout.contains("JAIL-OK") || r.stderr.contains("JAIL-OK"),
                "the inner test did not report JAIL-OK"
            );
        }
    }
}

#[test]
#[ignore = "run inside the lab by jail_confines_a_process"]
fn jail_confines_a_process_inside() {
    assert!(
        husk_tests::lab::inside(),
        "only meant to run inside the lab"
    );
    confine();
}

/// The mounts of this (the host's) namespace below `dir`.
fn mounts_under(dir: &Path) -> Vec<String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let d = dir.display().to_string();
    text.lines()
        .filter(|l| {
            l.split_whitespace()
                .nth(4)
                .is_some_and(|m| m.starts_with(&d))
        })
        .map(str::to_string)
        .collect()
}

fn wait_for(path: &Path, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{what}: {} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn probe_command(jail: &Jail, vm_dir: &Path, out: &Path, args: &str) -> Command {
    let mut cmd = Command::new(&jail.vmm);
    cmd.args([
        "--exact",
        "jail_probe",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(PROBE_ENV, format!("{}|{args}", vm_dir.display()))
    .stdin(Stdio::null())
    .stdout(std::fs::File::create(out).unwrap())
    .stderr(std::fs::File::create(out.with_extension("err")).unwrap());
    cmd
}

fn confine() {
    let t0 = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let vm_dir = tmp.path().join("vm");
    std::fs::create_dir(&vm_dir).unwrap();
    let run_dir = tmp.path().join("run");
    // A kernel-like input readable by root only (the image cache's erofs files are
    // 0600), and a writable disk.
    let kernel = tmp.path().join("kernel");
    std::fs::write(&kernel, "kernel bytes").unwrap();
    std::fs::set_permissions(&kernel, std::fs::Permissions::from_mode(0o600)).unwrap();
    let disk = tmp.path().join("disk.img");
    std::fs::write(&disk, "disk").unwrap();
    let settings = JailSettings {
        cgroup_parent: "husk-test".into(),
        ..JailSettings::default()
    };
    let spec = JailSpec {
        settings: settings.clone(),
        run_dir: run_dir.clone(),
    };
    let exe = std::env::current_exe().unwrap();
    let files = Files {
        vm_dir: &vm_dir,
        vmm: &exe,
        read_only: vec![&kernel],
        writable: vec![&disk],
        memory_mib: 64,
    };
    let jail = Jail::prepare(&spec, &files).unwrap();
    let uid = jail.uid();
    let cg = jail.cgroup.clone().unwrap();
    assert!(
        (settings.uid_base..settings.uid_base + settings.uid_count).contains(&uid),
        "uid {uid} outside the range"
    );
    let out = tmp.path().join("probe.out");
    let mut cmd = probe_command(
        &jail,
        &vm_dir,
        &out,
        &format!("{}|{}", kernel.display(), disk.display()),
    );
    jail.apply(&mut cmd).unwrap();
    let mut child = husk::spawner::spawn(cmd).unwrap();
    wait_for(&vm_dir.join("ready"), "the probe");

    // While it runs: the keeper and the probe are in the cgroup, with its limits.
    let procs = std::fs::read_to_string(cg.join("cgroup.procs")).unwrap();
    let pids: Vec<&str> = procs.split_whitespace().collect();
    assert_eq!(
        pids.len(),
        2,
        "{}: keeper and probe expected, got {procs:?}",
        cg.display()
    );
    assert!(
        pids.contains(&child.id().to_string().as_str()),
        "the keeper is not in {}",
        cg.display()
    );
    let mem = std::fs::read_to_string(cg.join("memory.max")).unwrap();
    assert_eq!(
        mem.trim(),
        husk::jail::memory_max(&files, 256).to_string(),
        "{}/memory.max",
        cg.display()
    );
    let pmax = std::fs::read_to_string(cg.join("pids.max")).unwrap();
    assert_eq!(pmax.trim(), "256", "{}/pids.max", cg.display());
    let comm = std::fs::read_to_string(format!("/proc/{}/comm", child.id())).unwrap();
    assert_eq!(comm.trim(), "husk-jail", "the keeper's name");
    // None of the jail's mounts is in the host's namespace.
    assert_eq!(
        mounts_under(tmp.path()),
        Vec::<String>::new(),
        "jail mounts leaked to the host"
    );
    std::fs::write(vm_dir.join("go"), "").unwrap();
    let st = child.wait().unwrap();
    let report = std::fs::read_to_string(&out).unwrap();
    let errs = std::fs::read_to_string(out.with_extension("err")).unwrap_or_default();
    assert!(st.success(), "the probe failed ({st}):\n{report}\n{errs}");
    eprintln!("--- probe\n{report}");
    let get = |key: &str| {
        report
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("the probe did not report {key}:\n{report}\n{errs}"))
            .to_string()
    };
    assert_eq!(
        get("uid"),
        format!("{uid} {uid} {uid}"),
        "real, effective, saved uid"
    );
    assert_eq!(
        get("gid"),
        format!("{uid} {uid} {uid}"),
        "real, effective, saved gid"
    );
    assert_eq!(
        get("groups"),
        (settings.uid_base - 1).to_string(),
        "supplementary groups"
    );
    assert_eq!(
        get("pid"),
        "1",
        "husk-vmm's place: PID 1 of a new pid namespace"
    );
    assert_eq!(get("cap_eff_prm_inh"), "0 0 0", "capabilities");
    assert_eq!(get("cap_bnd"), "0", "capabilities left in the bounding set");
    assert_eq!(get("no_new_privs"), "1");
    assert_eq!(get("kvm"), "rw", "/dev/kvm for the VM's uid");
    assert_eq!(get("kernel"), "read, write refused", "the read-only input");
    assert_eq!(get("disk"), "read-write", "the writable disk");
    assert_eq!(
        get("vm_dir_file"),
        "created",
        "the sandbox folder is writable"
    );
    assert_eq!(
        get("pid_file"),
        "write refused",
        "a root-owned record in the sandbox folder"
    );
    assert_eq!(get("mknod"), "refused", "mknod in the jail");
    // Only the planned paths are there.
    let seen: BTreeSet<PathBuf> = get("tree").split(':').map(PathBuf::from).collect();
    let mut planned: BTreeSet<PathBuf> = jail.plan.dirs.iter().cloned().collect();
    planned.extend(jail.plan.binds.iter().map(|b| b.path.clone()));
    planned.extend(jail.plan.nodes.iter().map(|n| PathBuf::from(n.path)));
    assert_eq!(seen, planned, "what the jail's root holds");

    // Afterwards: no cgroup, no lock, no mount; the folder goes with a plain remove.
    drop(jail);
    assert!(!cg.exists(), "{} left", cg.display());
    assert!(
        !husk::jail::ids::lock_dir(&run_dir).exists(),
        "uid lock folder left"
    );
    std::fs::remove_dir_all(&vm_dir).unwrap();
    assert_eq!(mounts_under(tmp.path()), Vec::<String>::new());

    // A step that fails (the disk is gone before the bind) fails the spawn, names the
    // step and the path, and leaves nothing either.
    std::fs::create_dir(&vm_dir).unwrap();
    let jail = Jail::prepare(&spec, &files).unwrap();
    let cg = jail.cgroup.clone().unwrap();
    std::fs::remove_file(&disk).unwrap();
    let mut cmd = probe_command(&jail, &vm_dir, &out, "");
    jail.apply(&mut cmd).unwrap();
    let e = husk::spawner::spawn(cmd).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOENT), "{e}");
    let errs = std::fs::read_to_string(out.with_extension("err")).unwrap();
    assert!(
        errs.contains(&format!("husk-vmm jail: bind {}: errno 2", disk.display())),
        "the failed step is not named: {errs:?}"
    );
    drop(jail);
    assert!(!cg.exists(), "{} left after a failed start", cg.display());
    assert_eq!(mounts_under(tmp.path()), Vec::<String>::new());
    eprintln!("JAIL-OK in {:.2} s", t0.elapsed().as_secs_f64());
}

/// Lists every path under `dir`, not descending into `stop`.
fn walk(dir: &Path, stop: &Path, out: &mut Vec<String>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        out.push(p.display().to_string());
        if e.file_type().unwrap().is_dir() && p != stop {
            walk(&p, stop, out);
        }
    }
}

/// Not a test: the process the jail confines (exec'd by `confine` with PROBE_ENV).
#[test]
#[ignore = "a helper exec'd inside the jail by jail_confines_a_process"]
fn jail_probe() {
    let Ok(arg) = std::env::var(PROBE_ENV) else {
        return;
    };
    let mut parts = arg.split('|');
    let vm_dir = PathBuf::from(parts.next().unwrap());
    let kernel = PathBuf::from(parts.next().unwrap());
    let disk = PathBuf::from(parts.next().unwrap());
    // libtest has printed "test jail_probe ... " without a newline.
    println!();
    let (mut r, mut e, mut s) = (0, 0, 0);
    // SAFETY: getresuid/getresgid write three ids into live locals.
    unsafe { libc::getresuid(&mut r, &mut e, &mut s) };
    println!("uid={r} {e} {s}");
    // SAFETY: as above.
    unsafe { libc::getresgid(&mut r, &mut e, &mut s) };
    println!("gid={r} {e} {s}");
    let mut groups = [0 as libc::gid_t; 16];
    // SAFETY: getgroups writes at most 16 gids into the array.
    let n = unsafe { libc::getgroups(16, groups.as_mut_ptr()) };
    let g: Vec<String> = groups[..n.max(0) as usize]
        .iter()
        .map(u32::to_string)
        .collect();
    println!("groups={}", g.join(" "));
    println!("pid={}", std::process::id());
    #[repr(C)]
    struct Hdr(u32, i32);
    let mut hdr = Hdr(0x2008_0522, 0);
    let mut data = [[0u32; 3]; 2];
    // SAFETY: capget writes two v3 data structs into `data`.
    unsafe { libc::syscall(libc::SYS_capget, &mut hdr, data.as_mut_ptr()) };
    let or = |i: usize| data[0][i] | data[1][i];
    println!("cap_eff_prm_inh={} {} {}", or(0), or(1), or(2));
    // SAFETY: prctl reads with integer arguments.
    let bnd = (0..64).filter(|c| unsafe { libc::prctl(libc::PR_CAPBSET_READ, *c, 0, 0, 0) } == 1);
    println!("cap_bnd={}", bnd.count());
    // SAFETY: as above.
    println!("no_new_privs={}", unsafe {
        libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0)
    });
    let rw = |p: &Path| std::fs::OpenOptions::new().read(true).write(true).open(p);
    println!(
        "kvm={}",
        if rw(Path::new("/dev/kvm")).is_ok() {
            "rw"
        } else {
            "refused"
        }
    );
    let k = match (std::fs::read(&kernel), rw(&kernel)) {
        (Ok(b), Err(_)) if b == b"kernel bytes" => "read, write refused".to_string(),
        (r, w) => format!("{:?} {:?}", r.map(|_| ()), w.map(|_| ())),
    };
    println!("kernel={k}");
    println!(
        "disk={}",
        if rw(&disk).is_ok() {
            "read-write"
        } else {
            "refused"
        }
    );
    let created = std::fs::write(vm_dir.join("probe-file"), "x").is_ok();
    println!(
        "vm_dir_file={}",
        if created { "created" } else { "refused" }
    );
    let pid_write = std::fs::OpenOptions::new()
        .append(true)
        .open(vm_dir.join("jail"));
    println!(
        "pid_file={}",
        if pid_write.is_err() {
            "write refused"
        } else {
            "writable"
        }
    );
    // SAFETY: mknod on a static path; expected to fail.
    let m = unsafe {
        libc::mknod(
            c"/dev/null2".as_ptr(),
            libc::S_IFCHR | 0o666,
            libc::makedev(1, 3),
        )
    };
    println!("mknod={}", if m < 0 { "refused" } else { "allowed" });
    let mut tree = Vec::new();
    walk(Path::new("/"), &vm_dir, &mut tree);
    tree.sort();
    println!("tree={}", tree.join(":"));
    std::fs::write(vm_dir.join("ready"), "").unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !vm_dir.join("go").exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
}
