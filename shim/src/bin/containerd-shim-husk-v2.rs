//! `containerd-shim-husk-v2`: containerd's runtime v2 shim for husk (thin front of the
//! library, husk::shimv2). containerd runs it as `io.containerd.husk.v2`.

use husk::shimv2::{HuskShim, RUNTIME_ID, shim_config};

#[tokio::main]
async fn main() {
    containerd_shim::asynchronous::run::<HuskShim>(RUNTIME_ID, Some(shim_config())).await;
    // Served and shut down (or `start`/`delete` done): exit now, without waiting for
    // blocking threads a hostile or absent FIFO writer could hold.
    std::process::exit(0);
}
