//! A local OCI registry for tests: Debian's `docker-registry` on 127.0.0.1 (a free
//! port), its storage in a scratch folder, killed on drop (also when a test panics);
//! images pushed into it with `skopeo`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The tools a registry test needs besides husk's own (`make setup` installs them).
pub const TOOLS: [&str; 2] = ["docker-registry", "skopeo"];

/// A registry process, killed on drop.
#[derive(Debug)]
pub struct Registry {
    child: Child,
    port: u16,
    storage: PathBuf,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Registry {
    /// Starts one with its configuration, storage and logs in `dir`; returns once it
    /// listens. Panics (with its stderr) when it does not within 20 s.
    pub fn start(dir: &Path) -> Registry {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or_else(|e| panic!("no free port on 127.0.0.1: {e}"));
        let storage = dir.join("registry-storage");
        let config = dir.join("registry.yml");
        let err = dir.join("registry.err");
        let text = format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
             http:\n  addr: 127.0.0.1:{port}\n",
            storage.display()
        );
        let started = std::fs::write(&config, text)
            .and_then(|()| std::fs::File::create(&err))
            .and_then(|e| {
                Command::new("docker-registry")
                    .arg("serve")
                    .arg(&config)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(e)
                    .spawn()
            });
        let child = started.unwrap_or_else(|e| panic!("docker-registry serve: {e}"));
        let reg = Registry {
            child,
            port,
            storage,
        };
        let t0 = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "docker-registry did not listen on {port}: {}",
                std::fs::read_to_string(&err).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        reg
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Pushes the OCI layout's `latest` as `<host>/<name>` (plain HTTP). Panics with
    /// skopeo's output when it fails.
    pub fn push(&self, layout: &Path, name: &str) {
        self.copy(layout, name, &[]);
    }

    /// [`Registry::push`] in Docker's format (image manifest schema 2, as older Docker
    /// Hub images are): skopeo rewrites the media types on the way.
    pub fn push_docker_v2s2(&self, layout: &Path, name: &str) {
        self.copy(layout, name, &["--format", "v2s2"]);
    }

    fn copy(&self, layout: &Path, name: &str, extra: &[&str]) {
        let out = Command::new("skopeo")
            .args([
                "copy",
                "--quiet",
                "--insecure-policy",
                "--dest-tls-verify=false",
            ])
            .args(extra)
            .arg(format!("oci:{}:latest", layout.display()))
            .arg(format!("docker://{}/{name}", self.host()))
            .output()
            .unwrap_or_else(|e| panic!("skopeo: {e} (make setup installs it)"));
        assert!(
            out.status.success(),
            "skopeo copy to {}/{name}: {}",
            self.host(),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The registry's file of blob `digest` (to corrupt it).
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.storage
            .join("docker/registry/v2/blobs/sha256")
            .join(hex.get(..2).unwrap_or(""))
            .join(hex)
            .join("data")
    }
}
