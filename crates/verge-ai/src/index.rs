//! Vector indexes per tenant and app: [`Indexes`] opens them, a
//! [`VectorIndex`] upserts, deletes and queries.
//!
//! Each tenant has one SQLite file (`{dir}/{tenant}.db`, WAL, `synchronous
//! = FULL`) holding every vector and its metadata: that is the durable
//! copy. The searchable copy is an HNSW graph in memory (usearch, cosine),
//! rebuilt from SQLite when the index is first opened after a start.
//!
//! **Invariants**
//! - A change is committed to SQLite before it reaches the graph and before
//!   the call returns, so a `kill -9` loses nothing acknowledged.
//! - Vectors are finite and of the index's dimensions; an index's
//!   dimensions are fixed when it is created.
//! - Indexes are named by (tenant, app, name): one app never sees
//!   another's.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use rusqlite::{Connection, OptionalExtension, params};
use usearch::{Index, IndexOptions, MetricKind, ScalarKind};

use crate::AiError;

/// Most results one query returns.
pub const MAX_K: u32 = 1000;
/// Longest id, in bytes.
pub const MAX_ID_BYTES: usize = 512;
/// Most metadata bytes per vector (keys and values together).
pub const MAX_METADATA_BYTES: usize = 8 << 10;
/// Most vectors in one index.
pub const MAX_VECTORS: usize = 1_000_000;
/// Most metadata pairs per vector, and conditions per filter.
pub const MAX_PAIRS: usize = 64;
/// What each metadata pair costs against [`MAX_METADATA_BYTES`] besides its
/// text (so empty pairs are not free).
const PAIR_OVERHEAD: usize = 16;

/// Key-value pairs stored with a vector.
pub type Metadata = Vec<(String, String)>;

/// One vector to store: id, vector, metadata.
pub type Item = (String, Vec<f32>, Metadata);

/// Equality conditions on metadata, all of which must hold.
pub type Filter = [(String, String)];

/// One query result.
#[derive(Clone, Debug, PartialEq)]
pub struct Match {
    /// The vector's id.
    pub id: String,
    /// Cosine similarity to the query, from -1 to 1.
    pub score: f32,
    /// The metadata stored with the vector.
    pub metadata: Vec<(String, String)>,
}

struct Entry {
    id: String,
    metadata: Vec<(String, String)>,
}

struct Graph {
    hnsw: Index,
    keys: HashMap<String, u64>,
    entries: HashMap<u64, Entry>,
    next_key: u64,
}

/// One vector index, shared by every instance of the app that opened it.
pub struct VectorIndex {
    app: String,
    name: String,
    dimensions: usize,
    db: Arc<Mutex<Connection>>,
    graph: RwLock<Graph>,
}

/// Every open index of every tenant on this node.
pub struct Indexes {
    dir: PathBuf,
    dbs: Mutex<HashMap<String, Arc<Mutex<Connection>>>>,
    /// One slot per index: the map's lock is held only to find the slot,
    /// the slot's while the index loads, so loading a large index (seconds)
    /// holds up only the callers of that index.
    open: Mutex<HashMap<(String, String, String), Slot>>,
}

type Slot = Arc<Mutex<Option<Arc<VectorIndex>>>>;

