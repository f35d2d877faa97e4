//! System test of VM templates in the lab (shim/tests/template_vm.sh drives `husk run`
//! there; docs/snapshots.md): `husk template build` builds the runs' template ahead
//! (a second build finds it; bad options refused); `--network none` runs restore it:
//! 20 clones one after another and 4 at once, each running a container from its own
//! image (converted here, used from the L1's image cache), with its own hostname,
//! clock and random values, exit status and stdio as with a boot; `--no-template`
//! boots; a damaged template makes the run boot, is discarded and rebuilt by the next
//! run; runs on the default network restore a template of their own shape, each guest
//! NIC with the clone's MAC, the network working; `husk template rm --all`; a full
//! disk under the templates folder: the build fails naming it and the run boots;
//! nothing left behind.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use husk_tests::require_lab;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Clones one after another, then at once, each running a container from its own image.
const CLONES: usize = 20;
const AT_ONCE: usize = 4;

#[test]
fn vms_restored_from_templates_in_the_lab() {
    let lab = require_lab!();
    let f = husk_tests::cli_fixture(std::path::Path::new(env!("CARGO_BIN_EXE_husk")));
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/template_vm.sh");
    // An image of its own for every clone: tags c1.. of the layout, each with its own
    // /clone-image (unpacked once, then repacked per tag: `umoci insert` of a single
    // file writes a truncated tar, which husk rightly refuses).
    let bundle = f.scratch.path().join("bundle");
    let umoci = |args: &[&str]| {
        let st = std::process::Command::new("umoci")
            .args(args)
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(st.success(), "umoci {args:?}: {st}");
    };
    let image = f.image.display().to_string();
    umoci(&[
        "unpack",
        "--image",
        &format!("{image}:latest"),
        &bundle.display().to_string(),
    ]);
    for i in 1..=CLONES + AT_ONCE {
        std::fs::write(bundle.join("rootfs/clone-image"), format!("image-{i}\n")).unwrap();
        umoci(&[
            "repack",
            "--no-history",
            "--image",
            &format!("{image}:c{i}"),
            &bundle.display().to_string(),
        ]);
    }
    // Their erofs cache entries, converted here (the script copies them into the L1's
    // state folder): converting 24 images in the emulated L1 took 2-3 minutes of this
    // test, and husk_run.rs tests conversions in the lab.
    let state = f.scratch.path().join("state");
    for i in 1..=CLONES + AT_ONCE {
        let r = husk::image::ImageRef::OciDir {
            dir: f.image.clone(),
            tag: Some(format!("c{i}")),
        };
        husk::image::prepare(&r, &state, f.scratch.path(), &|_| {})
            .unwrap_or_else(|e| panic!("converting c{i}: {e}"));
    }
    let t0 = Instant::now();
    let r = lab
        .mem_mib(3072)
        .timeout(Duration::from_secs(1200))
        .env("HUSK_GUEST_DIR", &f.guest.display().to_string())
        .run(&[
            script.display().to_string(),
            env!("CARGO_BIN_EXE_husk").to_string(),
            f.image.display().to_string(),
            CLONES.to_string(),
            AT_ONCE.to_string(),
            state.join("images").display().to_string(),
        ])
        .unwrap();
    eprintln!("lab run: {:.1} s", t0.elapsed().as_secs_f64());
    for l in r.stderr.lines().filter(|l| {
        l.starts_with("phases ") || l.starts_with("template build:") || l.starts_with("case ")
    }) {
        eprintln!("{l}");
    }
    let all = format!("--- stdout\n{}\n--- stderr\n{}", r.stdout, r.stderr);
    assert_eq!(r.code, Some(0), "{all}");
    let cases = r.cases();
    let get = |k: &str| {
        cases
            .get(k)
            .copied()
            .unwrap_or_else(|| panic!("no case {k}\n{all}"))
    };
    let check = |k: &str, want: &str| assert_eq!(get(k), want, "case {k}\n{all}");
    let clean = "vmm=0 dirs=0 builds=0 mounts=0 taps=0";
    check("build", "0_32_1_1");
    check("build_bad", "1_125");
    check("first", "7_first");
    check("first_built", "1");
    check("templates", "1");
    check("after_first", clean);
    let mut uuids = BTreeSet::new();
    let mut randoms = BTreeSet::new();
    let mut probes: Vec<(String, usize, Vec<&str>)> = (1..=CLONES)
        .map(|i| {
            (
                format!("clone{i}"),
                i,
                get(&format!("clone{i}")).split(['_', ' ']).collect(),
            )
        })
        .collect();
    probes.extend((1..=AT_ONCE).map(|j| {
        (
            format!("par{j}"),
            CLONES + j,
            get(&format!("par{j}")).split(['_', ' ']).collect(),
        )
    }));
    for (name, image, parts) in &probes {
        assert_eq!(
            parts.len(),
            7,
            "{name}: status, restored, 5 probe values\n{all}"
        );
        let want_status = match name.strip_prefix("par") {
            Some(j) => j.to_string(),
            None => (image % 100).to_string(),
        };
        assert_eq!(parts[0], want_status, "exit status, {name}\n{all}");
        assert_eq!(parts[1], "1", "restored, {name}\n{all}");
        assert_eq!(parts[2], name, "hostname, {name}\n{all}");
        let guest: i64 = parts[3].parse().unwrap();
        let host: i64 = get(&format!("{name}_host_time")).parse().unwrap();
        let start: i64 = get(&format!("{name}_start_time")).parse().unwrap();
        // The host's time is taken as the run starts and as it ends (four runs at once
        // on a slow machine took 9 s from the container's print to their end): the
        // guest's clock, read while the container ran, is within 2 s of that span.
        assert!(
            guest >= start - 2 && guest <= host + 2,
            "clock: guest {guest}, host {start} to {host} (the run's start and end), {name}\n{all}"
        );
        uuids.insert(parts[4].to_string());
        randoms.insert(parts[5].to_string());
        assert_eq!(
            parts[6],
            format!("image-{image}"),
            "its own image, {name}\n{all}"
        );
    }
    let n = CLONES + AT_ONCE;
    assert_eq!(uuids.len(), n, "each clone its own UUIDs\n{all}");
    assert_eq!(randoms.len(), n, "each clone its own /dev/urandom\n{all}");
    check("seeded", &format!("{n}_0"));
    check("stdin", "0_through-stdin_1");
    check("after_clones", clean);
    check("no_template", "0_booted_1");
    check("damaged", "0_survived_1_1_0");
    check("rebuilt", "0_rebuilt_1_1");
    check("networked", "0_1_own-mac");
    check("networked2", "0_1_hello-l1_own-mac");
    check("templates_net", "2");
    // Volumes: the share shape's template restores (after the first run built it),
    // and each clone's own virtiofsd serves the host folder, both ways.
    for n in 1..=3 {
        check(&format!("volume{n}"), &format!("0_1_from-host_vol{n}"));
    }
    check("volume_uuids", "3");
    check("templates_vol", "3");
    check("rm", "3_0");
    check("template_full_disk", "0_booted-anyway_1_1_0");
    check("after_all", clean);
    let netns = get("netns");
    assert!(
        netns.starts_with("0_") && netns != "0_0",
        "network namespaces left (or none counted): {netns}\n{all}"
    );

    let times = |what: &str| -> Vec<f64> {
        r.stderr
            .lines()
            .filter_map(|l| l.strip_prefix(&format!("timing {what}: ")))
            .filter_map(|l| l.trim_end_matches(" s").parse().ok())
            .collect()
    };
    let (t, b) = (times("template"), times("boot"));
    println!(
        "MEASURE husk_run_template_median_s={:.2} (n={}) husk_run_boot_median_s={:.2} (n={}) first_run={:?} networked_template={:?} networked_first={:?}",
        median(t.clone()),
        t.len(),
        median(b.clone()),
        b.len(),
        times("first (restore)"),
        times("networked template"),
        times("networked first (template build + restore)")
    );
    println!(
        "MEASURE volume_runs_s={:?} (the first builds the template)",
        [1, 2, 3].map(|n| times(&format!("volume {n}")))
    );
}
