//! Transport security and authorisation, for every process: TLS (rustls) on every gRPC link,
//! a bearer token per role on every call, and the per-actor binding secret.
//!
//! - Certificates, keys and the CA are files ([`TlsArgs`]); `--tls-client-auth` turns on mutual
//!   TLS (servers require a client certificate signed by the CA, clients present theirs).
//! - A server with `--tokens-dir` checks every call's `authorization: Bearer <token>` against
//!   one file per role (`actor`, `learner`, `evaluator`, `admin`): a missing or unknown token is
//!   `UNAUTHENTICATED`, a role the method does not allow is `PERMISSION_DENIED` ([`AuthLayer`]).
//!   A client sends the token in `--token-file` ([`AuthToken`]). Tokens never come from argv.
//! - Health (`grpc.health.v1`) needs no token, so probes work; `/metrics` is plain HTTP on its
//!   own port.
//! - An actor id is bound to the actor it was issued to by a secret, HMAC-SHA256 of the id
//!   under a key derived from the learner's token ([`ActorBinding`]): the coordinator hands it out
//!   at registration and checks it on heartbeats, the learner on rollout streams, and neither
//!   needs to share state to do so.

use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::body::Body;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// How long a TLS handshake may take before the connection is dropped.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The metadata key carrying an actor's binding secret.
pub const ACTOR_SECRET_HEADER: &str = "troupe-actor-secret";
/// The metadata key carrying the actor id a rollout stream speaks for.
pub const ACTOR_ID_HEADER: &str = "troupe-actor-id";

/// TLS flags, shared by every binary.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsArgs {
    /// PEM certificate chain this process presents (as a server, and as a client with
    /// --tls-client-auth). With --tls-key, turns TLS on.
    #[arg(long, env = "TROUPE_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, env = "TROUPE_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificate that peers' certificates must chain to. A client with only this flag
    /// dials with TLS and verifies the server.
    #[arg(long, env = "TROUPE_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Mutual TLS: servers require a client certificate signed by --tls-ca, and clients present
    /// --tls-cert.
    #[arg(long, env = "TROUPE_TLS_CLIENT_AUTH")]
    pub tls_client_auth: bool,
    /// The name to verify in servers' certificates (default: the host in the address dialled).
    #[arg(long, env = "TROUPE_TLS_SERVER_NAME")]
    pub tls_server_name: Option<String>,
}

/// Token flags, shared by every binary.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct AuthArgs {
    /// File holding this process's bearer token, sent on every gRPC call it makes.
    #[arg(long, env = "TROUPE_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Servers: a directory with one token file per role (actor, learner, evaluator, admin).
    /// With it, every call needs a token, and each role may call only its own methods.
    #[arg(long, env = "TROUPE_TOKENS_DIR")]
    pub tokens_dir: Option<PathBuf>,
}

