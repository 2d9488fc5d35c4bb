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

/// The header a forwarded call carries.
const FORWARDED: &str = "x-berth-forwarded";

/// Wraps the Cluster service: serves on the leader, forwards elsewhere.
#[derive(Clone)]
pub struct LeaderForward<S> {
    inner: S,
    app: App,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

impl<S> LeaderForward<S> {
    pub fn new(inner: S, app: App) -> Self {
        Self {
            inner,
            app,
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
        let c = Channel::from_shared(format!("http://{addr}"))
            .ok()?
            .connect_lazy();
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

    fn call(&mut self, mut req: http::Request<BoxBody>) -> Self::Future {
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
            let Some(addr) = this.leader_elsewhere() else {
                let mut inner = this.inner.clone();
                let _ = std::future::poll_fn(|cx| inner.poll_ready(cx)).await;
                return inner.call(req).await;
            };
            let Some(mut channel) = this.channel(&addr) else {
                return Ok(tonic::Status::unavailable(format!(
                    "cannot reach the leader at {addr}"
                ))
                .into_http());
            };
            req.headers_mut()
                .insert(FORWARDED, http::HeaderValue::from_static("1"));
            // The request's URI names this server; the channel sends it on.
            std::future::poll_fn(|cx| channel.poll_ready(cx)).await.ok();
            match channel.call(req).await {
                Ok(resp) => Ok(resp),
                Err(e) => Ok(tonic::Status::unavailable(format!(
                    "forwarding to the leader at {addr}: {e}"
                ))
                .into_http()),
            }
        })
    }
}
