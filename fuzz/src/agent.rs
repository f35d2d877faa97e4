//! Fuzz body for what the guest agent takes from the host, shared by the cargo-fuzz
//! target and the corpus replay test (agent/tests/fuzz_corpus.rs).
//!
//! The first byte picks what the rest is:
//!
//! - 0: `ID\nSPEC_JSON`: a CreateContainer's runtime spec, parsed and prepared as the
//!   agent does (no user);
//! - 1: `USER\0PASSWD\0GROUP\0PROCESS_JSON`: a `user[:group]` resolved in a root whose
//!   /etc/passwd and /etc/group are the input's, applied to an exec's process;
//! - 2: `PROCESS_JSON`: an exec's process, parsed and checked;
//! - 3: `\0`-separated request fields: ids, relative paths, a stdio header line, a
//!   rootfs (path, device, fstype).
//!
//! Besides "no panic", every accepted value is checked against what the checks promise
//! (an accepted mount destination is absolute without `..`, an accepted id cannot name a
//! folder...), and a prepared spec must serialise and parse back, since the agent
//! writes it to the bundle for the runtime to read.

// Test harness code (compiled into tests and fuzz targets): a set-up that fails is a
// failed test, so expect() is the point.
#![allow(clippy::expect_used)]

use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;

use husk_agent::container::rootfs::Source;
use husk_agent::container::spec;
use husk_agent::container::user;
use husk_agent::stdio::parse_header;
use husk_agent_protocol::validate;

/// The container root a spec is prepared for.
const ROOTFS: &str = "/run/husk/c/rootfs";

pub fn agent(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 4 {
        0 => create(rest),
        1 => user_and_process(rest),
        2 => process(rest),
        _ => fields(rest),
    }
}

fn no_parent(p: &Path) -> bool {
    !p.components().any(|c| c == Component::ParentDir)
}

/// What `validate::id` promises of an id it accepts.
fn check_id(id: &str) {
    if validate::id("id", id).is_ok() {
        assert!((1..=validate::MAX_ID_LEN).contains(&id.len()), "{id:?}");
        assert!(id != "." && id != ".." && !id.contains('/') && !id.contains('\0'));
        // An accepted id is one normal path component.
        let mut c = Path::new(id).components();
        assert!(
            matches!(c.next(), Some(Component::Normal(_))) && c.next().is_none(),
            "{id:?} is not one path component"
        );
    }
}

fn create(input: &[u8]) {
    let (id, json) = match input.iter().position(|b| *b == b'\n') {
        Some(i) => (&input[..i], &input[i + 1..]),
        None => (input, &[][..]),
    };
    let Ok(id) = std::str::from_utf8(id) else {
        return;
    };
    check_id(id);
    if validate::id("container_id", id).is_err() {
        return;
    }
    let Ok(mut s) = spec::parse(json) else {
        return;
    };
    let policy = husk_agent::container::policy::Policy::new(Path::new("/run/husk-agent"));
    if spec::prepare(&mut s, id, Path::new(ROOTFS), "", &policy).is_err() {
        return;
    }
    let root = s.root().as_ref().expect("a prepared spec has a root");
    assert_eq!(root.path(), Path::new(ROOTFS));
    let linux = s.linux().as_ref().expect("a prepared spec has linux");
    assert_eq!(
        linux.cgroups_path().as_deref(),
        Some(PathBuf::from(format!("/husk/{id}")).as_path())
    );
    for ns in linux.namespaces().iter().flatten() {
        assert!(ns.path().as_ref().is_none_or(|p| p.is_absolute()));
    }
    assert!(s.hooks().is_none(), "hooks survived prepare");
    // Every container runs under a seccomp profile: its own or the default one.
    assert!(
        linux.seccomp().is_some(),
        "no seccomp profile after prepare"
    );
    let p = s.process().as_ref().expect("a prepared spec has a process");
    assert!(p.args().as_ref().is_some_and(|a| !a.is_empty()));
    assert!(p.cwd().is_absolute() && no_parent(p.cwd()));
    for m in s.mounts().iter().flatten() {
        let d = m.destination();
        assert!(
            d.is_absolute() && no_parent(d) && d != Path::new("/"),
            "{d:?}"
        );
    }
    // The agent writes this to the bundle's config.json for the runtime.
    let json = serde_json::to_vec_pretty(&s).expect("a prepared spec serialises");
    if let Err(e) = spec::parse(&json) {
        panic!("a prepared spec does not parse back: {e}");
    }
}

/// A root folder (once per process) whose /etc/passwd and /etc/group each case rewrites.
fn user_root() -> &'static Path {
    static ROOT: OnceLock<tempfile::TempDir> = OnceLock::new();
    ROOT.get_or_init(|| {
        let d = tempfile::tempdir().expect("a temporary folder");
        std::fs::create_dir(d.path().join("etc")).expect("etc");
        d
    })
    .path()
}

fn user_and_process(input: &[u8]) {
    let mut parts = input.splitn(4, |b| *b == 0);
    let (Some(u), passwd, group, json) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return;
    };
    let Ok(u) = std::str::from_utf8(u) else {
        return;
    };
    let root = user_root();
    std::fs::write(root.join("etc/passwd"), passwd.unwrap_or_default()).expect("passwd");
    std::fs::write(root.join("etc/group"), group.unwrap_or_default()).expect("group");
    // Numbers are taken as they are.
    if let Ok(r) = user::resolve(root, u)
        && let Some((a, b)) = u.split_once(':')
        && let (Ok(uid), Ok(gid)) = (a.parse::<u32>(), b.parse::<u32>())
    {
        assert_eq!((r.uid, r.gid), (uid, gid));
    }
    let Some(Ok(mut p)) = json.map(spec::parse_process) else {
        return;
    };
    if spec::check_process(&p).is_ok() && !u.is_empty() && spec::apply_user(&mut p, root, u).is_ok()
    {
        let json = serde_json::to_vec(&p).expect("a process serialises");
        assert!(
            spec::parse_process(&json).is_ok(),
            "a process does not parse back"
        );
    }
}

fn process(json: &[u8]) {
    let Ok(p) = spec::parse_process(json) else {
        return;
    };
    if spec::check_process(&p).is_ok() {
        assert!(p.args().as_ref().is_some_and(|a| !a.is_empty()));
        assert!(p.cwd().is_absolute() && no_parent(p.cwd()));
    }
}

fn fields(input: &[u8]) {
    let text = String::from_utf8_lossy(input);
    let parts: Vec<&str> = text.split('\0').collect();
    for p in &parts {
        check_id(p);
        let base = Path::new("/run/husk/sandbox");
        if let Ok(joined) = validate::join_inside("path", base, p) {
            assert!(
                joined.starts_with(base) && no_parent(&joined),
                "{p:?} -> {joined:?}"
            );
        }
        if let Ok((container, exec, _kind)) = parse_header(p) {
            assert!(validate::id("container_id", &container).is_ok());
            assert!(exec.is_empty() || validate::id("exec_id", &exec).is_ok());
        }
    }
    for w in parts.windows(3) {
        match Source::from_request(w[0], w[1], w[2]) {
            Ok(Source::Dir(d)) => assert!(d.is_absolute() && no_parent(&d), "{d:?}"),
            Ok(Source::Block { device, .. }) => {
                let name = device.strip_prefix("/dev/").expect("a device under /dev");
                assert_eq!(name.components().count(), 1, "{device:?}");
            }
            Err(_) => {}
        }
    }
}
