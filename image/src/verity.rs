//! Model disks: a GGUF file, zero padding to 4 KiB, then its dm-verity hash tree, so the
//! guest's kernel verifies every block of the weights against one root hash that the
//! kernel command line (measured into RTMR2) carries.
//!
//! The tree is dm-verity's format 1 (the kernel's `Documentation/admin-guide/
//! device-mapper/verity.rst`, and cryptsetup's `veritysetup format --no-superblock`):
//! SHA-256, 4096-byte data and hash blocks, the salt hashed before each block, each hash
//! block holding 128 digests and zero-filled after the last, the levels stored top level
//! first, no superblock. The level count and the level sizes follow the kernel's
//! `verity_ctr` so that the kernel's and this tree agree on every offset; the unit tests
//! compare roots and trees with vectors made once by `veritysetup`.
//!
//! This module never reads the model's content as anything but bytes.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Data and hash block size, in bytes.
pub const BLOCK_BYTES: u64 = 4096;
/// SHA-256 digest size, in bytes.
const DIGEST_BYTES: usize = 32;
/// Digests per hash block (4096 / 32), and its log2.
const DIGESTS_PER_BLOCK: u64 = BLOCK_BYTES / DIGEST_BYTES as u64;
const DIGESTS_PER_BLOCK_BITS: u32 = DIGESTS_PER_BLOCK.trailing_zeros();
/// The fixed salt of every Cloister model disk: `cloister-model-verity-salt-v1`, padded
/// with zeros to 32 bytes. It is public; it only keeps the tree apart from other uses
/// of the same data.
pub const SALT: [u8; 32] = *b"cloister-model-verity-salt-v1\0\0\0";
/// The hash algorithm, as dm-verity's table names it.
pub const HASH_ALGORITHM: &str = "sha256";
/// dm-verity's on-disk format version.
pub const FORMAT_VERSION: u32 = 1;

/// A built hash tree, in on-disk order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashTree {
    /// The root hash.
    pub root: [u8; 32],
    /// The hash blocks, top level first (empty for a single data block, whose hash is
    /// the root).
    pub blocks: Vec<u8>,
}

/// The dm-verity parameters of one model disk, as `manifest.json` records them.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
pub struct VerityParams {
    /// dm-verity's format version (1).
    pub format: u32,
    /// `sha256`.
    pub hash_algorithm: String,
    /// The salt, hex.
    pub salt: String,
    /// Data block size in bytes.
    pub data_block_bytes: u64,
    /// Hash block size in bytes.
    pub hash_block_bytes: u64,
    /// The model file's size in bytes (the disk's data area is this, rounded up to a block).
    pub data_bytes: u64,
    /// Data blocks (and the hash tree's first block, counted in hash blocks).
    pub data_blocks: u64,
    /// Where the hash tree starts on the disk, in bytes.
    pub hash_offset_bytes: u64,
    /// The root hash, hex.
    pub root: String,
}

/// Number of tree levels dm-verity uses for `data_blocks` blocks (the kernel's
/// `verity_ctr`: levels until one hash block covers everything; 0 for one block).
fn levels(data_blocks: u64) -> u32 {
    let mut levels = 0;
    while DIGESTS_PER_BLOCK_BITS * levels < 64
        && (data_blocks - 1) >> (DIGESTS_PER_BLOCK_BITS * levels) != 0
    {
        levels += 1;
    }
    levels
}

fn salted_hash(block: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(SALT);
    hasher.update(block);
    hasher.finalize().into()
}

/// Packs digests into hash blocks, 128 a block, the last block zero-filled.
fn pack(digests: &[[u8; 32]]) -> Vec<u8> {
    let blocks = (digests.len() as u64).div_ceil(DIGESTS_PER_BLOCK);
    let mut out = Vec::with_capacity((blocks * BLOCK_BYTES) as usize);
    for digest in digests {
        out.extend_from_slice(digest);
    }
    out.resize((blocks * BLOCK_BYTES) as usize, 0);
    out
}

/// The number of data blocks of `data_bytes` bytes.
pub fn data_blocks(data_bytes: u64) -> u64 {
    data_bytes.div_ceil(BLOCK_BYTES)
}

