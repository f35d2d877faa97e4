use super::*;
use serde_json::{Value, json};
use std::path::Path;

#[test]
fn results_of_both_versions() {
    let v04 = json!({
        "cniVersion": "0.4.0",
        "interfaces": [
            {"name": "husk0", "mac": "5a:1f:2b:3c:4d:5e"},
            {"name": "veth1234", "mac": "6a:00:00:00:00:01"},
            {"name": "eth0", "mac": "0a:58:0a:58:00:05", "sandbox": "/run/husk/.networks/c.ns"}
        ],
        "ips": [{"version": "4", "interface": 2, "address": "10.88.0.5/16", "gateway": "10.88.0.1"}],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dns": {}
    });
    let r = CniResult::parse(&v04).unwrap();
    let i = r.container_interface("eth0", "/run/husk/.networks/c.ns");
    assert_eq!(i, Some(2));
    assert_eq!(r.interfaces[2].mac, "0a:58:0a:58:00:05");
    assert_eq!(r.addresses(i)[0].address, "10.88.0.5/16");
    assert_eq!(r.addresses(i)[0].gateway.as_deref(), Some("10.88.0.1"));
    assert_eq!(
        r.routes[0],
        Route {
            dst: "0.0.0.0/0".into(),
            gw: None
        }
    );

    let v10 = json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "eth0", "mac": "0a:58:0a:58:00:06", "sandbox": "/x", "mtu": 1400}],
        "ips": [
            {"interface": 0, "address": "10.88.0.6/16", "gateway": "10.88.0.1"},
            {"interface": 0, "address": "fd00::6/64"}
        ],
        "routes": [{"dst": "0.0.0.0/0", "gw": "10.88.0.1"}],
        "dns": {"nameservers": ["10.88.0.1"], "search": ["example"]}
    });
    let r = CniResult::parse(&v10).unwrap();
    assert_eq!(r.container_interface("eth0", "/other"), Some(0));
    assert_eq!(r.interfaces[0].mtu, Some(1400));
    assert_eq!(r.addresses(Some(0)).len(), 2);
    assert_eq!(r.dns.nameservers, ["10.88.0.1"]);
    assert_eq!(r.routes[0].gw.as_deref(), Some("10.88.0.1"));

    assert!(
        CniResult::parse(&json!({"ip4": {"ip": "10.0.0.2/24"}}))
            .unwrap_err()
            .contains("0.2.0")
    );
    let bad = json!({"ips": [{"address": "10.88.0.5"}]});
    assert!(
        CniResult::parse(&bad)
            .unwrap_err()
            .starts_with("ips[0].address")
    );
    let bad = json!({"interfaces": [], "ips": [{"address": "10.88.0.5/16", "interface": 3}]});
    assert!(CniResult::parse(&bad).unwrap_err().contains("interface"));
    let bad = json!({"routes": [{"dst": "0.0.0.0/0", "gw": "x"}]});
    assert!(
        CniResult::parse(&bad)
            .unwrap_err()
            .starts_with("routes[0].gw")
    );
}

