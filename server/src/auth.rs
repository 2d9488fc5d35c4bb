//! Authorization of every call, by the role in the caller's certificate
//! (DESIGN.md, Security): a tower layer in front of every service.
//!
//! - admin: the Cluster API;
//! - agent: its own session (the session service then holds it to the
//!   node its certificate names), and the cluster status;
//! - server: Raft and membership (JoinCluster, LeaveCluster);
//! - anyone over TLS, certificate or not: Join.Enroll, which checks a join
//!   token instead.
//!
//! A plaintext client, a TLS client without a certificate, and a
//! certificate that was revoked are refused with UNAUTHENTICATED; a
//! certificate of the wrong role with PERMISSION_DENIED. Every refusal
//! says why and what would pass.
//!
//! A call a follower passes on to the leader (api/forward.rs) reaches the
//! leader from the follower's server certificate; the follower names the
//! original caller in [`CALLER_HEADER`], which only a server's word
//! carries: from any other peer the header is ignored.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::body::BoxBody;
use tonic::Status;
use tower_service::Service;

use crate::app::App;
use crate::pki::{Identity, Role};
use crate::tls::{Peer, PeerAuth};

/// The header in which a server names the caller of a call it passes on.
pub const CALLER_HEADER: &str = "x-berth-caller";

/// Who makes a call, as authorization found: what handlers read from the
/// request's extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A TLS client without a certificate (a joiner).
    Anonymous,
    /// A member, by its certificate.
    Member(Identity),
}

impl Caller {
    /// The header value that names this caller to the leader.
    pub fn header_value(&self) -> String {
        match self {
            Caller::Anonymous => "-".to_string(),
            Caller::Member(id) => format!("{}/{}/{}", id.role, id.name, id.serial),
        }
    }

    fn from_header(v: &str) -> Option<Caller> {
        if v == "-" {
            return Some(Caller::Anonymous);
        }
        let mut parts = v.splitn(3, '/');
        let role: Role = parts.next()?.parse().ok()?;
        let name = parts.next()?.to_string();
        let serial = parts.next()?.to_string();
        crate::pki::check_name(&name).ok()?;
        Some(Caller::Member(Identity {
            role,
            name,
            serial,
            not_after: 0,
        }))
    }

    /// The member's identity, if the caller is one.
    pub fn member(&self) -> Option<&Identity> {
        match self {
            Caller::Member(id) => Some(id),
            Caller::Anonymous => None,
        }
    }
}

/// The caller of a request that passed [`Authorize`].
pub fn caller<T>(req: &tonic::Request<T>) -> Result<Caller, Status> {
    req.extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| Status::internal("the call did not pass authorization"))
}

/// Who may call a method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Policy {
    /// Members of these roles.
    Roles(&'static [Role]),
    /// Any TLS client, with or without a certificate.
    AnyTls,
    /// No one: not a method of berth.
    Unknown,
}

/// The policy of a gRPC path (`/package.Service/Method`).
fn policy(path: &str) -> Policy {
    let (service, method) = path
        .trim_start_matches('/')
        .split_once('/')
        .unwrap_or((path, ""));
    match (service, method) {
        ("berth.cluster.Cluster", "GetClusterStatus") => {
            Policy::Roles(&[Role::Admin, Role::Agent, Role::Server])
        }
        ("berth.cluster.Cluster", "JoinCluster") => Policy::Roles(&[Role::Server]),
        ("berth.cluster.Cluster", "LeaveCluster") => Policy::Roles(&[Role::Admin, Role::Server]),
        ("berth.cluster.Cluster", _) => Policy::Roles(&[Role::Admin]),
        ("berth.cluster.Join", "Enroll") => Policy::AnyTls,
        ("berth.cluster.Join", "Renew") => Policy::Roles(&[Role::Admin, Role::Agent, Role::Server]),
        ("berth.agent.AgentSession", _) => Policy::Roles(&[Role::Agent]),
        ("berth.raft.Raft", _) => Policy::Roles(&[Role::Server]),
        _ => Policy::Unknown,
    }
}

