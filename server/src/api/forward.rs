//! Any server answers any CLI call: a server that does not lead passes the
//! call, as it is, to the leader over gRPC and hands back the answer. Only
//! the cluster status is answered where it is asked (it is how one looks at
//! a follower). A forwarded call carries a header, so that a call never
//! goes round between servers that disagree about who leads.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tonic::body::BoxBody;
use tonic::server::NamedService;
use tonic::transport::Channel;
use tower_service::Service;

use crate::app::App;
use crate::auth::{Caller, CALLER_HEADER};

/// The header a forwarded call carries.
const FORWARDED: &str = "x-berth-forwarded";

/// Wraps the Cluster service: serves on the leader, forwards elsewhere.
#[derive(Clone)]
pub struct LeaderForward<S> {
    inner: S,
    app: App,
    tls: Arc<crate::tls::ServerTls>,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

impl<S> LeaderForward<S> {
    /// Forwards over TLS with this server's own certificate (`tls`); the
    /// leader then reads the original caller from [`CALLER_HEADER`].
    pub fn new(inner: S, app: App, tls: Arc<crate::tls::ServerTls>) -> Self {
        Self {
            inner,
            app,
            tls,
            channels: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// The leader's address if this server does not lead and knows who does.
    fn leader_elsewhere(&self) -> Option<String> {
        use openraft::async_runtime::WatchReceiver;
        // Read in place: this runs on every call, and a copy of the metrics
        // is a copy of the membership and replication maps.
        let watch = self.app.raft.metrics();
        let m = watch.borrow_watched();
        let leader = m.current_leader.filter(|l| *l != m.id)?;
        m.membership_config
            .membership()
            .get_node(&leader)
            .map(|n| n.addr.clone())
    }

    /// Waits, up to three seconds, until some member is known to lead.
    async fn await_leader(app: App) {
        let _ = app
            .raft
            .wait(Some(std::time::Duration::from_secs(3)))
            .metrics(|m| m.current_leader.is_some(), "a leader")
            .await;
    }

    fn channel(&self, addr: &str) -> Option<Channel> {
        let mut map = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = map.get(addr) {
            return Some(c.clone());
        }
        let c = berth_proto::transport::endpoint(addr)
            .ok()?
            .connect_with_connector_lazy({
                let tls = self.tls.clone();
                berth_proto::transport::Connector::current(move || tls.client())
            });
        map.insert(addr.to_string(), c.clone());
        Some(c)
    }
}

impl<S: NamedService> NamedService for LeaderForward<S> {
    const NAME: &'static str = S::NAME;
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S> Service<http::Request<BoxBody>> for LeaderForward<S>
where
    S: Service<http::Request<BoxBody>, Response = http::Response<BoxBody>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<BoxBody>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<BoxBody>) -> Self::Future {
        let local = req.uri().path().ends_with("/GetClusterStatus")
            || req.headers().contains_key(FORWARDED);
        if local {
            return Box::pin(self.inner.call(req));
        }
        let this = self.clone();
        Box::pin(async move {
            // During an election no leader is known: wait for its outcome
            // rather than fail the call (a leader change is latency only).
            Self::await_leader(this.app.clone()).await;
            if client_streaming(req.uri().path()) {
                return Ok(this.send(req).await);
            }
            // A call that reached a server which then found it no longer
            // led, before it proposed the call's change (NOT_LEADER: nothing
            // was written), goes on to the leader elected since: the call
            // is kept whole to be sent again.
            let (parts, body) = req.into_parts();
            // At most one message's worth: what is kept is bounded (an
            // anonymous Enroll passes here too).
            let limited = http_body_util::Limited::new(body, berth_proto::limits::MAX_MESSAGE + 64);
            let bytes = match http_body_util::BodyExt::collect(limited).await {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    return Ok(tonic::Status::resource_exhausted(format!(
                        "the request is larger than a message may be: {e}"
                    ))
                    .into_http())
                }
            };
            let mut attempt = http::Request::from_parts(parts, body_of(bytes.clone()));
            for _ in 0..MOVES {
                let again = copy_request(&attempt, bytes.clone());
                let resp = this.send(attempt).await;
                if !resp.headers().contains_key(NOT_LEADER) {
                    return Ok(resp);
                }
                tracing::debug!(path = %again.uri().path(), "the leadership moved during a call: it goes on to the new leader");
                Self::await_leader(this.app.clone()).await;
                attempt = again;
            }
            Ok(this.send(attempt).await)
        })
    }
}

/// How many times one call follows the leadership as it moves.
const MOVES: usize = 3;

impl<S> LeaderForward<S>
where
    S: Service<http::Request<BoxBody>, Response = http::Response<BoxBody>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    /// Serves a call here if this server leads (or none is known), else
    /// sends it on to the leader.
    fn send(
        &self,
        req: http::Request<BoxBody>,
    ) -> impl Future<Output = http::Response<BoxBody>> + Send + 'static {
        let leader = self.leader_elsewhere();
        let channel = leader.as_deref().and_then(|addr| self.channel(addr));
        let mut inner = self.inner.clone();
        async move {
            match leader {
                Some(addr) => forward(channel, &addr, req).await,
                None => {
                    let _ = std::future::poll_fn(|cx| inner.poll_ready(cx)).await;
                    match inner.call(req).await {
                        Ok(resp) => resp,
                        Err(never) => match never {},
                    }
                }
            }
        }
    }
}

