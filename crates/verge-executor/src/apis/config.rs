//! `wasi:config/store`: a component reads the variables and secrets it
//! declared; any other name reads as unset, so a guest cannot even learn
//! which other names exist.

use super::bindings::config::wasi::config::store;
use crate::host::Host;

impl store::Host for Host {
    async fn get(&mut self, key: String) -> wasmtime::Result<Result<Option<String>, store::Error>> {
        let grants = &self.apis.grants;
        if let Some(value) = grants.variables.get(&key) {
            return Ok(Ok(Some(value.clone())));
        }
        if grants.secrets.contains(&key) {
            let value = grants.vault.as_ref().and_then(|v| v.secret(&key));
            return Ok(Ok(value.map(|v| v.to_string())));
        }
        Ok(Ok(None))
    }

    async fn get_all(&mut self) -> wasmtime::Result<Result<Vec<(String, String)>, store::Error>> {
        let grants = &self.apis.grants;
        let mut all: Vec<(String, String)> = grants
            .variables
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if let Some(vault) = &grants.vault {
            for name in &grants.secrets {
                if let Some(value) = vault.secret(name) {
                    all.push((name.clone(), value.to_string()));
                }
            }
        }
        all.sort();
        Ok(Ok(all))
    }
}