/// A caller's role, from its token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Actor,
    Learner,
    Evaluator,
    Admin,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Actor, Role::Learner, Role::Evaluator, Role::Admin];

    /// The file name of the role's token in `--tokens-dir`.
    pub fn name(self) -> &'static str {
        match self {
            Role::Actor => "actor",
            Role::Learner => "learner",
            Role::Evaluator => "evaluator",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why security settings could not be loaded; names the flag and the file.
#[derive(Debug, thiserror::Error)]
#[error("{flag} {path}: {why}")]
pub struct SecurityError {
    flag: &'static str,
    path: String,
    why: String,
}

impl SecurityError {
    pub fn new(flag: &'static str, path: &str, why: impl Into<String>) -> SecurityError {
        SecurityError {
            flag,
            path: path.to_string(),
            why: why.into(),
        }
    }
}

fn read(flag: &'static str, path: &Path) -> Result<Vec<u8>, SecurityError> {
    std::fs::read(path).map_err(|e| SecurityError {
        flag,
        path: path.display().to_string(),
        why: e.to_string(),
    })
}

fn read_pem(flag: &'static str, path: &Path) -> Result<Vec<u8>, SecurityError> {
    let bytes = read(flag, path)?;
    if !String::from_utf8_lossy(&bytes).contains("-----BEGIN ") {
        return Err(SecurityError {
            flag,
            path: path.display().to_string(),
            why: "expected a PEM file (-----BEGIN ...)".into(),
        });
    }
    Ok(bytes)
}

fn read_token(flag: &'static str, path: &Path) -> Result<String, SecurityError> {
    let bytes = read(flag, path)?;
    let token = String::from_utf8(bytes)
        .map_err(|_| SecurityError {
            flag,
            path: path.display().to_string(),
            why: "expected a UTF-8 token".into(),
        })?
        .trim()
        .to_string();
    if token.len() < 16 || !token.chars().all(|c| c.is_ascii_graphic()) {
        return Err(SecurityError {
            flag,
            path: path.display().to_string(),
            why: format!(
                "expected a token of at least 16 printable ASCII characters, got {} characters",
                token.len()
            ),
        });
    }
    Ok(token)
}

/// Loaded TLS material.
#[derive(Clone)]
struct Tls {
    identity: Option<Identity>,
    ca: Option<Certificate>,
    client_auth: bool,
    server_name: Option<String>,
}

/// The tokens a server accepts, by role.
#[derive(Clone)]
pub struct Tokens {
    /// SHA-256 of each role's token; compared in constant time.
    digests: Vec<(Role, [u8; 32])>,
    binding: Option<ActorBinding>,
}

impl Tokens {
    /// Reads `dir/<role>` for every role whose file exists; at least one must.
    pub fn from_dir(dir: &Path) -> Result<Tokens, SecurityError> {
        let mut digests = Vec::new();
        let mut learner = None;
        for role in Role::ALL {
            let path = dir.join(role.name());
            if !path.exists() {
                continue;
            }
            let token = read_token("--tokens-dir", &path)?;
            if role == Role::Learner {
                learner = Some(token.clone());
            }
            digests.push((role, Sha256::digest(token.as_bytes()).into()));
        }
        if digests.is_empty() {
            return Err(SecurityError {
                flag: "--tokens-dir",
                path: dir.display().to_string(),
                why: "expected token files named actor, learner, evaluator or admin; found none".into(),
            });
        }
        Ok(Tokens {
            digests,
            binding: learner.as_deref().map(ActorBinding::from_learner_token),
        })
    }

    /// The role whose token this is, if any.
    pub fn role_of(&self, token: &str) -> Option<Role> {
        let d: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for (role, want) in &self.digests {
            if bool::from(d.ct_eq(want)) {
                found = Some(*role);
            }
        }
        found
    }
}

/// Issues and checks the secrets that bind an actor id to the actor it was issued to.
#[derive(Clone)]
pub struct ActorBinding {
    key: [u8; 32],
}

impl ActorBinding {
    /// The key is derived from the learner's token, which the coordinator and the learner both
    /// hold (an actor does not).
    pub fn from_learner_token(token: &str) -> ActorBinding {
        let mut h = Sha256::new();
        h.update(b"troupe actor binding v1\0");
        h.update(token.as_bytes());
        ActorBinding {
            key: h.finalize().into(),
        }
    }

    fn mac(&self, actor_id: u64) -> Hmac<Sha256> {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.key).expect("any key length");
        m.update(&actor_id.to_le_bytes());
        m
    }

    /// The secret for `actor_id`, hex.
    pub fn secret(&self, actor_id: u64) -> String {
        hex::encode(self.mac(actor_id).finalize().into_bytes())
    }

    /// Whether `secret` is `actor_id`'s (constant time).
    pub fn verify(&self, actor_id: u64, secret: &str) -> bool {
        match hex::decode(secret) {
            Ok(bytes) => self.mac(actor_id).verify_slice(&bytes).is_ok(),
            Err(_) => false,
        }
    }
}

/// Everything a process needs to secure its links: loaded once at start-up and passed in.
#[derive(Clone, Default)]
pub struct Security {
    tls: Option<Tls>,
    token: Option<String>,
    tokens: Option<Arc<Tokens>>,
}

impl fmt::Debug for Security {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Security")
            .field("tls", &self.tls.is_some())
            .field("token", &self.token.is_some())
            .field("tokens", &self.tokens.is_some())
            .finish()
    }
}

impl Security {
    /// No TLS, no tokens (tests of other things, and local runs that opt out).
    pub fn insecure() -> Security {
        Security::default()
    }

