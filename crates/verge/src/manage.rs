//! Commands that read and change what a Verge server runs: `login`,
//! `status`, `apps`, `versions`, `traffic`, `rollback`, `delete`, `tokens`
//! and `audit`. Each is one or two API calls; output is a small table on
//! stdout, or the API's JSON with `--json`.

use std::io::{Read, Write};

use anyhow::anyhow;
use clap::Subcommand;
use reqwest::Method;
use serde_json::Value;

use crate::Failure;
use crate::client::{self, Client, typed};
use crate::env::Env;

/// Arguments of `verge login`.
#[derive(Debug, clap::Args)]
pub(crate) struct LoginArgs {
    /// The server's URL, e.g. `http://127.0.0.1:8080`.
    url: String,
    /// Read the token from standard input (keeps it out of shell history).
    #[arg(long, required = true)]
    token_stdin: bool,
}

/// Output switch shared by read commands.
#[derive(Debug, clap::Args)]
pub(crate) struct Output {
    /// Print the API's JSON instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
}

/// Arguments of `verge versions`.
#[derive(Debug, clap::Args)]
pub(crate) struct AppArg {
    /// The app.
    #[arg(value_parser = app_name)]
    app: String,
    #[command(flatten)]
    output: Output,
}

/// Arguments of `verge traffic`.
#[derive(Debug, clap::Args)]
pub(crate) struct TrafficArgs {
    /// The app.
    #[arg(value_parser = app_name)]
    app: String,
    /// Versions and weights adding up to 100, e.g. `v3=90 v4=10`.
    #[arg(required = true, value_name = "VERSION=WEIGHT")]
    split: Vec<String>,
}

/// Arguments of `verge rollback`.
#[derive(Debug, clap::Args)]
pub(crate) struct RollbackArgs {
    /// The app.
    #[arg(value_parser = app_name)]
    app: String,
    /// The version to serve [default: the one before the current].
    version: Option<String>,
}

/// Arguments of `verge logs`.
#[derive(Debug, clap::Args)]
pub(crate) struct LogsArgs {
    /// The app.
    #[arg(value_parser = app_name)]
    app: String,
    /// Keep streaming new lines until interrupted.
    #[arg(short, long)]
    follow: bool,
    /// Recent lines to show first.
    #[arg(long, default_value_t = 100)]
    tail: usize,
    #[command(flatten)]
    output: Output,
}

/// Arguments of `verge delete`.
#[derive(Debug, clap::Args)]
pub(crate) struct DeleteArgs {
    /// The app to stop serving and forget.
    #[arg(value_parser = app_name)]
    app: String,
}

/// `verge tokens ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum TokensCommand {
    /// Create a token; its text is printed once.
    Create {
        /// Scopes, comma-separated: apps:read, apps:deploy, apps:delete,
        /// secrets:write, kv:read, kv:write, tokens:admin, audit:read,
        /// usage:read, metrics:read, tenants:admin.
        #[arg(long, value_delimiter = ',', required = true)]
        scopes: Vec<verge_api::Scope>,
        /// Tenant the token acts for [default: your own].
        #[arg(long)]
        tenant: Option<String>,
        /// What the token is for.
        #[arg(long, default_value = "")]
        name: String,
        /// Lifetime, e.g. `30days` or `12h` [default: no expiry].
        #[arg(long, value_name = "DURATION")]
        expires_in: Option<String>,
    },
    /// List tokens (never their secrets).
    List(Output),
    /// Revoke a token by id.
    Revoke {
        /// The token id (the part after `verge_`).
        id: String,
    },
}

/// `verge audit [verify]`.
#[derive(Debug, clap::Args)]
pub(crate) struct AuditArgs {
    #[command(subcommand)]
    command: Option<AuditCommand>,
    /// Only entries after this sequence number.
    #[arg(long, default_value_t = 0)]
    after: u64,
    /// At most this many entries.
    #[arg(long, default_value_t = 100)]
    limit: u32,
    #[command(flatten)]
    output: Output,
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Recompute the hash chain and report the first tampered entry.
    Verify,
}

/// Checks an app name before it goes into a URL.
pub(crate) fn app_name(s: &str) -> Result<String, String> {
    verge_manifest::check_name(s)
        .map(|()| s.to_string())
        .map_err(|hint| format!("invalid app name: {hint}"))
}

pub(crate) fn block_on<T>(f: impl Future<Output = Result<T, Failure>>) -> Result<T, Failure> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Failure::runtime)?
        .block_on(f)
}

pub(crate) fn print(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

pub(crate) fn print_json(value: &Value) {
    print(&format!(
        "{}\n",
        serde_json::to_string_pretty(value).unwrap_or_default()
    ));
}

/// Lays out rows in columns.
pub(crate) fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        out.push_str(&line(row));
    }
    out
}

