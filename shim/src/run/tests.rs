use super::*;

#[test]
fn memory_sizes() {
    assert_eq!(parse_memory("512m"), Ok(512));
    assert_eq!(parse_memory("1g"), Ok(1024));
    assert_eq!(parse_memory("1G"), Ok(1024));
    assert_eq!(parse_memory(&format!("{}", 256u64 << 20)), Ok(256));
    assert!(parse_memory("0").is_err());
    assert!(parse_memory("10m").is_err());
    assert!(parse_memory("lots").is_err());
}

fn opts(args: &[&str], entrypoint: Option<&str>) -> RunOptions {
    RunOptions {
        image: ImageRef::Rootfs("/".into()),
        args: args.iter().map(|a| a.to_string()).collect(),
        entrypoint: entrypoint.map(str::to_string),
        env: vec![],
        workdir: None,
        user: None,
        vcpus: None,
        memory_mib: None,
        storage: None,
        volumes: vec![],
        read_only: false,
        name: None,
        interactive: false,
        tty: false,
        quiet: true,
        timings: false,
        pull: Default::default(),
        insecure_registries: vec![],
        detached: None,
        network: None,
        publish: vec![],
        dns: Default::default(),
        hostname: None,
        add_hosts: vec![],
        no_jail: false,
        no_template: false,
    }
}

#[test]
fn entrypoint_as_docker() {
    let image = crate::image::ImageConfig {
        entrypoint: vec!["/entry".into(), "--flag".into()],
        cmd: vec!["serve".into()],
        ..Default::default()
    };
    let argv = |o: &RunOptions| process_spec(o, &image, "h").unwrap()["process"]["args"].clone();
    assert_eq!(
        argv(&opts(&[], None)),
        serde_json::json!(["/entry", "--flag", "serve"])
    );
    assert_eq!(
        argv(&opts(&["x"], None)),
        serde_json::json!(["/entry", "--flag", "x"])
    );
    // --entrypoint drops the image's Cmd; "" clears the entrypoint.
    assert_eq!(
        argv(&opts(&[], Some("/bin/sh"))),
        serde_json::json!(["/bin/sh"])
    );
    assert_eq!(
        argv(&opts(&["-c", "id"], Some("/bin/sh"))),
        serde_json::json!(["/bin/sh", "-c", "id"])
    );
    assert_eq!(argv(&opts(&["ls"], Some(""))), serde_json::json!(["ls"]));
    assert!(
        process_spec(&opts(&[], Some("")), &image, "h").is_err(),
        "no command left"
    );
}

#[test]
fn env_files_as_docker() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("env");
    // SAFETY: std's environment accessors are synchronized among themselves, and no
    // other test in this binary reads the environment through libc meanwhile.
    unsafe { std::env::set_var("HUSK_TEST_FROM_HOST", "host value") };
    std::fs::write(
        &f,
        "# comment\n\nA=1\n  B=two words \nC=\"q\"\nHUSK_TEST_FROM_HOST\nHUSK_TEST_UNSET_X\nD=a=b\n",
    )
    .unwrap();
    assert_eq!(
        parse_env_file(&f).unwrap(),
        [
            "A=1",
            "B=two words ",
            "C=\"q\"",
            "HUSK_TEST_FROM_HOST=host value",
            "D=a=b"
        ]
    );
    std::fs::write(&f, "OK=1\nBAD KEY=2\n").unwrap();
    let err = parse_env_file(&f).unwrap_err();
    assert!(err.contains("line 2") && err.contains("BAD KEY"), "{err}");
    let err = parse_env_file(&dir.path().join("missing")).unwrap_err();
    assert!(
        err.contains("--env-file") && err.contains("missing"),
        "{err}"
    );
}

#[test]
fn host_disk_errors_are_found_in_the_vmm_log() {
    let log = "2026-12-03T07:20:00Z  WARN husk_vmm::devices::virtio::block::request: \
               the disk's image refused a write: the guest gets an I/O error disk=\"husk1\" \
               op=\"write\" error=No space left on device (os error 28) failures=4\n";
    assert_eq!(
        host_disk_error(&format!("booting\n{log}")).as_deref(),
        Some("No space left on device (os error 28)")
    );
    assert_eq!(host_disk_error("all fine\n"), None);
}