    /// Loads the files the flags name; every problem names its flag and file.
    pub fn load(tls: &TlsArgs, auth: &AuthArgs) -> Result<Security, SecurityError> {
        let identity = match (&tls.tls_cert, &tls.tls_key) {
            (Some(c), Some(k)) => Some(Identity::from_pem(
                read_pem("--tls-cert", c)?,
                read_pem("--tls-key", k)?,
            )),
            (None, None) => None,
            (Some(_), None) | (None, Some(_)) => {
                return Err(SecurityError {
                    flag: "--tls-cert/--tls-key",
                    path: String::new(),
                    why: "expected both or neither".into(),
                })
            }
        };
        let ca = match &tls.tls_ca {
            Some(p) => Some(Certificate::from_pem(read_pem("--tls-ca", p)?)),
            None => None,
        };
        if tls.tls_client_auth && (ca.is_none() || identity.is_none()) {
            return Err(SecurityError {
                flag: "--tls-client-auth",
                path: String::new(),
                why: "mutual TLS needs --tls-ca, --tls-cert and --tls-key".into(),
            });
        }
        let tls = (identity.is_some() || ca.is_some()).then(|| Tls {
            identity,
            ca,
            client_auth: tls.tls_client_auth,
            server_name: tls.tls_server_name.clone(),
        });
        let token = match &auth.token_file {
            Some(p) => Some(read_token("--token-file", p)?),
            None => None,
        };
        let tokens = match &auth.tokens_dir {
            Some(d) => Some(Arc::new(Tokens::from_dir(d)?)),
            None => None,
        };
        Ok(Security { tls, token, tokens })
    }

    pub fn tls_enabled(&self) -> bool {
        self.tls.is_some()
    }

    /// The URL scheme peers dial this process with.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// The tokens this server accepts (None: auth is off).
    pub fn tokens(&self) -> Option<Arc<Tokens>> {
        self.tokens.clone()
    }

    /// The actor-binding key, where this process holds the learner's token.
    pub fn actor_binding(&self) -> Option<ActorBinding> {
        self.tokens.as_ref().and_then(|t| t.binding.clone())
    }

    /// The token this process sends.
    pub fn token(&self) -> AuthToken {
        AuthToken {
            header: self.token.as_ref().map(|t| {
                format!("Bearer {t}")
                    .parse()
                    .expect("a token of printable ASCII is a valid header")
            }),
        }
    }

    /// The server side of TLS, if on. A server needs a certificate.
    pub fn server_tls(&self) -> Result<Option<ServerTlsConfig>, SecurityError> {
        let Some(tls) = &self.tls else { return Ok(None) };
        let Some(identity) = tls.identity.clone() else {
            return Err(SecurityError {
                flag: "--tls-cert",
                path: String::new(),
                why: "a server with TLS needs --tls-cert and --tls-key".into(),
            });
        };
        let mut cfg = ServerTlsConfig::new().identity(identity).timeout(TLS_HANDSHAKE_TIMEOUT);
        if tls.client_auth {
            cfg = cfg.client_ca_root(tls.ca.clone().expect("checked at load"));
        }
        Ok(Some(cfg))
    }

    /// The client side of TLS, if on.
    pub fn client_tls(&self) -> Option<ClientTlsConfig> {
        let tls = self.tls.as_ref()?;
        let mut cfg = ClientTlsConfig::new().timeout(TLS_HANDSHAKE_TIMEOUT);
        if let Some(ca) = &tls.ca {
            cfg = cfg.ca_certificate(ca.clone());
        }
        if tls.client_auth {
            cfg = cfg.identity(tls.identity.clone().expect("checked at load"));
        }
        if let Some(name) = &tls.server_name {
            cfg = cfg.domain_name(name.clone());
        }
        Some(cfg)
    }

    /// Logs what is on, and warns about what is off.
    pub fn log(&self, process: &str) {
        match &self.tls {
            Some(t) => tracing::info!(process, mutual = t.client_auth, "TLS on"),
            None => tracing::warn!(process, "TLS off: traffic is plain text"),
        }
        if self.tokens.is_none() {
            tracing::warn!(
                process,
                "--tokens-dir not set: this server accepts calls from anyone who can reach it"
            );
        }
    }
}

/// Adds the process's bearer token to every outgoing call.
#[derive(Clone)]
pub struct AuthToken {
    header: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
}

impl tonic::service::Interceptor for AuthToken {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(h) = &self.header {
            request.metadata_mut().insert("authorization", h.clone());
        }
        Ok(request)
    }
}

/// Which roles may call a method (`/package.Service/Method`); `None` for paths with no rule.
pub type MethodPolicy = fn(&str) -> Option<&'static [Role]>;

/// The role an authenticated call came with, in the request's extensions.
#[derive(Debug, Clone, Copy)]
pub struct Caller(pub Role);