/// Sends a call on to the leader at `addr`, marked as forwarded.
async fn forward(
    channel: Option<Channel>,
    addr: &str,
    mut req: http::Request<BoxBody>,
) -> http::Response<BoxBody> {
    let Some(mut channel) = channel else {
        return tonic::Status::unavailable(format!("cannot reach the leader at {addr}"))
            .into_http();
    };
    req.headers_mut()
        .insert(FORWARDED, http::HeaderValue::from_static("1"));
    // The leader authorizes the call as its caller's, not this server's.
    let caller = req
        .extensions()
        .get::<Caller>()
        .map(Caller::header_value)
        .unwrap_or_else(|| "-".to_string());
    match http::HeaderValue::from_str(&caller) {
        Ok(v) => {
            req.headers_mut().insert(CALLER_HEADER, v);
        }
        Err(_) => {
            return tonic::Status::internal("the caller's name cannot be passed on").into_http()
        }
    }
    // The request's URI names this server; the channel sends it on.
    std::future::poll_fn(|cx| channel.poll_ready(cx)).await.ok();
    match channel.call(req).await {
        Ok(resp) => resp,
        Err(e) => tonic::Status::unavailable(format!("forwarding to the leader at {addr}: {e}"))
            .into_http(),
    }
}

/// The metadata key of a status that says this server was not the leader
/// when it came to propose the call's change: nothing was written.
pub const NOT_LEADER: &str = "x-berth-not-leader";

/// The calls whose requests are streams (uploads, attachments): never
/// buffered, so never replayed.
fn client_streaming(path: &str) -> bool {
    [
        "/Attach",
        "/Exec",
        "/ImportImage",
        "/LoadImages",
        "/BuildImage",
    ]
    .iter()
    .any(|m| path.ends_with(m))
}

fn body_of(bytes: bytes::Bytes) -> BoxBody {
    tonic::body::boxed(http_body_util::Full::new(bytes))
}

/// A copy of a unary call to send elsewhere: its method, URI, headers,
/// body and caller (not its connection's other extensions).
fn copy_request(of: &http::Request<BoxBody>, bytes: bytes::Bytes) -> http::Request<BoxBody> {
    let mut req = http::Request::new(body_of(bytes));
    if let Some(c) = of.extensions().get::<Caller>() {
        req.extensions_mut().insert(c.clone());
    }
    *req.method_mut() = of.method().clone();
    *req.uri_mut() = of.uri().clone();
    *req.version_mut() = of.version();
    *req.headers_mut() = of.headers().clone();
    req
}

#[cfg(test)]
mod streaming_tests {
    use super::client_streaming;

    /// Every call whose request is a stream in cluster.proto is passed on
    /// as a stream: one left out would be collected whole in memory here
    /// (a build's context, an upload) and refused past one message.
    #[test]
    fn every_client_streaming_call_is_streamed() {
        let proto = include_str!("../../../proto/proto/cluster.proto");
        let mut seen = 0;
        for line in proto.lines() {
            let line = line.trim();
            let Some(rest) = line.strip_prefix("rpc ") else {
                continue;
            };
            let (name, args) = rest.split_once('(').expect("an rpc line");
            let streamed = args.trim_start().starts_with("stream ");
            assert_eq!(
                client_streaming(&format!("/berth.cluster.Cluster/{name}")),
                streamed,
                "{name}"
            );
            seen += 1;
        }
        assert!(seen > 40, "read {seen} rpcs");
    }
}
