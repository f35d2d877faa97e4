use super::*;
use crate::layout::SandboxDir;

fn spec(dir: &Path) -> SandboxSpec {
    let f = |n: &str| {
        let p = dir.join(n);
        std::fs::write(&p, n).unwrap();
        p
    };
    let guest = crate::guest::GuestImage {
        kernel: f("vmlinuz"),
        initramfs: f("initrd"),
    };
    SandboxSpec::new("t", SandboxDir::new(dir.join("vm")), f("husk-vmm"), &guest)
}

#[test]
fn key_follows_what_shapes_the_vm() {
    let d = tempfile::tempdir().unwrap();
    let s = spec(d.path());
    let (id, _) = key(&s).unwrap();
    assert_eq!(id.len(), 32);
    // Not the paths of the VM's own folder, disks or sockets.
    let other_dir = SandboxSpec {
        dir: SandboxDir::new(d.path().join("elsewhere")),
        hostname: "other".into(),
        ..s.clone()
    };
    assert_eq!(key(&other_dir).unwrap().0, id);
    let mut disks = s.clone();
    disks.disks.push(crate::sandbox::Disk {
        path: d.path().join("a.img"),
        read_only: true,
    });
    let (with_disk, _) = key(&disks).unwrap();
    assert_ne!(with_disk, id);
    let mut other_disk = disks.clone();
    other_disk.disks[0].path = d.path().join("b.img");
    assert_eq!(key(&other_disk).unwrap().0, with_disk);
    other_disk.disks[0].read_only = false;
    assert_ne!(key(&other_disk).unwrap().0, with_disk);
    for changed in [
        SandboxSpec {
            memory_mib: 512,
            ..s.clone()
        },
        SandboxSpec {
            vcpus: 2,
            ..s.clone()
        },
        SandboxSpec {
            cmdline_extra: "x=1".into(),
            ..s.clone()
        },
    ] {
        assert_ne!(key(&changed).unwrap().0, id);
    }
    // A rebuilt kernel (new inode, size or time).
    std::fs::remove_file(&s.kernel).unwrap();
    std::fs::write(&s.kernel, "a new kernel").unwrap();
    assert_ne!(key(&s).unwrap().0, id);
    // A missing one is an error naming it.
    std::fs::remove_file(&s.initramfs).unwrap();
    let e = key(&s).unwrap_err().to_string();
    assert!(e.contains("initrd"), "{e}");
}

#[test]
fn list_find_and_remove() {
    let d = tempfile::tempdir().unwrap();
    let s = spec(d.path());
    let state = d.path().join("state");
    assert!(list(&state).unwrap().is_empty());
    assert!(find(&state, &s).unwrap().is_none());
    let (id, k) = key(&s).unwrap();
    let t = templates_dir(&state).join(&id);
    std::fs::create_dir_all(&t).unwrap();
    std::fs::write(t.join("state"), "s").unwrap();
    std::fs::write(t.join("memory"), "m").unwrap();
    // Not whole yet.
    assert!(find(&state, &s).unwrap().is_none());
    std::fs::write(
        t.join("key.json"),
        serde_json::json!({ "key": k }).to_string(),
    )
    .unwrap();
    assert_eq!(find(&state, &s).unwrap(), Some(t.clone()));
    std::fs::create_dir_all(templates_dir(&state).join(".build-x")).unwrap();
    let l = list(&state).unwrap();
    assert_eq!(l.len(), 1);
    assert_eq!(l[0].id, id);
    assert!(remove(&state, "../etc").is_err());
    assert!(remove(&state, &"0".repeat(32)).is_err());
    remove(&state, &id).unwrap();
    assert!(!t.exists());
}

#[test]
fn the_share_and_nics_count_in_the_key() {
    let d = tempfile::tempdir().unwrap();
    let s = spec(d.path());
    assert_eq!(min_agent_minor(&s), 5);
    // A VM with the share has another template than one without; a pod's share and a
    // volume's are the same device.
    let shared = SandboxSpec {
        pod_share: true,
        ..s.clone()
    };
    let (shared_id, _) = key(&shared).unwrap();
    assert_ne!(shared_id, key(&s).unwrap().0);
    let volume = SandboxSpec {
        exports: vec![crate::share::Export {
            name: "v0".into(),
            source: d.path().to_path_buf(),
            read_only: false,
        }],
        ..s.clone()
    };
    assert_eq!(key(&volume).unwrap().0, shared_id);
    let nic = |mac: &str, mtu| crate::sandbox::Nic {
        fd: 3,
        mac: mac.into(),
        mtu,
    };
    let one = SandboxSpec {
        nics: vec![nic("02:00:00:00:00:01", 1500)],
        ..s.clone()
    };
    assert_eq!(min_agent_minor(&one), 6);
    let (id, _) = key(&one).unwrap();
    assert_ne!(id, key(&s).unwrap().0);
    // Another MAC or tap: the same template; another MTU or NIC count: another.
    let other_mac = SandboxSpec {
        nics: vec![nic("02:00:00:00:00:02", 1500)],
        ..s.clone()
    };
    assert_eq!(key(&other_mac).unwrap().0, id);
    for changed in [
        vec![nic("02:00:00:00:00:01", 9000)],
        vec![
            nic("02:00:00:00:00:01", 1500),
            nic("02:00:00:00:00:03", 1500),
        ],
    ] {
        let c = SandboxSpec {
            nics: changed,
            ..s.clone()
        };
        assert_ne!(key(&c).unwrap().0, id);
    }
}

#[test]
fn template_nic_macs_are_unicast_and_local() {
    for i in [0, 1, 7] {
        let m = nic_mac(i);
        let first = u8::from_str_radix(&m[..2], 16).unwrap();
        assert_eq!(first & 0b11, 0b10, "{m}");
        assert_eq!(m.len(), 17);
    }
    assert_ne!(nic_mac(0), nic_mac(1));
}

#[tokio::test]
async fn a_refused_guest_image_is_not_built_again() {
    let d = tempfile::tempdir().unwrap();
    let s = spec(d.path());
    let state = d.path().join("state");
    let (id, _) = key(&s).unwrap();
    std::fs::create_dir_all(templates_dir(&state)).unwrap();
    std::fs::write(refusal(&state, &id), "protocol 0.5").unwrap();
    let asked = std::sync::Mutex::new(Vec::new());
    let progress = |m: &str| asked.lock().unwrap().push(m.to_string());
    let got = ensure(&state, &d.path().join("run"), &s, &progress).await;
    assert!(got.is_none());
    assert!(asked.lock().unwrap().is_empty(), "no build was started");
    // Not listed as a template; `rm --all` forgets it.
    assert!(list(&state).unwrap().is_empty());
    forget_refusals(&state);
    assert!(!refusal(&state, &id).exists());
}
