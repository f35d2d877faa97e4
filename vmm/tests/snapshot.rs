//! System test of VM snapshots in the lab (tests/lab/run; docs/snapshots.md): Debian's
//! cloud kernel boots a busybox guest that serves its state on vsock port 1234 (a
//! counter in guest memory, its clock, random values, the first bytes of its disk). The
//! host side (tests/guest/snapshot-host.py) snapshots it through the API, resumes it,
//! restores 20 clones one after another (both memory modes) and four at once, each with
//! its own disk and sockets, and checks that a damaged snapshot, a configuration of
//! another shape and a missing folder are refused with exit status 2. A second run on
//! Debian's generic kernel (which has the vmgenid driver) checks that clones reseed
//! their CRNG at restore from the new VM generation ID.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use std::path::Path;
use std::time::Duration;

use husk_tests::{guest, require_lab};

/// Clones restored one after another.
const CLONES: usize = 20;

fn write_vm_json(dir: &Path, kernel: &Path) {
    let json = serde_json::json!({
        "kernel": kernel,
        "initramfs": dir.join("initrd.cpio.gz"),
        "cmdline": "console=ttyS0 panic=-1 quiet",
        "vcpus": 1,
        "memory_mib": 256,
        "serial": {"file": dir.join("console.log")},
        "block": [{"path": dir.join("unused.img"), "read_only": true}],
        "vsock": {"cid": 3, "uds": dir.join("v.sock")},
        "rng": true,
        "balloon": {"free_page_reporting": true}
    });
    std::fs::write(
        dir.join("vm.json"),
        serde_json::to_vec_pretty(&json).unwrap(),
    )
    .unwrap();
}

/// An answer line's `key=value` field.
fn part<'a>(answer: &'a str, key: &str) -> &'a str {
    let v = answer
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
        .unwrap_or("");
    // Disk names are padded to 8 bytes with '_'.
    if key == "disk" {
        v.trim_end_matches('_')
    } else {
        v
    }
}

/// Builds the guest (Debian's kernel of `flavour`, the busybox init) in `d` and runs
/// tests/guest/snapshot-host.py in the lab: `clones` one after another, `at_once` at
/// once. Returns the lab's result.
fn lab_run(
    lab: husk_tests::lab::Lab,
    d: &Path,
    flavour: Option<&str>,
    clones: usize,
    at_once: usize,
) -> husk_tests::lab::LabOutput {
    let kernel = guest::debian_kernel_flavour(flavour).unwrap();
    let init = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/guest/snapshot-init.sh"),
    )
    .unwrap();
    guest::busybox_initramfs_flavour(
        flavour,
        &d.join("initrd.cpio.gz"),
        &init,
        &[
            "virtio_mmio",
            "virtio_blk",
            "virtio-rng",
            "virtio_balloon",
            "vmw_vsock_virtio_transport",
        ],
        &["socat"],
    )
    .unwrap();
    write_vm_json(d, &kernel);

    let host = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/guest/snapshot-host.py");
    lab.timeout(Duration::from_secs(540))
        .run(&[
            "timeout".to_string(),
            "480".to_string(),
            host.display().to_string(),
            d.display().to_string(),
            env!("CARGO_BIN_EXE_husk-vmm").to_string(),
            clones.to_string(),
            at_once.to_string(),
        ])
        .unwrap()
}

