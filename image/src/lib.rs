//! Builds the Cloister image (kernel, initramfs, command line, manifest) bit for bit reproducibly from the pinned inputs in `image/lock.toml`.
