//! CA rotation with no downtime (`berth cluster ca --rotate`).
//!
//! 1. The leader makes a new CA and commits it (`RotateCa`): it signs from
//!    then on, and the old one stays trusted (`Pki.previous_ca_cert_pem`).
//! 2. Every server, on the commit, trusts both (setup.rs) and keeps
//!    presenting its certificate of the old CA. Agents, told by their
//!    heartbeat answers, and CLIs, told by the cluster status, renew:
//!    they get a certificate of the new CA and trust both.
//! 3. Once every node's newest recorded certificate is of the new CA, the
//!    leader commits `CaNodesMoved`, and the servers sign theirs with the
//!    new CA: every node can check them now.
//! 4. The leader probes each server's listener every second; once all
//!    present a certificate of the new CA it commits `FinishCaRotation`,
//!    and the old CA is trusted no more (agents and CLIs renew once
//!    more, to drop it).
//!
//! A node that is down holds the rotation until it comes back or is
//! removed (`berth cluster ca` names who it waits for).

use std::sync::Arc;
use std::time::Duration;

use berth_proto::cluster::CaStatus;
use berth_proto::records::{self, command::Op};
use tonic::Status;

use super::{digest_of_pem, ClusterCa, JoinToken, Role};
use crate::api::to_status;
use crate::app::App;

/// Where the rotation stands.
pub async fn status(app: &App) -> Result<CaStatus, Status> {
    let pki = app
        .state
        .pki()
        .map_err(|e| Status::internal(e.to_string()))?
        .ok_or_else(|| Status::unavailable("the cluster has no CA yet"))?;
    let digest = digest_of_pem(&pki.ca_cert_pem).map_err(|e| Status::internal(e.to_string()))?;
    let mut st = CaStatus {
        ca_digest: digest.clone(),
        rotating: !pki.previous_ca_cert_pem.is_empty(),
        ..Default::default()
    };
    let members: Vec<(u64, String)> = {
        let m = crate::raft::metrics(&app.raft);
        m.membership_config
            .membership()
            .nodes()
            .map(|(id, n)| (*id, n.addr.clone()))
            .collect()
    };
    st.servers = members.len() as u32;
    for (id, addr) in members {
        match server_ca(app, &addr).await {
            Some(d) if d == digest => st.servers_done += 1,
            _ => st.waiting.push(format!("server {id}")),
        }
    }
    let nodes = app
        .state
        .nodes()
        .map_err(|e| Status::internal(e.to_string()))?;
    st.nodes = nodes.len() as u32;
    for n in nodes {
        let newest = app
            .state
            .member_cert(Role::Agent.as_str(), &n.name)
            .ok()
            .flatten()
            .and_then(|rec| rec.certs.last().map(|c| c.ca_digest.clone()));
        if newest.as_deref() == Some(digest.as_str()) {
            st.nodes_done += 1;
        } else {
            st.waiting.push(format!("node {}", n.name));
        }
    }
    Ok(st)
}

/// Starts a rotation: a new CA, committed. Leader only (the call is
/// forwarded there).
pub async fn rotate(app: &App) -> Result<CaStatus, Status> {
    let ca = tokio::task::spawn_blocking(|| {
        ClusterCa::generate(&uuid::Uuid::new_v4().simple().to_string()[..8])
    })
    .await
    .map_err(|e| Status::internal(e.to_string()))?
    .map_err(|e| Status::internal(e.to_string()))?;
    let digest = ca.digest().map_err(|e| Status::internal(e.to_string()))?;
    app.write(Op::RotateCa(records::RotateCa {
        ca_cert_pem: ca.cert_pem().to_string(),
        ca_key_pem: ca.key_pem().to_string(),
        agent_token_secret: JoinToken::generate(&digest, Role::Agent).secret,
        server_token_secret: JoinToken::generate(&digest, Role::Server).secret,
    }))
    .await
    .map_err(to_status)?;
    tracing::info!(ca = %digest, "started a CA rotation");
    status(app).await
}

/// On the leader, during a rotation: ends it once every member holds a
/// certificate of the new CA. Runs for as long as the server does.
pub async fn finish_when_done(app: App) {
    loop {
        tokio::time::sleep(CHECK_EVERY).await;
        if !app.is_leader() {
            continue;
        }
        let Ok(Some(pki)) = app.state.pki() else {
            continue;
        };
        if pki.previous_ca_cert_pem.is_empty() {
            continue;
        }
        let st = match status(&app).await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!("CA rotation: {}", e.message());
                continue;
            }
        };
        // First every node, then every server.
        if !pki.nodes_moved {
            if st.nodes_done < st.nodes {
                tracing::info!(waiting = ?st.waiting, "CA rotation under way: nodes");
                continue;
            }
            match app
                .write(Op::CaNodesMoved(records::CaNodesMoved {
                    ca_cert_pem: pki.ca_cert_pem.clone(),
                }))
                .await
            {
                Ok(_) => tracing::info!("CA rotation: every node is on the new CA"),
                Err(e) => tracing::warn!("CA rotation: {e}"),
            }
            continue;
        }
        if !st.waiting.is_empty() {
            tracing::info!(waiting = ?st.waiting, "CA rotation under way: servers");
            continue;
        }
        match app
            .write(Op::FinishCaRotation(records::FinishCaRotation {
                ca_cert_pem: pki.ca_cert_pem.clone(),
            }))
            .await
        {
            Ok(_) => tracing::info!(ca = %st.ca_digest, "the CA rotation is complete"),
            Err(e) => tracing::warn!("ending the CA rotation: {e}"),
        }
    }
}

/// How often the leader looks at a rotation's progress.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// The digest of the CA that signed the certificate the server at `addr`
/// presents (its certificate file carries the CA's after its own).
async fn server_ca(app: &App, addr: &str) -> Option<String> {
    let tls: Arc<crate::tls::ServerTls> = app.tls.get()?.clone();
    let tcp = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
        .await
        .ok()?
        .ok()?;
    let name =
        tokio_rustls::rustls::pki_types::ServerName::try_from(berth_proto::transport::SERVER_NAME)
            .ok()?;
    let stream = tokio::time::timeout(
        Duration::from_secs(2),
        tokio_rustls::TlsConnector::from(tls.client()).connect(name, tcp),
    )
    .await
    .ok()?
    .ok()?;
    let chain = stream.get_ref().1.peer_certificates()?;
    let issuer = chain.get(1)?;
    Some(berth_proto::transport::digest_of_der(issuer.as_ref()))
}
