//! `verge secrets` and `verge kv`: an app's secrets (write-only) and its
//! key-value data, through the control API.
//!
//! **Invariants**: a secret value is read from stdin, never from an
//! argument (arguments end up in shell history and `ps`), and never
//! printed. Keys are percent-encoded into the URL, so any UTF-8 key works.

use std::io::{IsTerminal, Read, Write};

use anyhow::anyhow;
use reqwest::Method;

use crate::Failure;
use crate::client::{Client, typed};
use crate::env::Env;
use crate::manage::{app_name, block_on, print, print_json, table};

/// `verge secrets ...`
#[derive(Debug, clap::Subcommand)]
pub(crate) enum SecretsCommand {
    /// Set a secret from stdin (one trailing newline is dropped unless
    /// `--raw`); components that declare it read it through wasi:config.
    Set {
        /// The app.
        #[arg(value_parser = app_name)]
        app: String,
        /// The secret's name, as components list it in `secrets`.
        #[arg(value_parser = secret_name)]
        name: String,
        /// Keep stdin exactly as given, trailing newline included.
        #[arg(long)]
        raw: bool,
    },
    /// List an app's secrets: names and times, never values.
    List {
        /// The app.
        #[arg(value_parser = app_name)]
        app: String,
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Delete a secret.
    Delete {
        /// The app.
        #[arg(value_parser = app_name)]
        app: String,
        /// The secret's name.
        #[arg(value_parser = secret_name)]
        name: String,
    },
}

/// Which store of which app.
#[derive(Debug, clap::Args)]
pub(crate) struct StoreArgs {
    /// The app.
    #[arg(value_parser = app_name)]
    app: String,
    /// The store, as components list it in `key_value_stores`.
    #[arg(value_parser = store_arg)]
    store: String,
}

/// Which key of which store of which app.
#[derive(Debug, clap::Args)]
pub(crate) struct KeyArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// The key.
    #[arg(value_parser = key_arg)]
    key: String,
}

impl KeyArgs {
    /// `/v1/apps/APP/kv/STORE/KEY`, the key percent-encoded.
    fn path(&self) -> String {
        format!(
            "/v1/apps/{}/kv/{}/{}",
            self.store.app,
            self.store.store,
            encode(&self.key)
        )
    }
}

