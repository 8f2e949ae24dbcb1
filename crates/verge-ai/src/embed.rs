//! [`Embedder`]: the bounded pool of inference threads behind `embed`.
//!
//! Callers (guest instances, on the async reactor) queue a job and await
//! its reply; inference threads take jobs off per-tenant queues, round
//! robin, and run as many as fit in one batch through the backend, so
//! concurrent instances share one forward pass.
//!
//! **Invariants**
//! - Inference never runs on the caller's thread: the reactor only queues.
//! - Tenants are served round robin, one job each per turn: a tenant with
//!   a thousand queued jobs delays another tenant's job by at most one
//!   batch.
//! - A job is never split between batches, and every job gets exactly one
//!   reply (an error when the pool stops or the model cannot load).
//! - Per tenant, a call is refused once the tokens of the current minute
//!   reach the limit. An estimate of its tokens is reserved when it is
//!   queued (so concurrent calls see each other) and replaced by the real
//!   count after it ran; a caller that went away is released unrun.
//! - A panic or a malformed output of the backend fails that batch's jobs,
//!   never the pool.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::oneshot;

use crate::backend::{Backend, Embedded};
use crate::model::ModelDir;
use crate::{AiError, BertBackend};

/// Limits per call and per tenant.
#[derive(Clone, Debug)]
pub struct EmbedLimits {
    /// Most texts in one call.
    pub max_texts: usize,
    /// Most bytes in one call, all texts together.
    pub max_bytes: usize,
    /// Tokens one tenant may embed per UTC minute (0: no limit).
    pub tokens_per_minute: u64,
    /// Most texts run through the model in one forward pass.
    pub batch_texts: usize,
    /// Jobs waiting in the queue, all tenants together.
    pub max_queued: usize,
}

impl Default for EmbedLimits {
    fn default() -> Self {
        Self {
            max_texts: 256,
            max_bytes: 4 << 20,
            tokens_per_minute: 1_000_000,
            batch_texts: 32,
            max_queued: 4096,
        }
    }
}

/// The result of one `embed` call.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Embedding {
    /// One unit vector per text.
    pub vectors: Vec<Vec<f32>>,
    /// Tokens embedded, all texts together (what is charged).
    pub tokens: u64,
    /// Indexes of the texts cut at the model's token limit.
    pub truncated: Vec<u32>,
}

/// Loads the backend on an inference thread, the first time it is needed.
type Loader = Box<dyn Fn() -> Result<Arc<dyn Backend>, AiError> + Send + Sync>;

struct Job {
    texts: Vec<String>,
    /// Tokens reserved from the tenant's budget at admission, and the
    /// minute they were reserved in.
    reserved: (u64, u64),
    reply: oneshot::Sender<Result<Embedding, AiError>>,
}

#[derive(Default)]
struct Queue {
    /// Tenants with queued jobs, in serving order.
    turn: VecDeque<Arc<str>>,
    jobs: HashMap<Arc<str>, VecDeque<Job>>,
    queued: usize,
    stopping: bool,
}

enum Model {
    NotLoaded,
    Ready(Arc<dyn Backend>),
    /// Loading failed; not retried before the instant.
    Failed(AiError, Instant),
}

struct Inner {
    name: String,
    limits: EmbedLimits,
    loader: Loader,
    /// Most tokens of one text (what the model cuts at).
    max_tokens: u64,
    model: Mutex<Model>,
    queue: Mutex<Queue>,
    ready: Condvar,
    /// Tokens per tenant in the current minute: (minute, tokens).
    budget: Mutex<HashMap<Arc<str>, (u64, u64)>>,
}

/// How long a model that failed to load is left alone.
const RETRY_LOAD: Duration = Duration::from_secs(30);

/// The inference pool of one model. Dropping it stops the threads after
/// they answer what is queued.
pub struct Embedder {
    inner: Arc<Inner>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn minute_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 60)
}

impl Embedder {
    /// A pool of `threads` inference threads for installed model `name`.
    /// The model is loaded (and verified) on first use, off the caller.
    pub fn start(dir: ModelDir, name: &str, limits: EmbedLimits, threads: usize) -> Self {
        let model = name.to_owned();
        let loader: Loader = Box::new(move || {
            BertBackend::load(&dir, &model).map(|b| Arc::new(b) as Arc<dyn Backend>)
        });
        Self::with_loader(name, limits, threads, loader)
    }

    /// A pool over an already loaded backend.
    pub fn with_backend(backend: Arc<dyn Backend>, limits: EmbedLimits, threads: usize) -> Self {
        let name = backend.name().to_owned();
        Self::with_loader(
            &name,
            limits,
            threads,
            Box::new(move || Ok(backend.clone())),
        )
    }

    fn with_loader(name: &str, limits: EmbedLimits, threads: usize, loader: Loader) -> Self {
        let inner = Arc::new(Inner {
            name: name.to_owned(),
            limits,
            loader,
            max_tokens: crate::model::known(name).map_or(512, |m| m.max_tokens as u64),
            model: Mutex::new(Model::NotLoaded),
            queue: Mutex::new(Queue::default()),
            ready: Condvar::new(),
            budget: Mutex::new(HashMap::new()),
        });
        let threads = (0..threads.max(1))
            .map(|i| {
                let inner = inner.clone();
                std::thread::Builder::new()
                    .name(format!("verge-ai-{i}"))
                    .spawn(move || inner.work())
                    .expect("spawning an inference thread")
            })
            .collect();
        Self { inner, threads }
    }

