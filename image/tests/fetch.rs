//! The fetch path against the real Debian archive configured on this machine, through
//! the private apt configuration: a wrong pinned digest stops with both digests, a
//! version gone from the archive says how to update the lock, and the pinned firmware
//! comes back checked (and from the cache the second time). Needs the network the first
//! time; uses a private cache folder, never the system's apt state.

use cloister_image::ImageError;
use cloister_image::fetch::InputCache;
use cloister_image::lock::Lock;
use cloister_image::progress::Progress;

fn lock() -> Lock {
    Lock::load(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/lock.toml"
    )))
    .unwrap()
}

#[test]
fn a_wrong_digest_names_the_package_and_both_digests() {
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = InputCache::new(cache_dir.path());
    let lock = lock();
    let fw = &lock.firmware;
    let wrong = "0".repeat(64);
    let err = cache
        .debian_package(
            &lock.debian,
            &fw.package,
            &fw.version,
            &wrong,
            &Progress::quiet(),
        )
        .unwrap_err();
    let ImageError::DigestMismatch {
        input,
        expected,
        actual,
    } = &err
    else {
        panic!("expected a digest mismatch, got: {err}");
    };
    assert_eq!(input, &format!("{} {}", fw.package, fw.version));
    assert_eq!(expected, &wrong);
    assert_eq!(
        actual, &fw.sha256,
        "the archive's bytes are the pinned ones"
    );
    let text = err.to_string();
    assert!(text.contains(&wrong) && text.contains(&fw.sha256), "{text}");
}

#[test]
fn a_vanished_version_says_how_to_update_the_lock() {
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = InputCache::new(cache_dir.path());
    let lock = lock();
    let err = cache
        .debian_package(
            &lock.debian,
            "ovmf",
            "0.0-gone",
            &"0".repeat(64),
            &Progress::quiet(),
        )
        .unwrap_err();
    assert!(matches!(err, ImageError::VersionGone { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("ovmf 0.0-gone"), "{text}");
    assert!(
        text.contains("image/scripts/update-lock.sh") && text.contains("image/lock.toml"),
        "{text}"
    );
}

#[test]
fn the_pinned_firmware_is_fetched_checked_and_then_cached() {
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = InputCache::new(cache_dir.path());
    let lock = lock();
    let fw = &lock.firmware;
    let first = cache
        .debian_package(
            &lock.debian,
            &fw.package,
            &fw.version,
            &fw.sha256,
            &Progress::quiet(),
        )
        .unwrap();
    assert_eq!(
        cloister_image::lock::sha256_file(&first).unwrap(),
        fw.sha256
    );
    // Offline now: a cache hit must not run apt at all.
    std::fs::remove_dir_all(cache_dir.path().join("apt")).unwrap();
    std::fs::write(cache_dir.path().join("apt"), b"not a folder").unwrap();
    let second = cache
        .debian_package(
            &lock.debian,
            &fw.package,
            &fw.version,
            &fw.sha256,
            &Progress::quiet(),
        )
        .unwrap();
    assert_eq!(first, second);
    let tree = cache.unpacked_deb(&second, &fw.sha256).unwrap();
    assert_eq!(
        cloister_image::lock::sha256_file(&tree.join(&fw.file)).unwrap(),
        fw.file_sha256
    );
}
