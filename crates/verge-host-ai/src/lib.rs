//! `verge:ai` 0.1.0 for guests, on [`verge_ai`]: embeddings, vector
//! indexes, and classification (zero-shot, or with a classifier trained by
//! `verge ai train`), limited to the model, indexes and classifiers the
//! component declared.
//!
//! The executor adds this API to its linker with [`add_to_linker`] and
//! gives each call an [`AiView`] of the request's store data. A node built
//! without the `ai` feature leaves it out, and a component that imports it
//! does not load.
//!
//! **Invariants**
//! - An undeclared model, index or classifier is `access-denied`, and
//!   nothing is created.
//! - Inference runs on the node's inference pool and every index operation
//!   on the blocking pool (a writer holds an index's lock across an fsync):
//!   a guest's AI call never blocks the reactor.
//! - Every token embedded is added to the request's usage.
//!
//! **API boundary**: knows wasmtime's component model and `verge-ai`, not
//! HTTP, requests or how a denial is logged ([`Denials`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

pub use verge_ai::AiServices;
use verge_capabilities::{Capabilities, Denials};
use wasmtime::component::{HasData, Linker, Resource, ResourceTable};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "verge:ai/imports",
        imports: { default: async | trappable },
        with: {
            "verge:ai/vectors.index": crate::IndexHandle,
        },
    });
}

use bindings::verge::ai::{classify, embeddings, types, vectors};

/// What a component may reach through `verge:ai`, fixed at load.
pub struct AiGrant {
    services: Arc<AiServices>,
    tenant: String,
    app: String,
    /// The declared model, if any.
    model: Option<String>,
    /// Declared vector indexes.
    indexes: Vec<String>,
    /// Declared trained classifiers.
    classifiers: Vec<String>,
}

/// A component declared a model, index or classifier on a node without AI.
#[derive(Debug, Clone, Copy)]
pub struct NoAi;

impl AiGrant {
    /// The grant for `tenant`'s `app` from its `capabilities`: `None` when
    /// it declared nothing of `verge:ai`, an error when it did and the node
    /// has no AI services.
    pub fn new(
        services: Option<&Arc<AiServices>>,
        tenant: &str,
        app: &str,
        capabilities: &Capabilities,
    ) -> Result<Option<Self>, NoAi> {
        if capabilities.ai_models.is_empty()
            && capabilities.vector_indexes.is_empty()
            && capabilities.classifiers.is_empty()
        {
            return Ok(None);
        }
        let services = services.ok_or(NoAi)?.clone();
        Ok(Some(Self {
            services,
            tenant: tenant.to_owned(),
            app: app.to_owned(),
            model: capabilities.ai_models.first().cloned(),
            indexes: capabilities.vector_indexes.clone(),
            classifiers: capabilities.classifiers.clone(),
        }))
    }
}

/// What one call sees of the request's store data.
pub struct AiView<'a> {
    /// What the component declared; `None` if nothing.
    pub grant: Option<&'a AiGrant>,
    /// The request's resource table (open indexes live there).
    pub table: &'a mut ResourceTable,
    /// The request's count of tokens embedded.
    pub tokens: &'a AtomicU64,
    /// Where a refused model, index or classifier is reported.
    pub denials: &'a mut dyn Denials,
}

/// Marks [`AiView`] as the data the bindings borrow from the store.
struct AiData;

impl HasData for AiData {
    type Data<'a> = AiView<'a>;
}

/// Adds `verge:ai` (types, embeddings, vectors, classify) to `linker`;
/// `view` borrows the request's part of the store data.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> AiView<'_>,
) -> wasmtime::Result<()> {
    types::add_to_linker::<T, AiData>(linker, view)?;
    embeddings::add_to_linker::<T, AiData>(linker, view)?;
    vectors::add_to_linker::<T, AiData>(linker, view)?;
    classify::add_to_linker::<T, AiData>(linker, view)?;
    Ok(())
}

/// An index the guest opened.
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

impl AiView<'_> {
    /// The grant and declared model, or access denied.
    fn ai_model(&mut self) -> Result<Arc<verge_ai::AiServices>, Failure> {
        match self.grant {
            Some(grant) if grant.model.is_some() => Ok(grant.services.clone()),
            _ => {
                self.denials.denied("AI model denied: not in ai_models", "");
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
        match self.grant {
            Some(g) if declared(g).iter().any(|d| d == name) => {
                Ok((g.services.clone(), g.tenant.clone(), g.app.clone()))
            }
            _ => {
                self.denials.denied(denied, name);
                Err(Failure::AccessDenied)
            }
        }
    }

    async fn embed_counted(&mut self, texts: Vec<String>) -> Result<verge_ai::Embedding, Failure> {
        let services = self.ai_model()?;
        let tenant = self.grant.map(|g| g.tenant.clone()).unwrap_or_default();
        let embedding = services
            .embedder
            .embed(&tenant, texts)
            .await
            .map_err(from_ai)?;
        self.tokens.fetch_add(embedding.tokens, Ordering::Relaxed);
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

impl types::Host for AiView<'_> {}

impl embeddings::Host for AiView<'_> {
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

impl classify::Host for AiView<'_> {
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

impl vectors::Host for AiView<'_> {}

impl vectors::HostIndex for AiView<'_> {
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
