//! Behaviour of the folder blob store.

use crate::{BlobError, BlobId, BlobStore, FsBlobs};

async fn store(
    blobs: &FsBlobs,
    bytes: &[u8],
    expected: Option<&BlobId>,
) -> Result<BlobId, BlobError> {
    let mut w = blobs.writer().await?;
    for chunk in bytes.chunks(7) {
        w.write(chunk).await?;
    }
    w.finish(expected).await
}

#[tokio::test]
async fn blobs_are_named_by_content_and_verified_on_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let blobs = FsBlobs::open(dir.path()).expect("open");
    let bytes = b"\0asm component bytes";
    let id = BlobId::of(bytes);
    assert_eq!(store(&blobs, bytes, Some(&id)).await.expect("store"), id);
    // Storing the same bytes again is idempotent.
    assert_eq!(store(&blobs, bytes, None).await.expect("store"), id);
    let path = blobs.local_path(&id).await.expect("read");
    assert_eq!(std::fs::read(&path).expect("file"), bytes);
    assert_eq!(blobs.list().await.expect("list"), std::slice::from_ref(&id));

    // Edited on disk: refused from then on.
    let mut perms = std::fs::metadata(&path).expect("meta").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o600);
    std::fs::set_permissions(&path, perms).expect("chmod");
    std::fs::write(&path, b"tampered").expect("tamper");
    assert!(matches!(
        blobs.local_path(&id).await,
        Err(BlobError::Corrupt(_))
    ));

    blobs.remove(&id).await.expect("remove");
    assert!(matches!(
        blobs.local_path(&id).await,
        Err(BlobError::Missing(_))
    ));
    blobs.remove(&id).await.expect("removing twice is fine");
}

#[tokio::test]
async fn a_mismatched_upload_leaves_nothing_behind() {
    let dir = tempfile::tempdir().expect("tempdir");
    let blobs = FsBlobs::open(dir.path()).expect("open");
    let claimed = BlobId::of(b"what the client said");
    let err = store(&blobs, b"what it sent", Some(&claimed))
        .await
        .expect_err("mismatch");
    assert!(matches!(err, BlobError::Mismatch { .. }), "{err}");
    assert!(blobs.list().await.expect("list").is_empty());
    assert_eq!(
        std::fs::read_dir(dir.path().join("tmp"))
            .expect("tmp")
            .count(),
        0
    );
}

#[tokio::test]
async fn unfinished_uploads_are_cleared_on_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let blobs = FsBlobs::open(dir.path()).expect("open");
    let mut w = blobs.writer().await.expect("writer");
    w.write(b"half").await.expect("write");
    std::mem::forget(w); // as if the process died mid-upload
    FsBlobs::open(dir.path()).expect("reopen");
    assert_eq!(
        std::fs::read_dir(dir.path().join("tmp"))
            .expect("tmp")
            .count(),
        0
    );
}

#[test]
fn ids_must_be_sha256_hex() {
    let good = "a".repeat(64);
    assert!(good.parse::<BlobId>().is_ok());
    assert!(format!("sha256:{good}").parse::<BlobId>().is_ok());
    for bad in [
        "",
        "abc",
        &"A".repeat(64),
        &"g".repeat(64),
        &"a".repeat(65),
        "../../etc/passwd",
    ] {
        assert!(bad.parse::<BlobId>().is_err(), "{bad}");
    }
}
