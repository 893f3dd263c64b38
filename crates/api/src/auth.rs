//! Tokens and the authorization rule, shared by the scheduler (which checks them), the clients (which present
//! them) and the CLI (which makes them).
//!
//! # Tokens
//! A token is the string `aidos_<id>_<secret>`: `id` names its record in the replicated state (public; `aidos
//! token list` shows it), `secret` is 32 random bytes in hex, of which the state keeps only the BLAKE3 hash. Three
//! kinds share the format:
//! - **Stored tokens** (`aidos token create`): a record in the auth domain with a role, a project, an expiry and
//!   a revocation time.
//! - **The root token** (id [`ROOT_ID`]): the cluster's bootstrap admin, read from a file every scheduler node is
//!   given (`aidos up` writes it into its data directory, mode 0600). It is not in the replicated state; replace
//!   the file on every node to change it.
//! - **Job tokens** (id `job-<seq>`, the job's id): given to every task of a job in `AIDOS_TOKEN`; the secret is a
//!   keyed BLAKE3 hash of the job id under a key derived from the root secret ([`job_secret`]), so every node can
//!   check one without state, and it stops working when its job ends. A job token acts as a member of the job's
//!   project that may not submit `process` jobs.
//!
//! # The rule
//! Every RPC has an [`Access`] (the scheduler's rule table); [`authorize`] decides, purely, whether a
//! [`Principal`] may call it in a project. The project of a call is its `aidos-project` metadata
//! ([`PROJECT_HEADER`], default [`DEFAULT_PROJECT`]).

use std::fmt;

use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Request, Status};

use crate::v1::Role;

/// Every token starts with this.
pub const TOKEN_PREFIX: &str = "aidos_";
/// The metadata key (HTTP header) that carries `Bearer <token>`.
pub const AUTHORIZATION: &str = "authorization";
/// The metadata key that names the project a call acts in.
pub const PROJECT_HEADER: &str = "aidos-project";
/// The project of a call that names none, and of every object made before projects existed.
pub const DEFAULT_PROJECT: &str = "default";
/// A principal's project that stands for every project.
pub const ALL_PROJECTS: &str = "*";
/// Token id of the root token.
pub const ROOT_ID: &str = "root";
/// Environment variable clients read their token from (the CLI's `--token`; every task gets its job's token).
pub const TOKEN_ENV: &str = "AIDOS_TOKEN";
/// Environment variable that names the project of a client's calls (the CLI's `--project`).
pub const PROJECT_ENV: &str = "AIDOS_PROJECT";
/// Longest token id, name or project accepted.
pub const MAX_NAME: usize = 64;

/// The project an object names (`""`, from before projects existed: [`DEFAULT_PROJECT`]).
pub fn project_or_default(p: &str) -> &str {
    if p.is_empty() { DEFAULT_PROJECT } else { p }
}

/// A token string split into its parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenParts {
    pub id: String,
    pub secret: String,
}

/// Why a presented token proves no identity (UNAUTHENTICATED).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unauthenticated {
    #[error(
        "no token: pass one with --token or AIDOS_TOKEN (`aidos up` writes an admin token to <data-dir>/admin.token)"
    )]
    Missing,
    #[error("malformed token: expected `Bearer aidos_<id>_<secret>`")]
    Malformed,
    /// No such token (on this node: a token made a moment ago may not have reached it yet).
    #[error("unknown token `{0}`")]
    Unknown(String),
    /// A token id this node knows, with the wrong secret. Says the same as [`Self::Unknown`] to the caller.
    #[error("unknown token `{0}`")]
    WrongSecret(String),
    #[error("token `{0}` has expired")]
    Expired(String),
    #[error("token `{0}` was revoked")]
    Revoked(String),
    #[error("token `{0}` belongs to a job that has ended")]
    JobEnded(String),
    #[error("token `{0}` is a join token: a worker exchanges it once for a certificate (`aidos worker --join-token`)")]
    JoinOnly(String),
    /// A call that needs a client certificate (TLS clusters: nodes and workers).
    #[error("{0}")]
    Certificate(String),
}

