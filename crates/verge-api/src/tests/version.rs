//! Version names: written `v3`, read as `model::parse_version` of
//! `verge-control` reads them.

use serde_json::json;

use super::{read, refused, written};
use crate::*;

#[test]
fn versions_read_as_the_server_read_them() {
    for (text, number) in [("v3", 3), ("3", 3), ("v0", 0), ("v4294967295", u32::MAX)] {
        assert_eq!(
            text.parse::<VersionName>(),
            Ok(VersionName(number)),
            "{text}"
        );
        assert_eq!(read::<VersionName>(&json!(text)), VersionName(number));
    }
    for bad in ["", "v", "vv3", "v3.1", "latest", "v-1", "v4294967296"] {
        let e = bad.parse::<VersionName>().expect_err(bad);
        assert_eq!(
            e.to_string(),
            format!("`{bad}` is not a version (write it `v3` or `3`)")
        );
    }
}

#[test]
fn versions_are_written_with_a_v() {
    assert_eq!(VersionName(3).to_string(), "v3");
    assert_eq!(written(&VersionName::from(12)), json!("v12"));
    // Only strings: the server never took a number for a version.
    refused::<VersionName>(json!(3));
}