/// `verge kv ...`
#[derive(Debug, clap::Subcommand)]
pub(crate) enum KvCommand {
    /// Print a value (its bytes, as stored).
    Get(KeyArgs),
    /// Set a value: VALUE, or stdin when VALUE is omitted.
    Set {
        #[command(flatten)]
        key: KeyArgs,
        /// The value; read from stdin (as bytes) when omitted.
        value: Option<String>,
    },
    /// List keys, in byte order.
    List {
        #[command(flatten)]
        store: StoreArgs,
        /// Start after this key.
        #[arg(long)]
        after: Option<String>,
        /// Stop after this many keys [default: all].
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Delete a key.
    Delete(KeyArgs),
}

fn key_arg(s: &str) -> Result<String, String> {
    match s {
        "" => Err("keys cannot be empty".to_string()),
        // URL clients resolve these as path steps, even percent-encoded.
        "." | ".." => Err(format!(
            "the key `{s}` cannot be addressed in a URL; read or change it from a guest"
        )),
        _ => Ok(s.to_string()),
    }
}

fn secret_name(s: &str) -> Result<String, String> {
    verge_manifest::check_config_name(s)
        .map(|()| s.to_string())
        .map_err(|e| format!("invalid secret name: {e}"))
}

fn store_arg(s: &str) -> Result<String, String> {
    verge_kv::check_store_name(s)
        .map(|()| s.to_string())
        .map_err(|e| e.to_string())
}

/// A key as text for the terminal: control characters escaped, so a key a
/// guest wrote cannot move the cursor or forge lines.
fn printable(key: &str) -> String {
    key.chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

/// Percent-encodes one URL path segment or query value.
pub(crate) fn encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// Reads one line from the terminal with echo off, so a typed secret is
/// never shown; echo is restored however this ends (short of `kill -9`).
fn read_hidden_line(name: &str) -> Result<Vec<u8>, Failure> {
    use rustix::termios::{LocalModes, OptionalActions, tcgetattr, tcsetattr};
    struct Restore(rustix::termios::Termios);
    impl Drop for Restore {
        fn drop(&mut self) {
            let _ = tcsetattr(std::io::stdin(), OptionalActions::Now, &self.0);
            eprintln!();
        }
    }
    let stdin = std::io::stdin();
    let original = tcgetattr(&stdin)
        .map_err(|e| Failure::runtime(anyhow!("cannot set up the terminal: {e}")))?;
    let mut hidden = original.clone();
    hidden.local_modes.remove(LocalModes::ECHO);
    // Echo goes off before the prompt shows: nothing typed after seeing
    // it can be echoed.
    tcsetattr(&stdin, OptionalActions::Now, &hidden)
        .map_err(|e| Failure::runtime(anyhow!("cannot set up the terminal: {e}")))?;
    let _restore = Restore(original);
    eprint!("Value of secret {name} (not shown): ");
    let mut line = String::new();
    stdin
        .read_line(&mut line)
        .map_err(|e| Failure::input(anyhow!("cannot read the secret: {e}")))?;
    Ok(line.into_bytes())
}

fn read_stdin(what: &str) -> Result<Vec<u8>, Failure> {
    let mut stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprintln!("Reading {what} from stdin; end with Ctrl-D.");
    }
    let mut bytes = Vec::new();
    stdin
        .read_to_end(&mut bytes)
        .map_err(|e| Failure::input(anyhow!("cannot read {what} from stdin: {e}")))?;
    Ok(bytes)
}

pub(crate) fn secrets(command: SecretsCommand, env: &dyn Env) -> Result<(), Failure> {
    let client = Client::from_env(env)?;
    match command {
        SecretsCommand::Set { app, name, raw } => {
            let mut value = zeroize::Zeroizing::new(if std::io::stdin().is_terminal() {
                read_hidden_line(&name)?
            } else {
                read_stdin("the secret")?
            });
            if !raw {
                let len = value.len();
                if value.ends_with(b"\r\n") {
                    value.truncate(len - 2);
                } else if value.ends_with(b"\n") {
                    value.truncate(len - 1);
                }
            }
            let body = reqwest::Body::from(value.to_vec());
            let answer: verge_api::SecretSet = block_on(
                client.send_as(
                    client
                        .request(
                            Method::PUT,
                            &format!("/v1/apps/{app}/secrets/{}", encode(&name)),
                        )
                        .body(body),
                ),
            )?;
            let verb = if answer.created { "Set" } else { "Updated" };
            print(&format!("{verb} secret {name} of {app}\n"));
            if !answer.confirmation.serving {
                eprintln!(
                    "warning: {}",
                    answer
                        .confirmation
                        .problem
                        .as_deref()
                        .unwrap_or("the node has not confirmed it yet")
                );
            }
            Ok(())
        }
        SecretsCommand::List { app, json } => {
            let answer = block_on(client.get(&format!("/v1/apps/{app}/secrets")))?;
            if json {
                print_json(&answer);
            } else {
                let list: verge_api::SecretList = typed(answer)?;
                let rows = list
                    .secrets
                    .into_iter()
                    .map(|s| vec![s.name, s.created, s.updated])
                    .collect();
                print(&table(&["NAME", "CREATED", "UPDATED"], rows));
            }
            Ok(())
        }
        SecretsCommand::Delete { app, name } => {
            block_on(client.send(client.request(
                Method::DELETE,
                &format!("/v1/apps/{app}/secrets/{}", encode(&name)),
            )))?;
            print(&format!("Deleted secret {name} of {app}\n"));
            Ok(())
        }
    }
}

pub(crate) fn kv(command: KvCommand, env: &dyn Env) -> Result<(), Failure> {
    let client = Client::from_env(env)?;
    match command {
        KvCommand::Get(key) => {
            let value = block_on(async {
                let response = client
                    .request(Method::GET, &key.path())
                    .send()
                    .await
                    .map_err(|e| Failure::runtime(anyhow!("cannot reach the Verge server: {e}")))?;
                if !response.status().is_success() {
                    return Err(client.answer(response).await.err().unwrap_or_else(|| {
                        Failure::runtime(anyhow!("unexpected answer from the server"))
                    }));
                }
                response
                    .bytes()
                    .await
                    .map_err(|e| Failure::runtime(anyhow!("the answer broke off: {e}")))
            })?;
            let mut out = std::io::stdout().lock();
            out.write_all(&value)
                .and_then(|()| out.flush())
                .map_err(Failure::runtime)
        }
        KvCommand::Set { key, value } => {
            let bytes = match value {
                Some(v) => v.into_bytes(),
                None => read_stdin("the value")?,
            };
            block_on(client.send(client.request(Method::PUT, &key.path()).body(bytes)))?;
            Ok(())
        }
        KvCommand::Delete(key) => {
            block_on(client.send(client.request(Method::DELETE, &key.path())))?;
            Ok(())
        }
        KvCommand::List {
            store,
            after,
            limit,
        } => {
            let mut after = after;
            let mut left = limit.unwrap_or(usize::MAX);
            while left > 0 {
                let mut path = format!(
                    "/v1/apps/{}/kv/{}?limit={}",
                    store.app,
                    store.store,
                    left.min(1000)
                );
                if let Some(a) = &after {
                    path.push_str(&format!("&after={}", encode(a)));
                }
                let page: verge_api::KeyPage = block_on(client.get_as(&path))?;
                left = left.saturating_sub(page.keys.len());
                print(
                    &page
                        .keys
                        .iter()
                        .map(|k| format!("{}\n", printable(k)))
                        .collect::<String>(),
                );
                match page.next {
                    Some(next) => after = Some(next),
                    None => break,
                }
            }
            Ok(())
        }
    }
}
