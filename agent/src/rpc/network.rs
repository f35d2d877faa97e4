//! UpdateInterface and UpdateRoutes (protocol 0.4): the request is checked
//! ([`validate::update_interface`], [`validate::update_routes`]), then applied over
//! rtnetlink ([`crate::net`]) on a blocking thread. Errors map to ttrpc codes here:
//! a refused field INVALID_ARGUMENT, an unknown MAC or device NOT_FOUND, the kernel's
//! refusals by their errno.

use husk_agent_protocol::agent::{Empty, UpdateInterfaceRequest, UpdateRoutesRequest};
use husk_agent_protocol::validate;
use tracing::Instrument;

use crate::net::netlink::{Netlink, NetlinkError};
use crate::net::{NetError, interface, mac_string, route};

fn status(code: ttrpc::Code, msg: String) -> ttrpc::Error {
    tracing::warn!(error = %msg, ?code, "request failed");
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, msg))
}

fn invalid(e: validate::ValidateError) -> ttrpc::Error {
    status(ttrpc::Code::INVALID_ARGUMENT, e.to_string())
}

/// The ttrpc code for a failed network change.
fn code(e: &NetError) -> ttrpc::Code {
    match e {
        NetError::NoSuchMac { .. }
        | NetError::NoSuchMacs { .. }
        | NetError::NoSuchDevice { .. } => ttrpc::Code::NOT_FOUND,
        NetError::Netlink(NetlinkError::Kernel { errno, .. }) => match *errno {
            libc::EINVAL | libc::ERANGE | libc::EAFNOSUPPORT => ttrpc::Code::INVALID_ARGUMENT,
            libc::EEXIST => ttrpc::Code::ALREADY_EXISTS,
            libc::ENODEV | libc::ENOENT | libc::ESRCH => ttrpc::Code::NOT_FOUND,
            libc::ENETUNREACH | libc::EADDRNOTAVAIL | libc::EBUSY => {
                ttrpc::Code::FAILED_PRECONDITION
            }
            libc::EPERM | libc::EACCES => ttrpc::Code::PERMISSION_DENIED,
            _ => ttrpc::Code::INTERNAL,
        },
        NetError::Netlink(NetlinkError::Timeout { .. }) => ttrpc::Code::DEADLINE_EXCEEDED,
        NetError::Netlink(_) => ttrpc::Code::INTERNAL,
    }
}

/// Runs `f` with a fresh netlink socket on a blocking thread.
async fn with_netlink<T: Send + 'static>(
    f: impl FnOnce(&mut Netlink) -> Result<T, NetError> + Send + 'static,
) -> ttrpc::Result<T> {
    let span = tracing::Span::current();
    let r = tokio::task::spawn_blocking(move || {
        let _g = span.enter();
        let mut nl = Netlink::open()?;
        f(&mut nl)
    })
    .await
    .map_err(|e| status(ttrpc::Code::INTERNAL, format!("network thread: {e}")))?;
    r.map_err(|e| status(code(&e), crate::error_chain(&e)))
}

pub async fn update_interface(req: &UpdateInterfaceRequest) -> ttrpc::Result<Empty> {
    let cfg = validate::update_interface(req).map_err(invalid)?;
    let span =
        tracing::info_span!("update_interface", mac = %mac_string(&cfg.mac), name = %cfg.name);
    async move {
        let c = cfg.clone();
        let found = with_netlink(move |nl| interface::update(nl, &c)).await?;
        tracing::info!(
            index = found.index,
            was = %found.name,
            mtu = ?cfg.mtu,
            addresses = cfg.addresses.len(),
            "interface configured"
        );
        Ok(Empty::new())
    }
    .instrument(span)
    .await
}

pub async fn update_routes(req: &UpdateRoutesRequest) -> ttrpc::Result<Empty> {
    let routes = validate::update_routes(req).map_err(invalid)?;
    let span = tracing::info_span!("update_routes", routes = routes.len());
    async move {
        with_netlink(move |nl| route::update(nl, &routes)).await?;
        tracing::info!("routes replaced");
        Ok(Empty::new())
    }
    .instrument(span)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_codes() {
        let k = |errno| {
            NetError::Netlink(NetlinkError::Kernel {
                op: "x".into(),
                errno,
            })
        };
        assert_eq!(
            code(&NetError::NoSuchMac {
                mac: "02:00:00:00:00:01".into()
            }),
            ttrpc::Code::NOT_FOUND
        );
        assert_eq!(code(&k(libc::EINVAL)), ttrpc::Code::INVALID_ARGUMENT);
        assert_eq!(
            code(&k(libc::ENETUNREACH)),
            ttrpc::Code::FAILED_PRECONDITION
        );
        assert_eq!(code(&k(libc::EIO)), ttrpc::Code::INTERNAL);
    }
}