impl From<Unauthenticated> for Status {
    fn from(e: Unauthenticated) -> Status {
        Status::unauthenticated(e.to_string())
    }
}

/// Parses `aidos_<id>_<secret>` (with or without a leading `Bearer `).
pub fn parse_token(s: &str) -> Result<TokenParts, Unauthenticated> {
    let s = s.trim();
    let s = s.strip_prefix("Bearer ").unwrap_or(s).trim();
    let rest = s.strip_prefix(TOKEN_PREFIX).ok_or(Unauthenticated::Malformed)?;
    let (id, secret) = rest.rsplit_once('_').ok_or(Unauthenticated::Malformed)?;
    let id_ok = !id.is_empty() && id.len() <= MAX_NAME && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    let secret_ok = secret.len() == 64 && secret.bytes().all(|b| b.is_ascii_hexdigit());
    if !id_ok || !secret_ok {
        return Err(Unauthenticated::Malformed);
    }
    Ok(TokenParts { id: id.to_string(), secret: secret.to_ascii_lowercase() })
}

/// The token string of (`id`, `secret`).
pub fn format_token(id: &str, secret: &str) -> String {
    format!("{TOKEN_PREFIX}{id}_{secret}")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// 32 random bytes, in hex.
pub fn new_secret() -> String {
    hex(&rand::random::<[u8; 32]>())
}

/// A fresh id for a stored token: `t` and 12 hex digits.
pub fn new_token_id() -> String {
    format!("t{}", hex(&rand::random::<[u8; 6]>()))
}

/// A new root token string.
pub fn new_root_token() -> String {
    format_token(ROOT_ID, &new_secret())
}

/// What the state keeps of a secret.
pub fn hash_secret(secret: &str) -> [u8; 32] {
    *blake3::hash(secret.as_bytes()).as_bytes()
}

/// Whether `secret` hashes to `hash`, in constant time.
pub fn secret_matches(secret: &str, hash: &[u8]) -> bool {
    let Ok(h) = <[u8; 32]>::try_from(hash) else { return false };
    blake3::hash(secret.as_bytes()) == blake3::Hash::from(h)
}

/// Whether two secrets are equal, in time independent of where they differ (compares their BLAKE3 hashes).
pub fn secrets_equal(a: &str, b: &str) -> bool {
    blake3::hash(a.as_bytes()) == blake3::hash(b.as_bytes())
}

/// The secret of job `job_id`'s token under the cluster's root secret.
pub fn job_secret(root_secret: &str, job_id: &str) -> String {
    let key = blake3::derive_key("aidos 2026 job token v1", root_secret.as_bytes());
    hex(blake3::keyed_hash(&key, job_id.as_bytes()).as_bytes())
}

/// The whole token string given to the tasks of `job_id`.
pub fn job_token(root_secret: &str, job_id: &str) -> String {
    format_token(job_id, &job_secret(root_secret, job_id))
}

/// What an RPC requires (one entry per method in the scheduler's rule table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No token: the method authenticates its callers itself (edge devices sign with their enrolment keys).
    Public,
    /// Any valid token.
    Authenticated,
    /// Read objects of the call's project.
    Read,
    /// Change objects of the call's project.
    Write,
    /// Manage the tokens of the call's project.
    ProjectAdmin,
    /// Change the cluster itself (membership).
    ClusterAdmin,
    /// Read blobs (content-addressed: knowing an id is the capability to read it): any reader, and workers.
    BlobRead,
    /// Store blobs: any writer, and workers.
    BlobWrite,
    /// The worker protocol.
    Worker,
    /// Raft between scheduler nodes: the root token only.
    Peer,
    /// An edge device's calls: no token; the device's credential, and on a control plane that serves TLS its
    /// device certificate (checked by the scheduler's auth layer).
    Device,
}

/// Who a verified token says the caller is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub token_id: String,
    pub name: String,
    pub role: Role,
    /// [`ALL_PROJECTS`] or one project.
    pub project: String,
    pub allow_process: bool,
    pub expires_at_ms: i64,
}

