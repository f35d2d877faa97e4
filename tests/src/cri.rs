//! A CRI client for the system tests: the Kubernetes CRI v1 API (the `k8s-cri` crate,
//! tonic) over containerd's unix socket, with the requests a kubelet would send built
//! from a few parameters.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint, Uri};

pub use k8s_cri::v1;

/// `NamespaceMode` values of the CRI API.
pub mod ns_mode {
    pub const POD: i32 = 0;
    pub const CONTAINER: i32 = 1;
    pub const NODE: i32 = 2;
}

/// A connection to a CRI endpoint (containerd's socket).
#[derive(Clone, Debug)]
pub struct Cri {
    pub runtime: RuntimeServiceClient<Channel>,
    pub images: ImageServiceClient<Channel>,
}

impl Cri {
    /// Connects to the unix socket at `socket`.
    pub async fn connect(socket: &Path) -> Result<Cri, tonic::transport::Error> {
        let path: PathBuf = socket.to_path_buf();
        // The URI is ignored: every connection goes to the socket.
        let channel = Endpoint::from_static("http://[::]:0")
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(
                        tokio::net::UnixStream::connect(path).await?,
                    ))
                }
            }))
            .await?;
        Ok(Cri {
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
        })
    }
}

/// What a test asks of a pod.
#[derive(Clone, Debug, Default)]
pub struct PodSpec {
    pub name: String,
    pub hostname: String,
    pub log_directory: String,
    /// `ns_mode` values for network, pid and ipc.
    pub network: i32,
    pub pid: i32,
    pub ipc: i32,
    pub annotations: HashMap<String, String>,
    pub dns: Option<cri::DnsConfig>,
}

impl PodSpec {
    /// A pod named `name` with its own network, a pid namespace per container (the
    /// kubelet's default) and logs under `log_root/<name>`.
    pub fn new(name: &str, log_root: &Path) -> PodSpec {
        PodSpec {
            name: name.into(),
            hostname: name.into(),
            log_directory: log_root.join(name).display().to_string(),
            network: ns_mode::POD,
            pid: ns_mode::CONTAINER,
            ipc: ns_mode::POD,
            annotations: HashMap::new(),
            dns: None,
        }
    }

    /// The `PodSandboxConfig` a kubelet would send for this pod.
    pub fn config(&self) -> cri::PodSandboxConfig {
        cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: self.name.clone(),
                uid: format!("uid-{}", self.name),
                namespace: "husk-test".into(),
                attempt: 0,
            }),
            hostname: self.hostname.clone(),
            log_directory: self.log_directory.clone(),
            annotations: self.annotations.clone(),
            dns_config: self.dns.clone(),
            linux: Some(cri::LinuxPodSandboxConfig {
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(cri::NamespaceOption {
                        network: self.network,
                        pid: self.pid,
                        ipc: self.ipc,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

/// A container config: `image`, `command`, its log at `<name>.log` in the pod's log
/// directory, the pod's namespace modes.
pub fn container_config(
    pod: &PodSpec,
    name: &str,
    image: &str,
    command: &[&str],
) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        command: command.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}.log"),
        linux: Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    network: pod.network,
                    pid: pod.pid,
                    ipc: pod.ipc,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            resources: Some(cri::LinuxContainerResources::default()),
        }),
        ..Default::default()
    }
}
