//! The validation layer: raw manifest in, typed [`Manifest`] out, or the first
//! problem found with its position and a hint.

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use verge_capabilities::{Capabilities, HostPattern, Limits, OutboundPolicy, check_store_name};
use verge_router::Route;

use crate::raw::{
    RawBuild, RawComponent, RawLimits, RawManifest, RawSelector, RawSize, RawStoreSettings,
};
use crate::units::{parse_duration, parse_size};
use crate::{BuildSpec, ComponentSpec, Manifest, ManifestError, Placement};

const DEFAULT_BUILD_TIMEOUT: Duration = Duration::from_secs(600);
const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
const MAX_CONCURRENCY: i64 = 10_000;
const WASM_PAGE: u64 = 64 * 1024;

struct Ctx<'a> {
    path: &'a Path,
    text: &'a str,
    dir: PathBuf,
}

impl Ctx<'_> {
    fn err(
        &self,
        span: Range<usize>,
        message: impl Into<String>,
        help: impl Into<Option<String>>,
    ) -> ManifestError {
        ManifestError::at(self.path, self.text, span, message, help.into())
    }

    fn resolve(&self, relative: &str) -> PathBuf {
        let joined = self.dir.join(relative);
        // Lexical normalisation only: the file may not exist yet.
        let mut out = PathBuf::new();
        for part in joined.components() {
            match part {
                std::path::Component::ParentDir => {
                    out.pop();
                }
                std::path::Component::CurDir => {}
                other => out.push(other),
            }
        }
        out
    }
}

pub(crate) fn manifest(text: &str, path: &Path) -> Result<Manifest, ManifestError> {
    let dir = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let cx = Ctx { path, text, dir };
    let raw: RawManifest = toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        let message = e.message().trim_end().to_string();
        let help = if message.starts_with("unknown field") {
            Some(
                "remove the field or fix its spelling; docs/manifest.md lists every field"
                    .to_string(),
            )
        } else if message.starts_with("missing field") {
            Some("add the field; docs/manifest.md describes it".to_string())
        } else {
            None
        };
        cx.err(span, message, help)
    })?;

    let name = match &raw.name {
        Some(name) => {
            check_name(name.get_ref()).map_err(|why| {
                cx.err(
                    name.span(),
                    format!("invalid app name `{}`: {why}", name.get_ref()),
                    None,
                )
            })?;
            name.get_ref().clone()
        }
        None => default_app_name(&cx.dir),
    };

    if raw.component.is_empty() {
        return Err(cx.err(
            0..0,
            "the manifest declares no component",
            Some("add a `[component.NAME]` table with `source` and `routes`".to_string()),
        ));
    }
    let variables = variable_table(&cx, &raw.variables, None)?;
    let mut environments = std::collections::BTreeMap::new();
    for (env, table) in &raw.environments {
        check_name(env.get_ref()).map_err(|why| {
            cx.err(
                env.span(),
                format!("invalid environment name `{}`: {why}", env.get_ref()),
                None,
            )
        })?;
        let overrides = variable_table(&cx, &table.get_ref().variables, Some(&variables))?;
        environments.insert(env.get_ref().clone(), overrides);
    }

    let mut entries: Vec<_> = raw.component.iter().collect();
    entries.sort_by_key(|(key, _)| key.span().start);

    let mut claimed: HashMap<Route, (String, Range<usize>)> = HashMap::new();
    let mut components = Vec::with_capacity(entries.len());
    for (key, component) in entries {
        let spec = component_spec(
            &cx,
            key.get_ref(),
            key.span(),
            component.get_ref(),
            &variables,
        )?;
        for (route, raw_route) in spec.routes.iter().zip(&component.get_ref().routes) {
            if let Some((owner, _)) = claimed.get(route) {
                return Err(cx.err(
                    raw_route.span(),
                    format!("route `{route}` is already served by component `{owner}`"),
                    Some("each host and path prefix may be served by one component only; change one of the routes".to_string()),
                ));
            }
            claimed.insert(route.clone(), (spec.name.clone(), raw_route.span()));
        }
        components.push(spec);
    }

    let placement = placement(&cx, &raw.placement)?;
    let edge_local = edge_local_stores(&cx, &raw.key_value, &components)?;
    for c in &mut components {
        c.capabilities.edge_local_stores = c
            .capabilities
            .key_value_stores
            .iter()
            .filter(|s| edge_local.contains(*s))
            .cloned()
            .collect();
    }

    Ok(Manifest {
        path: path.to_path_buf(),
        dir: cx.dir,
        name,
        components,
        variables,
        environments,
        environment: None,
        placement,
        text: text.to_string(),
    })
}

