//! Hostile images, on this host (no VM: every failure happens before boot).
//!
//! `husk run` on images made to hurt: index.json a symlink to /dev/zero, a FIFO blob, a
//! blob whose digest does not match, a layer with a 20 GB sparse file, a gzip bomb, a
//! manifest declaring a huge layer, oci-archives with a symlink or a `..` entry. Each
//! must exit 125 within 10 s naming the problem, stay under 100 MiB RSS and leave no
//! scratch folder. A layer whose entries point out of the rootfs (`../../x`, absolute
//! and relative symlinks, a hard link) writes nothing outside it, and its setuid file
//! and device node reach the erofs image only (the scratch folder is 0700, then gone).
//! A `kill -9` of husk during mkfs.erofs leaves no entry that is later used, and a
//! damaged cache entry is converted again.
//! Needs umoci, mkfs.erofs, dump.erofs, GNU tar and busybox (`make setup`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use husk::image::{ImageRef, Limits, prepare, prepare_with};
use sha2::{Digest, Sha256};

#[path = "hostile/oci.rs"]
mod oci;
use oci::{Oci, Tar};

/// See [`husk_tests::tools_present`].
fn can_run(test: &str) -> bool {
    husk_tests::tools_present(
        test,
        &[
            "umoci",
            "mkfs.erofs",
            "dump.erofs",
            "fsck.erofs",
            "tar",
            "busybox",
        ],
    )
}

/// A state and run folder with a configuration naming them (and `extra` TOML).
struct Env {
    scratch: tempfile::TempDir,
    config: PathBuf,
}

impl Env {
    /// An [`Env`] without limits, or None when `test` cannot run (see [`can_run`]).
    fn for_test(test: &str) -> Option<Env> {
        can_run(test).then(|| Env::new(""))
    }

    fn new(extra: &str) -> Env {
        let scratch = husk_tests::scratch_dir();
        let config = scratch.path().join("config.toml");
        // A kernel of the configuration's own (never booted: every run here ends before
        // boot), so that the host check, which refuses a kvm_pvm host without one before
        // the image is read, lets the image be refused for what it is. No jail either:
        // its check (cgroup v2 with memory and pids, which these machines lack) comes
        // before the image too, and no husk-vmm is ever started here.
        std::fs::write(
            &config,
            format!(
                "state_dir = \"{}\"\nrun_dir = \"{}\"\n[vm]\nkernel = \"{}\"\njail = false\n{extra}",
                scratch.path().join("state").display(),
                scratch.path().join("run").display(),
                scratch.path().join("vmlinuz-never-booted").display()
            ),
        )
        .unwrap();
        Env { scratch, config }
    }

    /// A folder of the host's that images aim at: `canary/target`, "host file".
    fn canary(&self) -> PathBuf {
        let canary = self.path("canary");
        std::fs::create_dir(&canary).unwrap();
        std::fs::write(canary.join("target"), b"host file\n").unwrap();
        canary
    }

    fn path(&self, p: &str) -> PathBuf {
        self.scratch.path().join(p)
    }

