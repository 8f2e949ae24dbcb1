//! The tamper-evident audit log.
//!
//! Every mutation and every refused authentication appends an
//! [`AuditEntry`] under `audit/log/{seq}`. Each entry carries the hash of
//! the previous one and its own hash over all its fields, and
//! `audit/head` names the last entry, so editing, deleting or reordering
//! entries by hand breaks the chain at a point [`verify`] reports.
//!
//! **Invariants**
//! - An append is one atomic write of the entry (created only if absent),
//!   the head (compare-and-set) and the change it records: a mutation is
//!   never recorded without its entry, nor an entry without its mutation.
//! - Entries hold token ids, never token text or secret values.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use verge_store::{Expect, Op, Revision, Store, StoreError};

use crate::model::now;

const LOG_PREFIX: &str = "audit/log/";
const HEAD: &str = "audit/head";
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// How an audited action ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It took effect.
    Ok,
    /// Refused: authentication, scope or tenant.
    Denied,
    /// Attempted and failed (bad input, conflict).
    Failed,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Denied => "denied",
            Outcome::Failed => "failed",
        }
    }
}

/// An entry about to be appended.
#[derive(Debug, Clone)]
pub struct Record {
    actor: String,
    tenant: String,
    action: String,
    target: String,
    outcome: Outcome,
    detail: String,
}

impl Record {
    /// `action` on `target` ended with `outcome`; actor unknown yet.
    pub fn new(action: &str, target: &str, outcome: Outcome) -> Self {
        Self {
            actor: "-".to_string(),
            tenant: "-".to_string(),
            action: action.to_string(),
            target: target.to_string(),
            outcome,
            detail: String::new(),
        }
    }

    /// Who did it: a token id and its tenant.
    pub fn actor(mut self, token_id: &str, tenant: &str) -> Self {
        self.actor = token_id.to_string();
        self.tenant = tenant.to_string();
        self
    }

    /// A short note (never a secret).
    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = detail.into();
        self
    }
}

/// One entry of the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Position, from 1.
    pub seq: u64,
    /// When (RFC 3339).
    pub time: String,
    /// Token id, or `-` when unknown.
    pub actor: String,
    /// Tenant of the actor, or `-`.
    pub tenant: String,
    /// What was attempted, e.g. `app.deploy`.
    pub action: String,
    /// What it applied to, e.g. `acme/shop`.
    pub target: String,
    /// `ok`, `denied` or `failed`.
    pub outcome: String,
    /// A short note.
    pub detail: String,
    /// Hash of the previous entry.
    pub prev: String,
    /// Hash of this entry.
    pub hash: String,
}

impl AuditEntry {
    fn compute_hash(&self) -> String {
        // A JSON array is an unambiguous encoding of the fields.
        let fields = serde_json::json!([
            self.seq,
            self.time,
            self.actor,
            self.tenant,
            self.action,
            self.target,
            self.outcome,
            self.detail,
            self.prev
        ]);
        format!("{:x}", Sha256::digest(fields.to_string().as_bytes()))
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Head {
    seq: u64,
    hash: String,
}

fn log_key(seq: u64) -> String {
    format!("{LOG_PREFIX}{seq:016}")
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Backend(format!("audit log: {e}")))
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| StoreError::Backend(e.to_string()))
}