/// Refuses calls without a valid token (`UNAUTHENTICATED`) or whose role may not call the
/// method (`PERMISSION_DENIED`). Health checks pass without a token.
#[derive(Clone)]
pub struct AuthLayer {
    tokens: Option<Arc<Tokens>>,
    policy: MethodPolicy,
}

impl AuthLayer {
    /// With `tokens` None every call passes (auth off).
    pub fn new(tokens: Option<Arc<Tokens>>, policy: MethodPolicy) -> AuthLayer {
        AuthLayer { tokens, policy }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Auth<S>;
    fn layer(&self, inner: S) -> Auth<S> {
        Auth {
            inner,
            tokens: self.tokens.clone(),
            policy: self.policy,
        }
    }
}

#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
    tokens: Option<Arc<Tokens>>,
    policy: MethodPolicy,
}

impl<S> Auth<S> {
    fn check(&self, request: &mut http::Request<Body>) -> Result<(), tonic::Status> {
        let Some(tokens) = &self.tokens else { return Ok(()) };
        let path = request.uri().path();
        if path.starts_with("/grpc.health.v1.Health/") {
            return Ok(());
        }
        let header = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let token = match header.and_then(|h| h.strip_prefix("Bearer ")) {
            Some(t) => t.trim(),
            None => {
                return Err(tonic::Status::unauthenticated(
                    "authorization: expected `Bearer <token>` (this server requires a token)",
                ))
            }
        };
        let Some(role) = tokens.role_of(token) else {
            return Err(tonic::Status::unauthenticated(
                "authorization: the token is not valid here",
            ));
        };
        let allowed = (self.policy)(path).unwrap_or(&[]);
        if !allowed.contains(&role) {
            return Err(tonic::Status::permission_denied(format!(
                "{path}: the {role} role may not call this method"
            )));
        }
        request.extensions_mut().insert(Caller(role));
        Ok(())
    }
}

impl<S> tower::Service<http::Request<Body>> for Auth<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        match self.check(&mut request) {
            Ok(()) => Box::pin(self.inner.call(request)),
            Err(status) => {
                tracing::warn!(path = request.uri().path(), code = ?status.code(), message = status.message(), "refused a call");
                let code = crate::grpc_metrics::code_label(status.code() as i32);
                metrics::counter!(crate::telemetry::names::AUTH_REFUSED, "code" => code).increment(1);
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with(tokens: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (name, t) in tokens {
            std::fs::write(d.path().join(name), format!("{t}\n")).unwrap();
        }
        d
    }

    #[test]
    fn tokens_map_to_their_roles_and_nothing_else() {
        let d = dir_with(&[("actor", "a-token-of-16-chars"), ("admin", "the-admin-token-xyz")]);
        let t = Tokens::from_dir(d.path()).unwrap();
        assert_eq!(t.role_of("a-token-of-16-chars"), Some(Role::Actor));
        assert_eq!(t.role_of("the-admin-token-xyz"), Some(Role::Admin));
        assert_eq!(t.role_of("a-token-of-16-char"), None);
        assert_eq!(t.role_of(""), None);
        assert!(t.binding.is_none(), "no learner token, no binding key");
    }

    #[test]
    fn short_tokens_and_empty_dirs_are_refused_by_name() {
        let d = dir_with(&[("actor", "short")]);
        let e = Tokens::from_dir(d.path()).err().unwrap().to_string();
        assert!(e.contains("--tokens-dir") && e.contains("at least 16"), "{e}");
        let d = dir_with(&[]);
        let e = Tokens::from_dir(d.path()).err().unwrap().to_string();
        assert!(e.contains("found none"), "{e}");
    }

    #[test]
    fn a_binding_secret_verifies_only_for_its_id_and_key() {
        let b = ActorBinding::from_learner_token("learner-token-0123456789");
        let other = ActorBinding::from_learner_token("learner-token-9876543210");
        let s = b.secret(7);
        assert!(b.verify(7, &s));
        assert!(!b.verify(8, &s));
        assert!(!other.verify(7, &s));
        assert!(!b.verify(7, "not hex"));
        assert!(!b.verify(7, ""));
    }

    #[test]
    fn mutual_tls_without_a_ca_is_named() {
        let e = Security::load(
            &TlsArgs {
                tls_client_auth: true,
                ..Default::default()
            },
            &AuthArgs::default(),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("--tls-client-auth"), "{e}");
    }
}
