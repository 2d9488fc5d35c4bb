//! The Join service: a joiner's certificate for its token, a member's
//! renewal, and the join tokens `berth cluster join-token` prints.
//!
//! Enroll runs on the leader (api/forward.rs passes it on): it checks the
//! token against the replicated secrets, gives the name (an agent's node
//! name, once per key; a server's id, from the cluster), records the
//! certificate, and only then answers with it.

use std::time::Duration;

use berth_proto::cluster::{self, join_server::Join};
use berth_proto::records::{self, command::Op};
use tonic::{Request, Response, Status};

use super::{check_name, same_hash, secret_hash, ClusterCa, Issued, JoinToken, Role};
use crate::api::to_status;
use crate::app::App;
use crate::auth::{caller, Caller};

/// The Join service.
#[derive(Clone)]
pub struct JoinService {
    app: App,
    validity: Duration,
}

impl JoinService {
    /// Signs certificates valid for `validity` (--cert-days).
    pub fn new(app: App, validity: Duration) -> Self {
        Self { app, validity }
    }

    fn ca(&self) -> Result<(ClusterCa, records::Pki), Status> {
        let pki = self
            .app
            .state
            .pki()
            .map_err(|e| Status::internal(e.to_string()))?
            .ok_or_else(|| Status::unavailable("the cluster has no CA yet: try again"))?;
        let ca = ClusterCa::from_pem(&pki.ca_cert_pem, &pki.ca_key_pem)
            .map_err(|e| Status::internal(format!("the cluster's CA: {e}")))?;
        Ok((ca, pki))
    }

    /// Records a certificate for role/name, then answers with it.
    #[allow(clippy::too_many_arguments)]
    async fn record(
        &self,
        ca: &ClusterCa,
        trusted: &str,
        role: Role,
        name: &str,
        issued: Issued,
        server_id: u64,
        renewing_serial: &str,
    ) -> Result<Response<cluster::EnrollResponse>, Status> {
        self.app
            .write(Op::RecordCert(records::RecordCert {
                role: role.as_str().to_string(),
                name: name.to_string(),
                renewing_serial: renewing_serial.to_string(),
                key_digest: issued.key_digest.clone(),
                cert: Some(records::IssuedCert {
                    serial: issued.serial.clone(),
                    not_after_s: issued.not_after,
                    ca_digest: ca.digest().map_err(|e| Status::internal(e.to_string()))?,
                }),
            }))
            .await
            .map_err(to_status)?;
        tracing::info!(%role, %name, serial = %issued.serial, "signed a member's certificate");
        Ok(answer(ca, trusted, name, &issued, server_id))
    }
}

/// The answer with a signed certificate: it, then the CA's, and the CAs
/// to trust.
fn answer(
    ca: &ClusterCa,
    trusted: &str,
    name: &str,
    issued: &Issued,
    server_id: u64,
) -> Response<cluster::EnrollResponse> {
    Response::new(cluster::EnrollResponse {
        cert_pem: format!("{}{}", issued.cert_pem, ca.cert_pem()),
        trusted_pem: trusted.to_string(),
        name: name.to_string(),
        server_id,
        not_after_s: issued.not_after,
    })
}

/// The token of a role, from the state's secrets.
pub fn token_of(pki: &records::Pki, role: Role) -> Result<JoinToken, Status> {
    let digest = super::digest_of_pem(&pki.ca_cert_pem)
        .map_err(|e| Status::internal(format!("the cluster's CA: {e}")))?;
    let secret = match role {
        Role::Agent => &pki.agent_token_secret,
        Role::Server => &pki.server_token_secret,
        Role::Admin => {
            return Err(Status::invalid_argument(
                "join tokens are for agents and servers (agent or server)",
            ))
        }
    };
    Ok(JoinToken {
        ca_digest: digest,
        role,
        secret: secret.clone(),
    })
}

