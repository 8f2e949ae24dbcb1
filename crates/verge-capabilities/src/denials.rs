//! How a host API reports a name a component was refused.
//!
//! Host API crates (`verge-host-keyvalue`, `verge-host-ai`) decide what is
//! denied; the executor decides how a denial is logged (which request,
//! which app, how often), so the host crates know nothing of requests.

/// Where a host API reports a refused store, model, index or classifier.
pub trait Denials: Send {
    /// Records that the guest asked for `name` and was refused; `message`
    /// says which declaration was missing ("not in key_value_stores").
    fn denied(&mut self, message: &str, name: &str);
}
