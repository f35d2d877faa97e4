//! The generated ttrpc service works end to end: a server on a unix socket, the
//! generated client, a request and its answer, and an error status carried back.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use std::sync::Arc;

use husk_agent_protocol::PROTOCOL_VERSION;
use husk_agent_protocol::agent::{GuestDetailsRequest, GuestDetailsResponse};
use husk_agent_protocol::agent_ttrpc::{Agent, AgentClient, create_agent};

struct Fake;

#[async_trait::async_trait]
impl Agent for Fake {
    async fn guest_details(
        &self,
        _ctx: &ttrpc::r#async::TtrpcContext,
        req: GuestDetailsRequest,
    ) -> ttrpc::Result<GuestDetailsResponse> {
        if req.protocol_major != PROTOCOL_VERSION.0 {
            return Err(ttrpc::Error::RpcStatus(ttrpc::get_status(
                ttrpc::Code::FAILED_PRECONDITION,
                format!(
                    "protocol major {} is not {}",
                    req.protocol_major, PROTOCOL_VERSION.0
                ),
            )));
        }
        let mut r = GuestDetailsResponse::new();
        r.protocol_major = PROTOCOL_VERSION.0;
        r.protocol_minor = PROTOCOL_VERSION.1;
        r.agent_version = "test".into();
        r.cpus = 2;
        Ok(r)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_details_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("unix://{}", dir.path().join("agent.sock").display());
    let mut server = ttrpc::r#async::Server::new()
        .bind(&addr)
        .unwrap()
        .register_service(create_agent(Arc::new(Fake)));
    server.start().await.unwrap();

    let client = AgentClient::new(ttrpc::r#async::Client::connect(&addr).await.unwrap());
    let ctx = || ttrpc::context::with_timeout(5_000_000_000);
    let mut req = GuestDetailsRequest::new();
    req.protocol_major = PROTOCOL_VERSION.0;
    let resp = client.guest_details(ctx(), &req).await.unwrap();
    assert_eq!((resp.protocol_major, resp.cpus), (PROTOCOL_VERSION.0, 2));
    assert_eq!(resp.agent_version, "test");

    req.protocol_major = 99;
    match client.guest_details(ctx(), &req).await {
        Err(ttrpc::Error::RpcStatus(s)) => {
            assert_eq!(s.code(), ttrpc::Code::FAILED_PRECONDITION);
            assert!(s.message().contains("99"));
        }
        other => panic!("expected a status error, got {other:?}"),
    }
    server.shutdown().await.unwrap();
}
