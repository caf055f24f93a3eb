//! Reading GGUF files (llama.cpp's single-file checkpoints) as ordinary checkpoints.
//!
//! Users mostly hold models as GGUF files, so microllm must take one wherever it takes a
//! Hugging Face directory. [`open`] turns a `.gguf` file into the same [`Checkpoint`] the
//! Hugging Face reader produces, and downstream code never learns the difference:
//!
//! * the configuration is rebuilt from the `{arch}.*` metadata keys ([`config`]);
//! * tensors keep llama.cpp's storage (Q4_1, Q8_0, ...) on disk and are dequantized to f32 one
//!   at a time from a memory map, under their Hugging Face names, with llama.cpp's q/k row
//!   permutation undone ([`names`], [`GgufSource`]);
//! * the tokenizer is rebuilt from the `tokenizer.ggml.*` tables ([`tokenizer`]) and the chat
//!   template is taken from `tokenizer.chat_template`.
//!
//! Everything that can be checked without reading tensor data is checked at open (magic,
//! header, names, byte ranges against the file length), so a truncated download fails at once
//! with the file and the tensor named, not minutes later in the middle of an evaluation.
//!
//! The header is parsed by microllm itself (`header`; candle's reader refuses the i-quants),
//! tensor types are [`GgufType`]; supported architectures are
//! [`config::SUPPORTED_ARCHITECTURES`].

pub mod blocks;
mod budget;
pub mod config;
mod export;
mod header;
mod imatrix;
mod imatrix_file;
pub mod iq4;
mod lanes;
mod meta;
mod mix;
pub mod names;
mod q4_k;
mod source;
pub mod tokenizer;
mod tokenizer_meta;
mod types;
mod weighted;
pub mod write;

use microllm_core::le::decode_le;
use std::io::Read;
use std::path::Path;

use memmap2::Mmap;
use microllm_core::{Error, Result};

pub use self::budget::{BudgetChoice, BudgetPlan, SizeTarget, fit_budget};
pub use self::export::{
    EncodedTensors, GgufExport, GgufSummary, TypeDecision, plan_export, plan_types, write_gguf,
};
pub use self::imatrix::ImportanceMatrix;
use self::meta::Meta;
pub use self::mix::{GgufTypes, KQuantMix, TensorTypeRule};
pub use self::source::GgufSource;
pub use self::types::GgufType;
use crate::{Checkpoint, CheckpointFormat};

/// The four bytes every GGUF file starts with.
pub const GGUF_MAGIC: &[u8; 4] = b"GGUF";

/// Whether the file starts with the GGUF magic.
pub fn has_gguf_magic(path: &Path) -> Result<bool> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut magic = [0u8; 4];
    match f.read_exact(&mut magic) {
        Ok(()) => Ok(&magic == GGUF_MAGIC),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// Opens a GGUF checkpoint: header, configuration, lazy tensors, tokenizer and chat template.
///
/// Only the header is read; tensor data stays in the memory map until loaded.
pub fn open(path: &Path) -> Result<Checkpoint> {
    if !has_gguf_magic(path)? {
        return Err(Error::format(
            path,
            "not a GGUF file: it does not start with the magic bytes \"GGUF\"",
        ));
    }
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: the mapping is read-only; a checkpoint modified underneath a running process is
    // outside what any reader can defend against.
    let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    open_map(path, map)
}

/// Opens GGUF bytes held in memory as if they were the file `name`: what [`open`] does after
/// mapping the file. For tools and fuzzing, where the bytes do not come from a file.
pub fn open_bytes(name: &Path, bytes: &[u8]) -> Result<Checkpoint> {
    if !bytes.starts_with(GGUF_MAGIC) {
        return Err(Error::format(
            name,
            "not a GGUF file: it does not start with the magic bytes \"GGUF\"",
        ));
    }
    let io = |e| Error::io(name, e);
    let mut map = memmap2::MmapMut::map_anon(bytes.len()).map_err(io)?;
    map.copy_from_slice(bytes);
    open_map(name, map.make_read_only().map_err(io)?)
}

/// Reads the header of a mapped GGUF file `path` and builds the checkpoint over the mapping.
fn open_map(path: &Path, map: Mmap) -> Result<Checkpoint> {
    let header = header::read(path, &map)?;
    let meta = Meta::new(path, &header.metadata);

    let arch = meta.req_str("general.architecture")?;
    let family = config::family_of(&meta, arch)?;
    let rope_freqs = read_rope_freqs(path, &map, &header)?;
    let model_config = config::read_config(&meta, arch, family, &header.tensors, rope_freqs)?;
    let tensors = GgufSource::new(path, map, &header, &model_config)?;
    let tokenizer = tokenizer::from_metadata(&meta)?;
    let chat_template = meta.str("tokenizer.chat_template")?.map(str::to_string);

    Ok(Checkpoint {
        path: path.to_path_buf(),
        format: CheckpointFormat::Gguf,
        config: model_config,
        tensors: Box::new(tensors),
        tokenizer,
        chat_template,
        license: meta.str("general.license")?.map(str::to_string),
    })
}

/// The values of the file's `rope_freqs` tensor (llama.cpp's per-pair rotary divisors), if
/// it has one. It is a small F32 vector, read here because it belongs to the configuration.
fn read_rope_freqs(path: &Path, map: &[u8], header: &header::Header) -> Result<Option<Vec<f64>>> {
    let Some(info) = header.tensors.get("rope_freqs.weight") else {
        return Ok(None);
    };
    let bad = |msg: String| Error::format(path, format!("tensor `rope_freqs.weight`: {msg}"));
    if info.dtype != GgufType::F32 {
        return Err(bad(format!("stored as {}, expected F32", info.dtype)));
    }
    let n: usize = info.dims.iter().product();
    let start = (header.data_offset + info.offset) as usize;
    let bytes = start
        .checked_add(4 * n)
        .and_then(|end| map.get(start..end))
        .ok_or_else(|| bad("its data lies beyond the end of the file".into()))?;
    Ok(Some(
        decode_le::<f32>(bytes).into_iter().map(f64::from).collect(),
    ))
}
