//! `husk-agent`: see `husk-agent --help`.

use std::path::PathBuf;
use std::process::ExitCode;

use husk_agent::listen::ListenAddr;
use husk_agent::server::{self, Options};
use husk_agent::{container, init};

const HELP: &str = "\
husk-agent: husk's guest agent (PID 1 of the microVM); creates the containers.

Usage: husk-agent [--listen ADDR] [--state-dir DIR]

  --listen ADDR     vsock:PORT (default vsock:1024) or unix:PATH (a plain host, for
                    tests). stdio streams: vsock port 1026, or PATH.stdio;
                    port forwards: vsock port 1027, or PATH.forward.
  --state-dir DIR   where bundles and runtime state live (default /run/husk-agent)
  --help, --version

As PID 1 it loads /modules, leaves the initramfs, mounts /proc /sys /dev /run and
cgroup2, serves, announces readiness on host vsock port 1025 and powers the VM off on
DestroySandbox. Log level: HUSK_AGENT_LOG (error|warn|info|debug|trace; default info),
also from the kernel command line.";

fn parse(args: &[String], pid1: bool) -> Result<Options, String> {
    let mut opts = Options {
        listen: ListenAddr::default(),
        state_dir: PathBuf::from("/run/husk-agent"),
        pid1,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--listen" => {
                let v = it.next().ok_or("--listen needs a value")?;
                opts.listen = v.parse().map_err(|e| format!("--listen: {e}"))?;
            }
            "--state-dir" => {
                opts.state_dir = PathBuf::from(it.next().ok_or("--state-dir needs a value")?);
            }
            // The kernel passes unknown command-line words to init: as PID 1 they are
            // not ours to refuse.
            other if pid1 => eprintln!("husk-agent: ignoring argument {other:?}"),
            other => return Err(format!("unknown argument {other:?} (see --help)")),
        }
    }
    Ok(opts)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("runtime-helper") {
        return ExitCode::from(
            u8::try_from(container::helper::helper_main(&args[1..])).unwrap_or(1),
        );
    }
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{HELP}");
        return ExitCode::SUCCESS;
    }
    if args.iter().any(|a| a == "--version") {
        println!("husk-agent {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    let pid1 = std::process::id() == 1;
    let filter = std::env::var("HUSK_AGENT_LOG").unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .init();
    let opts = match parse(&args, pid1) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("husk-agent: {e}");
            return ExitCode::from(2);
        }
    };
    if pid1 {
        let n = init::load_modules();
        if let Err(e) = init::leave_initramfs().and_then(|()| init::mount_basics()) {
            eprintln!("husk-agent: guest set-up failed: {e}");
            init::poweroff();
        }
        // The guest's own lo, which containers without a network namespace of their
        // own share (as every init does; runc does it for each new namespace).
        if let Err(e) = container::netns::loopback_up() {
            eprintln!("husk-agent: guest set-up failed: {e}");
            init::poweroff();
        }
        tracing::info!(modules = n, "guest set up");
    } else {
        // Containers' processes are re-parented to the agent, which reaps them.
        // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) takes integer arguments only.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("husk-agent: {e}");
            if pid1 {
                init::poweroff();
            }
            return ExitCode::from(1);
        }
    };
    let result = rt.block_on(server::serve(opts));
    if let Err(e) = &result {
        eprintln!("husk-agent: {e}");
    }
    if pid1 {
        init::poweroff();
    }
    if result.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