impl Principal {
    /// The root token's principal.
    pub fn root() -> Principal {
        Principal {
            token_id: ROOT_ID.into(),
            name: "root".into(),
            role: Role::Admin,
            project: ALL_PROJECTS.into(),
            allow_process: true,
            expires_at_ms: 0,
        }
    }

    /// The principal of an edge device that proved itself with its certificate (it may make [`Access::Device`]
    /// calls only: it has no role).
    pub fn device(name: &str) -> Principal {
        Principal {
            token_id: format!("device:{name}"),
            name: format!("device:{name}"),
            role: Role::Unspecified,
            project: DEFAULT_PROJECT.into(),
            allow_process: false,
            expires_at_ms: 0,
        }
    }

    /// The principal of job `job_id`'s token (a member of the job's project that may not start `process` jobs).
    pub fn job(job_id: &str, project: &str) -> Principal {
        Principal {
            token_id: job_id.into(),
            name: format!("job:{job_id}"),
            role: Role::Member,
            project: project.into(),
            allow_process: false,
            expires_at_ms: 0,
        }
    }

    pub fn is_root(&self) -> bool {
        self.token_id == ROOT_ID
    }

    /// Whether this principal acts in `project`.
    pub fn in_project(&self, project: &str) -> bool {
        self.project == ALL_PROJECTS || self.project == project
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` ({} of project {})", self.name, role_name(self.role), self.project)
    }
}

/// A role's name as users write it.
pub fn role_name(r: Role) -> &'static str {
    match r {
        Role::Unspecified => "none",
        Role::Viewer => "viewer",
        Role::Member => "member",
        Role::Admin => "admin",
        Role::Worker => "worker",
        Role::Infer => "infer",
    }
}

/// Parses a role name.
pub fn parse_role(s: &str) -> Result<Role, String> {
    match s {
        "viewer" => Ok(Role::Viewer),
        "member" => Ok(Role::Member),
        "admin" => Ok(Role::Admin),
        "worker" => Ok(Role::Worker),
        "infer" => Ok(Role::Infer),
        _ => Err(format!("unknown role `{s}` (expected viewer, member, admin, worker or infer)")),
    }
}

/// Why an authenticated principal may not make a call (PERMISSION_DENIED).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{principal} may not {what}")]
pub struct Denied {
    pub principal: String,
    pub what: String,
}

impl From<Denied> for Status {
    fn from(e: Denied) -> Status {
        Status::permission_denied(e.to_string())
    }
}

/// The rule: may `p` make a call that requires `access` in `project`? Pure.
pub fn authorize(access: Access, p: &Principal, project: &str) -> Result<(), Denied> {
    let reader = matches!(p.role, Role::Viewer | Role::Member | Role::Admin);
    let writer = matches!(p.role, Role::Member | Role::Admin);
    let worker = p.role == Role::Worker || p.is_root();
    let (ok, what) = match access {
        Access::Public | Access::Authenticated | Access::Device => (true, String::new()),
        Access::Read => (reader && p.in_project(project), format!("read in project {project}")),
        Access::Write => (writer && p.in_project(project), format!("change objects in project {project}")),
        Access::ProjectAdmin => {
            (p.role == Role::Admin && p.in_project(project), format!("manage tokens of project {project}"))
        }
        Access::ClusterAdmin => (
            p.role == Role::Admin && p.project == ALL_PROJECTS,
            "change the cluster (needs a cluster-wide admin)".into(),
        ),
        Access::BlobRead => (reader || worker, "read blobs".into()),
        Access::BlobWrite => (writer || worker, "store blobs".into()),
        Access::Worker => (worker, "use the worker protocol (needs a worker token)".into()),
        Access::Peer => (p.is_root(), "speak Raft (scheduler nodes only)".into()),
    };
    if ok { Ok(()) } else { Err(Denied { principal: p.to_string(), what }) }
}

/// May `p` submit `process` jobs (arbitrary code on workers) in `project`? Pure; checked by the scheduler on
/// submissions that hold one.
pub fn authorize_process(p: &Principal, project: &str) -> Result<(), Denied> {
    authorize(Access::Write, p, project)?;
    if p.allow_process {
        Ok(())
    } else {
        Err(Denied { principal: p.to_string(), what: "submit `process` jobs (arbitrary code on workers)".into() })
    }
}

/// May `by` create (or revoke) a token of `role` in `project`? Admins manage their own project's viewer, member
/// and admin tokens; cluster-wide tokens (project [`ALL_PROJECTS`]) and worker tokens need a cluster-wide admin.
/// Pure.
pub fn authorize_token_admin(by: &Principal, role: Role, project: &str) -> Result<(), Denied> {
    let cluster_wide = project == ALL_PROJECTS || role == Role::Worker;
    let ok = by.role == Role::Admin && if cluster_wide { by.project == ALL_PROJECTS } else { by.in_project(project) };
    if ok {
        Ok(())
    } else {
        Err(Denied {
            principal: by.to_string(),
            what: format!("manage {} tokens of project {project}", role_name(role)),
        })
    }
}

/// May a stored token (its `role`, `project` and deployment list: empty for no limit) call the inference
/// endpoints of deployment `name` of project `deployment_project`? Admins, members and inference keys of the
/// project may (viewers read the control plane only); the root token and worker tokens, which gateways present to
/// replicas, are the caller's to add. Pure.
pub fn may_infer(role: Role, project: &str, deployments: &[String], deployment_project: &str, name: &str) -> bool {
    matches!(role, Role::Member | Role::Admin | Role::Infer)
        && (project == ALL_PROJECTS || project == deployment_project)
        && (deployments.is_empty() || deployments.iter().any(|d| d == name))
}

/// What a client presents: its token and the project its calls act in; and, against a cluster that serves TLS,
/// the CA it trusts and the certificate it presents (`crate::tls`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    pub token: Option<String>,
    /// None: [`DEFAULT_PROJECT`] (the scheduler's default).
    pub project: Option<String>,
    /// None: plain TCP.
    pub tls: Option<crate::tls::ClientTls>,
}

impl Credentials {
    pub fn token(token: impl Into<String>) -> Credentials {
        Credentials { token: Some(token.into()), project: None, tls: None }
    }

    /// From [`TOKEN_ENV`] and [`PROJECT_ENV`] read through `get` (a variable's value, None when unset; blank
    /// values count as unset): what a task's SDK presents.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Credentials {
        let get = |k| get(k).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        Credentials { token: get(TOKEN_ENV), project: get(PROJECT_ENV), tls: None }
    }

    /// The same, over TLS as `tls` says.
    pub fn with_tls(mut self, tls: Option<crate::tls::ClientTls>) -> Credentials {
        self.tls = tls;
        self
    }

    /// The endpoint of `addr` (`host:port` or a URL), to be connected with [`Self::connect_lazy`] or
    /// [`Self::connect`] (which add TLS when these credentials carry it).
    pub fn endpoint(&self, addr: &str) -> Result<tonic::transport::Endpoint, tonic::transport::Error> {
        let url = crate::contract::normalize_addr(addr);
        // Over TLS our connector does the TLS (`tls::Connector`): tonic sees `http://` (`https://` is accepted).
        let url = match (&self.tls, url.strip_prefix("https://")) {
            (Some(_), Some(rest)) => format!("http://{rest}"),
            _ => url,
        };
        tonic::transport::Endpoint::from_shared(url)
    }