fn usearch_error(e: impl std::fmt::Display) -> AiError {
    AiError::Storage(format!("vector graph: {e}"))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn new_graph(dimensions: usize) -> Result<Index, AiError> {
    let options = IndexOptions {
        dimensions,
        metric: MetricKind::Cos,
        quantization: ScalarKind::F32,
        connectivity: 16,
        expansion_add: 128,
        expansion_search: 64,
        multi: false,
    };
    let index = Index::new(&options).map_err(usearch_error)?;
    index.reserve(1024).map_err(usearch_error)?;
    Ok(index)
}

fn to_blob(vector: &[f32]) -> Vec<u8> {
    vector.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn from_blob(blob: &[u8]) -> Vec<f32> {
    blob.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

impl Indexes {
    /// Indexes kept in `dir` (created on first write).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            dbs: Mutex::new(HashMap::new()),
            open: Mutex::new(HashMap::new()),
        }
    }

    fn db(&self, tenant: &str) -> Result<Arc<Mutex<Connection>>, AiError> {
        let mut dbs = lock(&self.dbs);
        if let Some(db) = dbs.get(tenant) {
            return Ok(db.clone());
        }
        check_tenant(tenant)?;
        std::fs::create_dir_all(&self.dir).map_err(|e| AiError::io(&self.dir, e))?;
        // Vectors and metadata are the tenant's data: the folder (and so the
        // WAL files beside each database) is private.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| AiError::io(&self.dir, e))?;
        }
        let path = self.dir.join(format!("{tenant}.db"));
        let conn = open_db(&path)?;
        let db = Arc::new(Mutex::new(conn));
        dbs.insert(tenant.to_owned(), db.clone());
        Ok(db)
    }

    /// Index `name` of `app`, created with `dimensions` if it does not exist.
    pub fn open(
        &self,
        tenant: &str,
        app: &str,
        name: &str,
        dimensions: usize,
    ) -> Result<Arc<VectorIndex>, AiError> {
        self.get(tenant, app, name, Some(dimensions))?
            .ok_or_else(|| AiError::NoIndex(name.to_owned()))
    }

    /// Index `name` of `app` if it exists.
    pub fn existing(
        &self,
        tenant: &str,
        app: &str,
        name: &str,
    ) -> Result<Option<Arc<VectorIndex>>, AiError> {
        self.get(tenant, app, name, None)
    }

    fn get(
        &self,
        tenant: &str,
        app: &str,
        name: &str,
        create: Option<usize>,
    ) -> Result<Option<Arc<VectorIndex>>, AiError> {
        let key = (tenant.to_owned(), app.to_owned(), name.to_owned());
        let slot = lock(&self.open).entry(key).or_default().clone();
        let mut slot = lock(&slot);
        if let Some(index) = &*slot {
            return Ok(Some(index.clone()));
        }
        if create.is_none() && !self.dir.join(format!("{tenant}.db")).exists() {
            return Ok(None);
        }
        let db = self.db(tenant)?;
        let Some(index) = VectorIndex::load(db, app, name, create)? else {
            return Ok(None);
        };
        let index = Arc::new(index);
        *slot = Some(index.clone());
        Ok(Some(index))
    }

    /// Opens every stored index of every tenant, so that the first query
    /// after a restart does not wait for its graph to be rebuilt. Returns
    /// how many were opened; an index that fails is logged and skipped.
    pub fn preload(&self) -> Result<usize, AiError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(AiError::io(&self.dir, e)),
        };
        let mut opened = 0;
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            let (Some(tenant), Some("db")) = (
                path.file_stem().and_then(|s| s.to_str()),
                path.extension().and_then(|s| s.to_str()),
            ) else {
                continue;
            };
            let names: Vec<(String, String)> = {
                let db = self.db(tenant)?;
                let conn = lock(&db);
                let mut stmt = conn
                    .prepare("SELECT app, idx FROM indexes ORDER BY app, idx")
                    .map_err(AiError::sql)?;
                let rows = stmt
                    .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                    .map_err(AiError::sql)?;
                rows.collect::<Result<_, _>>().map_err(AiError::sql)?
            };
            for (app, name) in names {
                match self.existing(tenant, &app, &name) {
                    Ok(_) => opened += 1,
                    Err(e) => {
                        tracing::error!(tenant, app, index = name, "cannot load vector index: {e}")
                    }
                }
            }
        }
        Ok(opened)
    }

    /// Stores (or replaces) classifier `name` of `app`. Durable when it
    /// returns.
    pub fn save_classifier(
        &self,
        tenant: &str,
        app: &str,
        name: &str,
        head: &crate::classify::LinearHead,
    ) -> Result<(), AiError> {
        let json = serde_json::to_string(head).map_err(|e| AiError::Invalid(e.to_string()))?;
        let db = self.db(tenant)?;
        lock(&db)
            .execute(
                "INSERT INTO classifiers (app, name, head) VALUES (?1, ?2, ?3)
                 ON CONFLICT (app, name) DO UPDATE SET head = excluded.head",
                params![app, name, json],
            )
            .map_err(AiError::sql)?;
        Ok(())
    }

    /// Classifier `name` of `app`, checked for `dimensions`, if trained.
    pub fn classifier(
        &self,
        tenant: &str,
        app: &str,
        name: &str,
        dimensions: usize,
    ) -> Result<Option<crate::classify::LinearHead>, AiError> {
        if !self.dir.join(format!("{tenant}.db")).exists() {
            return Ok(None);
        }
        let db = self.db(tenant)?;
        let json: Option<String> = lock(&db)
            .query_row(
                "SELECT head FROM classifiers WHERE app = ?1 AND name = ?2",
                params![app, name],
                |r| r.get(0),
            )
            .optional()
            .map_err(AiError::sql)?;
        let Some(json) = json else {
            return Ok(None);
        };
        let head: crate::classify::LinearHead = serde_json::from_str(&json)
            .map_err(|e| AiError::Corrupt(format!("classifier {name}: {e}")))?;
        head.check(dimensions)?;
        Ok(Some(head))
    }

    /// The names of `app`'s indexes with their sizes.
    pub fn list(&self, tenant: &str, app: &str) -> Result<Vec<(String, u64)>, AiError> {
        if !self.dir.join(format!("{tenant}.db")).exists() {
            return Ok(Vec::new());
        }
        let db = self.db(tenant)?;
        let conn = lock(&db);
        let mut stmt = conn
            .prepare(
                "SELECT i.idx, (SELECT count(*) FROM vectors v WHERE v.app = i.app AND v.idx = i.idx)
                 FROM indexes i WHERE i.app = ?1 ORDER BY i.idx",
            )
            .map_err(AiError::sql)?;
        let rows = stmt
            .query_map(params![app], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(AiError::sql)?;
        rows.collect::<Result<_, _>>().map_err(AiError::sql)
    }
}