#[test]
fn lists_are_checked_naming_file_and_field() {
    let f = "/etc/husk/net.d/10-x.conflist";
    let ok = r#"{"cniVersion": "0.4.0", "name": "x", "plugins": [{"type": "bridge"}, {"type": "portmap", "capabilities": {"portMappings": true}}]}"#;
    let l = parse_list(f, ok, None).unwrap();
    assert_eq!(l.plugin_types(), ["bridge", "portmap"]);
    for (text, field, what) in [
        ("{", "(json)", "EOF"),
        ("[]", "(json)", "object"),
        (
            r#"{"cniVersion": "1.0.0", "plugins": [{"type": "bridge"}]}"#,
            "name",
            "missing",
        ),
        (
            r#"{"cniVersion": "1.0.0", "name": "a/b", "plugins": [{"type": "bridge"}]}"#,
            "name",
            "letters",
        ),
        (
            r#"{"name": "x", "plugins": [{"type": "bridge"}]}"#,
            "cniVersion",
            "missing",
        ),
        (
            r#"{"cniVersion": "0.2.0", "name": "x", "plugins": [{"type": "bridge"}]}"#,
            "cniVersion",
            "not one of",
        ),
        (
            r#"{"cniVersion": "1.0.0", "name": "x"}"#,
            "plugins",
            "missing",
        ),
        (
            r#"{"cniVersion": "1.0.0", "name": "x", "plugins": []}"#,
            "plugins",
            "empty",
        ),
        (
            r#"{"cniVersion": "1.0.0", "name": "x", "plugins": [{"type": "bridge"}, {}]}"#,
            "plugins[1].type",
            "missing",
        ),
        (
            r#"{"cniVersion": "1.0.0", "name": "x", "plugins": [{"type": "../../bin/sh"}]}"#,
            "plugins[0].type",
            "not a plugin name",
        ),
        (
            r#"{"cniVersion": "1.0.0", "name": "x", "plugins": [{"type": "bridge", "capabilities": 1}]}"#,
            "plugins[0].capabilities",
            "object",
        ),
    ] {
        let e = parse_list(f, text, None).unwrap_err().to_string();
        assert!(e.starts_with(&format!("{f}: {field}: ")), "{text}: {e}");
        assert!(e.contains(what), "{text}: {e}");
    }
    // A single plugin's .conf is a list of one.
    let l = parse_list(
        f,
        r#"{"cniVersion": "1.0.0", "name": "one", "type": "bridge", "bridge": "b1"}"#,
        None,
    )
    .unwrap();
    assert_eq!(l.plugin_types(), ["bridge"]);
    assert_eq!(l.config["plugins"][0]["bridge"], "b1");
    assert!(l.config["plugins"][0].get("name").is_none());
}

#[test]
fn loading_a_folder() {
    let d = tempfile::tempdir().unwrap();
    let def = default_list("husk", "husk0", "10.88.0.0/16");
    assert_eq!(def.subnets(), ["10.88.0.0/16"]);
    assert_eq!(def.plugin_types(), ["bridge", "portmap", "firewall"]);
    let l = load(&d.path().join("missing"), def.clone());
    assert_eq!(l.networks.len(), 1);
    assert!(l.invalid.is_empty());
    std::fs::write(d.path().join("10-a.conflist"), r#"{"cniVersion": "1.0.0", "name": "a", "plugins": [{"type": "bridge", "ipam": {"type": "host-local", "subnet": "10.99.0.0/24"}}]}"#).unwrap();
    std::fs::write(
        d.path().join("20-bad.conflist"),
        r#"{"cniVersion": "1.0.0", "name": "b"}"#,
    )
    .unwrap();
    std::fs::write(
        d.path().join("30-a.conflist"),
        r#"{"cniVersion": "1.0.0", "name": "a", "plugins": [{"type": "bridge"}]}"#,
    )
    .unwrap();
    std::fs::write(
        d.path().join("40-husk.conflist"),
        r#"{"cniVersion": "1.0.0", "name": "husk", "plugins": [{"type": "ptp"}]}"#,
    )
    .unwrap();
    std::fs::write(d.path().join("README"), "not a network").unwrap();
    let l = load(d.path(), def);
    let names: Vec<&str> = l.networks.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["a", "husk"]);
    assert_eq!(l.networks[0].subnets(), ["10.99.0.0/24"]);
    assert_eq!(l.networks[1].plugin_types(), ["ptp"]);
    assert!(l.networks[1].source.is_some());
    let errs: Vec<String> = l.invalid.iter().map(ToString::to_string).collect();
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert!(
        errs[0].contains("20-bad.conflist: plugins: missing"),
        "{errs:?}"
    );
    assert!(errs[1].contains("30-a.conflist: name: "), "{errs:?}");
}

#[test]
fn plugin_configs_chain_and_carry_ports() {
    let list = default_list("husk", "husk0", "10.88.0.0/16").config;
    let ports = [crate::network::ports::parse_publish("8080:80").unwrap()];
    let prev = json!({"cniVersion": "1.0.0", "ips": []});
    let c = plugin_config(&list, &list["plugins"][1], Some(&prev), &ports);
    assert_eq!(c["type"], "portmap");
    assert_eq!(c["name"], "husk");
    assert_eq!(c["cniVersion"], "1.0.0");
    assert_eq!(c["prevResult"], prev);
    assert_eq!(c["runtimeConfig"]["portMappings"][0]["hostPort"], 8080);
    let c = plugin_config(&list, &list["plugins"][0], None, &ports);
    assert!(c.get("runtimeConfig").is_none() && c.get("prevResult").is_none());
}

