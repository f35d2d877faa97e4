//! Tests of the VM configuration: parsing, defaults, round trips through JSON, and
//! validation errors that name their field.

use super::*;

fn parse(json: &str) -> Result<VmConfig, ConfigError> {
    VmConfig::from_json(Path::new("vm.json"), json)
}

#[test]
fn full_config_parses() {
    let c = parse(
        r#"{"kernel": "/k", "initramfs": "/i", "cmdline": "quiet", "vcpus": 2,
            "memory_mib": 512, "serial": {"file": "/tmp/console.log"},
            "block": [{"path": "/d.img", "read_only": true}],
            "vsock": {"cid": 3, "uds": "/run/v.sock"}, "rng": true,
            "balloon": {"free_page_reporting": true}}"#,
    )
    .unwrap();
    assert_eq!(c.vcpus, 2);
    assert_eq!(
        c.balloon,
        Some(BalloonConfig {
            free_page_reporting: true
        })
    );
    assert_eq!(c.serial.0, SerialOutput::file("/tmp/console.log"));
    assert!(c.block[0].read_only && c.rng);
    assert_eq!(c.vsock.unwrap().cid, 3);
}

#[test]
fn config_round_trips_through_json() {
    let c = parse(
        r#"{"kernel": "/k", "initramfs": "/i", "cmdline": "quiet", "vcpus": 2,
            "memory_mib": 512, "serial": {"file": "/c.log", "max_bytes": 65536},
            "block": [{"path": "/d.img", "read_only": true}],
            "vsock": {"cid": 3, "uds": "/run/v.sock"}, "rng": true,
            "balloon": {"free_page_reporting": false}}"#,
    )
    .unwrap();
    let text = serde_json::to_string(&c).unwrap();
    assert_eq!(parse(&text).unwrap(), c);
    for serial in [
        SerialOutput::Stdout,
        SerialOutput::None,
        SerialOutput::file("/x"),
    ] {
        let mut c2 = c.clone();
        c2.serial = SerialConfig(serial);
        assert_eq!(parse(&serde_json::to_string(&c2).unwrap()).unwrap(), c2);
    }
    assert_eq!(
        c.serial.0,
        SerialOutput::File {
            path: "/c.log".into(),
            max_bytes: 65536
        }
    );
}

