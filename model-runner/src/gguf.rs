//! GGUF file parsing: the header, the metadata key/values and the tensor directory.
//!
//! GGUF files are outside bytes (a model can come from anywhere), so every length is checked
//! against the bytes that remain before anything is allocated, counts are bounded, and bad
//! input is an error, never a panic. This module only reads: it never interprets tensor data
//! beyond checking that each tensor lies inside the file.

use std::collections::BTreeMap;

/// The four bytes every GGUF file starts with.
const GGUF_MAGIC: &[u8; 4] = b"GGUF";
/// Most tensors a file may declare (a 405B model has a few thousand).
pub const MAX_TENSORS: u64 = 65_536;
/// Most metadata entries a file may declare.
pub const MAX_METADATA_ENTRIES: u64 = 65_536;
/// Longest string (key, value or array element), in bytes.
pub const MAX_STRING_BYTES: u64 = 16 << 20;
/// Most elements in one metadata array (vocabularies are a few hundred thousand).
pub const MAX_ARRAY_ELEMENTS: u64 = 16 << 20;
/// Deepest nesting of arrays inside arrays.
const MAX_ARRAY_DEPTH: u32 = 4;
/// Most dimensions a tensor may have.
const MAX_TENSOR_DIMS: u32 = 4;
/// Default alignment of the tensor data section, in bytes.
const DEFAULT_ALIGNMENT_BYTES: u64 = 32;

/// Why a GGUF file could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GgufError {
    #[error("not a GGUF file (bad magic)")]
    BadMagic,
    #[error("GGUF version {0} is not supported (only 2 and 3)")]
    UnsupportedVersion(u32),
    #[error("the file ends early, at byte {0}")]
    Truncated(usize),
    #[error("{what} count {count} is over the limit of {limit}")]
    TooMany {
        what: &'static str,
        count: u64,
        limit: u64,
    },
    #[error("a string is not valid UTF-8")]
    BadUtf8,
    #[error("unknown metadata value type {0}")]
    BadValueType(u32),
    #[error("metadata arrays nest too deeply")]
    TooDeep,
    #[error("tensor {name}: {reason}")]
    BadTensor { name: String, reason: String },
    #[error("bad alignment {0}")]
    BadAlignment(u64),
}

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    /// The value as an unsigned integer, when it is a non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            Value::Bool(v) => Some(v.into()),
            _ => None,
        }
    }

    /// The value as a float, when it is any number.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    /// The value as a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The value as an array.
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// The element type of a tensor, as GGML numbers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q8_0,
    Q4K,
    Q6K,
    /// A type this engine cannot compute with; the GGML number is kept for the message.
    Other(u32),
}

impl TensorType {
    fn from_ggml(n: u32) -> TensorType {
        match n {
            0 => TensorType::F32,
            1 => TensorType::F16,
            2 => TensorType::Q4_0,
            3 => TensorType::Q4_1,
            8 => TensorType::Q8_0,
            12 => TensorType::Q4K,
            14 => TensorType::Q6K,
            other => TensorType::Other(other),
        }
    }

    /// (elements per block, bytes per block), or None for an unsupported type.
    pub fn block_layout(self) -> Option<(u64, u64)> {
        match self {
            TensorType::F32 => Some((1, 4)),
            TensorType::F16 => Some((1, 2)),
            TensorType::Q4_0 => Some((32, 18)),
            TensorType::Q4_1 => Some((32, 20)),
            TensorType::Q8_0 => Some((32, 34)),
            TensorType::Q4K => Some((256, 144)),
            TensorType::Q6K => Some((256, 210)),
            TensorType::Other(_) => None,
        }
    }
}

/// Where one tensor lies in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// Dimensions, innermost (contiguous) first, as GGML orders them.
    pub dims: Vec<u64>,
    pub kind: TensorType,
    /// Offset of the first byte from the start of the file.
    pub offset: usize,
    /// Size in bytes.
    pub size: usize,
}