fn open_db(path: &Path) -> Result<Connection, AiError> {
    let conn = Connection::open(path).map_err(AiError::sql)?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = FULL;
         PRAGMA busy_timeout = 5000;
         CREATE TABLE IF NOT EXISTS indexes (
             app TEXT NOT NULL, idx TEXT NOT NULL, dimensions INTEGER NOT NULL,
             PRIMARY KEY (app, idx));
         CREATE TABLE IF NOT EXISTS vectors (
             app TEXT NOT NULL, idx TEXT NOT NULL, id TEXT NOT NULL,
             vector BLOB NOT NULL, metadata TEXT NOT NULL,
             PRIMARY KEY (app, idx, id));
         CREATE TABLE IF NOT EXISTS classifiers (
             app TEXT NOT NULL, name TEXT NOT NULL, head TEXT NOT NULL,
             PRIMARY KEY (app, name));",
    )
    .map_err(AiError::sql)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
    }
    Ok(conn)
}

/// Checks a vector for `dimensions`: right length, every value finite.
pub fn check_vector(vector: &[f32], dimensions: usize) -> Result<(), AiError> {
    if vector.len() != dimensions {
        return Err(AiError::Invalid(format!(
            "the vector has {} dimensions; this index has {dimensions}",
            vector.len()
        )));
    }
    if let Some(i) = vector.iter().position(|x| !x.is_finite()) {
        return Err(AiError::Invalid(format!(
            "the vector's value {i} is not a finite number"
        )));
    }
    if vector.iter().all(|x| *x == 0.0) {
        return Err(AiError::Invalid(
            "the vector is all zeros (it has no direction)".to_owned(),
        ));
    }
    Ok(())
}

impl VectorIndex {
    fn load(
        db: Arc<Mutex<Connection>>,
        app: &str,
        name: &str,
        create: Option<usize>,
    ) -> Result<Option<Self>, AiError> {
        let conn = lock(&db);
        let stored: Option<usize> = conn
            .query_row(
                "SELECT dimensions FROM indexes WHERE app = ?1 AND idx = ?2",
                params![app, name],
                |r| r.get(0),
            )
            .optional()
            .map_err(AiError::sql)?;
        let dimensions = match (stored, create) {
            (Some(d), _) => d,
            (None, Some(d)) => {
                conn.execute(
                    "INSERT INTO indexes (app, idx, dimensions) VALUES (?1, ?2, ?3)",
                    params![app, name, d],
                )
                .map_err(AiError::sql)?;
                d
            }
            (None, None) => return Ok(None),
        };
        let hnsw = new_graph(dimensions)?;
        let mut graph = Graph {
            hnsw,
            keys: HashMap::new(),
            entries: HashMap::new(),
            next_key: 0,
        };
        let mut stmt = conn
            .prepare("SELECT id, vector, metadata FROM vectors WHERE app = ?1 AND idx = ?2")
            .map_err(AiError::sql)?;
        let mut rows = stmt.query(params![app, name]).map_err(AiError::sql)?;
        let mut loaded = Vec::new();
        while let Some(row) = rows.next().map_err(AiError::sql)? {
            let id: String = row.get(0).map_err(AiError::sql)?;
            let vector: Vec<u8> = row.get(1).map_err(AiError::sql)?;
            let metadata: String = row.get(2).map_err(AiError::sql)?;
            let metadata = serde_json::from_str(&metadata)
                .map_err(|e| AiError::Corrupt(format!("index {name}: vector {id}: {e}")))?;
            loaded.push((id, from_blob(&vector), metadata));
        }
        drop(rows);
        drop(stmt);
        drop(conn);
        graph
            .hnsw
            .reserve(loaded.len().max(1024))
            .map_err(usearch_error)?;
        graph.insert_all(loaded)?;
        Ok(Some(Self {
            app: app.to_owned(),
            name: name.to_owned(),
            dimensions,
            db,
            graph: RwLock::new(graph),
        }))
    }