/// The stores `[key_value.NAME]` declares `edge-local`; each must be one
/// a component lists.
fn edge_local_stores(
    cx: &Ctx<'_>,
    raw: &std::collections::BTreeMap<toml::Spanned<String>, toml::Spanned<RawStoreSettings>>,
    components: &[ComponentSpec],
) -> Result<std::collections::BTreeSet<String>, ManifestError> {
    let mut edge_local = std::collections::BTreeSet::new();
    for (name, settings) in raw {
        let listed = components
            .iter()
            .any(|c| c.capabilities.key_value_stores.contains(name.get_ref()));
        if !listed {
            return Err(cx.err(
                name.span(),
                format!(
                    "`[key_value.{}]` configures a store no component lists",
                    name.get_ref()
                ),
                Some("add it to a component's `key_value_stores`, or remove the table".to_string()),
            ));
        }
        match settings.get_ref().consistency.as_ref() {
            None => {}
            Some(c) if c.get_ref() == "strict" => {}
            Some(c) if c.get_ref() == "edge-local" => {
                edge_local.insert(name.get_ref().clone());
            }
            Some(c) => {
                return Err(cx.err(
                    c.span(),
                    format!("unknown consistency `{}`", c.get_ref()),
                    Some(
                        "use \"strict\" (writes ordered by the cluster, refused without it) or \
                         \"edge-local\" (written locally, last writer wins); see docs/cluster.md"
                            .to_string(),
                    ),
                ));
            }
        }
    }
    Ok(edge_local)
}

/// `[placement]`: label selectors and `min_replicas`.
fn placement(
    cx: &Ctx<'_>,
    raw: &std::collections::BTreeMap<toml::Spanned<String>, toml::Spanned<RawSelector>>,
) -> Result<Placement, ManifestError> {
    let mut placement = Placement::default();
    let label_help = || {
        Some(
            "a selector is a node label with the values it may have, e.g. \
             `region = [\"eu-west\", \"us-east\"]`"
                .to_string(),
        )
    };
    for (key, value) in raw {
        let name = key.get_ref();
        if name == "min_replicas" {
            match value.get_ref() {
                RawSelector::Count(n) if (1..=1000).contains(n) => {
                    placement.min_replicas = Some(*n as u32);
                }
                _ => {
                    return Err(cx.err(
                        value.span(),
                        "`min_replicas` must be a whole number from 1 to 1000",
                        None,
                    ));
                }
            }
            continue;
        }
        if !crate::is_label(name) {
            return Err(cx.err(
                key.span(),
                format!("invalid label name `{name}` in [placement]"),
                label_help(),
            ));
        }
        let values = match value.get_ref() {
            RawSelector::Values(v) => v.clone(),
            RawSelector::Value(v) => vec![v.clone()],
            RawSelector::Count(_) => {
                return Err(cx.err(
                    value.span(),
                    format!("label `{name}` needs text values"),
                    label_help(),
                ));
            }
        };
        if values.is_empty() {
            return Err(cx.err(
                value.span(),
                format!("label `{name}` lists no value, so no node could run the app"),
                label_help(),
            ));
        }
        if let Some(bad) = values.iter().find(|v| !crate::is_label(v)) {
            return Err(cx.err(
                value.span(),
                format!("invalid value `{bad}` for label `{name}`"),
                Some("label values are 1-63 letters, digits, `-`, `_` or `.`".to_string()),
            ));
        }
        placement.labels.insert(name.clone(), values);
    }
    Ok(placement)
}

type Variables = std::collections::BTreeMap<String, String>;
type RawVariables = std::collections::BTreeMap<toml::Spanned<String>, toml::Spanned<String>>;

/// A `variables` table; with `defaults`, an environment's overrides, which
/// may only name variables the app declares.
fn variable_table(
    cx: &Ctx<'_>,
    raw: &RawVariables,
    defaults: Option<&Variables>,
) -> Result<Variables, ManifestError> {
    let mut out = Variables::new();
    for (name, value) in raw {
        check_config_name(name.get_ref()).map_err(|why| {
            cx.err(
                name.span(),
                format!("invalid variable name `{}`: {why}", name.get_ref()),
                None,
            )
        })?;
        if defaults.is_some_and(|d| !d.contains_key(name.get_ref())) {
            return Err(cx.err(
                name.span(),
                format!(
                    "environment overrides variable `{}`, which `[variables]` does not declare",
                    name.get_ref()
                ),
                Some(
                    "declare it with a default value in `[variables]`, or fix its spelling"
                        .to_string(),
                ),
            ));
        }
        out.insert(name.get_ref().clone(), value.get_ref().clone());
    }
    Ok(out)
}

