//! `verge:ai` 0.1.0 on [`verge_ai`]: embeddings, vector indexes, and
//! classification (zero-shot, or with a classifier trained by `verge ai
//! train`), limited to the model, indexes and classifiers the component
//! declared.
//!
//! **Invariants**
//! - An undeclared model, index or classifier is `access-denied`, and
//!   nothing is created.
//! - Inference runs on the node's inference pool and every index operation
//!   on the blocking pool (a writer holds an index's lock across an fsync):
//!   a guest's AI call never blocks the reactor.
//! - Every token embedded is added to the request's usage.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use wasmtime::component::Resource;

use super::bindings::verge::ai::{classify, embeddings, types, vectors};
use crate::host::Host;

/// What a component may reach through `verge:ai`, fixed at load.
pub(crate) struct AiGrant {
    pub(crate) services: Arc<verge_ai::AiServices>,
    pub(crate) tenant: String,
    pub(crate) app: String,
    /// The declared model, if any.
    pub(crate) model: Option<String>,
    /// Declared vector indexes.
    pub(crate) indexes: Vec<String>,
    /// Declared trained classifiers.
    pub(crate) classifiers: Vec<String>,
}

/// An index the guest opened.
#[allow(unreachable_pub)]
pub struct IndexHandle(Arc<verge_ai::VectorIndex>);

type Failure = types::Error;

fn from_ai(e: verge_ai::AiError) -> Failure {
    use verge_ai::AiError as E;
    match e {
        E::Invalid(m) => Failure::Invalid(m),
        E::Limited { retry_after, .. } => {
            Failure::Limited(u32::try_from(retry_after).unwrap_or(u32::MAX))
        }
        E::ModelMissing { .. } | E::Corrupt(_) | E::UnknownModel(_) | E::Stopped => {
            Failure::Unavailable(e.public_message())
        }
        E::Storage(detail) => {
            tracing::error!("vector storage failed: {detail}");
            Failure::Other(verge_ai::AiError::Storage(detail).public_message())
        }
        other => Failure::Other(other.public_message()),
    }
}

impl Host {
    /// The grant and declared model, or access denied.
    fn ai_model(&mut self) -> Result<Arc<verge_ai::AiServices>, Failure> {
        match self.apis.grants.ai.as_ref() {
            Some(grant) if grant.model.is_some() => Ok(grant.services.clone()),
            _ => {
                self.log_denied("AI model denied: not in ai_models", "");
                Err(Failure::AccessDenied)
            }
        }
    }

    /// The services, tenant and app if `name` is among the names `declared`
    /// picks from the grant; otherwise the denial, logged.
    fn ai_scope(
        &mut self,
        declared: impl Fn(&AiGrant) -> &Vec<String>,
        name: &str,
        denied: &str,
    ) -> Result<(Arc<verge_ai::AiServices>, String, String), Failure> {
        match self.apis.grants.ai.as_ref() {
            Some(g) if declared(g).iter().any(|d| d == name) => {
                Ok((g.services.clone(), g.tenant.clone(), g.app.clone()))
            }
            _ => {
                self.log_denied(denied, name);
                Err(Failure::AccessDenied)
            }
        }
    }

    async fn embed_counted(&mut self, texts: Vec<String>) -> Result<verge_ai::Embedding, Failure> {
        let services = self.ai_model()?;
        let tenant = self
            .apis
            .grants
            .ai
            .as_ref()
            .map(|g| g.tenant.clone())
            .unwrap_or_default();
        let embedding = services
            .embedder
            .embed(&tenant, texts)
            .await
            .map_err(from_ai)?;
        let tokens = &self.shared().usage.ai_tokens;
        tokens.fetch_add(embedding.tokens, Ordering::Relaxed);
        Ok(embedding)
    }

    fn index(
        &self,
        handle: &Resource<IndexHandle>,
    ) -> wasmtime::Result<Arc<verge_ai::VectorIndex>> {
        Ok(self.table.get(handle)?.0.clone())
    }
}

/// Runs an index operation on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, verge_ai::AiError> + Send + 'static,
) -> Result<T, Failure> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result.map_err(from_ai),
        Err(_) => Err(Failure::Other("the index operation failed".to_owned())),
    }
}

impl types::Host for Host {}

impl embeddings::Host for Host {
    async fn embed(
        &mut self,
        texts: Vec<String>,
    ) -> wasmtime::Result<Result<embeddings::Embeddings, Failure>> {
        Ok(self
            .embed_counted(texts)
            .await
            .map(|e| embeddings::Embeddings {
                vectors: e.vectors,
                tokens: u32::try_from(e.tokens).unwrap_or(u32::MAX),
                truncated: e.truncated,
            }))
    }

    async fn dimensions(&mut self) -> wasmtime::Result<Result<u32, Failure>> {
        Ok(self
            .ai_model()
            .map(|s| u32::try_from(s.dimensions()).unwrap_or(u32::MAX)))
    }
}