    /// What is left in `<state_dir>/tmp`.
    fn leftovers(&self) -> Vec<String> {
        std::fs::read_dir(self.path("state/tmp"))
            .map(|d| {
                d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `husk run -q IMAGE true`, its exit status, stderr, peak RSS (KiB), duration.
    fn husk_run(&self, image: &str, path_env: Option<&Path>) -> (i32, String, i64, Duration) {
        let err = self.path("husk.stderr");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_husk"));
        cmd.arg("--config")
            .arg(&self.config)
            .args(["run", "-q", image, "true"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&err).unwrap());
        if let Some(p) = path_env {
            let path = std::env::var("PATH").unwrap_or_default();
            cmd.env("PATH", format!("{}:{path}", p.display()));
        }
        let t0 = Instant::now();
        // Waited for by wait4 (for its rusage), not by std.
        #[allow(clippy::zombie_processes)]
        let child = cmd.spawn().unwrap();
        let (status, rss) = wait_rusage(child.id() as i32);
        let stderr = std::fs::read_to_string(&err).unwrap();
        (status, stderr, rss, t0.elapsed())
    }

    /// `husk run` on `image` must fail with 125 within 10 s, naming `want`, under
    /// 100 MiB RSS, leaving no scratch folder.
    fn refused(&self, image: &str, want: &str) {
        let (code, stderr, rss, took) = self.husk_run(image, None);
        assert_eq!(code, 125, "{image}: {stderr}");
        assert!(
            stderr.contains(want),
            "{image}: wanted {want:?} in: {stderr}"
        );
        assert!(took < Duration::from_secs(10), "{image}: took {took:?}");
        assert!(rss < 100 * 1024, "{image}: peak RSS {rss} KiB");
        assert!(
            self.leftovers().is_empty(),
            "{image}: left {:?}",
            self.leftovers()
        );
        eprintln!(
            "{image}: refused in {took:?}, peak RSS {rss} KiB: {}",
            stderr.trim()
        );
    }
}

/// Waits for `pid`; returns its exit code (128+n for signal n) and peak RSS in KiB.
fn wait_rusage(pid: i32) -> (i32, i64) {
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: pid is our own child, not waited for elsewhere; both pointers are to
    // live locals of the right types.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    assert_eq!(r, pid, "wait4: {}", std::io::Error::last_os_error());
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    };
    (code, ru.ru_maxrss)
}

/// A small, valid image: one layer with a file.
fn valid_layer() -> Vec<u8> {
    let mut t = Tar::new();
    t.dir("etc", 0o755);
    t.file("etc/hello", b"hello\n", 0o644);
    t.finish()
}

#[test]
fn hostile_layouts_are_refused() {
    let Some(env) = Env::for_test("hostile_layouts_are_refused") else {
        return;
    };
    let mk = |name: &str| Oci::new(&env.path(name));

    // index.json a symlink to /dev/zero (reading it would never end).
    let img = mk("zero-index");
    img.image(&[valid_layer()]);
    std::fs::remove_file(img.dir.join("index.json")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", img.dir.join("index.json")).unwrap();
    env.refused(&img.arg(), "index.json is a symlink");

    // blobs a symlink out of the layout.
    let img = mk("blobs-link");
    img.image(&[valid_layer()]);
    let elsewhere = env.path("elsewhere");
    std::fs::rename(img.dir.join("blobs"), &elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, img.dir.join("blobs")).unwrap();
    env.refused(&img.arg(), "blobs is not a folder");

    // The manifest's blob a FIFO (reading it would block).
    let img = mk("fifo-manifest");
    let manifest = img.image(&[valid_layer()]);
    let blob = img.blob_path(&manifest);
    std::fs::remove_file(&blob).unwrap();
    nix::unistd::mkfifo(&blob, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    env.refused(&img.arg(), "blob is a FIFO");

    // A layer whose content does not match its digest (same size).
    let img = mk("bad-digest");
    let layer = valid_layer();
    img.image(std::slice::from_ref(&layer));
    let blob = img.blob_path(&format!("sha256:{}", hex(&layer)));
    let mut bad = layer.clone();
    bad[600] ^= 0xff;
    std::fs::write(&blob, &bad).unwrap();
    env.refused(&img.arg(), "the content's digest is sha256:");

    // A config whose content does not match.
    let img = mk("bad-config");
    let manifest = img.image(&[valid_layer()]);
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(img.blob_path(&manifest)).unwrap()).unwrap();
    let cfg = img.blob_path(m["config"]["digest"].as_str().unwrap());
    let mut text = std::fs::read(&cfg).unwrap();
    text[0] = b' ';
    std::fs::write(&cfg, text).unwrap();
    env.refused(&img.arg(), "config sha256:");

    // A manifest that declares a 1 TB layer: refused before any blob is read.
    let img = mk("declared");
    img.image_with(&[valid_layer()], |m| {
        m["layers"][0]["size"] = serde_json::json!(1u64 << 40);
    });
    env.refused(&img.arg(), "image.max_layer_bytes");
}

#[test]
fn layers_over_the_size_caps_are_refused() {
    if !can_run("layers_over_the_size_caps_are_refused") {
        return;
    }
    // A 20 GB sparse file: refused from its tar header, under the default limit too.
    let env = Env::new("");
    let img = Oci::new(&env.path("sparse"));
    let big = env.path("big");
    std::fs::create_dir(&big).unwrap();
    let f = std::fs::File::create(big.join("zeros")).unwrap();
    f.set_len(20_000_000_000).unwrap();
    let layer = env.path("sparse.tar");
    let st = Command::new("tar")
        .arg("-S")
        .arg("-cf")
        .arg(&layer)
        .arg("-C")
        .arg(&big)
        .arg("zeros")
        .status()
        .unwrap();
    assert!(st.success());
    let layer = std::fs::read(&layer).unwrap();
    assert!(layer.len() < 1 << 20, "GNU tar wrote the sparse file out");
    img.image(std::slice::from_ref(&layer));
    env.refused(&img.arg(), "image.max_unpacked_bytes");
    let small = Env::new("[image]\nmax_unpacked_bytes = 67108864\n");
    small.refused(&img.arg(), "entry \"zeros\" (20000000000 bytes)");

    // A gzip bomb: 200 MiB of zeros, 200 KiB compressed, over a 64 MiB limit. The
    // stream is stopped at the limit.
    let img = Oci::new(&small.path("bomb"));
    let mut t = Tar::gzip();
    t.file_of_zeros("zeros", 200 << 20);
    img.image_gzip(&[t.finish_gzip()]);
    small.refused(&img.arg(), "(209715200 bytes) brings the image past");

    // A small tar, then 200 MiB of zeros after its end (what another tar reader might
    // read on): the decompressed stream counts, stopped at the limit.
    let img = Oci::new(&small.path("trailing"));
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&valid_layer()).unwrap();
    std::io::copy(
        &mut std::io::Read::take(std::io::repeat(0), 200 << 20),
        &mut gz,
    )
    .unwrap();
    img.image_gzip(&[gz.finish().unwrap()]);
    small.refused(&img.arg(), "the decompressed layers are larger");

    // Compressed layers over max_layer_bytes (their blobs are really that big).
    let tiny = Env::new("[image]\nmax_layer_bytes = 1000\n");
    let img = Oci::new(&tiny.path("big-blobs"));
    img.image(&[valid_layer()]);
    tiny.refused(&img.arg(), "declare");
}

#[test]
fn hostile_archives_are_refused() {
    let Some(env) = Env::for_test("hostile_archives_are_refused") else {
        return;
    };
    let canary = env.canary();
    let img = Oci::new(&env.path("good"));
    img.image(&[valid_layer()]);
    // The archive of a valid layout, plus one hostile entry.
    let archive = |name: &str, extra: &dyn Fn(&mut Tar)| -> String {
        let mut t = Tar::new();
        t.layout(&img.dir);
        extra(&mut t);
        let path = env.path(name);
        std::fs::write(&path, t.finish()).unwrap();
        format!("oci-archive:{}", path.display())
    };
    let link_to = format!("{}/pwned", canary.display());
    env.refused(
        &archive("symlink.tar", &|t| t.symlink("index.json.link", &link_to)),
        "refused: a symlink",
    );
    env.refused(
        &archive("hardlink.tar", &|t| t.hardlink("blobs/x", "/etc/passwd")),
        "refused: a hard link",
    );
    let up = format!("{}/{}", "../".repeat(12), link_to.trim_start_matches('/'));
    env.refused(
        &archive("dotdot.tar", &|t| t.raw_file(&up, b"x")),
        "refused: a `..` component",
    );
    env.refused(
        &archive("absolute.tar", &|t| t.raw_file(&link_to, b"x")),
        "refused: an absolute path",
    );
    env.refused(&archive("fifo.tar", &|t| t.fifo("fifo")), "refused: a FIFO");
    canary_intact(&env, &canary);
    // The same archive without a hostile entry is fine (up to the VM, which is not
    // there: the image is converted and cached, then husk fails later).
    let ok = archive("fine.tar", &|_| {});
    let file = ok.trim_start_matches("oci-archive:");
    let p = prepare(
        &ImageRef::parse(&ok).unwrap(),
        &env.path("state"),
        env.scratch.path(),
        &|_| {},
    )
    .unwrap_or_else(|e| panic!("{file}: {e}"));
    assert!(p.converted && p.erofs.is_file());
    assert!(env.leftovers().is_empty());
}

fn hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The full mode of `path` in an erofs image (dump.erofs shows only the permission
/// bits): the inode's `i_mode` (erofs_fs.h: at byte 4 of the inode; inodes at
/// `meta_blkaddr << blkszbits + nid * 32`, both in the superblock at 1024).
fn erofs_mode(image: &Path, path: &str) -> u32 {
    let out = Command::new("dump.erofs")
        .arg(format!("--path={path}"))
        .arg(image)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let nid: u64 = text
        .split("NID:")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("dump.erofs {path}: {text}"));
    let d = std::fs::read(image).unwrap();
    let bits = u64::from(d[1024 + 12]);
    let meta = u64::from(u32::from_le_bytes(
        d[1024 + 40..1024 + 44].try_into().unwrap(),
    ));
    let off = usize::try_from((meta << bits) + nid * 32).unwrap();
    u32::from(u16::from_le_bytes([d[off + 4], d[off + 5]]))
}

/// The canary folder: `target` (a host file) and nothing else, unchanged, not linked
/// anywhere; and no `*pwned*` file anywhere in the test's folder.
fn canary_intact(env: &Env, canary: &Path) {
    let names: Vec<_> = std::fs::read_dir(canary)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["target"], "written in the canary folder");
    assert_eq!(
        std::fs::read(canary.join("target")).unwrap(),
        b"host file\n"
    );
    let meta = std::fs::metadata(canary.join("target")).unwrap();
    assert_eq!(
        std::os::unix::fs::MetadataExt::nlink(&meta),
        1,
        "hard-linked into the image"
    );
    let out = Command::new("find")
        .arg(env.scratch.path())
        .args(["-name", "*pwned*"])
        .output()
        .unwrap();
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(env.leftovers().is_empty(), "left {:?}", env.leftovers());
}

#[test]
fn layers_cannot_write_outside_the_rootfs() {
    let Some(env) = Env::for_test("layers_cannot_write_outside_the_rootfs") else {
        return;
    };
    let canary = env.canary();
    let c = canary.display().to_string();
    let abs = c.trim_start_matches('/');
    let root = nix::unistd::geteuid().is_root();

    let mut t = Tar::new();
    t.raw_file(&format!("{}{abs}/dotdot-pwned", "../".repeat(12)), b"x");
    t.raw_file("../../dotdot-relative-pwned", b"x");
    t.raw_file(&format!("/{abs}/absolute-pwned"), b"x");
    t.symlink("abs-link", &c);
    t.raw_file("abs-link/via-absolute-symlink-pwned", b"x");
    t.symlink("rel-link", &format!("{}{abs}", "../".repeat(12)));
    t.raw_file("rel-link/via-relative-symlink-pwned", b"x");
    // A hard link to the canary's path resolves inside the rootfs (to the image's own
    // file of that name, which the entries above may have made).
    t.raw_file(&format!("{abs}/target"), b"the image's file\n");
    t.hardlink("hard", &format!("{c}/target"));
    t.raw_file("hard", b"pwned through a hard link");
    t.file("suid", b"#!/bin/sh\n", 0o4755);
    if root {
        t.char_device("null", 1, 3);
    }
    let img = Oci::new(&env.path("escape"));
    img.image(&[t.finish()]);

    let state = env.path("state");
    let checked = std::cell::Cell::new(false);
    let progress = |m: &str| {
        if m != "converting to erofs" {
            return;
        }
        // The unpacked tree, before conversion: only in a 0700 folder of husk's.
        for d in std::fs::read_dir(state.join("tmp")).unwrap() {
            let d = d.unwrap();
            let mode =
                std::os::unix::fs::PermissionsExt::mode(&d.metadata().unwrap().permissions());
            assert_eq!(mode & 0o777, 0o700, "{}", d.path().display());
            checked.set(true);
        }
    };
    let p = prepare_with(
        &ImageRef::parse(&img.arg()).unwrap(),
        &state,
        env.scratch.path(),
        &Limits::default(),
        &progress,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    canary_intact(&env, &canary);
    assert!(checked.get(), "the unpacked tree was not checked");
    // Inside the image as docker would have them: the setuid bit, the device.
    assert_eq!(erofs_mode(&p.erofs, "/suid"), 0o104755);
    if root {
        assert_eq!(erofs_mode(&p.erofs, "/null") & 0o170000, 0o020000);
    } else {
        eprintln!("not root: the device node case is left out");
    }

    // A hard link to a host path with nothing of that name in the image: refused by
    // umoci (or made inside); either way the host file is left alone.
    let mut t = Tar::new();
    t.hardlink("hard", &format!("{c}/target"));
    t.raw_file("hard", b"pwned through a hard link");
    let img = Oci::new(&env.path("hardlink"));
    img.image(&[t.finish()]);
    let r = prepare(
        &ImageRef::parse(&img.arg()).unwrap(),
        &state,
        env.scratch.path(),
        &|_| {},
    );
    if let Err(e) = r {
        eprintln!("the hard link layer was refused: {e}");
    }
    canary_intact(&env, &canary);
}

/// A `mkfs.erofs` that writes half an image, says it started, and sleeps.
fn slow_mkfs(dir: &Path, mark: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let script = dir.join("mkfs.erofs");
    let mut f = std::fs::File::create(&script).unwrap();
    write!(
        f,
        "#!/bin/sh\neval out=\\${{$(($# - 1))}}\nprintf 'half an image' > \"$out\"\necho $$ > {}.tmp\nmv {}.tmp {}\nexec sleep 60\n",
        mark.display(),
        mark.display(),
        mark.display()
    )
    .unwrap();
    drop(f);
    let st = Command::new("chmod")
        .arg("+x")
        .arg(&script)
        .status()
        .unwrap();
    assert!(st.success());
}

/// The files of an erofs image, extracted, as `find` lists them (name, type, mode,
/// size) with their content's digests.
fn tree(image: &Path, at: &Path) -> String {
    let st = Command::new("fsck.erofs")
        .arg(format!("--extract={}", at.display()))
        .arg(image)
        .status()
        .unwrap();
    assert!(st.success(), "fsck.erofs {}", image.display());
    let out = Command::new("sh")
        .arg("-c")
        .arg("cd \"$1\" && find . -printf '%p %y %m %s\\n' | sort && find . -type f -exec sha256sum {} + | sort")
        .arg("sh")
        .arg(at)
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn kill_during_mkfs_and_damaged_entries() {
    let Some(env) = Env::for_test("kill_during_mkfs_and_damaged_entries") else {
        return;
    };
    let layout = env.path("busybox");
    husk_tests::busybox_oci(&layout, None);
    let image = format!("oci:{}", layout.display());
    let mark = env.path("mkfs.pid");
    let slow = env.path("slow-bin");
    slow_mkfs(&slow, &mark);

    // husk converting with the slow mkfs.erofs, killed once it runs.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_husk"));
    let path = std::env::var("PATH").unwrap_or_default();
    cmd.arg("--config")
        .arg(&env.config)
        .args(["run", "-q", &image, "true"])
        .env("PATH", format!("{}:{path}", slow.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut husk = cmd.spawn().unwrap();
    let t0 = Instant::now();
    while !mark.exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "mkfs.erofs never started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mkfs: i32 = std::fs::read_to_string(&mark)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    husk.kill().unwrap();
    husk.wait().unwrap();
    // mkfs.erofs dies with husk (PR_SET_PDEATHSIG).
    let t0 = Instant::now();
    while std::fs::read_to_string(format!("/proc/{mkfs}/stat")).is_ok_and(|s| !s.contains(") Z ")) {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "mkfs.erofs outlived husk"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let cache = env.path("state/images");
    let files = || -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&cache)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let half = files();
    assert!(
        half.iter().any(|f| f.ends_with(".tmp")) && !half.iter().any(|f| f.ends_with(".json")),
        "{half:?}"
    );

    // The next conversion makes a whole entry, equal to a fresh one, and uses it.
    let r = ImageRef::parse(&image).unwrap();
    let state = env.path("state");
    let p = prepare(&r, &state, env.scratch.path(), &|_| {}).unwrap();
    assert!(p.converted);
    let hex = p.digest.trim_start_matches("sha256:").to_string();
    let entry = vec![
        format!("{hex}.erofs"),
        format!("{hex}.json"),
        format!("{hex}.lock"),
    ];
    assert_eq!(files(), entry);
    let fresh = prepare(&r, &env.path("fresh"), env.scratch.path(), &|_| {}).unwrap();
    assert_eq!(
        tree(&p.erofs, &env.path("x1")),
        tree(&fresh.erofs, &env.path("x2"))
    );
    assert!(
        !prepare(&r, &state, env.scratch.path(), &|_| {})
            .unwrap()
            .converted
    );

    // A damaged entry (one byte changed; cut short) is converted again, not used.
    let mut bytes = std::fs::read(&p.erofs).unwrap();
    bytes[2000] ^= 0x55;
    std::fs::write(&p.erofs, &bytes).unwrap();
    let messages = std::cell::RefCell::new(Vec::new());
    let again = prepare(&r, &state, env.scratch.path(), &|m| {
        messages.borrow_mut().push(m.to_string())
    })
    .unwrap();
    assert!(again.converted, "a corrupted entry was used");
    assert!(
        messages.borrow().iter().any(|m| m.contains("damaged")),
        "{:?}",
        messages.borrow()
    );
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&p.erofs)
        .unwrap();
    f.set_len(4096).unwrap();
    assert!(
        prepare(&r, &state, env.scratch.path(), &|_| {})
            .unwrap()
            .converted
    );
    assert!(
        !prepare(&r, &state, env.scratch.path(), &|_| {})
            .unwrap()
            .converted
    );
    assert_eq!(files(), entry);
    assert!(env.leftovers().is_empty());
}