/// Names of variables and secrets: 1 to 64 of `a-z`, `0-9` and `_`, starting with a letter.
pub fn check_config_name(name: &str) -> Result<(), &'static str> {
    let ok = name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err("use 1 to 64 lower-case letters, digits and `_`, starting with a letter")
    }
}

/// What a component may reach besides the network and its environment.
struct Grants {
    stores: Vec<String>,
    variables: Vec<(String, String)>,
    secrets: Vec<String>,
    ai_models: Vec<String>,
    vector_indexes: Vec<String>,
    classifiers: Vec<String>,
}

/// Most key-value stores one component may declare.
const MAX_STORES: usize = 16;
/// Most secrets one component may declare (an app holds at most 64).
const MAX_SECRETS: usize = 64;

/// Names in the store-name alphabet (stores, vector indexes), each listed
/// once; `what` names them in errors, `short` in the duplicate's.
fn store_names(
    cx: &Ctx<'_>,
    list: &[toml::Spanned<String>],
    what: &str,
    short: &str,
    ctx: &dyn Fn(String) -> String,
) -> Result<Vec<String>, ManifestError> {
    let mut names: Vec<String> = Vec::new();
    for s in list {
        check_store_name(s.get_ref()).map_err(|why| {
            cx.err(
                s.span(),
                ctx(format!("invalid {what} name `{}`: {why}", s.get_ref())),
                None,
            )
        })?;
        if names.contains(s.get_ref()) {
            return Err(cx.err(
                s.span(),
                ctx(format!("{short} `{}` is listed twice", s.get_ref())),
                None,
            ));
        }
        names.push(s.get_ref().clone());
    }
    Ok(names)
}

/// The component's `key_value_stores`, `variables` and `secrets`, checked.
fn grants(
    cx: &Ctx<'_>,
    raw: &RawComponent,
    app_variables: &Variables,
    ctx: &dyn Fn(String) -> String,
) -> Result<Grants, ManifestError> {
    let too_many = |list: &[toml::Spanned<String>], max: usize, what: &str| match list.get(max) {
        Some(extra) => Err(cx.err(extra.span(), ctx(format!("more than {max} {what}")), None)),
        None => Ok(()),
    };
    too_many(&raw.key_value_stores, MAX_STORES, "key-value stores")?;
    too_many(&raw.secrets, MAX_SECRETS, "secrets")?;
    let mut seen = std::collections::HashSet::new();
    let stores = store_names(cx, &raw.key_value_stores, "key-value store", "store", ctx)?;
    let mut variables = Vec::new();
    for v in &raw.variables {
        let Some(value) = app_variables.get(v.get_ref()) else {
            return Err(cx.err(
                v.span(),
                ctx(format!(
                    "variable `{}` is not declared in `[variables]`",
                    v.get_ref()
                )),
                Some(format!(
                    "add `{} = \"...\"` to the app's `[variables]` table",
                    v.get_ref()
                )),
            ));
        };
        if !seen.insert(("config", v.get_ref())) {
            return Err(cx.err(
                v.span(),
                ctx(format!("variable `{}` is listed twice", v.get_ref())),
                None,
            ));
        }
        variables.push((v.get_ref().clone(), value.clone()));
    }
    let mut secrets = Vec::new();
    for s in &raw.secrets {
        check_config_name(s.get_ref()).map_err(|why| {
            cx.err(
                s.span(),
                ctx(format!("invalid secret name `{}`: {why}", s.get_ref())),
                None,
            )
        })?;
        if !seen.insert(("config", s.get_ref())) {
            return Err(cx.err(
                s.span(),
                ctx(format!("`{}` is listed twice among variables and secrets", s.get_ref())),
                Some("a guest reads both through wasi:config, so a name can be a variable or a secret, not both".to_string()),
            ));
        }
        secrets.push(s.get_ref().clone());
    }
    let mut ai_models = Vec::new();
    for m in &raw.ai_models {
        if !verge_capabilities::AI_MODELS.contains(&m.get_ref().as_str()) {
            return Err(cx.err(
                m.span(),
                ctx(format!("unknown AI model `{}`", m.get_ref())),
                Some(format!(
                    "known models: {}",
                    verge_capabilities::AI_MODELS.join(", ")
                )),
            ));
        }
        if !seen.insert(("model", m.get_ref())) {
            return Err(cx.err(
                m.span(),
                ctx(format!("model `{}` is listed twice", m.get_ref())),
                None,
            ));
        }
        ai_models.push(m.get_ref().clone());
    }
    too_many(&raw.vector_indexes, MAX_STORES, "vector indexes")?;
    let vector_indexes = store_names(cx, &raw.vector_indexes, "vector index", "vector index", ctx)?;
    too_many(&raw.classifiers, MAX_STORES, "classifiers")?;
    if let (Some(first), true) = (raw.classifiers.first(), raw.ai_models.is_empty()) {
        return Err(cx.err(
            first.span(),
            ctx("a classifier needs the model it was trained on".to_string()),
            Some(format!(
                "add `ai_models = [\"{}\"]` to the component",
                verge_capabilities::AI_MODELS[0]
            )),
        ));
    }
    let classifiers = store_names(cx, &raw.classifiers, "classifier", "classifier", ctx)?;
    Ok(Grants {
        stores,
        variables,
        secrets,
        ai_models,
        vector_indexes,
        classifiers,
    })
}