#[test]
fn plugin_errors_show_msg_and_details() {
    let out = br#"{"cniVersion": "1.0.0", "code": 11, "msg": "failed to allocate", "details": "no IP addresses available in range set"}"#;
    assert_eq!(
        error_message(Some(1), out, b""),
        "failed to allocate: no IP addresses available in range set (CNI error code 11)"
    );
    assert_eq!(
        error_message(Some(2), b"", b"boom\n"),
        "exit status 2: boom"
    );
}

#[test]
fn plugins_run_with_the_cni_environment() {
    // A fake plugin: records its environment and stdin, answers a result.
    let d = tempfile::tempdir().unwrap();
    let log = d.path().join("log");
    let plugin = d.path().join("fake");
    std::fs::write(
        &plugin,
        format!(
            "#!/bin/sh\n{{ echo \"$CNI_COMMAND $CNI_CONTAINERID $CNI_NETNS $CNI_IFNAME $CNI_PATH\"; cat; echo; }} >>{}\n\
             [ \"$CNI_COMMAND\" = ADD ] && echo '{{\"cniVersion\":\"1.0.0\",\"interfaces\":[{{\"name\":\"eth0\",\"mac\":\"0a:00:00:00:00:01\",\"sandbox\":\"/ns\"}}],\"ips\":[{{\"address\":\"10.1.0.2/24\",\"interface\":0}}]}}'\n\
             exit 0\n",
            log.display()
        ),
    )
    .unwrap();
    std::fs::write(
        d.path().join("failing"),
        "#!/bin/sh\necho '{\"code\": 7, \"msg\": \"bad config\", \"details\": \"no bridge\"}'\nexit 1\n",
    )
    .unwrap();
    for p in ["fake", "failing"] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(d.path().join(p), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let list = parse_list("t", r#"{"cniVersion": "1.0.0", "name": "t", "plugins": [{"type": "fake"}, {"type": "fake", "capabilities": {"portMappings": true}}]}"#, None).unwrap();
    let ports = [crate::network::ports::parse_publish("1:2").unwrap()];
    let inv = Invocation {
        plugin_dir: d.path(),
        container_id: "c1",
        netns: Path::new("/ns"),
        ifname: "eth0",
        ports: &ports,
    };
    let r = add(&list, &inv).unwrap();
    assert_eq!(r["ips"][0]["address"], "10.1.0.2/24");
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], format!("ADD c1 /ns eth0 {}", d.path().display()));
    let first: Value = serde_json::from_str(lines[1]).unwrap();
    assert!(first.get("prevResult").is_none());
    let second: Value = serde_json::from_str(lines[3]).unwrap();
    assert_eq!(second["prevResult"]["ips"][0]["address"], "10.1.0.2/24");
    assert_eq!(
        second["runtimeConfig"]["portMappings"][0]["containerPort"],
        2
    );
    assert!(del(&list, &inv, Some(&r)).is_empty());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("DEL c1 /ns eth0"), "{text}");

    let failing = parse_list(
        "t",
        r#"{"cniVersion": "1.0.0", "name": "t", "plugins": [{"type": "failing"}]}"#,
        None,
    )
    .unwrap();
    let e = add(&failing, &inv).unwrap_err().to_string();
    assert_eq!(
        e,
        "CNI plugin failing (ADD, network t) failed: bad config: no bridge (CNI error code 7)"
    );
    let missing = parse_list(
        "t",
        r#"{"cniVersion": "1.0.0", "name": "t", "plugins": [{"type": "fake"}, {"type": "nope"}]}"#,
        None,
    )
    .unwrap();
    let e = add(&missing, &inv).unwrap_err().to_string();
    assert!(
        e.contains("\"nope\"") && e.contains("containernetworking-plugins"),
        "{e}"
    );
    let nodir = Invocation {
        plugin_dir: Path::new("/no/such/cni"),
        ..inv
    };
    let e = add(&list, &nodir).unwrap_err().to_string();
    assert!(
        e.contains("/no/such/cni") && e.contains("--network none"),
        "{e}"
    );
}
