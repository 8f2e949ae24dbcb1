//! Commands that read and change what a Verge server runs: `login`,
//! `status`, `apps`, `versions`, `traffic`, `rollback`, `delete`, `tokens`
//! and `audit`. Each is one or two API calls; output is a small table on
//! stdout, or the API's JSON with `--json`.

use std::io::{Read, Write};

use anyhow::anyhow;
use clap::Subcommand;
use reqwest::Method;
use serde_json::{Value, json};

use crate::Failure;
use crate::client::{self, Client};
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
        /// tokens:admin, audit:read, tenants:admin.
        #[arg(long, value_delimiter = ',', required = true)]
        scopes: Vec<String>,
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

pub(crate) fn str_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_string(),
        other => other.to_string(),
    }
}

/// The elements of the array `v[key]`.
pub(crate) fn items<'a>(v: &'a Value, key: &str) -> impl Iterator<Item = &'a Value> {
    v[key].as_array().into_iter().flatten()
}

/// The array `v[key]` as text, elements separated by `sep`.
fn joined(v: &Value, key: &str, sep: &str) -> String {
    items(v, key).map(str_of).collect::<Vec<_>>().join(sep)
}

/// The fields `keys` of `v`, as table cells.
fn cells(v: &Value, keys: &[&str]) -> Vec<String> {
    keys.iter().map(|k| str_of(&v[*k])).collect()
}

fn traffic_text(app: &Value) -> String {
    items(app, "traffic")
        .map(|s| format!("{}={}", str_of(&s["version"]), str_of(&s["weight"])))
        .collect::<Vec<_>>()
        .join(" ")
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
        str_of(&status["token"]["id"]),
        str_of(&status["token"]["tenant"])
    ));
    Ok(())
}

pub(crate) fn status(output: Output, env: &dyn Env) -> Result<(), Failure> {
    let client = Client::from_env(env)?;
    let status = block_on(client.get("/v1/status"))?;
    if output.json {
        print_json(&status);
    } else {
        print(&format!(
            "Server   {} (verge {})\nToken    {} (tenant {}; scopes {})\nApps     {}\n",
            client.base,
            str_of(&status["server"]["version"]),
            str_of(&status["token"]["id"]),
            str_of(&status["token"]["tenant"]),
            joined(&status["token"], "scopes", ","),
            str_of(&status["apps"]),
        ));
    }
    Ok(())
}

pub(crate) fn apps(output: Output, env: &dyn Env) -> Result<(), Failure> {
    let client = Client::from_env(env)?;
    let apps = block_on(client.get("/v1/apps"))?;
    if output.json {
        print_json(&apps);
        return Ok(());
    }
    let rows = items(&apps, "apps")
        .map(|a| {
            vec![
                str_of(&a["name"]),
                traffic_text(a),
                str_of(&a["versions"]),
                joined(a, "routes", " "),
            ]
        })
        .collect();
    print(&table(&["APP", "TRAFFIC", "VERSIONS", "ROUTES"], rows));
    Ok(())
}

pub(crate) fn versions(args: AppArg, env: &dyn Env) -> Result<(), Failure> {
    let client = Client::from_env(env)?;
    let versions = block_on(client.get(&format!("/v1/apps/{}/versions", args.app)))?;
    if args.output.json {
        print_json(&versions);
        return Ok(());
    }
    let rows = items(&versions, "versions")
        .map(|v| {
            let digest = str_of(&v["digest"]);
            vec![
                str_of(&v["version"]),
                format!("{}%", str_of(&v["weight"])),
                digest.chars().take(12).collect(),
                str_of(&v["created"]),
            ]
        })
        .collect();
    print(&table(&["VERSION", "TRAFFIC", "DIGEST", "CREATED"], rows));
    Ok(())
}

fn changed(app: &Value) -> Result<(), Failure> {
    print(&format!(
        "{}: now serving {}\n",
        str_of(&app["name"]),
        traffic_text(app)
    ));
    if app["serving"].as_bool() != Some(true) {
        return Err(Failure::runtime(anyhow!(
            "the change is recorded but the node did not confirm it; check the server log"
        )));
    }
    Ok(())
}