fn component_spec(
    cx: &Ctx<'_>,
    name: &str,
    name_span: Range<usize>,
    raw: &RawComponent,
    app_variables: &Variables,
) -> Result<ComponentSpec, ManifestError> {
    check_name(name).map_err(|why| {
        cx.err(
            name_span.clone(),
            format!("invalid component name `{name}`: {why}"),
            None,
        )
    })?;
    let ctx = |msg: String| format!("component `{name}`: {msg}");

    let source = raw.source.get_ref();
    if source.trim().is_empty() {
        return Err(cx.err(
            raw.source.span(),
            ctx("`source` is empty".into()),
            Some("set it to the path of the component's `.wasm` file".to_string()),
        ));
    }

    if raw.routes.is_empty() {
        return Err(cx.err(
            name_span,
            ctx("no routes".into()),
            Some("add `routes = [\"/\"]` (path prefixes this component serves)".to_string()),
        ));
    }
    let mut routes = Vec::with_capacity(raw.routes.len());
    for r in &raw.routes {
        let route = Route::new(r.get_ref().host.as_deref(), &r.get_ref().path)
            .map_err(|e| cx.err(r.span(), ctx(e.to_string()), None))?;
        routes.push(route);
    }

    let build = raw
        .build
        .as_ref()
        .map(|b| build_spec(cx, b.get_ref(), &ctx))
        .transpose()?;

    let mut env = Vec::with_capacity(raw.environment.len());
    for (k, v) in &raw.environment {
        if k.get_ref().is_empty() || k.get_ref().contains(['=', '\0']) {
            return Err(cx.err(
                k.span(),
                ctx(format!(
                    "invalid environment variable name `{}`",
                    k.get_ref()
                )),
                Some("names must be non-empty and contain no `=` or NUL".to_string()),
            ));
        }
        if v.get_ref().contains('\0') {
            return Err(cx.err(
                v.span(),
                ctx("environment values must not contain NUL".into()),
                None,
            ));
        }
        env.push((k.get_ref().clone(), v.get_ref().clone()));
    }

    let mut patterns = Vec::with_capacity(raw.allowed_outbound_hosts.len());
    for h in &raw.allowed_outbound_hosts {
        let pattern: HostPattern = h
            .get_ref()
            .parse()
            .map_err(|e: verge_capabilities::HostPatternError| cx.err(h.span(), ctx(e.to_string()), Some("write `[scheme://]host[:port]`, e.g. \"https://api.example.com\" or \"127.0.0.1:8080\"".to_string())))?;
        patterns.push(pattern);
    }

    let limits = match &raw.limits {
        Some(l) => limits(cx, l.get_ref(), &ctx)?,
        None => Limits::default(),
    };
    let Grants {
        stores: key_value_stores,
        variables,
        secrets,
        ai_models,
        vector_indexes,
        classifiers,
    } = grants(cx, raw, app_variables, &ctx)?;

    Ok(ComponentSpec {
        name: name.to_string(),
        source: cx.resolve(source),
        source_span: raw.source.span(),
        routes,
        build,
        capabilities: Capabilities {
            outbound: OutboundPolicy::new(patterns),
            env,
            key_value_stores,
            variables,
            secrets,
            ai_models,
            vector_indexes,
            classifiers,
            edge_local_stores: Vec::new(),
        },
        limits,
    })
}