impl TensorInfo {
    /// Number of elements.
    pub fn elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// A parsed GGUF directory: metadata and tensor locations, not the tensor bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Gguf {
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: BTreeMap<String, TensorInfo>,
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: u64) -> Result<&'a [u8], GgufError> {
        let remaining = self.bytes.len() - self.pos;
        let n = usize::try_from(n).map_err(|_| GgufError::Truncated(self.pos))?;
        if n > remaining {
            return Err(GgufError::Truncated(self.pos));
        }
        let out = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], GgufError> {
        let s = self.take(N as u64)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// Checks that `count` items of at least `min_bytes` each can still fit in the file,
    /// so that a lying count cannot make us allocate more than the file's size.
    fn check_room(&self, count: u64, min_bytes: u64) -> Result<(), GgufError> {
        let remaining = (self.bytes.len() - self.pos) as u64;
        match count.checked_mul(min_bytes) {
            Some(need) if need <= remaining => Ok(()),
            _ => Err(GgufError::Truncated(self.pos)),
        }
    }

    fn string(&mut self) -> Result<String, GgufError> {
        let len = self.u64()?;
        if len > MAX_STRING_BYTES {
            return Err(GgufError::TooMany {
                what: "string byte",
                count: len,
                limit: MAX_STRING_BYTES,
            });
        }
        let raw = self.take(len)?;
        String::from_utf8(raw.to_vec()).map_err(|_| GgufError::BadUtf8)
    }

    fn value(&mut self, kind: u32, depth: u32) -> Result<Value, GgufError> {
        Ok(match kind {
            0 => Value::U8(self.array::<1>()?[0]),
            1 => Value::I8(i8::from_le_bytes(self.array()?)),
            2 => Value::U16(u16::from_le_bytes(self.array()?)),
            3 => Value::I16(i16::from_le_bytes(self.array()?)),
            4 => Value::U32(self.u32()?),
            5 => Value::I32(i32::from_le_bytes(self.array()?)),
            6 => Value::F32(f32::from_le_bytes(self.array()?)),
            7 => Value::Bool(self.array::<1>()?[0] != 0),
            8 => Value::String(self.string()?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(GgufError::TooDeep);
                }
                let elem_kind = self.u32()?;
                let count = self.u64()?;
                if count > MAX_ARRAY_ELEMENTS {
                    return Err(GgufError::TooMany {
                        what: "array element",
                        count,
                        limit: MAX_ARRAY_ELEMENTS,
                    });
                }
                self.check_room(count, min_value_bytes(elem_kind)?)?;
                let mut items = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    items.push(self.value(elem_kind, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(i64::from_le_bytes(self.array()?)),
            12 => Value::F64(f64::from_le_bytes(self.array()?)),
            other => return Err(GgufError::BadValueType(other)),
        })
    }
}

/// The fewest bytes one value of a type takes in the file.
fn min_value_bytes(kind: u32) -> Result<u64, GgufError> {
    Ok(match kind {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 | 10..=12 => 8,
        9 => 12,
        other => return Err(GgufError::BadValueType(other)),
    })
}

impl Gguf {
    /// Parses the header, metadata and tensor directory of a GGUF file held in `bytes`,
    /// and checks that every tensor's data lies inside `bytes`.
    pub fn parse(bytes: &[u8]) -> Result<Gguf, GgufError> {
        let mut r = Reader { bytes, pos: 0 };
        if &r.array::<4>()? != GGUF_MAGIC {
            return Err(GgufError::BadMagic);
        }
        let version = r.u32()?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::UnsupportedVersion(version));
        }
        let tensor_count = r.u64()?;
        let kv_count = r.u64()?;
        if tensor_count > MAX_TENSORS {
            return Err(GgufError::TooMany {
                what: "tensor",
                count: tensor_count,
                limit: MAX_TENSORS,
            });
        }
        if kv_count > MAX_METADATA_ENTRIES {
            return Err(GgufError::TooMany {
                what: "metadata entry",
                count: kv_count,
                limit: MAX_METADATA_ENTRIES,
            });
        }
        let mut metadata = BTreeMap::new();
        for _ in 0..kv_count {
            let key = r.string()?;
            let kind = r.u32()?;
            let value = r.value(kind, 0)?;
            metadata.insert(key, value);
        }
        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT_BYTES,
            Some(v) => v.as_u64().ok_or(GgufError::BadAlignment(0))?,
        };
        if alignment == 0 || !alignment.is_power_of_two() || alignment > 1 << 20 {
            return Err(GgufError::BadAlignment(alignment));
        }
        let mut raw = Vec::new();
        r.check_room(tensor_count, 8 + 4 + 4 + 8)?;
        for _ in 0..tensor_count {
            let name = r.string()?;
            let n_dims = r.u32()?;
            if n_dims == 0 || n_dims > MAX_TENSOR_DIMS {
                return Err(bad_tensor(&name, format!("{n_dims} dimensions")));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(r.u64()?);
            }
            let kind = TensorType::from_ggml(r.u32()?);
            let offset = r.u64()?;
            raw.push((name, dims, kind, offset));
        }
        let data_start = (r.pos as u64).div_ceil(alignment) * alignment;
        let mut tensors = BTreeMap::new();
        for (name, dims, kind, offset) in raw {
            let info = locate_tensor(&name, dims, kind, offset, data_start, bytes.len())?;
            if tensors.insert(name.clone(), info).is_some() {
                return Err(bad_tensor(&name, "appears twice".into()));
            }
        }
        Ok(Gguf {
            version,
            metadata,
            tensors,
        })
    }

    /// A metadata value by key.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }
}

fn bad_tensor(name: &str, reason: String) -> GgufError {
    GgufError::BadTensor {
        name: name.chars().take(128).collect(),
        reason,
    }
}