    /// The model's name.
    pub fn model(&self) -> &str {
        &self.inner.name
    }

    /// The limits in force.
    pub fn limits(&self) -> &EmbedLimits {
        &self.inner.limits
    }

    /// Embeds `texts` for `tenant`. Refused at once when a limit is hit.
    pub async fn embed(&self, tenant: &str, texts: Vec<String>) -> Result<Embedding, AiError> {
        let limits = &self.inner.limits;
        if texts.len() > limits.max_texts {
            return Err(AiError::Invalid(format!(
                "{} texts in one call; the limit is {}",
                texts.len(),
                limits.max_texts
            )));
        }
        let bytes: usize = texts.iter().map(String::len).sum();
        if bytes > limits.max_bytes {
            return Err(AiError::Invalid(format!(
                "{bytes} bytes of text in one call; the limit is {}",
                limits.max_bytes
            )));
        }
        if texts.is_empty() {
            return Ok(Embedding::default());
        }
        let tenant: Arc<str> = Arc::from(tenant);
        self.inner.check_budget(&tenant)?;
        // At most the model's limit per text; a token is rarely under 2 bytes.
        let reserved: u64 = texts
            .iter()
            .map(|t| (t.len() as u64 / 2 + 2).min(self.inner.max_tokens))
            .sum();
        // Reserved before the job is visible to a worker, which settles it.
        let reserved = (reserved, self.inner.reserve(&tenant, reserved));
        let (reply, answer) = oneshot::channel();
        {
            let mut queue = lock(&self.inner.queue);
            let refused = if queue.stopping {
                Some(AiError::Stopped)
            } else if queue.queued >= limits.max_queued {
                Some(AiError::Limited {
                    what: "the node's inference queue is full".to_owned(),
                    retry_after: 1,
                })
            } else {
                None
            };
            if let Some(error) = refused {
                drop(queue);
                self.inner.settle(&tenant, reserved, 0);
                return Err(error);
            }
            let jobs = queue.jobs.entry(tenant.clone()).or_default();
            let first = jobs.is_empty();
            jobs.push_back(Job {
                texts,
                reserved,
                reply,
            });
            if first {
                queue.turn.push_back(tenant.clone());
            }
            queue.queued += 1;
        }
        self.inner.ready.notify_one();
        answer.await.map_err(|_| AiError::Stopped)?
    }
}