/// Builds the tree of `data_bytes` bytes read from `data` (zero-padded to a whole block).
pub fn hash_tree(mut data: impl Read, data_bytes: u64) -> io::Result<HashTree> {
    let blocks = data_blocks(data_bytes);
    if blocks == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "an empty file has no hash tree",
        ));
    }
    let mut block = vec![0u8; BLOCK_BYTES as usize];
    let mut digests = Vec::with_capacity(blocks as usize);
    let mut left = data_bytes;
    for _ in 0..blocks {
        let take = left.min(BLOCK_BYTES) as usize;
        block.fill(0);
        data.read_exact(&mut block[..take])?;
        left -= take as u64;
        digests.push(salted_hash(&block));
    }
    let levels = levels(blocks);
    if levels == 0 {
        return Ok(HashTree {
            root: digests[0],
            blocks: Vec::new(),
        });
    }
    // Level 0 hashes the data; each level above hashes the blocks of the one below.
    let mut stored: Vec<Vec<u8>> = Vec::with_capacity(levels as usize);
    let mut level = pack(&digests);
    for _ in 1..levels {
        let digests: Vec<[u8; 32]> = level
            .chunks(BLOCK_BYTES as usize)
            .map(salted_hash)
            .collect();
        let next = pack(&digests);
        stored.push(level);
        level = next;
    }
    debug_assert_eq!(
        level.len() as u64,
        BLOCK_BYTES,
        "the top level is one block"
    );
    let root = salted_hash(&level);
    stored.push(level);
    Ok(HashTree {
        root,
        blocks: stored.into_iter().rev().flatten().collect(),
    })
}

