//! Bearer tokens, scopes, and the [`Caller`] every handler starts from.
//!
//! A token reads `verge_{id}_{secret}`. The store keeps the id, the tenant,
//! the scopes and a sha256 of the secret; the secret itself exists only in
//! the caller's hands. Verification looks the id up and compares the hashes
//! in constant time.
//!
//! **Invariants**
//! - Every route but health and the OpenAPI document goes through
//!   [`Caller`]; there is no other way into a handler's state.
//! - Failed authentications are audited and rate-limited per source
//!   address; a source over the limit gets 429 without its token being
//!   looked at. A valid token is never locked out by someone else's
//!   failures from another address.
//! - A token's text never reaches a log line or an audit entry; only its id.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{ConnectInfo, FromRef, FromRequestParts};
use axum::http::header;
use axum::http::request::Parts;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use verge_store::{Expect, Op, Store};

use verge_api::Scope;

use crate::Control;
use crate::audit::{Outcome, Record};
use crate::error::ApiError;
use crate::model::{TokenRecord, now, token_key, unix_now};

/// Scopes of the first admin token: all of them.
pub const ADMIN_SCOPES: [Scope; 11] = Scope::ALL;

/// The tenant of the first admin token.
pub const DEFAULT_TENANT: &str = "default";

/// Failed authentications allowed per source per minute.
const FAILURES_PER_MINUTE: u32 = 10;

/// The limit on failed authentications per source address (not to be
/// confused with `verge-guard`, which admits requests to apps).
pub(crate) struct AuthLimiter {
    /// Counts failures per source (GCRA: 10 per minute, refilled evenly).
    failures: DefaultKeyedRateLimiter<IpAddr>,
    /// Sources over the limit, until when.
    blocked: Mutex<HashMap<IpAddr, Instant>>,
}

impl AuthLimiter {
    pub(crate) fn new() -> Self {
        let quota =
            Quota::per_minute(NonZeroU32::new(FAILURES_PER_MINUTE).unwrap_or(NonZeroU32::MIN));
        Self {
            failures: RateLimiter::keyed(quota),
            blocked: Mutex::new(HashMap::new()),
        }
    }

    /// Records a failure from `ip`; `Err(seconds)` when over the limit.
    fn fail(&self, ip: IpAddr) -> Result<(), u64> {
        if let Err(not_until) = self.failures.check_key(&ip) {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            let mut blocked = self.blocked.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            blocked.retain(|_, until| *until > now);
            blocked.insert(ip, now + wait);
            return Err(wait.as_secs().max(1));
        }
        // Forget sources that stopped failing, so the map stays small.
        if self.failures.len() > 10_000 {
            self.failures.retain_recent();
        }
        Ok(())
    }

    /// Seconds until `ip` may try again, if it is over the limit now.
    fn blocked(&self, ip: IpAddr) -> Option<u64> {
        let blocked = self.blocked.lock().unwrap_or_else(|p| p.into_inner());
        let until = *blocked.get(&ip)?;
        let left = until.checked_duration_since(Instant::now())?;
        Some(left.as_secs().max(1))
    }
}

/// A newly issued token: its text (shown once) and its record.
pub struct Issued {
    /// `verge_{id}_{secret}`: give this to the user, never store it.
    pub text: String,
    /// What is stored.
    pub record: TokenRecord,
}

fn random_hex(bytes: usize) -> Result<String, ApiError> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).map_err(ApiError::internal)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

fn sha256_hex(s: &str) -> String {
    format!("{:x}", Sha256::digest(s.as_bytes()))
}

/// Creates a token (not stored yet: write [`Issued::op`]).
pub fn mint(
    tenant: &str,
    scopes: Vec<String>,
    name: &str,
    expires_at: Option<u64>,
) -> Result<Issued, ApiError> {
    let id = random_hex(8)?;
    let secret = random_hex(32)?;
    let record = TokenRecord {
        id: id.clone(),
        tenant: tenant.to_string(),
        scopes,
        secret_sha256: sha256_hex(&secret),
        name: name.to_string(),
        created: now(),
        expires_at,
        revoked: None,
    };
    Ok(Issued {
        text: format!("verge_{id}_{secret}"),
        record,
    })
}

impl Issued {
    /// The write that stores the token (never its secret).
    pub fn op(&self) -> Result<Op, ApiError> {
        let value = serde_json::to_vec(&self.record).map_err(ApiError::internal)?;
        Ok(Op::put(token_key(&self.record.id), value, Expect::Absent))
    }
}