#[test]
fn defaults_apply() {
    let c = parse(r#"{"kernel": "/k"}"#).unwrap();
    assert_eq!(c, VmConfig::new("/k"));
    assert_eq!((c.vcpus, c.memory_mib), (1, 256));
    assert_eq!(c.serial.0, SerialOutput::Stdout);
    assert!(c.block.is_empty() && c.vsock.is_none() && !c.rng && c.balloon.is_none());
    let c = parse(r#"{"kernel": "/k", "balloon": null}"#).unwrap();
    assert!(c.balloon.is_none());
    let c = parse(r#"{"kernel": "/k", "balloon": {}}"#).unwrap();
    assert_eq!(
        c.balloon,
        Some(BalloonConfig {
            free_page_reporting: true
        })
    );
    let c = parse(r#"{"kernel": "/k", "serial": "none"}"#).unwrap();
    assert_eq!(c.serial.0, SerialOutput::None);
}

#[test]
fn unknown_and_bad_fields_are_named() {
    let e = parse(r#"{"kernel": "/k", "memory": 5}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown field `memory`"), "{e}");
    let e = parse(r#"{"kernel": "/k", "serial": "tty"}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("serial"), "{e}");
    let e = parse(r#"{"kernel": "/k", "block": [{"path": "/x", "ro": true}]}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown field `ro`"), "{e}");
    let e = parse(r#"{"kernel": "/k", "balloon": {"reporting": true}}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown field `reporting`"), "{e}");
    let e = parse(r#"{"kernel": "/k", "balloon": true}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("BalloonConfig"), "{e}");
    let e = parse(r#"{"vcpus": 1}"#).unwrap_err().to_string();
    assert!(e.contains("missing field `kernel`"), "{e}");
}

#[test]
fn net_devices_parse_validate_and_serialise() {
    let c = parse(
        r#"{"kernel": "/k", "net": [{"tap": "tap0", "mac": "02:aa:bb:cc:dd:0E",
            "mtu": 9000}, {"fd": 7}]}"#,
    )
    .unwrap();
    assert_eq!(c.net.len(), 2);
    assert_eq!(
        c.net[0].mac_bytes(),
        Some([2, 0xaa, 0xbb, 0xcc, 0xdd, 0x0e])
    );
    assert_eq!(c.net[1].fd, Some(7));
    for (i, n) in c.net.iter().enumerate() {
        n.validate(i).unwrap();
        let back: NetConfig = serde_json::from_value(serde_json::to_value(n).unwrap()).unwrap();
        assert_eq!(&back, n);
    }
    let j = serde_json::to_string(&c.net[1]).unwrap();
    assert_eq!(j, r#"{"fd":7}"#);
    let e = parse(r#"{"kernel": "/k", "net": [{"tap": "t", "ip": "1.2.3.4"}]}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown field `ip`"), "{e}");
    let check = |json: &str| {
        let n: NetConfig = serde_json::from_str(json).unwrap();
        n.validate(1).unwrap_err().to_string()
    };
    let e = check(r#"{}"#);
    assert!(e.starts_with("config field net[1]:"), "{e}");
    let e = check(r#"{"tap": "t", "fd": 4}"#);
    assert!(e.starts_with("config field net[1]:"), "{e}");
    let e = check(r#"{"tap": "a-name-far-too-long"}"#);
    assert!(e.starts_with("config field net[1].tap:"), "{e}");
    let e = check(r#"{"tap": "a/b"}"#);
    assert!(e.starts_with("config field net[1].tap:"), "{e}");
    let e = check(r#"{"fd": 1}"#);
    assert!(e.starts_with("config field net[1].fd:"), "{e}");
    for bad in [
        "02:aa:bb:cc:dd",
        "02:aa:bb:cc:dd:ee:ff",
        "0g:aa:bb:cc:dd:ee",
        "2:aa:bb:cc:dd:eee",
        "03:00:00:00:00:01",
    ] {
        let e = check(&format!(r#"{{"tap": "t", "mac": "{bad}"}}"#));
        assert!(e.starts_with("config field net[1].mac:"), "{bad}: {e}");
    }
    for bad in [0u32, 67, 65536, 4_000_000_000] {
        let e = check(&format!(r#"{{"tap": "t", "mtu": {bad}}}"#));
        assert!(e.starts_with("config field net[1].mtu:"), "{bad}: {e}");
    }
}

#[test]
fn validation_names_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let k = dir.path().join("k");
    std::fs::write(&k, b"x").unwrap();
    let base = format!(r#""kernel": "{}""#, k.display());
    let check = |extra: &str| {
        parse(&format!("{{{base}{extra}}}"))
            .unwrap()
            .validate(8)
            .map_err(|e| e.to_string())
    };
    assert!(check("").is_ok());
    assert!(
        check(r#", "vcpus": 0"#)
            .unwrap_err()
            .starts_with("config field vcpus:")
    );
    assert!(
        check(r#", "vcpus": 300"#)
            .unwrap_err()
            .contains("husk-vmm's limit of 254")
    );
    assert!(
        check(r#", "vcpus": 9"#)
            .unwrap_err()
            .contains("KVM's limit of 8")
    );
    assert!(
        check(r#", "memory_mib": 0"#)
            .unwrap_err()
            .starts_with("config field memory_mib")
    );
    assert!(
        check(r#", "memory_mib": 99999999"#)
            .unwrap_err()
            .contains("memory_mib")
    );
    assert!(
        check(r#", "initramfs": "/nonexistent/i""#)
            .unwrap_err()
            .contains("initramfs")
    );
    let long = "x".repeat(100);
    let e = check(&format!(r#", "vsock": {{"cid": 3, "uds": "/{long}"}}"#)).unwrap_err();
    assert!(e.starts_with("config field vsock.uds"), "{e}");
    let e = check(r#", "vsock": {"cid": 2, "uds": "/v"}"#).unwrap_err();
    assert!(e.starts_with("config field vsock.cid"), "{e}");
    let e = parse(r#"{"kernel": "/nonexistent/k"}"#)
        .unwrap()
        .validate(8)
        .unwrap_err();
    assert!(
        e.to_string()
            .starts_with("config field kernel: /nonexistent/k"),
        "{e}"
    );
    let e = check(r#", "serial": {"file": "/c.log", "max_bytes": 10}"#).unwrap_err();
    assert!(e.starts_with("config field serial.max_bytes"), "{e}");
    let e = check(&format!(r#", "cmdline": "{}""#, "a".repeat(3000))).unwrap_err();
    assert!(e.starts_with("config field cmdline"), "{e}");
}

#[test]
fn fs_shares_parse_and_round_trip() {
    let c =
        parse(r#"{"kernel": "/k", "fs": [{"tag": "share", "socket": "/run/vfs.sock"}]}"#).unwrap();
    assert_eq!(c.fs[0].tag, "share");
    assert!(c.shared_memory() && !c.memory_shared);
    let json = serde_json::to_string(&c.fs[0]).unwrap();
    let back: FsConfig = serde_json::from_str(&json).unwrap();
    assert_eq!(back, c.fs[0]);
    assert!(!parse(r#"{"kernel": "/k"}"#).unwrap().shared_memory());
    let e = parse(r#"{"kernel": "/k", "fs": [{"tag": "a", "path": "/s"}]}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown field `path`"), "{e}");
}

#[test]
fn fs_validation_names_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let k = dir.path().join("k");
    std::fs::write(&k, b"x").unwrap();
    let check = |fs: &str| {
        parse(&format!(r#"{{"kernel": "{}", "fs": {fs}}}"#, k.display()))
            .unwrap()
            .validate(8)
            .map_err(|e| e.to_string())
    };
    assert!(check(r#"[{"tag": "a", "socket": "/s"}]"#).is_ok());
    let t36 = "t".repeat(36);
    assert!(check(&format!(r#"[{{"tag": "{t36}", "socket": "/s"}}]"#)).is_ok());
    let e = check(r#"[{"tag": "", "socket": "/s"}]"#).unwrap_err();
    assert!(e.starts_with("config field fs[0].tag"), "{e}");
    let e = check(&format!(r#"[{{"tag": "{t36}x", "socket": "/s"}}]"#)).unwrap_err();
    assert!(e.starts_with("config field fs[0].tag"), "{e}");
    let e =
        check(r#"[{"tag": "a", "socket": "/s"}, {"tag": "a\u0000", "socket": "/s"}]"#).unwrap_err();
    assert!(
        e.starts_with("config field fs[1].tag: contains a NUL"),
        "{e}"
    );
    let e = check(r#"[{"tag": "a", "socket": "/s"}, {"tag": "a", "socket": "/t"}]"#).unwrap_err();
    assert!(e.starts_with("config field fs[1].tag"), "{e}");
    let long = "s".repeat(107);
    let e = check(&format!(r#"[{{"tag": "a", "socket": "/{long}"}}]"#)).unwrap_err();
    assert!(e.starts_with("config field fs[0].socket"), "{e}");
    let e = check(r#"[{"tag": "a", "socket": ""}]"#).unwrap_err();
    assert!(e.starts_with("config field fs[0].socket"), "{e}");
}