    /// A channel to `ep` that connects at its first call: over TLS when these credentials carry it (each new
    /// connection presents the identity current at its handshake, so a rotated certificate is picked up).
    pub fn connect_lazy(&self, ep: &tonic::transport::Endpoint) -> tonic::transport::Channel {
        match &self.tls {
            None => ep.connect_lazy(),
            Some(t) => ep.connect_with_connector_lazy(t.connector()),
        }
    }

    /// [`Self::connect_lazy`], connected now.
    pub async fn connect(
        &self,
        ep: &tonic::transport::Endpoint,
    ) -> Result<tonic::transport::Channel, tonic::transport::Error> {
        match &self.tls {
            None => ep.connect().await,
            Some(t) => ep.connect_with_connector(t.connector()).await,
        }
    }

    /// The interceptor that puts these on every call.
    pub fn bearer(&self) -> Bearer {
        let value = |s: String| MetadataValue::try_from(s).ok();
        Bearer {
            authorization: self.token.as_ref().and_then(|t| value(format!("Bearer {}", t.trim()))),
            project: self.project.as_ref().and_then(|p| value(p.clone())),
        }
    }
}

/// Adds `authorization` (and `aidos-project`) metadata to every call.
#[derive(Debug, Clone, Default)]
pub struct Bearer {
    authorization: Option<AsciiMetadataValue>,
    project: Option<AsciiMetadataValue>,
}