/// Why a token was refused (for the audit log; the caller only sees 401).
#[derive(Debug, Clone, Copy)]
enum Refusal {
    Missing,
    Malformed,
    Unknown,
    Expired,
    Revoked,
}

impl Refusal {
    fn reason(self) -> &'static str {
        match self {
            Refusal::Missing => "missing bearer token",
            Refusal::Malformed => "malformed token",
            Refusal::Unknown => "unknown token",
            Refusal::Expired => "expired token",
            Refusal::Revoked => "revoked token",
        }
    }
}

async fn verify(
    store: &dyn Store,
    text: &str,
) -> Result<TokenRecord, (Refusal, Option<TokenRecord>)> {
    let parsed = text
        .strip_prefix("verge_")
        .and_then(|rest| rest.split_once('_'))
        .filter(|(id, secret)| {
            id.len() == 16
                && secret.len() == 64
                && id
                    .bytes()
                    .chain(secret.bytes())
                    .all(|b| b.is_ascii_hexdigit())
        });
    let Some((id, secret)) = parsed else {
        return Err((Refusal::Malformed, None));
    };
    let presented = sha256_hex(secret);
    let record = match store.get(&token_key(id)).await {
        Ok(Some(entry)) => serde_json::from_slice::<TokenRecord>(&entry.value).ok(),
        _ => None,
    };
    let Some(record) = record else {
        // Same work as a known id, so timing does not tell ids apart.
        let _ = presented.as_bytes().ct_eq(sha256_hex("").as_bytes());
        return Err((Refusal::Unknown, None));
    };
    if !bool::from(presented.as_bytes().ct_eq(record.secret_sha256.as_bytes())) {
        return Err((Refusal::Unknown, None));
    }
    if record.revoked.is_some() {
        return Err((Refusal::Revoked, Some(record)));
    }
    if record.expires_at.is_some_and(|t| t <= unix_now()) {
        return Err((Refusal::Expired, Some(record)));
    }
    Ok(record)
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The token's record.
    pub token: TokenRecord,
    control: Arc<Control>,
}

impl Caller {
    /// The caller's tenant.
    pub fn tenant(&self) -> &str {
        &self.token.tenant
    }

    /// Whether the token holds `scope`.
    pub fn has(&self, scope: Scope) -> bool {
        self.token.scopes.iter().any(|s| s == scope.as_str())
    }

    /// Requires `scope`; a refusal is audited and answered 403.
    pub async fn require(&self, scope: Scope, target: &str) -> Result<(), ApiError> {
        if self.has(scope) {
            return Ok(());
        }
        self.control
            .audit(
                Record::new("auth.forbidden", target, Outcome::Denied)
                    .actor(&self.token.id, &self.token.tenant)
                    .detail(format!("missing scope {scope}")),
            )
            .await;
        Err(ApiError::Forbidden(scope.to_string()))
    }
}

impl<S> FromRequestParts<S> for Caller
where
    Arc<Control>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let control = Arc::<Control>::from_ref(state);
        let source = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(IpAddr::from([0, 0, 0, 0]), |c| c.0.ip());
        if let Some(secs) = control.auth_limiter.blocked(source) {
            return Err(ApiError::RateLimited(secs));
        }
        let text = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim);
        let result = match text {
            None => Err((Refusal::Missing, None)),
            Some(text) => verify(control.store.as_ref(), text).await,
        };
        match result {
            Ok(token) => Ok(Caller { token, control }),
            Err((refusal, record)) => {
                let target = parts.uri.path().to_string();
                if let Err(secs) = control.auth_limiter.fail(source) {
                    return Err(ApiError::RateLimited(secs));
                }
                let mut entry = Record::new("auth.failed", &target, Outcome::Denied)
                    .detail(format!("{} from {source}", refusal.reason()));
                if let Some(record) = &record {
                    entry = entry.actor(&record.id, &record.tenant);
                }
                control.audit(entry).await;
                Err(ApiError::Unauthenticated(match refusal {
                    Refusal::Missing => {
                        "this endpoint needs `Authorization: Bearer TOKEN`; run `verge login`"
                    }
                    _ => "the token is not valid (unknown, expired or revoked)",
                }))
            }
        }
    }
}