fn build_spec(
    cx: &Ctx<'_>,
    raw: &RawBuild,
    ctx: &dyn Fn(String) -> String,
) -> Result<BuildSpec, ManifestError> {
    if raw.command.get_ref().trim().is_empty() {
        return Err(cx.err(
            raw.command.span(),
            ctx("the build command is empty".into()),
            None,
        ));
    }
    let workdir = match &raw.workdir {
        Some(w) => cx.resolve(w.get_ref()),
        None => cx.dir.clone(),
    };
    let timeout = match &raw.timeout {
        Some(t) => bounded_duration(cx, t, "build timeout", ctx)?,
        None => DEFAULT_BUILD_TIMEOUT,
    };
    for w in &raw.watch {
        if w.get_ref().trim().is_empty() {
            return Err(cx.err(w.span(), ctx("empty watch pattern".into()), None));
        }
    }
    Ok(BuildSpec {
        command: raw.command.get_ref().clone(),
        workdir,
        watch: raw.watch.iter().map(|w| w.get_ref().clone()).collect(),
        timeout,
    })
}

fn limits(
    cx: &Ctx<'_>,
    raw: &RawLimits,
    ctx: &dyn Fn(String) -> String,
) -> Result<Limits, ManifestError> {
    let mut limits = Limits::default();
    let size = |v: &toml::Spanned<RawSize>, what: &str| -> Result<u64, ManifestError> {
        match v.get_ref() {
            RawSize::Bytes(n) if *n >= 0 => Ok(*n as u64),
            RawSize::Bytes(_) => {
                Err(cx.err(v.span(), ctx(format!("`{what}` cannot be negative")), None))
            }
            RawSize::Text(t) => parse_size(t)
                .map_err(|e| cx.err(v.span(), ctx(format!("invalid `{what}`: {e}")), None)),
        }
    };
    if let Some(m) = &raw.memory {
        let bytes = size(m, "memory")?;
        if !(WASM_PAGE..=Limits::MAX_MEMORY).contains(&bytes) {
            return Err(cx.err(
                m.span(),
                ctx(format!(
                    "`memory` must be between 64KiB and 4GiB, not {bytes} bytes"
                )),
                None,
            ));
        }
        limits.memory = bytes;
    }
    if let Some(t) = &raw.timeout {
        limits.timeout = bounded_duration(cx, t, "`timeout`", ctx)?;
    }
    if let Some(c) = &raw.max_concurrency {
        let n = *c.get_ref();
        if !(1..=MAX_CONCURRENCY).contains(&n) {
            return Err(cx.err(
                c.span(),
                ctx(format!(
                    "`max_concurrency` must be between 1 and {MAX_CONCURRENCY}, not {n}"
                )),
                None,
            ));
        }
        limits.max_concurrency = n as u32;
    }
    if let Some(b) = &raw.max_request_body {
        limits.max_request_body = size(b, "max_request_body")?;
    }
    Ok(limits)
}

/// A duration above zero and at most [`MAX_TIMEOUT`].
fn bounded_duration(
    cx: &Ctx<'_>,
    value: &toml::Spanned<String>,
    what: &str,
    ctx: &dyn Fn(String) -> String,
) -> Result<Duration, ManifestError> {
    let d = parse_duration(value.get_ref())
        .map_err(|e| cx.err(value.span(), ctx(format!("invalid {what}: {e}")), None))?;
    if d.is_zero() || d > MAX_TIMEOUT {
        return Err(cx.err(
            value.span(),
            ctx(format!("{what} must be above zero and at most 24h")),
            None,
        ));
    }
    Ok(d)
}

/// App and component names: 1-63 of `a-z`, `0-9`, `-`, not starting or ending with `-`.
pub fn check_name(name: &str) -> Result<(), &'static str> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && !name.starts_with('-')
        && !name.ends_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err("use 1 to 63 lower-case letters, digits and `-`, not starting or ending with `-`")
    }
}

/// A valid app name derived from the manifest's folder name.
fn default_app_name(dir: &Path) -> String {
    let raw = dir
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let cleaned: String = raw
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let trimmed: String = cleaned.trim_matches('-').chars().take(63).collect();
    let trimmed = trimmed.trim_end_matches('-').to_string();
    if trimmed.is_empty() {
        "app".to_string()
    } else {
        trimmed
    }
}

#[cfg(test)]
mod tests;