impl classify::Host for Host {
    async fn classify(
        &mut self,
        text: String,
        labels: Vec<String>,
    ) -> wasmtime::Result<Result<Vec<classify::LabelScore>, Failure>> {
        if labels.is_empty() {
            return Ok(Err(Failure::Invalid("give at least one label".to_owned())));
        }
        let mut texts = Vec::with_capacity(labels.len() + 1);
        texts.push(text);
        texts.extend(labels.iter().cloned());
        let embedding = match self.embed_counted(texts).await {
            Ok(e) => e,
            Err(e) => return Ok(Err(e)),
        };
        let ranked =
            verge_ai::classify::rank(&embedding.vectors[0], labels, &embedding.vectors[1..]);
        Ok(Ok(ranked
            .into_iter()
            .map(|l| classify::LabelScore {
                label: l.label,
                score: l.score,
            })
            .collect()))
    }

    async fn classify_with(
        &mut self,
        classifier: String,
        text: String,
    ) -> wasmtime::Result<Result<Vec<classify::LabelScore>, Failure>> {
        let (services, tenant, app) = match self.ai_scope(
            |g| &g.classifiers,
            &classifier,
            "classifier denied: not in classifiers",
        ) {
            Ok(scope) => scope,
            Err(e) => return Ok(Err(e)),
        };
        let dimensions = services.dimensions();
        let name = classifier.clone();
        let head = blocking(move || {
            services
                .indexes
                .classifier(&tenant, &app, &name, dimensions)
        })
        .await;
        let head = match head {
            Ok(Some(head)) => head,
            Ok(None) => {
                return Ok(Err(Failure::Invalid(format!(
                    "no classifier `{classifier}` is trained; train it with `verge ai train APP {classifier} EXAMPLES`"
                ))));
            }
            Err(e) => return Ok(Err(e)),
        };
        let embedding = match self.embed_counted(vec![text]).await {
            Ok(e) => e,
            Err(e) => return Ok(Err(e)),
        };
        Ok(Ok(head
            .predict(&embedding.vectors[0])
            .into_iter()
            .map(|l| classify::LabelScore {
                label: l.label,
                score: l.score,
            })
            .collect()))
    }
}

impl vectors::Host for Host {}

impl vectors::HostIndex for Host {
    async fn open(
        &mut self,
        name: String,
    ) -> wasmtime::Result<Result<Resource<IndexHandle>, Failure>> {
        let (services, tenant, app) = match self.ai_scope(
            |g| &g.indexes,
            &name,
            "vector index denied: not in vector_indexes",
        ) {
            Ok(scope) => scope,
            Err(e) => return Ok(Err(e)),
        };
        let dimensions = services.dimensions();
        let opened =
            blocking(move || services.indexes.open(&tenant, &app, &name, dimensions)).await;
        Ok(match opened {
            Ok(index) => Ok(self.table.push(IndexHandle(index))?),
            Err(e) => Err(e),
        })
    }

    async fn upsert(
        &mut self,
        index: Resource<IndexHandle>,
        id: String,
        vector: Vec<f32>,
        metadata: Vec<(String, String)>,
    ) -> wasmtime::Result<Result<(), Failure>> {
        let index = self.index(&index)?;
        Ok(blocking(move || index.upsert(&id, &vector, metadata)).await)
    }

    async fn delete(
        &mut self,
        index: Resource<IndexHandle>,
        id: String,
    ) -> wasmtime::Result<Result<bool, Failure>> {
        let index = self.index(&index)?;
        Ok(blocking(move || index.delete(&id)).await)
    }

    async fn get(
        &mut self,
        index: Resource<IndexHandle>,
        id: String,
    ) -> wasmtime::Result<Result<Option<Vec<f32>>, Failure>> {
        let index = self.index(&index)?;
        Ok(blocking(move || index.get(&id).map(|found| found.map(|(v, _)| v))).await)
    }

    async fn query(
        &mut self,
        index: Resource<IndexHandle>,
        vector: Vec<f32>,
        k: u32,
        filter: Vec<(String, String)>,
    ) -> wasmtime::Result<Result<Vec<vectors::Match>, Failure>> {
        let index = self.index(&index)?;
        let found = blocking(move || index.query(&vector, k, &filter)).await;
        Ok(found.map(|matches| {
            matches
                .into_iter()
                .map(|m| vectors::Match {
                    id: m.id,
                    score: m.score,
                    metadata: m.metadata,
                })
                .collect()
        }))
    }

    async fn count(
        &mut self,
        index: Resource<IndexHandle>,
    ) -> wasmtime::Result<Result<u64, Failure>> {
        let index = self.index(&index)?;
        Ok(blocking(move || Ok(index.len() as u64)).await)
    }

    async fn drop(&mut self, index: Resource<IndexHandle>) -> wasmtime::Result<()> {
        self.table.delete(index)?;
        Ok(())
    }
}
