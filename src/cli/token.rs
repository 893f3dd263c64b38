//! `aidos token ...`, `aidos login`, `aidos whoami`: API tokens (see `aidos_api::auth`); `aidos audit`: the audit
//! log of what those tokens did.

use aidos_api::auth::{self, parse_role, role_name};
use aidos_api::{CreateTokenRequest, ListTokensRequest, RevokeTokenRequest, Role, Token, WhoAmIRequest};
use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::json;

use super::args::{Global, Output, login_file};
use super::client::{Client, status_error};
use super::render::{age, print_json, print_table};

#[derive(Subcommand, Debug)]
pub enum TokenCmd {
    /// Create a token; its secret is printed once
    Create(CreateArgs),
    /// Tokens of the projects you administer
    List {
        /// Include revoked tokens
        #[arg(long, env = "AIDOS_TOKEN_LIST_ALL")]
        all: bool,
        /// Only this project's tokens
        #[arg(long = "of-project", env = "AIDOS_TOKEN_LIST_PROJECT")]
        of_project: Option<String>,
    },
    /// Revoke a token by id (every node refuses it once it has applied the revocation)
    Revoke {
        /// The token's id (`aidos token list`)
        id: String,
    },
    /// Make a cluster's root (admin) token file, mode 0600, for every node's --admin-token-file (no scheduler needed)
    NewRoot {
        /// The file to create (refused if it exists)
        #[arg(long, env = "AIDOS_NEW_ROOT_FILE")]
        file: std::path::PathBuf,
    },
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    /// Who the token is for (a user or a service account)
    #[arg(long, env = "AIDOS_TOKEN_NAME")]
    pub name: String,
    /// viewer (read), member (read, write, run process jobs, call deployments), admin (member, and the project's
    /// tokens), worker (a worker agent, or a gateway), or infer (an inference API key: calls deployments only)
    #[arg(long, env = "AIDOS_TOKEN_ROLE", value_parser = parse_role_arg)]
    pub role: Role,
    /// Project the token acts in (`*`: every project); default: --project, else `default`
    #[arg(long = "for-project", env = "AIDOS_TOKEN_FOR_PROJECT")]
    pub for_project: Option<String>,
    /// Lifetime, e.g. 30d, 12h, 90m or 3600 (seconds); default: never expires
    #[arg(long, env = "AIDOS_TOKEN_EXPIRES", value_parser = parse_ttl)]
    pub expires: Option<i64>,
    /// Members and admins: do not allow `process` jobs (arbitrary code on workers) with this token
    #[arg(long, env = "AIDOS_TOKEN_NO_PROCESS")]
    pub no_process: bool,
    /// Admin, member and infer tokens: call only this deployment's inference endpoints (repeat for several);
    /// default: every deployment of the project
    #[arg(long = "deployment", env = "AIDOS_TOKEN_DEPLOYMENTS", value_delimiter = ',')]
    pub deployments: Vec<String>,
    /// With --role worker: a one-time join token a new worker exchanges for its certificate on a cluster that
    /// serves TLS (`aidos worker --join-token`); expires in an hour unless --expires (at most a day)
    #[arg(long, env = "AIDOS_TOKEN_JOIN")]
    pub join: bool,
}

#[derive(Args, Debug)]
pub struct AuditArgs {
    /// Only this user's records (a token's name or id)
    #[arg(long, env = "AIDOS_AUDIT_USER")]
    pub user: Option<String>,
    /// Cluster-wide admins: only this project's records (default: every project); others see their --project's
    #[arg(long = "of-project", env = "AIDOS_AUDIT_PROJECT")]
    pub of_project: Option<String>,
    /// Only methods containing this, e.g. `Submit`, `JobService`, `RevokeToken`
    #[arg(long, env = "AIDOS_AUDIT_ACTION")]
    pub action: Option<String>,
    /// Only records of the last ..., e.g. 1h, 30m, 7d
    #[arg(long, env = "AIDOS_AUDIT_SINCE", value_parser = parse_ttl)]
    pub since: Option<i64>,
    /// Only refused calls
    #[arg(long, env = "AIDOS_AUDIT_DENIED")]
    pub denied: bool,
    /// Most records shown, newest first (at most 1000)
    #[arg(long, env = "AIDOS_AUDIT_LIMIT", default_value_t = 50)]
    pub limit: u32,
}

#[derive(Args, Debug)]
pub struct LoginArgs {
    /// The token to save; default: read from standard input
    #[arg(long = "with-token", env = "AIDOS_LOGIN_TOKEN", hide_env_values = true)]
    pub with_token: Option<String>,
}

fn parse_role_arg(s: &str) -> Result<Role, String> {
    parse_role(s)
}