pub(crate) fn traffic(args: TrafficArgs, env: &dyn Env) -> Result<(), Failure> {
    let mut split = Vec::new();
    for entry in &args.split {
        let (version, weight) = entry
            .split_once('=')
            .and_then(|(v, w)| Some((v, w.parse::<u32>().ok()?)))
            .ok_or_else(|| {
                Failure::input(anyhow!("`{entry}` is not VERSION=WEIGHT, e.g. v3=90"))
            })?;
        split.push(json!({"version": version, "weight": weight}));
    }
    let client = Client::from_env(env)?;
    let app = block_on(
        client.send(
            client
                .request(Method::PUT, &format!("/v1/apps/{}/traffic", args.app))
                .json(&json!({ "split": split })),
        ),
    )?;
    changed(&app)
}

pub(crate) fn rollback(args: RollbackArgs, env: &dyn Env) -> Result<(), Failure> {
    let client = Client::from_env(env)?;
    let body = match &args.version {
        Some(v) => json!({ "version": v }),
        None => json!({}),
    };
    let app = block_on(
        client.send(
            client
                .request(Method::POST, &format!("/v1/apps/{}/rollback", args.app))
                .json(&body),
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
            let mut body = json!({"scopes": scopes, "name": name});
            if let Some(t) = tenant {
                body["tenant"] = json!(t);
            }
            if let Some(e) = expires_in {
                body["expires_in"] = json!(e);
            }
            let token =
                block_on(client.send(client.request(Method::POST, "/v1/tokens").json(&body)))?;
            tracing::info!(
                "created token {} for tenant {}; its text is shown only once",
                str_of(&token["id"]),
                str_of(&token["tenant"])
            );
            print(&format!("{}\n", str_of(&token["token"])));
        }
        TokensCommand::List(output) => {
            let tokens = block_on(client.get("/v1/tokens"))?;
            if output.json {
                print_json(&tokens);
                return Ok(());
            }
            let rows = items(&tokens, "tokens")
                .map(|t| {
                    let mut row = cells(t, &["id", "tenant", "state"]);
                    row.push(joined(t, "scopes", ","));
                    row.push(str_of(&t["name"]));
                    row
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
        let report = block_on(client.get("/v1/audit/verify"))?;
        if args.output.json {
            print_json(&report);
        }
        if report["ok"].as_bool() == Some(true) {
            if !args.output.json {
                print(&format!(
                    "Audit log intact: {} entries verified\n",
                    str_of(&report["entries"])
                ));
            }
            return Ok(());
        }
        return Err(Failure::runtime(anyhow!(
            "audit log TAMPERED at entry {}: {} ({} entries before it verify)",
            str_of(&report["first_bad"]),
            str_of(&report["problem"]),
            str_of(&report["entries"])
        )));
    }
    let page = block_on(client.get(&format!(
        "/v1/audit?after={}&limit={}",
        args.after, args.limit
    )))?;
    if args.output.json {
        print_json(&page);
        return Ok(());
    }
    let rows = items(&page, "entries")
        .map(|e| {
            cells(
                e,
                &[
                    "seq", "time", "actor", "action", "target", "outcome", "detail",
                ],
            )
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
                let Ok(v) = serde_json::from_slice::<Value>(&line) else {
                    continue;
                };
                let mut tags = str_of(&v["component"]);
                if let Some(version) = v["version"].as_str() {
                    tags = format!("{tags}@{version}");
                }
                let context = v["context"]
                    .as_str()
                    .filter(|c| !c.is_empty())
                    .map_or(String::new(), |c| format!("[{c}] "));
                print(&format!(
                    "{} {:5} {} {} {context}{}\n",
                    str_of(&v["time"]),
                    str_of(&v["level"]),
                    tags,
                    str_of(&v["request_id"]),
                    str_of(&v["message"]),
                ));
            }
        }
        Ok(())
    })
}
