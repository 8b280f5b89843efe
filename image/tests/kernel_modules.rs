//! The module load order computed from the pinned kernel package itself (fetched into the
//! shared cache, `$CLOISTER_CACHE` or /var/cache/cloister): every module comes after all
//! the modules it depends on, and the pairs that fail to load in the wrong order are in
//! the right one.

use cloister_image::build::default_cache_dir;
use cloister_image::fetch::InputCache;
use cloister_image::lock::Lock;
use cloister_image::modules;
use cloister_image::progress::Progress;

#[test]
fn the_pinned_kernel_gives_a_dependency_respecting_order() {
    let lock = Lock::load(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/lock.toml"
    )))
    .unwrap();
    let k = &lock.kernel;
    let cache = InputCache::new(default_cache_dir());
    let deb = cache
        .debian_package(
            &lock.debian,
            &k.package,
            &k.version,
            &k.sha256,
            &Progress::quiet(),
        )
        .unwrap();
    let tree = cache.unpacked_deb(&deb, &k.sha256).unwrap();
    let dir = tree.join("usr/lib/modules").join(&k.release);
    let graph = modules::graph_for(&dir, &k.modules).unwrap();
    let order = graph.load_order(&k.modules).unwrap();
    let names: Vec<&str> = order.iter().map(|m| m.name.as_str()).collect();
    let pos = |n: &str| {
        names
            .iter()
            .position(|m| *m == n)
            .unwrap_or_else(|| panic!("{n} missing from {names:?}"))
    };

    for (i, module) in order.iter().enumerate() {
        for dep in &module.depends {
            assert!(
                pos(dep) < i,
                "{} is loaded before its dependency {dep}: {names:?}",
                module.name
            );
        }
        assert!(
            dir.join(&module.relative_path).is_file(),
            "{}",
            module.relative_path
        );
    }
    for wanted in &k.modules {
        assert!(graph.resolve(wanted).is_some(), "{wanted} resolves");
    }
    assert!(pos("cryptd") < pos("crypto_simd") && pos("crypto_simd") < pos("aesni_intel"));
    assert!(pos("failover") < pos("net_failover") && pos("net_failover") < pos("virtio_net"));
    assert!(pos("dm_mod") < pos("dm_crypt") && pos("dm_bufio") < pos("dm_verity"));
    assert!(pos("vsock") < pos("vmw_vsock_virtio_transport_common"));
    assert!(pos("tsm") < pos("tdx_guest"));
    assert_eq!(
        names.len(),
        names
            .iter()
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        "each once"
    );
}