/// `30d`, `12h`, `90m`, `45s` or plain seconds.
pub fn parse_ttl(s: &str) -> Result<i64, String> {
    let s = s.trim();
    let (num, unit) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&s[..i], c),
        _ => (s, 's'),
    };
    let n: i64 = num.parse().map_err(|_| format!("`{s}`: expected a lifetime such as 30d, 12h, 90m or 3600"))?;
    let mult = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => return Err(format!("`{s}`: unknown unit `{unit}` (s, m, h or d)")),
    };
    if n <= 0 {
        return Err(format!("`{s}`: a lifetime must be positive"));
    }
    n.checked_mul(mult).ok_or_else(|| format!("`{s}`: too long"))
}

fn token_json(t: &Token) -> serde_json::Value {
    json!({
        "id": t.id, "name": t.name, "role": role_name(Role::try_from(t.role).unwrap_or_default()),
        "project": t.project, "allow_process": t.allow_process, "created_at_ms": t.created_at_ms,
        "expires_at_ms": t.expires_at_ms, "revoked_at_ms": t.revoked_at_ms, "created_by": t.created_by,
        "deployments": t.deployments,
    })
}

fn when(ms: i64, none: &str) -> String {
    if ms == 0 {
        return none.to_string();
    }
    let now = aidos_api::now_ms();
    // `age` of the moment as far in the past as `ms` is in the future.
    if ms > now { format!("in {}", age(2 * now - ms)) } else { format!("{} ago", age(ms)) }
}

pub async fn run(g: &Global, cmd: TokenCmd) -> anyhow::Result<()> {
    if let TokenCmd::NewRoot { file } = &cmd {
        anyhow::ensure!(!file.exists(), "{} exists: a root token file is never overwritten", file.display());
        auth::write_token_file(file, &auth::new_root_token()).with_context(|| format!("writing {}", file.display()))?;
        println!("wrote a new root token to {} (mode 0600): give every scheduler node this file", file.display());
        return Ok(());
    }
    let client = Client::new(&g.scheduler)?;
    match cmd {
        TokenCmd::NewRoot { .. } => unreachable!("handled above"),
        TokenCmd::Create(a) => {
            let req = CreateTokenRequest {
                name: a.name,
                role: a.role as i32,
                project: a.for_project.or_else(|| g.project.clone()).unwrap_or_default(),
                ttl_seconds: a.expires.unwrap_or(0),
                no_process: a.no_process,
                deployments: a.deployments,
                join: a.join,
            };
            let r = client
                .auth(|mut c| {
                    let req = req.clone();
                    async move { c.create_token(req).await.map(|r| r.into_inner()) }
                })
                .await
                .map_err(|e| status_error(e, ""))?;
            let t = r.token.unwrap_or_default();
            if g.output == Output::Json {
                print_json(&json!({ "token": token_json(&t), "secret": r.secret }));
            } else {
                eprintln!(
                    "token {} for {} ({} of project {}{}); shown once, keep it safe:",
                    t.id,
                    t.name,
                    role_name(Role::try_from(t.role).unwrap_or_default()),
                    t.project,
                    if t.expires_at_ms > 0 {
                        format!(", expires {}", when(t.expires_at_ms, ""))
                    } else {
                        String::new()
                    }
                );
                println!("{}", r.secret);
            }
        }
        TokenCmd::List { all, of_project } => {
            let req = ListTokensRequest { project: of_project.unwrap_or_default(), include_revoked: all };
            let r = client
                .auth(|mut c| {
                    let req = req.clone();
                    async move { c.list_tokens(req).await.map(|r| r.into_inner()) }
                })
                .await
                .map_err(|e| status_error(e, ""))?;
            if g.output == Output::Json {
                print_json(&json!({ "tokens": r.tokens.iter().map(token_json).collect::<Vec<_>>() }));
                return Ok(());
            }
            let rows: Vec<Vec<String>> = r
                .tokens
                .iter()
                .map(|t| {
                    vec![
                        t.id.clone(),
                        t.name.clone(),
                        role_name(Role::try_from(t.role).unwrap_or_default()).to_string(),
                        t.project.clone(),
                        if t.allow_process { "yes" } else { "no" }.to_string(),
                        age(t.created_at_ms),
                        when(t.expires_at_ms, "never"),
                        when(t.revoked_at_ms, "-"),
                        t.created_by.clone(),
                        if t.deployments.is_empty() { "-".to_string() } else { t.deployments.join(",") },
                    ]
                })
                .collect();
            let head =
                ["ID", "NAME", "ROLE", "PROJECT", "PROCESS", "CREATED", "EXPIRES", "REVOKED", "BY", "DEPLOYMENTS"];
            print_table(&head, &rows);
        }
        TokenCmd::Revoke { id } => {
            let t = client
                .auth(|mut c| {
                    let id = id.clone();
                    async move { c.revoke_token(RevokeTokenRequest { id }).await.map(|r| r.into_inner()) }
                })
                .await
                .map_err(|e| status_error(e, &format!("token {id}")))?;
            if g.output == Output::Json {
                print_json(&token_json(&t));
            } else {
                println!("revoked token {} ({})", t.id, t.name);
            }
        }
    }
    Ok(())
}