impl Interceptor for Bearer {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(a) = &self.authorization {
            req.metadata_mut().insert(AUTHORIZATION, a.clone());
        }
        if let Some(p) = &self.project {
            req.metadata_mut().insert(PROJECT_HEADER, p.clone());
        }
        Ok(req)
    }
}

/// A channel that presents credentials on every call: what every aidos client uses.
pub type AuthChannel = InterceptedService<Channel, Bearer>;

/// `ch` presenting `creds`.
pub fn with_credentials(ch: Channel, creds: &Credentials) -> AuthChannel {
    InterceptedService::new(ch, creds.bearer())
}

/// Reads a token file (a token string, surrounding whitespace ignored) and checks its format.
pub fn read_token_file(path: &std::path::Path) -> Result<String, String> {
    let s = std::fs::read_to_string(path).map_err(|e| format!("reading token file {}: {e}", path.display()))?;
    let t = s.trim().to_string();
    parse_token(&t).map_err(|e| format!("token file {}: {e}", path.display()))?;
    Ok(t)
}

/// Writes a new file holding `token`, readable by its owner only (mode 0600 on Unix), without ever leaving it
/// readable by others: the file is created with that mode, then renamed into place.
pub fn write_token_file(path: &std::path::Path, token: &str) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    // A fresh name, created here (`create_new`): a file or link planted at a fixed name cannot receive the token.
    let tmp = path.with_extension(format!("tmp-{}", hex(&rand::random::<[u8; 8]>())));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(&tmp)?;
    f.write_all(format!("{token}\n").as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(role: Role, project: &str, process: bool) -> Principal {
        Principal {
            token_id: "t1".into(),
            name: "ann".into(),
            role,
            project: project.into(),
            allow_process: process,
            expires_at_ms: 0,
        }
    }

    #[test]
    fn token_format_round_trips_and_refuses_garbage() {
        let s = new_secret();
        let t = format_token("t0123", &s);
        assert_eq!(parse_token(&t).unwrap(), TokenParts { id: "t0123".into(), secret: s.clone() });
        assert_eq!(parse_token(&format!("Bearer {t}")).unwrap().id, "t0123");
        assert_eq!(parse_token(&job_token("r", "job-7")).unwrap().id, "job-7");
        for bad in
            ["", "Bearer", "aidos_", "aidos_x", "xaidos_t_00", &format!("aidos__{s}"), &format!("aidos_t_{}", &s[1..])]
        {
            assert_eq!(parse_token(bad), Err(Unauthenticated::Malformed), "{bad:?}");
        }
        assert!(secret_matches(&s, &hash_secret(&s)));
        assert!(!secret_matches(&new_secret(), &hash_secret(&s)));
        assert!(!secret_matches(&s, &[0; 3]));
    }

    #[test]
    fn job_secrets_depend_on_the_root_and_the_job() {
        assert_eq!(job_secret("a", "job-1"), job_secret("a", "job-1"));
        assert_ne!(job_secret("a", "job-1"), job_secret("b", "job-1"));
        assert_ne!(job_secret("a", "job-1"), job_secret("a", "job-2"));
    }

    #[test]
    fn roles_and_projects() {
        use Access::*;
        let viewer = p(Role::Viewer, "a", false);
        let member = p(Role::Member, "a", true);
        let admin = p(Role::Admin, "a", true);
        let worker = p(Role::Worker, "*", false);
        let root = Principal::root();
        assert!(authorize(Read, &viewer, "a").is_ok());
        assert!(authorize(Read, &viewer, "b").is_err());
        assert!(authorize(Write, &viewer, "a").is_err());
        assert!(authorize(Write, &member, "a").is_ok());
        assert!(authorize(Write, &member, "b").is_err());
        assert!(authorize(ProjectAdmin, &member, "a").is_err());
        assert!(authorize(ProjectAdmin, &admin, "a").is_ok());
        assert!(authorize(ClusterAdmin, &admin, "a").is_err());
        assert!(authorize(ClusterAdmin, &root, "a").is_ok());
        for r in [Read, Write, ProjectAdmin, ClusterAdmin] {
            assert!(authorize(r, &worker, "a").is_err(), "{r:?}");
        }
        assert!(authorize(Worker, &worker, "a").is_ok());
        assert!(authorize(BlobWrite, &worker, "a").is_ok());
        assert!(authorize(BlobWrite, &viewer, "a").is_err());
        assert!(authorize(BlobRead, &viewer, "a").is_ok());
        assert!(authorize(Worker, &admin, "a").is_err());
        assert!(authorize(Peer, &admin, "a").is_err());
        assert!(authorize(Peer, &root, "a").is_ok());
        assert!(authorize_process(&member, "a").is_ok());
        assert!(authorize_process(&p(Role::Member, "a", false), "a").is_err());
        assert!(authorize_process(&viewer, "a").is_err());
        assert!(authorize_process(&Principal::job("job-1", "a"), "a").is_err());
        assert!(authorize_token_admin(&admin, Role::Viewer, "a").is_ok());
        assert!(authorize_token_admin(&admin, Role::Admin, "b").is_err());
        assert!(authorize_token_admin(&admin, Role::Worker, "a").is_err());
        assert!(authorize_token_admin(&admin, Role::Member, ALL_PROJECTS).is_err());
        assert!(authorize_token_admin(&member, Role::Viewer, "a").is_err());
        assert!(authorize_token_admin(&root, Role::Worker, ALL_PROJECTS).is_ok());
        assert!(authorize_token_admin(&admin, Role::Infer, "a").is_ok());
        let key = p(Role::Infer, "a", false);
        for r in [Read, Write, ProjectAdmin, ClusterAdmin, BlobRead, BlobWrite, Worker, Peer] {
            assert!(authorize(r, &key, "a").is_err(), "an inference key may not {r:?}");
        }
        let e = authorize(Write, &viewer, "a").unwrap_err().to_string();
        assert!(e.contains("viewer") && e.contains("project a"), "{e}");
    }

    #[test]
    fn who_may_call_a_deployment() {
        let none: &[String] = &[];
        let only_b = &["b".to_string()];
        assert!(may_infer(Role::Infer, "p", none, "p", "a"));
        assert!(may_infer(Role::Member, "p", none, "p", "a"));
        assert!(may_infer(Role::Admin, ALL_PROJECTS, none, "q", "a"));
        assert!(!may_infer(Role::Viewer, "p", none, "p", "a"), "viewers read the control plane only");
        assert!(!may_infer(Role::Worker, "p", none, "p", "a"), "worker tokens are added by the caller");
        assert!(!may_infer(Role::Infer, "p", none, "q", "a"), "another project's deployment");
        assert!(may_infer(Role::Infer, "p", only_b, "p", "b"));
        assert!(!may_infer(Role::Infer, "p", only_b, "p", "a"), "a key limited to other deployments");
    }

    #[test]
    fn token_files_are_private() {
        let dir = std::env::temp_dir().join(format!("aidos-auth-{}", std::process::id()));
        let f = dir.join("admin.token");
        let t = new_root_token();
        write_token_file(&f, &t).unwrap();
        assert_eq!(read_token_file(&f).unwrap(), t);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&f).unwrap().permissions().mode() & 0o777, 0o600);
        }
        std::fs::write(&f, "nope").unwrap();
        assert!(read_token_file(&f).unwrap_err().contains("malformed"));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