fn locate_tensor(
    name: &str,
    dims: Vec<u64>,
    kind: TensorType,
    offset: u64,
    data_start: u64,
    file_len: usize,
) -> Result<TensorInfo, GgufError> {
    let elements = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| bad_tensor(name, "its size overflows".into()))?;
    let size = match kind.block_layout() {
        Some((per_block, bytes_per_block)) => {
            if !dims[0].is_multiple_of(per_block) {
                return Err(bad_tensor(
                    name,
                    format!("row length {} is not a multiple of {per_block}", dims[0]),
                ));
            }
            (elements / per_block)
                .checked_mul(bytes_per_block)
                .ok_or_else(|| bad_tensor(name, "its size overflows".into()))?
        }
        // Unsupported types are kept in the directory with no size; using one is an error later.
        None => 0,
    };
    let start = data_start
        .checked_add(offset)
        .ok_or_else(|| bad_tensor(name, "its offset overflows".into()))?;
    let end = start
        .checked_add(size)
        .ok_or_else(|| bad_tensor(name, "its offset overflows".into()))?;
    if end > file_len as u64 {
        return Err(bad_tensor(
            name,
            "its data lies past the end of the file".into(),
        ));
    }
    Ok(TensorInfo {
        dims,
        kind,
        offset: start as usize,
        size: size as usize,
    })
}

/// The fuzz target's body: parse, and on success check the directory's invariants.
/// Panics only when an invariant is broken (which is what a fuzzer looks for).
pub fn fuzz_parse(data: &[u8]) {
    match Gguf::parse(data) {
        Ok(g) => {
            assert!(g.tensors.len() as u64 <= MAX_TENSORS);
            for t in g.tensors.values() {
                assert!(
                    t.offset
                        .checked_add(t.size)
                        .is_some_and(|end| end <= data.len())
                );
                assert!(!t.dims.is_empty() && t.dims.len() <= MAX_TENSOR_DIMS as usize);
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put_str(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }

    /// A small valid file: two metadata entries and one F32 tensor of 4 elements.
    fn tiny_file() -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(b"GGUF");
        f.extend_from_slice(&3u32.to_le_bytes());
        f.extend_from_slice(&1u64.to_le_bytes());
        f.extend_from_slice(&2u64.to_le_bytes());
        put_str(&mut f, "general.architecture");
        f.extend_from_slice(&8u32.to_le_bytes());
        put_str(&mut f, "llama");
        put_str(&mut f, "tokenizer.ggml.tokens");
        f.extend_from_slice(&9u32.to_le_bytes());
        f.extend_from_slice(&8u32.to_le_bytes());
        f.extend_from_slice(&2u64.to_le_bytes());
        put_str(&mut f, "a");
        put_str(&mut f, "b");
        put_str(&mut f, "w");
        f.extend_from_slice(&1u32.to_le_bytes());
        f.extend_from_slice(&4u64.to_le_bytes());
        f.extend_from_slice(&0u32.to_le_bytes());
        f.extend_from_slice(&0u64.to_le_bytes());
        while f.len() % 32 != 0 {
            f.push(0);
        }
        for v in [1.0f32, 2.0, 3.0, 4.0] {
            f.extend_from_slice(&v.to_le_bytes());
        }
        f
    }

    #[test]
    fn parses_metadata_and_tensor_directory() {
        let f = tiny_file();
        let g = Gguf::parse(&f).unwrap();
        assert_eq!(
            g.get("general.architecture").unwrap().as_str(),
            Some("llama")
        );
        let toks = g.get("tokenizer.ggml.tokens").unwrap().as_array().unwrap();
        assert_eq!(toks.len(), 2);
        let w = &g.tensors["w"];
        assert_eq!(w.kind, TensorType::F32);
        assert_eq!(w.size, 16);
        assert_eq!(w.offset % 32, 0);
        assert_eq!(&f[w.offset..w.offset + 4], &1.0f32.to_le_bytes());
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let f = tiny_file();
        for len in 0..f.len() {
            assert!(Gguf::parse(&f[..len]).is_err(), "length {len} parsed");
        }
    }

    #[test]
    fn a_lying_array_count_is_refused_before_allocation() {
        let mut f = tiny_file();
        // The array count of tokenizer.ggml.tokens sits right after its element type.
        let key = b"tokenizer.ggml.tokens";
        let at = f.windows(key.len()).position(|w| w == key).unwrap() + key.len() + 8;
        f[at..at + 8].copy_from_slice(&(MAX_ARRAY_ELEMENTS - 1).to_le_bytes());
        assert!(matches!(Gguf::parse(&f), Err(GgufError::Truncated(_))));
    }

    #[test]
    fn a_tensor_past_the_end_is_refused() {
        let f = tiny_file();
        let short = &f[..f.len() - 4];
        assert!(matches!(
            Gguf::parse(short),
            Err(GgufError::BadTensor { .. })
        ));
    }

    /// The fuzz body on deterministic mutations of a valid file, on stable.
    #[test]
    fn mutated_files_never_panic() {
        let f = tiny_file();
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            let mut m = f.clone();
            for _ in 0..1 + (state % 4) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let at = (state as usize) % m.len();
                m[at] = (state >> 32) as u8;
            }
            fuzz_parse(&m);
        }
    }

    #[test]
    fn bad_magic_and_version_are_named() {
        let mut f = tiny_file();
        f[0] = b'X';
        assert_eq!(Gguf::parse(&f), Err(GgufError::BadMagic));
        let mut f = tiny_file();
        f[4] = 9;
        assert_eq!(Gguf::parse(&f), Err(GgufError::UnsupportedVersion(9)));
    }
}