async fn who(g: &Global, token: Option<String>) -> anyhow::Result<aidos_api::WhoAmIResponse> {
    if let Some(t) = token {
        super::client::set_credentials(auth::Credentials {
            token: Some(t),
            project: g.project.clone(),
            ..super::client::credentials()
        });
    }
    let client = Client::new(&g.scheduler)?;
    client
        .auth(|mut c| async move { c.who_am_i(WhoAmIRequest {}).await.map(|r| r.into_inner()) })
        .await
        .map_err(|e| status_error(e, ""))
}

fn show_who(g: &Global, w: &aidos_api::WhoAmIResponse) {
    let role = role_name(Role::try_from(w.role).unwrap_or_default());
    if g.output == Output::Json {
        print_json(&json!({
            "name": w.name, "role": role, "project": w.project, "token_id": w.token_id,
            "allow_process": w.allow_process, "expires_at_ms": w.expires_at_ms,
        }));
    } else {
        println!(
            "{} ({} of project {}; token {}; process jobs: {}; expires: {})",
            w.name,
            role,
            w.project,
            w.token_id,
            if w.allow_process { "yes" } else { "no" },
            when(w.expires_at_ms, "never")
        );
    }
}

pub async fn whoami(g: &Global) -> anyhow::Result<()> {
    let w = who(g, None).await?;
    show_who(g, &w);
    Ok(())
}

/// Checks the token against the scheduler, then saves it (mode 0600) where the CLI looks for it.
pub async fn login(g: &Global, a: LoginArgs) -> anyhow::Result<()> {
    let token = match a.with_token {
        Some(t) => t,
        None => {
            eprintln!("paste a token (aidos_<id>_<secret>) and press Enter:");
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).context("reading the token from standard input")?;
            line
        }
    };
    let token = token.trim().to_string();
    auth::parse_token(&token).map_err(|e| anyhow::anyhow!("{e}"))?;
    let w = who(g, Some(token.clone())).await?;
    let file = login_file().context("no home directory to save the token in (set HOME or XDG_CONFIG_HOME)")?;
    auth::write_token_file(&file, &token).with_context(|| format!("saving the token to {}", file.display()))?;
    show_who(g, &w);
    eprintln!("saved to {} (later commands use it unless --token or AIDOS_TOKEN is given)", file.display());
    Ok(())
}

/// `aidos audit`: the audit log, newest first.
pub async fn audit(g: &Global, a: AuditArgs) -> anyhow::Result<()> {
    let req = aidos_api::ListAuditRequest {
        user: a.user.unwrap_or_default(),
        project: a.of_project.unwrap_or_default(),
        action: a.action.unwrap_or_default(),
        since_ms: a.since.map_or(0, |s| aidos_api::now_ms() - s * 1000),
        until_ms: 0,
        denied_only: a.denied,
        limit: a.limit,
    };
    let client = Client::new(&g.scheduler)?;
    let r = client
        .audit(|mut c| {
            let req = req.clone();
            async move { c.list(req).await.map(|r| r.into_inner()) }
        })
        .await
        .map_err(|e| status_error(e, ""))?;
    if g.output == Output::Json {
        let rows: Vec<_> = r
            .records
            .iter()
            .map(|x| {
                json!({
                    "seq": x.seq, "at_ms": x.at_ms, "principal": x.principal, "token_id": x.token_id,
                    "project": x.project, "action": x.action, "allowed": x.allowed, "code": x.code,
                    "reason": x.reason, "peer": x.peer, "node": x.node, "via": x.via,
                })
            })
            .collect();
        print_json(&json!({ "records": rows }));
        return Ok(());
    }
    let rows: Vec<Vec<String>> = r
        .records
        .iter()
        .map(|x| {
            let who = if x.principal.is_empty() { format!("? {}", x.token_id) } else { x.principal.clone() };
            let result = if x.allowed { x.code.clone() } else { format!("DENIED {}", x.code) };
            vec![
                age(x.at_ms),
                who,
                x.project.clone(),
                x.action.trim_start_matches("/aidos.v1.").to_string(),
                result,
                format!("{} ({}, node {})", x.peer, x.via, x.node),
                x.reason.clone(),
            ]
        })
        .collect();
    print_table(&["WHEN", "WHO", "PROJECT", "ACTION", "RESULT", "FROM", "WHY"], &rows);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes() {
        assert_eq!(parse_ttl("30d"), Ok(30 * 86_400));
        assert_eq!(parse_ttl("12h"), Ok(12 * 3600));
        assert_eq!(parse_ttl("90m"), Ok(5400));
        assert_eq!(parse_ttl("45"), Ok(45));
        assert!(parse_ttl("0").is_err());
        assert!(parse_ttl("3w").unwrap_err().contains("unknown unit"));
        assert!(parse_ttl("soon").is_err());
    }
}