#[test]
fn snapshot_restores_clones_that_continue_where_the_template_stopped() {
    let lab = require_lab!();
    let dir = husk_tests::scratch_dir();
    let d = dir.path();
    let r = lab_run(lab, d, None, CLONES, 4);
    let out = &r.stdout;
    let ctx = format!("stdout:\n{out}\nstderr:\n{}", r.stderr);
    let field = |k: &str| guest::field(out, k).unwrap_or_default().to_string();
    assert_eq!(r.code, Some(0), "{ctx}");
    assert_eq!(field("HOST-DONE"), "yes", "{ctx}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;

    // The template: answered, saved, refused a second snapshot into the same folder,
    // stayed paused, then ran on (its vsock reset, new connections work).
    let t = field("TEMPLATE-ANSWER");
    assert_eq!(part(&t, "count"), "1", "{ctx}");
    assert_eq!(part(&t, "disk"), "template", "{ctx}");
    assert_eq!(part(&t, "sectors"), "2048", "{ctx}");
    let snap: serde_json::Value = serde_json::from_str(&field("SNAPSHOT")).unwrap();
    assert_eq!(snap["ok"], true, "{ctx}");
    assert_eq!(snap["snapshot"]["memory_bytes"], 256u64 << 20, "{ctx}");
    let again: serde_json::Value = serde_json::from_str(&field("SNAPSHOT-AGAIN")).unwrap();
    assert_eq!(again["ok"], false, "{ctx}");
    assert!(
        again["error"].as_str().unwrap().contains("already holds"),
        "{ctx}"
    );
    assert_eq!(field("STATUS-AFTER-SNAPSHOT"), "paused", "{ctx}");
    assert_eq!(part(&field("TEMPLATE-AFTER-RESUME"), "count"), "2", "{ctx}");
    assert_eq!(field("TEMPLATE-EXIT"), "4", "{ctx}");
    // Sparse: far less allocated than the guest's 256 MiB.
    let mem = field("MEMORY-FILE");
    let allocated: u64 = part(&mem, "allocated").parse().unwrap();
    assert_eq!(part(&mem, "size"), (256u64 << 20).to_string(), "{ctx}");
    assert!(allocated < 200 << 20, "{mem}: {ctx}");

    // Clones: each continues from the snapshot (count 1 → 2), reads its own disk, has
    // the right time, and keeps working.
    let mut answers = Vec::new();
    for i in 0..CLONES {
        let a = field(&format!("CLONE{i}-ANSWER"));
        assert_eq!(part(&a, "count"), "2", "clone {i}: {ctx}");
        assert_eq!(part(&a, "disk"), format!("clone{i}"), "clone {i}: {ctx}");
        // A disk of another size than the template's: a configuration change.
        assert_eq!(
            part(&a, "sectors"),
            ((2 + i) * 2048).to_string(),
            "clone {i}: {ctx}"
        );
        let t: i64 = part(&a, "time").parse().unwrap();
        assert!((t - now).abs() < 120, "clone {i} clock {t} vs {now}: {ctx}");
        assert_eq!(
            part(&field(&format!("CLONE{i}-AGAIN")), "count"),
            "3",
            "clone {i}: {ctx}"
        );
        assert_eq!(field(&format!("CLONE{i}-EXIT")), "4", "clone {i}: {ctx}");
        answers.push(a);
    }
    for i in 0..4 {
        let a = field(&format!("PAR{i}-ANSWER"));
        assert_eq!(part(&a, "count"), "2", "par {i}: {ctx}");
        assert_eq!(part(&a, "disk"), format!("par{i}"), "par {i}: {ctx}");
        assert_eq!(field(&format!("PAR{i}-EXIT")), "4", "par {i}: {ctx}");
        answers.push(a);
    }
    // Refusals.
    let damaged = field("DAMAGED");
    assert!(
        damaged.starts_with("2 ") && damaged.contains("checksum"),
        "{ctx}"
    );
    let shape = field("SHAPE");
    assert!(
        shape.starts_with("2 ") && shape.contains("does not fit"),
        "{ctx}"
    );
    assert!(field("MISSING").starts_with("2 "), "{ctx}");

    // Figures for docs/snapshots.md.
    let uuids: std::collections::BTreeSet<_> = answers.iter().map(|a| part(a, "uuid")).collect();
    let urandom: std::collections::BTreeSet<_> =
        answers.iter().map(|a| part(a, "urandom")).collect();
    let median_of = |mode: &str| {
        let mut v: Vec<u64> = (0..CLONES)
            .filter_map(|i| {
                let f = field(&format!("CLONE{i}-MS"));
                let (m, ms) = f.split_once(' ')?;
                (m == mode).then(|| ms.parse().ok()).flatten()
            })
            .collect();
        v.sort_unstable();
        (v.get(v.len() / 2).copied().unwrap_or(0), v.len())
    };
    let (map_ms, map_n) = median_of("map");
    let (copy_ms, copy_n) = median_of("copy");
    println!(
        "MEASURE boot_ms={} restore_to_answer_ms: map median {map_ms} (n={map_n}), copy median {copy_ms} (n={copy_n}) distinct_uuids={}/{} distinct_urandom={}/{} memory_file={mem} snapshot={}",
        field("BOOT-MS"),
        uuids.len(),
        answers.len(),
        urandom.len(),
        answers.len(),
        snap["snapshot"]
    );
}

/// Debian's generic kernel has the vmgenid driver (the cloud kernel has not): it binds
/// to husk-vmm's VM generation ID, and each clone, given a new one at restore, reseeds
/// its CRNG at once ("crng reseeded due to virtual machine fork"), so clones of one
/// snapshot draw different random numbers without any host seed.
#[test]
fn clones_on_a_kernel_with_vmgenid_reseed_at_restore() {
    let lab = require_lab!();
    let dir = husk_tests::scratch_dir();
    let d = dir.path();
    let clones = 3;
    let r = lab_run(lab, d, Some("amd64"), clones, 2);
    let out = &r.stdout;
    let ctx = format!("stdout:\n{out}\nstderr:\n{}", r.stderr);
    let field = |k: &str| guest::field(out, k).unwrap_or_default().to_string();
    assert_eq!(r.code, Some(0), "{ctx}");
    assert_eq!(field("HOST-DONE"), "yes", "{ctx}");
    let t = field("TEMPLATE-ANSWER");
    assert_eq!(
        part(&t, "vmgenid"),
        "1",
        "driver bound in the template: {ctx}"
    );
    assert_eq!(part(&t, "forks"), "0", "{ctx}");
    // The reseed message is printed only once the CRNG is ready: it is in the template.
    assert_eq!(part(&t, "crnginit"), "1", "{ctx}");
    // The template's own resume is no fork: its generation ID stays.
    assert_eq!(part(&field("TEMPLATE-AFTER-RESUME"), "forks"), "0", "{ctx}");
    let mut uuids = std::collections::BTreeSet::new();
    for i in 0..clones {
        let a = field(&format!("CLONE{i}-ANSWER"));
        assert_eq!(part(&a, "count"), "2", "clone {i}: {ctx}");
        uuids.insert(part(&a, "uuid").to_string());
        // Asked again until the notification's work has run (snapshot-host.py, bounded).
        let again = field(&format!("CLONE{i}-AGAIN"));
        assert_eq!(part(&again, "forks"), "1", "clone {i}: {ctx}");
    }
    assert_eq!(uuids.len(), clones, "distinct random streams: {ctx}");
    println!(
        "MEASURE vmgenid clones={clones} distinct_uuids={}",
        uuids.len()
    );
}