fn traffic_text(traffic: &[verge_api::TrafficShare]) -> String {
    traffic
        .iter()
        .map(|s| format!("{}={}", s.version, s.weight))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Scopes as `a,b,c`.
fn scopes_text(scopes: &[String]) -> String {
    scopes.join(",")
}

/// An optional text as a table cell.
fn or_dash(value: Option<&str>) -> String {
    value.unwrap_or("-").to_string()
}

pub(crate) fn login(args: LoginArgs, env: &dyn Env) -> Result<(), Failure> {
    let mut token = String::new();
    std::io::stdin()
        .read_to_string(&mut token)
        .map_err(|e| Failure::input(anyhow!("cannot read the token from stdin: {e}")))?;
    let token = token.trim().to_string();
    if token.is_empty() {
        return Err(Failure::input(anyhow!("no token on stdin")));
    }
    let status = block_on(client::login(env, &args.url, token))?;
    print(&format!(
        "Logged in to {} as token {} (tenant {})\n",
        args.url.trim_end_matches('/'),
        status.token.id,
        status.token.tenant
    ));
    Ok(())
}

pub(crate) fn status(output: Output, env: &dyn Env) -> Result<(), Failure> {
    let client = Client::from_env(env)?;
    let answer = block_on(client.get("/v1/status"))?;
    if output.json {
        print_json(&answer);
    } else {
        let status: verge_api::Status = typed(answer)?;
        print(&format!(
            "Server   {} (verge {})\nToken    {} (tenant {}; scopes {})\nApps     {}\n",
            client.base,
            status.server.version,
            status.token.id,
            status.token.tenant,
            scopes_text(&status.token.scopes),
            status.apps,
        ));
    }
    Ok(())
}

pub(crate) fn apps(output: Output, env: &dyn Env) -> Result<(), Failure> {
    let client = Client::from_env(env)?;
    let answer = block_on(client.get("/v1/apps"))?;
    if output.json {
        print_json(&answer);
        return Ok(());
    }
    let apps: verge_api::AppList = typed(answer)?;
    let rows = apps
        .apps
        .iter()
        .map(|a| {
            vec![
                a.name.clone(),
                traffic_text(&a.traffic),
                a.versions.to_string(),
                a.routes.join(" "),
            ]
        })
        .collect();
    print(&table(&["APP", "TRAFFIC", "VERSIONS", "ROUTES"], rows));
    Ok(())
}

pub(crate) fn versions(args: AppArg, env: &dyn Env) -> Result<(), Failure> {
    let client = Client::from_env(env)?;
    let answer = block_on(client.get(&format!("/v1/apps/{}/versions", args.app)))?;
    if args.output.json {
        print_json(&answer);
        return Ok(());
    }
    let versions: verge_api::VersionList = typed(answer)?;
    let rows = versions
        .versions
        .iter()
        .map(|v| {
            vec![
                v.version.to_string(),
                format!("{}%", v.weight),
                v.digest.chars().take(12).collect(),
                v.created.clone(),
            ]
        })
        .collect();
    print(&table(&["VERSION", "TRAFFIC", "DIGEST", "CREATED"], rows));
    Ok(())
}

fn changed(changed: &verge_api::AppChanged) -> Result<(), Failure> {
    print(&format!(
        "{}: now serving {}\n",
        changed.app.name,
        traffic_text(&changed.app.traffic)
    ));
    if !changed.confirmation.serving {
        return Err(Failure::runtime(anyhow!(
            "the change is recorded but the node does not serve it: {}",
            changed
                .confirmation
                .problem
                .as_deref()
                .unwrap_or("it did not confirm; check the server log")
        )));
    }
    Ok(())
}

pub(crate) fn traffic(args: TrafficArgs, env: &dyn Env) -> Result<(), Failure> {
    let mut split = Vec::new();
    for entry in &args.split {
        let (version, weight) = entry
            .split_once('=')
            .and_then(|(v, w)| Some((v.parse().ok()?, w.parse::<u32>().ok()?)))
            .ok_or_else(|| {
                Failure::input(anyhow!("`{entry}` is not VERSION=WEIGHT, e.g. v3=90"))
            })?;
        split.push(verge_api::SplitEntry { version, weight });
    }
    let client = Client::from_env(env)?;
    let app = block_on(
        client.send_as(
            client
                .request(Method::PUT, &format!("/v1/apps/{}/traffic", args.app))
                .json(&verge_api::TrafficRequest { split }),
        ),
    )?;
    changed(&app)
}

pub(crate) fn rollback(args: RollbackArgs, env: &dyn Env) -> Result<(), Failure> {
    let client = Client::from_env(env)?;
    let version = args
        .version
        .as_deref()
        .map(str::parse::<verge_api::VersionName>)
        .transpose()
        .map_err(|e| Failure::input(anyhow!("{e}")))?;
    let app = block_on(
        client.send_as(
            client
                .request(Method::POST, &format!("/v1/apps/{}/rollback", args.app))
                .json(&verge_api::RollbackRequest { version }),
        ),
    )?;
    changed(&app)
}

pub(crate) fn delete(args: DeleteArgs, env: &dyn Env) -> Result<(), Failure> {
    let client = Client::from_env(env)?;
    block_on(client.send(client.request(Method::DELETE, &format!("/v1/apps/{}", args.app))))?;
    print(&format!("Deleted {}\n", args.app));
    Ok(())
}

pub(crate) fn tokens(command: TokensCommand, env: &dyn Env) -> Result<(), Failure> {
    let client = Client::from_env(env)?;
    match command {
        TokensCommand::Create {
            scopes,
            tenant,
            name,
            expires_in,
        } => {
            let body = verge_api::CreateTokenRequest {
                tenant,
                scopes,
                name,
                expires_in,
            };
            let token: verge_api::TokenCreated =
                block_on(client.send_as(client.request(Method::POST, "/v1/tokens").json(&body)))?;
            tracing::info!(
                "created token {} for tenant {}; its text is shown only once",
                token.info.id,
                token.info.tenant
            );
            print(&format!("{}\n", token.token));
        }
        TokensCommand::List(output) => {
            let answer = block_on(client.get("/v1/tokens"))?;
            if output.json {
                print_json(&answer);
                return Ok(());
            }
            let tokens: verge_api::TokenList = typed(answer)?;
            let rows = tokens
                .tokens
                .iter()
                .map(|t| {
                    vec![
                        t.id.clone(),
                        t.tenant.clone(),
                        t.state.as_str().to_string(),
                        scopes_text(&t.scopes),
                        t.name.clone(),
                    ]
                })
                .collect();
            print(&table(&["ID", "TENANT", "STATE", "SCOPES", "NAME"], rows));
        }
        TokensCommand::Revoke { id } => {
            block_on(client.send(client.request(Method::DELETE, &format!("/v1/tokens/{id}"))))?;
            print(&format!("Revoked {id}\n"));
        }
    }
    Ok(())
}

pub(crate) fn audit(args: AuditArgs, env: &dyn Env) -> Result<(), Failure> {
    let client = Client::from_env(env)?;
    if let Some(AuditCommand::Verify) = args.command {
        let answer = block_on(client.get("/v1/audit/verify"))?;
        if args.output.json {
            print_json(&answer);
        }
        let report: verge_api::Verification = typed(answer)?;
        if report.ok {
            if !args.output.json {
                print(&format!(
                    "Audit log intact: {} entries verified\n",
                    report.entries
                ));
            }
            return Ok(());
        }
        return Err(Failure::runtime(anyhow!(
            "audit log TAMPERED at entry {}: {} ({} entries before it verify)",
            report.first_bad.map_or("-".to_string(), |n| n.to_string()),
            or_dash(report.problem.as_deref()),
            report.entries
        )));
    }
    let answer = block_on(client.get(&format!(
        "/v1/audit?after={}&limit={}",
        args.after, args.limit
    )))?;
    if args.output.json {
        print_json(&answer);
        return Ok(());
    }
    let page: verge_api::AuditPage = typed(answer)?;
    let rows = page
        .entries
        .into_iter()
        .map(|e| {
            vec![
                e.seq.to_string(),
                e.time,
                e.actor,
                e.action,
                e.target,
                e.outcome,
                e.detail,
            ]
        })
        .collect();
    print(&table(
        &[
            "SEQ", "TIME", "ACTOR", "ACTION", "TARGET", "OUTCOME", "DETAIL",
        ],
        rows,
    ));
    Ok(())
}

pub(crate) fn logs(args: LogsArgs, env: &dyn Env) -> Result<(), Failure> {
    use futures::StreamExt;
    let client = Client::from_env(env)?;
    block_on(async {
        let path = format!(
            "/v1/apps/{}/logs?tail={}&follow={}",
            args.app, args.tail, args.follow
        );
        let response = client
            .request(Method::GET, &path)
            .send()
            .await
            .map_err(|e| {
                Failure::runtime(anyhow!(
                    "cannot reach the Verge server at {}: {e}",
                    client.base
                ))
            })?;
        if !response.status().is_success() {
            // Let the shared helper turn the error body into a message.
            return client
                .send(client.request(Method::GET, &path))
                .await
                .map(|_| ());
        }
        let mut stream = response.bytes_stream();
        let mut pending = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk =
                chunk.map_err(|e| Failure::runtime(anyhow!("the log stream broke: {e}")))?;
            pending.extend_from_slice(&chunk);
            while let Some(i) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=i).collect();
                if args.output.json {
                    print(&String::from_utf8_lossy(&line));
                    continue;
                }
                let Ok(v) = serde_json::from_slice::<verge_api::LogLine>(&line) else {
                    continue;
                };
                let mut tags = v.component;
                if let Some(version) = &v.version {
                    tags = format!("{tags}@{version}");
                }
                let context = v
                    .context
                    .as_deref()
                    .filter(|c| !c.is_empty())
                    .map_or(String::new(), |c| format!("[{c}] "));
                print(&format!(
                    "{} {:5} {} {} {context}{}\n",
                    v.time, v.level, tags, v.request_id, v.message,
                ));
            }
        }
        Ok(())
    })
}