/// Writes a model disk for `model` at `disk`: the file's bytes, zeros to the next 4 KiB,
/// then the hash tree. Returns the verity parameters. The disk is written beside its
/// final name and renamed into place, so a failure leaves no half-written disk.
pub fn write_model_disk(model: &Path, disk: &Path) -> io::Result<VerityParams> {
    let data_bytes = fs::metadata(model)?.len();
    let tree = hash_tree(io::BufReader::new(File::open(model)?), data_bytes)?;
    let blocks = data_blocks(data_bytes);
    let partial = disk.with_extension("partial");
    {
        let mut out = BufWriter::new(File::create(&partial)?);
        let copied = io::copy(&mut File::open(model)?.take(data_bytes), &mut out)?;
        if copied != data_bytes {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{} changed while it was read", model.display()),
            ));
        }
        let padding = blocks * BLOCK_BYTES - data_bytes;
        out.write_all(&vec![0u8; padding as usize])?;
        out.write_all(&tree.blocks)?;
        out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    }
    // The tree was built from the file as first read; build it again from the disk just
    // written, so that a model that changed in between cannot give a disk and a root
    // that disagree.
    let check = hash_tree(io::BufReader::new(File::open(&partial)?), data_bytes)?;
    if check.root != tree.root {
        let _ = fs::remove_file(&partial);
        return Err(io::Error::other(format!(
            "{} changed while its disk was written",
            model.display()
        )));
    }
    fs::rename(&partial, disk)?;
    Ok(VerityParams {
        format: FORMAT_VERSION,
        hash_algorithm: HASH_ALGORITHM.into(),
        salt: hex::encode(SALT),
        data_block_bytes: BLOCK_BYTES,
        hash_block_bytes: BLOCK_BYTES,
        data_bytes,
        data_blocks: blocks,
        hash_offset_bytes: blocks * BLOCK_BYTES,
        root: hex::encode(tree.root),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The data pattern the vectors were made from: byte `i` of the file is
    /// `(7i + 31(i >> 12) + (i >> 20)) mod 256`.
    fn pattern(bytes: u64) -> Vec<u8> {
        (0..bytes)
            .map(|i| (i * 7 + (i >> 12) * 31 + (i >> 20)) as u8)
            .collect()
    }

    // Made once with cryptsetup 2.6.1:
    //   veritysetup format DATA HASH --no-superblock --format=1 --hash=sha256 \
    //     --data-block-size=4096 --hash-block-size=4096 --salt=<SALT in hex>
    // over the pattern above; each row: data blocks, root hash, sha256 and size of HASH.
    const VECTORS: [(u64, &str, &str, u64); 5] = [
        (
            1,
            "5f1d8a0197f262640393aa1ac5f61922fb1c3586dd1c52d8d20716f60db9c9db",
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            0,
        ),
        (
            2,
            "18573a6ff0de1fc616f0f4cff816b583ddfcabcf15decc1cf80b68317757cffd",
            "a2de291a48da05aa3d8297342219c92891369bc4ebaed3d2815659ba2053e880",
            4096,
        ),
        (
            128,
            "b677497661c5d673ab4758c74b730cf318a49d00dd10c1e1d2c476b1ddbbc5ad",
            "3f537c362e0ad0de2cd8f3903690da95f700858162d960c3dcdaaf7bcf290aa9",
            4096,
        ),
        (
            129,
            "d89da200e2b32f95639c47538bdb4a0cd865da30677c48c5b47c2a297caeed48",
            "4c0fdc2998496a83384b7e9d3941bab9e52c349820fc29f49326734e8e142dce",
            12288,
        ),
        // Three levels: 129 hash blocks, then 2, then 1.
        (
            16385,
            "1afd398cb8e9b9e3dc50e1454e25c03bda91a555ce8aedac34f0604554185bc4",
            "b2011fa717e8865012b1e7844ba4b72965f253e996c861e1ee2ccbb944c30ecf",
            540672,
        ),
    ];

    #[test]
    fn the_salt_is_the_documented_string() {
        assert_eq!(
            hex::encode(SALT),
            "636c6f69737465722d6d6f64656c2d7665726974792d73616c742d7631000000"
        );
    }

    #[test]
    fn trees_match_veritysetup() {
        for (blocks, root, tree_sha, tree_bytes) in VECTORS {
            let data = pattern(blocks * BLOCK_BYTES);
            let tree = hash_tree(&data[..], data.len() as u64).unwrap();
            assert_eq!(hex::encode(tree.root), root, "{blocks} blocks");
            assert_eq!(tree.blocks.len() as u64, tree_bytes, "{blocks} blocks");
            assert_eq!(
                hex::encode(Sha256::digest(&tree.blocks)),
                tree_sha,
                "{blocks} blocks"
            );
        }
    }

    #[test]
    fn level_counts_follow_the_kernel() {
        assert_eq!(levels(1), 0);
        assert_eq!(levels(2), 1);
        assert_eq!(levels(128), 1);
        assert_eq!(levels(129), 2);
        assert_eq!(levels(128 * 128), 2);
        assert_eq!(levels(128 * 128 + 1), 3);
    }

    #[test]
    fn a_partial_last_block_is_hashed_as_zero_padded() {
        let mut data = pattern(2 * BLOCK_BYTES);
        let short = 4096 + 100;
        data[short..].fill(0);
        let padded = hash_tree(&data[..], data.len() as u64).unwrap();
        let partial = hash_tree(&data[..short], short as u64).unwrap();
        assert_eq!(padded, partial);
    }

    #[test]
    fn one_changed_byte_changes_the_root() {
        let mut data = pattern(129 * BLOCK_BYTES);
        let before = hash_tree(&data[..], data.len() as u64).unwrap().root;
        data[100 * 4096 + 7] ^= 1;
        let after = hash_tree(&data[..], data.len() as u64).unwrap().root;
        assert_ne!(before, after);
    }

    #[test]
    fn an_empty_or_short_file_is_refused() {
        assert!(hash_tree(&[][..], 0).is_err());
        assert!(hash_tree(&[1u8; 10][..], 20).is_err());
    }

    #[test]
    fn a_disk_is_the_file_padding_and_tree() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("m.gguf");
        let data = pattern(129 * BLOCK_BYTES - 5);
        fs::write(&model, &data).unwrap();
        let disk = dir.path().join("m.disk");
        let params = write_model_disk(&model, &disk).unwrap();
        let bytes = fs::read(&disk).unwrap();
        assert_eq!(params.data_bytes, data.len() as u64);
        assert_eq!(params.data_blocks, 129);
        assert_eq!(params.hash_offset_bytes, 129 * BLOCK_BYTES);
        assert_eq!(&bytes[..data.len()], &data[..]);
        assert!(
            bytes[data.len()..params.hash_offset_bytes as usize]
                .iter()
                .all(|&b| b == 0)
        );
        let tree = hash_tree(&data[..], data.len() as u64).unwrap();
        assert_eq!(
            &bytes[params.hash_offset_bytes as usize..],
            &tree.blocks[..]
        );
        assert_eq!(params.root, hex::encode(tree.root));
        assert!(!disk.with_extension("partial").exists());
    }
}
