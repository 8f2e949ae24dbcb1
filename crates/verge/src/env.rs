//! The process environment, read through a trait so that code resolving
//! defaults (cache folder, log filter) can be tested with a map instead of
//! mutating the process environment.

use std::path::PathBuf;

/// Read access to environment variables.
pub(crate) trait Env {
    /// The variable's value, if set and valid Unicode.
    fn var(&self, key: &str) -> Option<String>;
}

/// The real process environment.
pub(crate) struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, key: &str) -> Option<String> {
        std::env::var(key).ok()
    }
}

/// The folder a non-empty variable names.
fn var_dir(env: &dyn Env, key: &str) -> Option<PathBuf> {
    env.var(key).filter(|v| !v.is_empty()).map(PathBuf::from)
}

/// Verge's folder under an XDG base directory: `$XDG_VAR/verge`, else
/// `$HOME/HOME_FALLBACK/verge`.
fn xdg_dir(env: &dyn Env, xdg_var: &str, home_fallback: &str) -> Option<PathBuf> {
    let base =
        var_dir(env, xdg_var).or_else(|| var_dir(env, "HOME").map(|h| h.join(home_fallback)))?;
    Some(base.join("verge"))
}

/// Where compiled components are cached: `VERGE_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/verge/compiled`, else `$HOME/.cache/verge/compiled`.
pub(crate) fn default_cache_dir(env: &dyn Env) -> Option<PathBuf> {
    var_dir(env, "VERGE_CACHE_DIR")
        .or_else(|| xdg_dir(env, "XDG_CACHE_HOME", ".cache").map(|d| d.join("compiled")))
}

/// Where `verge login` keeps the control-plane URL and token:
/// `VERGE_CONFIG_DIR`, else `$XDG_CONFIG_HOME/verge`, else
/// `$HOME/.config/verge`.
pub(crate) fn config_dir(env: &dyn Env) -> Option<PathBuf> {
    var_dir(env, "VERGE_CONFIG_DIR").or_else(|| xdg_dir(env, "XDG_CONFIG_HOME", ".config"))
}

/// Where `verge server` keeps its state by default: `VERGE_DATA_DIR`, else
/// `$XDG_DATA_HOME/verge`, else `$HOME/.local/share/verge`.
pub(crate) fn default_data_dir(env: &dyn Env) -> Option<PathBuf> {
    var_dir(env, "VERGE_DATA_DIR").or_else(|| xdg_dir(env, "XDG_DATA_HOME", ".local/share"))
}

/// Where AI models are installed: `VERGE_MODELS_DIR`, else
/// `$XDG_DATA_HOME/verge/models`, else `$HOME/.local/share/verge/models`.
pub(crate) fn default_models_dir(env: &dyn Env) -> Option<PathBuf> {
    var_dir(env, "VERGE_MODELS_DIR")
        .or_else(|| xdg_dir(env, "XDG_DATA_HOME", ".local/share").map(|d| d.join("models")))
}

/// Where models are.
#[derive(Debug, clap::Args)]
pub(crate) struct ModelsDir {
    /// The model folder [default: $VERGE_MODELS_DIR, else
    /// $XDG_DATA_HOME/verge/models, else ~/.local/share/verge/models].
    #[arg(long, value_name = "DIR")]
    pub(crate) models_dir: Option<PathBuf>,
}

impl ModelsDir {
    pub(crate) fn resolve(&self, env: &dyn Env) -> Result<PathBuf, crate::Failure> {
        self.models_dir
            .clone()
            .or_else(|| default_models_dir(env))
            .ok_or_else(|| {
                crate::Failure::input(anyhow::anyhow!(
                    "give a model folder with --models-dir DIR (HOME is not set)"
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    struct MapEnv(HashMap<&'static str, &'static str>);

    impl Env for MapEnv {
        fn var(&self, key: &str) -> Option<String> {
            self.0.get(key).map(|v| v.to_string())
        }
    }

    #[test]
    fn cache_dir_precedence() {
        let env = |pairs: &[(&'static str, &'static str)]| MapEnv(pairs.iter().copied().collect());
        assert_eq!(
            default_cache_dir(&env(&[("VERGE_CACHE_DIR", "/c"), ("HOME", "/h")])),
            Some(PathBuf::from("/c"))
        );
        assert_eq!(
            default_cache_dir(&env(&[("XDG_CACHE_HOME", "/x"), ("HOME", "/h")])),
            Some(PathBuf::from("/x/verge/compiled"))
        );
        assert_eq!(
            default_cache_dir(&env(&[("HOME", "/h")])),
            Some(PathBuf::from("/h/.cache/verge/compiled"))
        );
        assert_eq!(default_cache_dir(&env(&[("VERGE_CACHE_DIR", "")])), None);
    }
}