/// Appends `record` together with `ops`, in one atomic write: the change
/// and its audit entry land together or not at all. Returns the entry and
/// the revision of the write (that of the last op, when there are ops). A conflict on one of `ops` is returned as
/// is; callers serialise appends.
pub async fn append(
    store: &dyn Store,
    record: Record,
    ops: Vec<Op>,
) -> Result<(AuditEntry, Revision), StoreError> {
    loop {
        let head_entry = store.get(HEAD).await?;
        let (head, head_expect) = match &head_entry {
            Some(e) => (decode::<Head>(&e.value)?, Expect::Revision(e.revision)),
            None => (
                Head {
                    seq: 0,
                    hash: GENESIS.to_string(),
                },
                Expect::Absent,
            ),
        };
        let mut entry = AuditEntry {
            seq: head.seq + 1,
            time: now(),
            actor: record.actor.clone(),
            tenant: record.tenant.clone(),
            action: record.action.clone(),
            target: record.target.clone(),
            outcome: record.outcome.as_str().to_string(),
            detail: record.detail.clone(),
            prev: head.hash,
            hash: String::new(),
        };
        entry.hash = entry.compute_hash();
        let head = Head {
            seq: entry.seq,
            hash: entry.hash.clone(),
        };
        // The change goes last, so the returned revision is the change's
        // own: what watchers of its keys will see.
        let mut batch = vec![
            Op::put(log_key(entry.seq), encode(&entry)?, Expect::Absent),
            Op::put(HEAD, encode(&head)?, head_expect),
        ];
        batch.extend(ops.iter().cloned());
        match store.apply(batch).await {
            Ok(revision) => return Ok((entry, revision)),
            Err(StoreError::Conflict { key, .. }) if key == log_key(entry.seq) => {
                // An entry without its head (written by an older Verge
                // that appended in two steps, then crashed): adopt it and
                // try again after it.
                if let Some(orphan) = store.get(&log_key(entry.seq)).await? {
                    let orphan: AuditEntry = decode(&orphan.value)?;
                    let head = Head {
                        seq: orphan.seq,
                        hash: orphan.hash,
                    };
                    let _ = store.put(HEAD, encode(&head)?, head_expect).await;
                }
            }
            // Another append moved the head meanwhile: read it again.
            Err(StoreError::Conflict { key, .. }) if key == HEAD => {}
            Err(e) => return Err(e),
        }
    }
}

/// Entries read from the store per page.
const PAGE: usize = 500;

/// Up to `limit` entries after sequence number `after` that `keep`
/// accepts, oldest first, reading the log a page at a time.
pub async fn entries(
    store: &dyn Store,
    after: u64,
    limit: usize,
    keep: impl Fn(&AuditEntry) -> bool,
) -> Result<Vec<AuditEntry>, StoreError> {
    let mut out = Vec::new();
    let mut cursor = (after > 0).then(|| log_key(after));
    while out.len() < limit {
        let page = store.list_page(LOG_PREFIX, cursor.as_deref(), PAGE).await?;
        let Some(last) = page.last() else { break };
        cursor = Some(last.key.clone());
        for stored in &page {
            let entry: AuditEntry = decode(&stored.value)?;
            if keep(&entry) {
                out.push(entry);
                if out.len() == limit {
                    break;
                }
            }
        }
    }
    Ok(out)
}

/// The result of checking the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verification {
    /// Entries checked.
    pub entries: u64,
    /// Whether the whole chain is intact.
    pub ok: bool,
    /// The first entry that does not verify, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_bad: Option<u64>,
    /// What is wrong there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// Recomputes the chain from the first entry to the head.
pub async fn verify(store: &dyn Store) -> Result<Verification, StoreError> {
    let bad = |seq: u64, entries: u64, problem: String| Verification {
        entries,
        ok: false,
        first_bad: Some(seq),
        problem: Some(problem),
    };
    let mut prev = GENESIS.to_string();
    let mut count = 0u64;
    let mut cursor: Option<String> = None;
    // A page at a time: memory stays bounded however long the log is.
    loop {
        let page = store.list_page(LOG_PREFIX, cursor.as_deref(), PAGE).await?;
        let Some(last) = page.last() else { break };
        cursor = Some(last.key.clone());
        for stored in &page {
            let expected_seq = count + 1;
            let Ok(entry) = decode::<AuditEntry>(&stored.value) else {
                return Ok(bad(expected_seq, count, "the entry is not readable".into()));
            };
            if stored.key != log_key(expected_seq) || entry.seq != expected_seq {
                return Ok(bad(
                    expected_seq,
                    count,
                    "an entry is missing or out of order".into(),
                ));
            }
            if entry.prev != prev {
                return Ok(bad(
                    entry.seq,
                    count,
                    "it does not link to the entry before it".into(),
                ));
            }
            if entry.compute_hash() != entry.hash {
                return Ok(bad(
                    entry.seq,
                    count,
                    "its content does not match its hash".into(),
                ));
            }
            prev = entry.hash;
            count += 1;
        }
    }
    if let Some(head) = store.get(HEAD).await? {
        let head: Head = decode(&head.value)?;
        if head.seq > count || (head.seq == count && count > 0 && head.hash != prev) {
            return Ok(bad(
                count + 1,
                count,
                format!(
                    "the log ends at entry {count} but its head names entry {}",
                    head.seq
                ),
            ));
        }
    }
    Ok(Verification {
        entries: count,
        ok: true,
        first_bad: None,
        problem: None,
    })
}

#[cfg(test)]
mod tests;