impl Drop for Embedder {
    fn drop(&mut self) {
        lock(&self.inner.queue).stopping = true;
        self.inner.ready.notify_all();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Inner {
    fn check_budget(&self, tenant: &Arc<str>) -> Result<(), AiError> {
        let limit = self.limits.tokens_per_minute;
        if limit == 0 {
            return Ok(());
        }
        let now = minute_now();
        let budget = lock(&self.budget);
        match budget.get(tenant) {
            Some(&(minute, used)) if minute == now && used >= limit => {
                let secs = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                Err(AiError::Limited {
                    what: format!(
                        "tenant `{tenant}` used its {limit} embedding tokens this minute"
                    ),
                    retry_after: 60 - secs % 60,
                })
            }
            _ => Ok(()),
        }
    }

    /// Adds `tokens` to the tenant's current minute; returns the minute.
    fn reserve(&self, tenant: &Arc<str>, tokens: u64) -> u64 {
        let now = minute_now();
        let mut budget = lock(&self.budget);
        let entry = budget.entry(tenant.clone()).or_insert((now, 0));
        if entry.0 != now {
            *entry = (now, 0);
        }
        entry.1 = entry.1.saturating_add(tokens);
        now
    }

    /// Replaces a reservation by the `used` tokens. A reservation of an
    /// earlier minute went with that minute: only `used` counts now.
    fn settle(&self, tenant: &Arc<str>, (reserved, minute): (u64, u64), used: u64) {
        let now = minute_now();
        let mut budget = lock(&self.budget);
        let entry = budget.entry(tenant.clone()).or_insert((now, 0));
        if entry.0 != now {
            *entry = (now, 0);
        }
        if minute == now {
            entry.1 = entry.1.saturating_sub(reserved);
        }
        entry.1 = entry.1.saturating_add(used);
    }

    /// The next batch: one job per tenant per turn until the batch is full.
    /// `None` when stopping and nothing is left.
    fn next_batch(&self) -> Option<Vec<(Arc<str>, Job)>> {
        let mut queue = lock(&self.queue);
        while queue.queued == 0 {
            if queue.stopping {
                return None;
            }
            queue = self
                .ready
                .wait(queue)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        let mut batch = Vec::new();
        let mut texts = 0;
        while texts < self.limits.batch_texts {
            let Some(tenant) = queue.turn.pop_front() else {
                break;
            };
            let Some(jobs) = queue.jobs.get_mut(&tenant) else {
                continue;
            };
            // A job that would overflow a non-empty batch waits for the next.
            let next_len = jobs.front().map_or(0, |j| j.texts.len());
            if !batch.is_empty() && texts + next_len > self.limits.batch_texts {
                queue.turn.push_front(tenant);
                break;
            }
            let Some(job) = jobs.pop_front() else {
                continue;
            };
            // A caller that went away (timeout, client gone) is not run.
            if job.reply.is_closed() {
                if jobs.is_empty() {
                    queue.jobs.remove(&tenant);
                } else {
                    queue.turn.push_front(tenant.clone());
                }
                queue.queued -= 1;
                self.settle(&tenant, job.reserved, 0);
                continue;
            }
            if jobs.is_empty() {
                queue.jobs.remove(&tenant);
            } else {
                queue.turn.push_back(tenant.clone());
            }
            queue.queued -= 1;
            texts += job.texts.len();
            batch.push((tenant, job));
        }
        Some(batch)
    }

    fn backend(&self) -> Result<Arc<dyn Backend>, AiError> {
        let mut model = lock(&self.model);
        match &*model {
            Model::Ready(backend) => return Ok(backend.clone()),
            Model::Failed(error, until) if Instant::now() < *until => {
                return Err(AiError::Corrupt(error.to_string()));
            }
            _ => {}
        }
        let started = Instant::now();
        match (self.loader)() {
            Ok(backend) => {
                tracing::info!(model = %self.name, elapsed_ms = started.elapsed().as_millis() as u64, "model loaded");
                *model = Model::Ready(backend.clone());
                Ok(backend)
            }
            Err(error) => {
                tracing::error!(model = %self.name, "model failed to load: {error}");
                let shown = match &error {
                    AiError::ModelMissing { .. } | AiError::UnknownModel(_) => {
                        // Installing needs no restart: look again on the next call.
                        *model = Model::NotLoaded;
                        return Err(error);
                    }
                    other => AiError::Corrupt(other.to_string()),
                };
                *model = Model::Failed(shown, Instant::now() + RETRY_LOAD);
                Err(error)
            }
        }
    }

    fn work(self: Arc<Self>) {
        while let Some(batch) = self.next_batch() {
            let backend = match self.backend() {
                Ok(backend) => backend,
                Err(error) => {
                    for (tenant, job) in batch {
                        self.settle(&tenant, job.reserved, 0);
                        let _ = job.reply.send(Err(clone_error(&error)));
                    }
                    continue;
                }
            };
            let texts: Vec<&str> = batch
                .iter()
                .flat_map(|(_, job)| job.texts.iter().map(String::as_str))
                .collect();
            let n = texts.len();
            // A panicking backend fails this batch, not the pool.
            let run =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| backend.embed(&texts)))
                    .unwrap_or_else(|_| Err(AiError::Inference("the model panicked".to_owned())));
            drop(texts);
            let run = run.and_then(|e| {
                if e.vectors.len() == n && e.tokens.len() == n && e.truncated.len() == n {
                    Ok(e)
                } else {
                    Err(AiError::Inference(
                        "the model returned a malformed batch".to_owned(),
                    ))
                }
            });
            match run {
                Ok(embedded) => self.answer(batch, embedded),
                Err(error) => {
                    tracing::error!(model = %self.name, "inference failed: {error}");
                    for (tenant, job) in batch {
                        self.settle(&tenant, job.reserved, 0);
                        let _ = job.reply.send(Err(clone_error(&error)));
                    }
                }
            }
        }
    }

    /// Splits one batch's output between its jobs and charges each tenant.
    fn answer(&self, batch: Vec<(Arc<str>, Job)>, embedded: Embedded) {
        let mut vectors = embedded.vectors.into_iter();
        let mut at = 0;
        for (tenant, job) in batch {
            let n = job.texts.len();
            let tokens: u64 = embedded.tokens[at..at + n]
                .iter()
                .map(|&t| u64::from(t))
                .sum();
            let truncated = embedded.truncated[at..at + n]
                .iter()
                .enumerate()
                .filter(|(_, cut)| **cut)
                .map(|(i, _)| i as u32)
                .collect();
            at += n;
            self.settle(&tenant, job.reserved, tokens);
            let _ = job.reply.send(Ok(Embedding {
                vectors: vectors.by_ref().take(n).collect(),
                tokens,
                truncated,
            }));
        }
    }
}

fn clone_error(error: &AiError) -> AiError {
    match error {
        AiError::ModelMissing { model, dir } => AiError::ModelMissing {
            model: model.clone(),
            dir: dir.clone(),
        },
        AiError::UnknownModel(m) => AiError::UnknownModel(m.clone()),
        AiError::Corrupt(m) => AiError::Corrupt(m.clone()),
        AiError::Invalid(m) => AiError::Invalid(m.clone()),
        AiError::Storage(m) => AiError::Storage(m.clone()),
        AiError::Stopped => AiError::Stopped,
        AiError::Inference(m) => AiError::Inference(m.clone()),
        other => AiError::Inference(other.to_string()),
    }
}

#[cfg(test)]
mod tests;