/// Decides a call: the caller it is made as, or the refusal.
fn decide(
    app: &App,
    path: &str,
    peer: Option<&Peer>,
    forwarded: Option<&str>,
) -> Result<Caller, Status> {
    let policy = policy(path);
    if policy == Policy::Unknown {
        return Err(Status::unimplemented(format!("no such method: {path}")));
    }
    let auth = peer.map(|p| &p.auth).unwrap_or(&PeerAuth::Plaintext);
    let direct = match auth {
        PeerAuth::Plaintext => {
            return Err(Status::unauthenticated(
                "this berth server takes TLS connections only, and this one is plaintext: \
                 connect with the cluster's credentials (the CLI reads admin.conf from \
                 --config, BERTH_CONFIG or ~/.berth/config; agents and servers join with a token)",
            ))
        }
        PeerAuth::Refused(why) => {
            return Err(Status::unauthenticated(format!(
                "the client certificate was refused: {why}"
            )))
        }
        PeerAuth::Unreadable(why) => {
            return Err(Status::unauthenticated(format!(
                "the client certificate names no berth member: {why}"
            )))
        }
        PeerAuth::NoCertificate => Caller::Anonymous,
        PeerAuth::Member(id) => {
            // A connection outlives the certificate it was opened with:
            // each call checks that it has not ended since.
            if id.not_after < berth_proto::credential::now_s() {
                return Err(Status::unauthenticated(format!(
                    "the certificate of {} {} has expired since this connection was opened: \
                     connect again with a renewed one",
                    id.role, id.name
                )));
            }
            if revoked(app, id)? {
                return Err(Status::unauthenticated(format!(
                    "the certificate of {} {} (serial {}) was revoked: the member was removed \
                     from the cluster; join again with a token",
                    id.role,
                    id.name,
                    short(&id.serial)
                )));
            }
            Caller::Member(id.clone())
        }
    };
    // A server speaks for the caller it passes a call on for.
    let caller = match (&direct, forwarded) {
        (Caller::Member(id), Some(v)) if id.role == Role::Server => Caller::from_header(v)
            .ok_or_else(|| Status::invalid_argument(format!("malformed {CALLER_HEADER}: {v:?}")))?,
        _ => direct,
    };
    if let (Caller::Member(id), true) = (&caller, forwarded.is_some()) {
        if revoked(app, id)? {
            return Err(Status::unauthenticated(format!(
                "the certificate of {} {} was revoked",
                id.role, id.name
            )));
        }
    }
    match (policy, &caller) {
        (Policy::AnyTls, _) => Ok(caller),
        (Policy::Roles(roles), Caller::Anonymous) => Err(Status::unauthenticated(format!(
            "no client certificate: {} needs the certificate of a cluster {} (the CLI's \
             admin.conf; an agent's or a server's from its join)",
            method_of(path),
            names(roles)
        ))),
        (Policy::Roles(roles), Caller::Member(id)) if roles.contains(&id.role) => Ok(caller),
        (Policy::Roles(roles), Caller::Member(id)) => Err(Status::permission_denied(format!(
            "the certificate of {} {} may not call {}: it needs the {} role",
            id.role,
            id.name,
            method_of(path),
            names(roles)
        ))),
        (Policy::Unknown, _) => Err(Status::unimplemented(path.to_string())),
    }
}

/// True if the member's certificate was revoked. A state that cannot be
/// read refuses the call as unavailable (fails closed, and says it may
/// pass later: it is not a revocation).
fn revoked(app: &App, id: &Identity) -> Result<bool, Status> {
    app.state
        .is_revoked(&id.serial, id.role.as_str(), &id.name)
        .map_err(|e| Status::unavailable(format!("checking the certificate's revocation: {e}")))
}

fn names(roles: &[Role]) -> String {
    let v: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
    v.join(" or ")
}

fn method_of(path: &str) -> &str {
    path.trim_start_matches('/')
}

fn short(serial: &str) -> &str {
    &serial[..serial.len().min(16)]
}

/// The layer that puts [`Authorize`] in front of every service.
#[derive(Clone)]
pub struct AuthorizeLayer {
    app: App,
}

impl AuthorizeLayer {
    pub fn new(app: App) -> Self {
        Self { app }
    }
}

impl<S> tower_layer::Layer<S> for AuthorizeLayer {
    type Service = Authorize<S>;

    fn layer(&self, inner: S) -> Authorize<S> {
        Authorize {
            inner,
            app: self.app.clone(),
        }
    }
}

/// Refuses a call its caller may not make; otherwise hands it on with
/// its [`Caller`] among the request's extensions.
#[derive(Clone)]
pub struct Authorize<S> {
    inner: S,
    app: App,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S> Service<http::Request<BoxBody>> for Authorize<S>
where
    S: Service<http::Request<BoxBody>, Response = http::Response<BoxBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<BoxBody>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<BoxBody>) -> Self::Future {
        let forwarded = req
            .headers()
            .get(CALLER_HEADER)
            .map(|v| v.to_str().unwrap_or("?").to_string());
        let decided = decide(
            &self.app,
            req.uri().path(),
            req.extensions().get::<Peer>(),
            forwarded.as_deref(),
        );
        match decided {
            Ok(caller) => {
                req.headers_mut().remove(CALLER_HEADER);
                req.extensions_mut().insert(caller);
                // The inner service was made ready by poll_ready: take it,
                // and leave a clone for the next call (tower's rule).
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                Box::pin(inner.call(req))
            }
            Err(status) => {
                tracing::debug!(path = req.uri().path(), "refused: {}", status.message());
                Box::pin(async move { Ok(status.into_http()) })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_method_has_the_role_the_design_gives_it() {
        use Role::*;
        assert_eq!(
            policy("/berth.cluster.Cluster/CreateContainer"),
            Policy::Roles(&[Admin])
        );
        assert_eq!(
            policy("/berth.cluster.Cluster/Backup"),
            Policy::Roles(&[Admin])
        );
        assert_eq!(
            policy("/berth.cluster.Cluster/JoinCluster"),
            Policy::Roles(&[Server])
        );
        assert_eq!(
            policy("/berth.agent.AgentSession/Session"),
            Policy::Roles(&[Agent])
        );
        assert_eq!(policy("/berth.raft.Raft/Vote"), Policy::Roles(&[Server]));
        assert_eq!(policy("/berth.cluster.Join/Enroll"), Policy::AnyTls);
        assert_eq!(policy("/grpc.health.v1.Health/Check"), Policy::Unknown);
    }

    #[test]
    fn a_forwarded_caller_reads_back_and_garbage_does_not() {
        let id = Identity {
            role: Role::Admin,
            name: "admin".into(),
            serial: "0abc".into(),
            not_after: 0,
        };
        let c = Caller::Member(id);
        assert_eq!(Caller::from_header(&c.header_value()), Some(c));
        assert_eq!(Caller::from_header("-"), Some(Caller::Anonymous));
        for bad in ["", "king/x/1", "admin", "admin/a b/1"] {
            assert_eq!(Caller::from_header(bad), None, "{bad}");
        }
    }
}
