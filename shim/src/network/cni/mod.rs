//! CNI (the Container Network Interface, spec 0.4.0 and 1.0.0): network configuration
//! lists, running their plugins (ADD, DEL), and the results they return.
//!
//! A plugin is an executable in the plugin folder (`/usr/lib/cni` from Debian's
//! containernetworking-plugins) named by each list entry's `type`. It gets `CNI_COMMAND`,
//! `CNI_CONTAINERID`, `CNI_NETNS`, `CNI_IFNAME` and `CNI_PATH` in its environment and its
//! configuration on stdin: the entry plus the list's `name` and `cniVersion`, the result
//! of the plugin before it (`prevResult`) and, for plugins that declare the
//! `portMappings` capability, `runtimeConfig.portMappings`. ADD runs the plugins in
//! order; DEL in reverse with the final ADD result as `prevResult`.

use std::path::PathBuf;
use std::time::Duration;

mod exec;
mod list;
mod result;
#[cfg(test)]
mod tests;

pub use exec::*;
pub use list::*;
pub use result::*;

/// CNI versions whose configurations and results husk reads.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0"];

/// How long one plugin may run (iptables in an emulated machine is slow).
const PLUGIN_TIMEOUT: Duration = Duration::from_secs(120);

/// Most bytes read from a plugin's stdout or stderr.
const MAX_OUTPUT: u64 = 1 << 20;

/// Why a network configuration or a plugin failed.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    #[error("{file}: {field}: {message}")]
    Invalid {
        file: String,
        field: String,
        message: String,
    },
    #[error("cannot read {file}: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the CNI plugin folder {0} does not exist: install Debian's containernetworking-plugins \
         (apt-get install containernetworking-plugins), set network.plugin_dir, or use --network none"
    )]
    NoPluginDir(PathBuf),
    #[error(
        "CNI plugin {plugin:?} (network {network}) is not in {dir}: install it \
         (containernetworking-plugins), or use --network none"
    )]
    NoPlugin {
        plugin: String,
        network: String,
        dir: PathBuf,
    },
    #[error("CNI plugin {plugin} ({command}, network {network}) failed: {message}")]
    Plugin {
        plugin: String,
        command: &'static str,
        network: String,
        message: String,
    },
    #[error("CNI plugin {plugin} ({command}, network {network}): cannot run it: {source}")]
    Exec {
        plugin: String,
        command: &'static str,
        network: String,
        #[source]
        source: std::io::Error,
    },
    #[error("CNI plugin {plugin} (network {network}) returned a result husk cannot use: {message}")]
    BadResult {
        plugin: String,
        network: String,
        message: String,
    },
}