/// `berth cluster join-token ROLE [--rotate]`: the token, replaced first
/// with `rotate` (the old one is refused from the commit on).
pub async fn join_token(
    app: &App,
    req: cluster::JoinTokenRequest,
) -> Result<cluster::JoinTokenResponse, Status> {
    let role: Role = req
        .role
        .parse()
        .map_err(|e: super::PkiError| Status::invalid_argument(e.to_string()))?;
    let pki = app
        .state
        .pki()
        .map_err(|e| Status::internal(e.to_string()))?
        .ok_or_else(|| Status::unavailable("the cluster has no CA yet: try again"))?;
    let mut token = token_of(&pki, role)?;
    if req.rotate {
        let fresh = JoinToken::generate(&token.ca_digest, role);
        app.write(Op::RotateToken(records::RotateToken {
            role: role.as_str().to_string(),
            secret: fresh.secret.clone(),
        }))
        .await
        .map_err(to_status)?;
        tracing::info!(%role, "rotated the join token");
        token = fresh;
    }
    Ok(cluster::JoinTokenResponse {
        token: token.to_string(),
    })
}

#[tonic::async_trait]
impl Join for JoinService {
    async fn enroll(
        &self,
        req: Request<cluster::EnrollRequest>,
    ) -> Result<Response<cluster::EnrollResponse>, Status> {
        let req = req.into_inner();
        let token: JoinToken = req
            .token
            .trim()
            .parse()
            .map_err(|e: super::PkiError| Status::invalid_argument(e.to_string()))?;
        let (ca, pki) = self.ca()?;
        let current = token_of(&pki, token.role)?;
        if token.ca_digest != current.ca_digest {
            return Err(Status::unauthenticated(
                "the join token names another CA than this cluster's (a token of another \
                 cluster, or from before a CA rotation): get a new one with \
                 `berth cluster join-token`",
            ));
        }
        if !same_hash(&token.secret_hash(), &secret_hash(&current.secret)) {
            return Err(Status::unauthenticated(format!(
                "the {} join token is not this cluster's current one (rotated, or mistyped): \
                 get it with `berth cluster join-token {}`",
                token.role, token.role
            )));
        }
        match token.role {
            Role::Agent => {
                check_name(&req.name).map_err(|e| Status::invalid_argument(e.to_string()))?;
                let issued = ca
                    .sign_request(&req.csr_pem, Role::Agent, &req.name, &[], self.validity)
                    .map_err(|e| Status::invalid_argument(e.to_string()))?;
                self.record(
                    &ca,
                    &super::trusted_pem(&pki),
                    Role::Agent,
                    &req.name,
                    issued,
                    0,
                    "",
                )
                .await
            }
            Role::Server => {
                if req.addr.is_empty() {
                    return Err(Status::invalid_argument(
                        "a joining server names its advertised address",
                    ));
                }
                let status =
                    crate::api::membership::reserve_id(&self.app, &req.addr, req.server_id).await?;
                let id = status.reserved_id;
                let host = super::host_of(&req.addr);
                let issued = ca
                    .sign_request(
                        &req.csr_pem,
                        Role::Server,
                        &id.to_string(),
                        &[host],
                        self.validity,
                    )
                    .map_err(|e| Status::invalid_argument(e.to_string()))?;
                self.record(
                    &ca,
                    &super::trusted_pem(&pki),
                    Role::Server,
                    &id.to_string(),
                    issued,
                    id,
                    "",
                )
                .await
            }
            Role::Admin => Err(Status::invalid_argument(
                "join tokens are for agents and servers",
            )),
        }
    }

    async fn renew(
        &self,
        req: Request<cluster::RenewRequest>,
    ) -> Result<Response<cluster::EnrollResponse>, Status> {
        let Caller::Member(id) = caller(&req)? else {
            return Err(Status::unauthenticated(
                "a renewal needs the member's certificate",
            ));
        };
        let (ca, pki) = self.ca()?;
        let trusted = super::trusted_pem(&pki);
        let req = req.into_inner();
        let hosts = match id.role {
            Role::Server => self
                .app
                .raft_addr_of(&id.name)
                .map(|a| vec![super::host_of(&a)])
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        let issued = ca
            .sign_request(&req.csr_pem, id.role, &id.name, &hosts, self.validity)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        // Admin credentials are not members: several copies may be in use,
        // none recorded (and none revoked by another's renewal).
        if id.role == Role::Admin {
            tracing::info!(serial = %issued.serial, "renewed an admin credential");
            return Ok(answer(&ca, &trusted, &id.name, &issued, 0));
        }
        // A renewal is of the member's own name: the record takes the new
        // key, every earlier certificate but the one presented is revoked
        // (that one stays valid until the next renewal), all in one commit
        // that a removal in between refuses.
        self.record(&ca, &trusted, id.role, &id.name, issued, 0, &id.serial)
            .await
    }
}
