//! Talking to a control plane: where it is, which token to use, and one
//! request helper that turns the API's error shape into a [`Failure`].
//!
//! The URL and token come from `VERGE_URL` and `VERGE_TOKEN` when set,
//! else from the credentials file written by `verge login` (mode 0600 in a
//! 0700 folder). The token is only ever sent in the `Authorization` header
//! and never printed.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;

use anyhow::{Context, anyhow};
use reqwest::{Method, RequestBuilder, StatusCode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Failure;
use crate::env::{Env, config_dir};

const CREDENTIALS: &str = "credentials.toml";

/// What `verge login` stores.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Credentials {
    /// Base URL of the control plane.
    url: String,
    /// The bearer token.
    token: String,
}

/// A control-plane client.
pub(crate) struct Client {
    pub(crate) base: String,
    token: String,
    http: reqwest::Client,
}

fn credentials_path(env: &dyn Env) -> Result<PathBuf, Failure> {
    config_dir(env)
        .map(|d| d.join(CREDENTIALS))
        .ok_or_else(|| Failure::input(anyhow!("set HOME or VERGE_CONFIG_DIR to use `verge login`")))
}

fn http() -> Result<reqwest::Client, Failure> {
    reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(10))
        .user_agent(concat!("verge/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(Failure::runtime)
}

/// Normalises a base URL: scheme required, no trailing slash.
pub(crate) fn normalize_url(url: &str) -> Result<String, Failure> {
    let url = url.trim().trim_end_matches('/');
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| Failure::input(anyhow!("`{url}` is not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
        return Err(Failure::input(anyhow!(
            "`{url}` is not an http:// or https:// URL of a Verge server"
        )));
    }
    Ok(url.to_string())
}

impl Client {
    /// A client from the environment or the saved login.
    pub(crate) fn from_env(env: &dyn Env) -> Result<Self, Failure> {
        let saved = match credentials_path(env) {
            Ok(path) if path.exists() => {
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("cannot read `{}`", path.display()))
                    .map_err(Failure::runtime)?;
                Some(
                    toml::from_str::<Credentials>(&text)
                        .with_context(|| {
                            format!("`{}` is damaged; run `verge login` again", path.display())
                        })
                        .map_err(Failure::input)?,
                )
            }
            _ => None,
        };
        let url = env
            .var("VERGE_URL")
            .filter(|v| !v.is_empty())
            .or_else(|| saved.as_ref().map(|c| c.url.clone()));
        let token = env
            .var("VERGE_TOKEN")
            .filter(|v| !v.is_empty())
            .or_else(|| saved.as_ref().map(|c| c.token.clone()));
        let (Some(url), Some(token)) = (url, token) else {
            return Err(Failure::input(anyhow!(
                "not logged in: run `verge login URL --token-stdin`, or set VERGE_URL and VERGE_TOKEN"
            )));
        };
        Self::new(&url, token)
    }

    pub(crate) fn new(url: &str, token: String) -> Result<Self, Failure> {
        Ok(Self {
            base: normalize_url(url)?,
            token: token.trim().to_string(),
            http: http()?,
        })
    }

    /// A request to `path` (starting with `/v1/`).
    pub(crate) fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
    }

    /// Sends `request` and returns the JSON body, or the API's error as
    /// a failure (exit 2 for what the user must fix, 1 otherwise).
    pub(crate) async fn send(&self, request: RequestBuilder) -> Result<Value, Failure> {
        let response = request.send().await.map_err(|e| {
            Failure::runtime(anyhow!(
                "cannot reach the Verge server at {}: {e}",
                self.base
            ))
        })?;
        self.answer(response).await
    }

    /// The JSON body of a successful response, or the API's error as a
    /// failure (exit 2 for what the user must fix, 1 otherwise).
    pub(crate) async fn answer(&self, response: reqwest::Response) -> Result<Value, Failure> {
        let status = response.status();
        if status.is_success() {
            return Ok(response.json().await.unwrap_or(Value::Null));
        }
        // Only the message is read: a newer server may send a code this
        // client does not know.
        #[derive(Deserialize)]
        struct Error {
            message: String,
        }
        #[derive(Deserialize)]
        struct Body {
            error: Error,
        }
        let message = match response.json::<Body>().await {
            Ok(body) => body.error.message,
            Err(_) => format!("the server answered {status}"),
        };
        let error = anyhow!("{message}");
        Err(match status {
            StatusCode::BAD_REQUEST | StatusCode::CONFLICT | StatusCode::PAYLOAD_TOO_LARGE => {
                Failure::input(error)
            }
            StatusCode::UNAUTHORIZED => Failure::runtime(anyhow!(
                "{message} (server {}); log in again with `verge login`",
                self.base
            )),
            _ => Failure::runtime(error),
        })
    }

    /// GET `path`, read as the API's type `T`.
    pub(crate) async fn get_as<T: DeserializeOwned>(&self, path: &str) -> Result<T, Failure> {
        typed(self.get(path).await?)
    }

    /// Sends `request`, and reads the answer as the API's type `T`.
    pub(crate) async fn send_as<T: DeserializeOwned>(
        &self,
        request: RequestBuilder,
    ) -> Result<T, Failure> {
        typed(self.send(request).await?)
    }

    /// Shorthand for a GET.
    pub(crate) async fn get(&self, path: &str) -> Result<Value, Failure> {
        self.send(self.request(Method::GET, path)).await
    }
}

/// An answer of the API read as its type `T` (`verge_api`); an answer of
/// another shape is a server this `verge` does not understand.
pub(crate) fn typed<T: DeserializeOwned>(answer: Value) -> Result<T, Failure> {
    serde_json::from_value(answer).map_err(|e| {
        Failure::runtime(anyhow!(
            "the server's answer is not what this verge {} expects ({e}); is the server \
             another version?",
            env!("CARGO_PKG_VERSION")
        ))
    })
}

/// Saves the login after checking it against the server.
pub(crate) async fn login(
    env: &dyn Env,
    url: &str,
    token: String,
) -> Result<verge_api::Status, Failure> {
    let client = Client::new(url, token)?;
    let status = client.get_as("/v1/status").await?;
    let path = credentials_path(env)?;
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create `{}`", dir.display()))
            .map_err(Failure::runtime)?;
    }
    let text = toml::to_string(&Credentials {
        url: client.base.clone(),
        token: client.token.clone(),
    })
    .map_err(Failure::runtime)?;
    write_private(&path, text.as_bytes()).map_err(Failure::runtime)?;
    Ok(status)
}

/// Writes a file only the owner can read (0600), replacing it atomically.
pub(crate) fn write_private(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot write `{}`", tmp.display()))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write `{}`", path.display()))?;
    Ok(())
}