    /// The index's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its dimensions.
    pub fn dimensions(&self) -> usize {
        self.dimensions
    }

    /// Vectors in the index.
    pub fn len(&self) -> usize {
        self.read().keys.len()
    }

    /// Whether it holds no vector.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of memory the graph uses.
    pub fn memory_bytes(&self) -> usize {
        self.read().hnsw.memory_usage()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Graph> {
        self.graph
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Graph> {
        self.graph
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds or replaces vector `id`. Durable when it returns.
    pub fn upsert(
        &self,
        id: &str,
        vector: &[f32],
        metadata: Vec<(String, String)>,
    ) -> Result<(), AiError> {
        self.upsert_many(vec![(id.to_owned(), vector.to_vec(), metadata)])
    }

    /// Adds or replaces several vectors in one transaction.
    pub fn upsert_many(&self, items: Vec<Item>) -> Result<(), AiError> {
        for (id, vector, metadata) in &items {
            check_id(id)?;
            check_vector(vector, self.dimensions)?;
            if metadata.len() > MAX_PAIRS {
                return Err(AiError::Invalid(format!(
                    "`{}` has {} metadata pairs; the limit is {MAX_PAIRS}",
                    shown(id),
                    metadata.len()
                )));
            }
            let bytes: usize = metadata
                .iter()
                .map(|(k, v)| k.len() + v.len() + PAIR_OVERHEAD)
                .sum();
            if bytes > MAX_METADATA_BYTES {
                return Err(AiError::Invalid(format!(
                    "metadata of `{}` is {bytes} bytes; the limit is {MAX_METADATA_BYTES}",
                    shown(id)
                )));
            }
        }
        // One writer at a time: the graph's write lock orders SQLite commits
        // and graph changes the same way.
        let mut graph = self.write();
        let new = items
            .iter()
            .filter(|(id, ..)| !graph.keys.contains_key(id))
            .count();
        if graph.keys.len() + new > MAX_VECTORS {
            return Err(AiError::Invalid(format!(
                "index `{}` would hold more than {MAX_VECTORS} vectors",
                self.name
            )));
        }
        // Room in the graph first: once committed, the change must reach it.
        graph.reserve(graph.keys.len() + new)?;
        {
            let mut conn = lock(&self.db);
            let tx = conn.transaction().map_err(AiError::sql)?;
            {
                let mut stmt = tx
                    .prepare_cached(
                        "INSERT INTO vectors (app, idx, id, vector, metadata) VALUES (?1, ?2, ?3, ?4, ?5)
                         ON CONFLICT (app, idx, id) DO UPDATE SET vector = excluded.vector, metadata = excluded.metadata",
                    )
                    .map_err(AiError::sql)?;
                for (id, vector, metadata) in &items {
                    let metadata = serde_json::to_string(metadata)
                        .map_err(|e| AiError::Invalid(e.to_string()))?;
                    stmt.execute(params![self.app, self.name, id, to_blob(vector), metadata])
                        .map_err(AiError::sql)?;
                }
            }
            tx.commit().map_err(AiError::sql)?;
        }
        graph.insert_all(items)
    }

    /// Removes vector `id`; whether it was there. Durable when it returns.
    pub fn delete(&self, id: &str) -> Result<bool, AiError> {
        let mut graph = self.write();
        let removed = lock(&self.db)
            .execute(
                "DELETE FROM vectors WHERE app = ?1 AND idx = ?2 AND id = ?3",
                params![self.app, self.name, id],
            )
            .map_err(AiError::sql)?;
        if let Some(key) = graph.keys.remove(id) {
            graph.entries.remove(&key);
            graph.hnsw.remove(key).map_err(usearch_error)?;
        }
        Ok(removed > 0)
    }

    /// The stored vector and metadata of `id`.
    pub fn get(&self, id: &str) -> Result<Option<(Vec<f32>, Metadata)>, AiError> {
        let graph = self.read();
        let Some(key) = graph.keys.get(id) else {
            return Ok(None);
        };
        let mut vector = vec![0.0f32; self.dimensions];
        graph.hnsw.get(*key, &mut vector).map_err(usearch_error)?;
        let metadata = graph
            .entries
            .get(key)
            .map(|e| e.metadata.clone())
            .unwrap_or_default();
        Ok(Some((vector, metadata)))
    }

    /// The `k` vectors most similar to `vector` whose metadata matches
    /// `filter`, best first.
    pub fn query(&self, vector: &[f32], k: u32, filter: &Filter) -> Result<Vec<Match>, AiError> {
        check_vector(vector, self.dimensions)?;
        if k == 0 || k > MAX_K {
            return Err(AiError::Invalid(format!("k is {k}; use 1 to {MAX_K}")));
        }
        if filter.len() > MAX_PAIRS {
            return Err(AiError::Invalid(format!(
                "the filter has {} conditions; the limit is {MAX_PAIRS}",
                filter.len()
            )));
        }
        let graph = self.read();
        let k = (k as usize).min(graph.keys.len());
        if k == 0 {
            return Ok(Vec::new());
        }
        let found = if filter.is_empty() {
            graph.hnsw.search(vector, k)
        } else {
            let entries = &graph.entries;
            graph.hnsw.filtered_search(vector, k, |key| {
                entries.get(&key).is_some_and(|e| {
                    filter
                        .iter()
                        .all(|(fk, fv)| e.metadata.iter().any(|(mk, mv)| mk == fk && mv == fv))
                })
            })
        }
        .map_err(usearch_error)?;
        Ok(found
            .keys
            .iter()
            .zip(&found.distances)
            .filter_map(|(key, distance)| {
                graph.entries.get(key).map(|e| Match {
                    id: e.id.clone(),
                    score: 1.0 - distance,
                    metadata: e.metadata.clone(),
                })
            })
            .collect())
    }
}

impl Graph {
    /// Makes room for `needed` vectors.
    fn reserve(&self, needed: usize) -> Result<(), AiError> {
        if needed > self.hnsw.capacity() {
            self.hnsw
                .reserve(needed.next_power_of_two())
                .map_err(usearch_error)?;
        }
        Ok(())
    }

    /// Puts `items` in the graph: keys and metadata first, then the graph
    /// inserts, spread over the cores for large batches (loading an index,
    /// bulk upserts).
    fn insert_all(&mut self, items: Vec<Item>) -> Result<(), AiError> {
        // Of several items with one id, the last wins, as in SQLite.
        let mut seen = std::collections::HashSet::new();
        let mut items: Vec<Item> = items
            .into_iter()
            .rev()
            .filter(|(id, ..)| seen.insert(id.clone()))
            .collect();
        items.reverse();
        self.reserve(self.keys.len() + items.len())?;
        let mut adds = Vec::with_capacity(items.len());
        for (id, vector, metadata) in items {
            let key = match self.keys.get(&id) {
                Some(&key) => {
                    self.hnsw.remove(key).map_err(usearch_error)?;
                    key
                }
                None => {
                    let key = self.next_key;
                    self.next_key += 1;
                    self.keys.insert(id.clone(), key);
                    key
                }
            };
            self.entries.insert(key, Entry { id, metadata });
            adds.push((key, vector));
        }
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let hnsw = &self.hnsw;
        let add = |chunk: &[(u64, Vec<f32>)]| {
            chunk
                .iter()
                .try_for_each(|(key, vector)| hnsw.add(*key, vector))
                .map_err(usearch_error)
        };
        if adds.len() < 256 || threads == 1 {
            return add(&adds);
        }
        // usearch takes concurrent inserts once capacity is reserved.
        std::thread::scope(|scope| {
            let workers: Vec<_> = adds
                .chunks(adds.len().div_ceil(threads))
                .map(|chunk| scope.spawn(move || add(chunk)))
                .collect();
            workers.into_iter().try_for_each(|w| {
                w.join()
                    .unwrap_or_else(|_| Err(AiError::Storage("a graph insert panicked".to_owned())))
            })
        })
    }
}

/// A tenant name is a file name here: letters, digits, `-` and `_` only.
fn check_tenant(tenant: &str) -> Result<(), AiError> {
    let ok = !tenant.is_empty()
        && tenant.len() <= 64
        && tenant
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(AiError::Invalid(format!(
            "invalid tenant name `{}`",
            shown(tenant)
        )))
    }
}

fn check_id(id: &str) -> Result<(), AiError> {
    if id.is_empty() || id.len() > MAX_ID_BYTES {
        return Err(AiError::Invalid(format!(
            "a vector id must be 1 to {MAX_ID_BYTES} bytes (got {})",
            id.len()
        )));
    }
    Ok(())
}

fn shown(id: &str) -> String {
    id.chars()
        .take(64)
        .collect::<String>()
        .escape_debug()
        .to_string()
}

#[cfg(test)]
mod tests;
