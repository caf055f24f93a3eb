//! Any checkpoint -> a GGUF file that llama.cpp, ollama and microllm load.
//!
//! A GGUF without its metadata is useless to llama.cpp (a known failure of files written by
//! generic tensor tools), so the exporter writes the whole contract: the architecture keys,
//! the tokenizer tables (rebuilt from the `tokenizers` JSON: byte-level BPE vocabulary,
//! merges, token types, pre-tokenizer name), the chat template, and llama.cpp's q/k row
//! permutation for the llama family. Tensor types follow llama.cpp's choices: norms and biases
//! stay F32; matrices get the requested type, falling back where a row length is not a
//! multiple of the type's block (k-quants need 256: SmolLM2's 576-wide rows do not fit); the
//! output head (the tied embedding) gets Q6_K unless a higher precision was asked for. Every
//! fallback is returned so reports can say so.
//!
//! Quantization here is round-to-nearest through candle's ggml-compatible block quantizers.

use std::path::{Path, PathBuf};

use crate::gguf::GgufType;
use candle_core::Tensor;
use candle_core::quantized::QTensor;
use candle_core::quantized::gguf_file::Value;
use microllm_core::{
    Error, Family, LinearKind, ModelConfig, NormKind, Progress, Result, RopeScaling, TensorSource,
    names,
};
use rayon::prelude::*;

use super::config::architecture_of;
use super::imatrix::ImportanceMatrix;
use super::mix::{GgufTypes, TensorTypeRule, rule_for};
use super::names::{
    hf_to_gguf, is_norm_weight, is_rope_permuted, norms_hold_unit_offset, permute_rows,
};
use super::write::{GgufWriter, PlannedTensor};
use super::{blocks, iq4, weighted};
use crate::Tokenizer;
use crate::fused::{JoinFused, parts_of};

/// What goes into the file.
pub struct GgufExport<'a> {
    pub config: &'a ModelConfig,
    pub tensors: &'a dyn TensorSource,
    pub tokenizer: Option<&'a Tokenizer>,
    pub chat_template: Option<&'a str>,
    /// `general.name` (and `general.basename`).
    pub name: &'a str,
    /// `general.license`, when the source names one.
    pub license: Option<&'a str>,
    /// Tensors encoded elsewhere (GPTQ codes packed exactly into blocks); the rest are
    /// quantized here by round-to-nearest.
    pub encoded: Option<&'a dyn EncodedTensors>,
    /// Per-column importance of the matrices quantized here (llama.cpp's imatrix): k-quant
    /// blocks then minimise the importance-weighted error instead of the plain one.
    pub importance: Option<&'a ImportanceMatrix>,
    /// Per-tensor types (`--tensor-type`), over the ones `types` asks for.
    pub tensor_types: &'a [TensorTypeRule],
}

/// A provider of finished GGUF tensor data for some tensors of an export.
pub trait EncodedTensors: Sync {
    /// The GGUF type `hf_name` will have, if this provider encodes it.
    fn dtype(&self, hf_name: &str) -> Option<GgufType>;
    /// The tensor's bytes in GGUF layout (llama-family q/k rows already permuted).
    fn encode(&self, hf_name: &str) -> Result<Vec<u8>>;
    /// Why a tensor did not get an exact block type, if it did not (for reports).
    fn fallback(&self, _hf_name: &str) -> Option<String> {
        None
    }
}

/// The type chosen for one tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct TypeDecision {
    pub hf_name: String,
    pub gguf_name: String,
    pub shape: Vec<usize>,
    pub dtype: GgufType,
    /// Why the type differs from the one requested, if it does.
    pub fallback: Option<String>,
    /// Whether the blocks were fitted with importance weights (set by [`write_gguf`]).
    pub importance_weighted: bool,
}

impl TypeDecision {
    /// Bytes of the tensor's data in its type.
    pub fn bytes(&self) -> u64 {
        let n: usize = self.shape.iter().product();
        (n / self.dtype.block_size() * self.dtype.type_size()) as u64
    }
}

impl GgufExport<'_> {
    /// The importance of `hf_name`'s input columns, if the export has a matrix for it (the
    /// parts of a fused matrix share their input, hence their importance).
    pub(super) fn importance_of(&self, hf_name: &str) -> Option<&[f32]> {
        let name = parts_of(self.config, hf_name)
            .and_then(|p| p.into_iter().next())
            .unwrap_or_else(|| hf_name.to_string());
        self.importance.and_then(|m| m.columns(&name))
    }
}

/// What was written.
#[derive(Debug, Clone)]
pub struct GgufSummary {
    pub path: PathBuf,
    pub tensors: Vec<TypeDecision>,
    pub bytes: u64,
    /// Things a user should know (an unrecognised pre-tokenizer, a file without tokenizer).
    pub notes: Vec<String>,
}

/// Chooses each tensor's GGUF name and type: the first of `rules` that matches a matrix's
/// GGUF name, else `types` (one type for every matrix, or one of llama.cpp's mixes); then rows
/// that do not fit the asked type's block fall back. A rule that matches no matrix is an
/// error (a misspelt pattern would otherwise change nothing, silently).
/// `imatrix`: whether the matrices will be fitted with an importance matrix (which changes
/// llama.cpp's i-quant mixes).
pub fn plan_types(
    cfg: &ModelConfig,
    tensors: &dyn TensorSource,
    types: impl Into<GgufTypes>,
    rules: &[TensorTypeRule],
    imatrix: bool,
) -> Result<Vec<TypeDecision>> {
    let types = types.into();
    let named = JoinFused::new(tensors, cfg)
        .infos()
        .into_iter()
        .map(|info| {
            let gguf_name = hf_to_gguf(cfg.family, &info.name).ok_or_else(|| {
                Error::Invalid(format!(
                    "tensor `{}` has no GGUF name for the {} architecture",
                    info.name, cfg.family
                ))
            })?;
            Ok((info, gguf_name))
        })
        .collect::<Result<Vec<_>>>()?;
    // llama.cpp places its v and down rules by counting the matrices of that kind its mix has
    // typed so far, and a matrix a rule retyped is not counted: the later ones move up.
    let retyped: Vec<(LinearKind, usize)> = named
        .iter()
        .filter(|(info, gguf)| info.shape.len() >= 2 && rule_for(rules, gguf).is_some())
        .filter_map(|(info, _)| names::parse_linear_weight(cfg.family, &info.name))
        .map(|(layer, kind)| (kind, layer))
        .filter(|(kind, _)| matches!(kind, LinearKind::V | LinearKind::Down))
        .collect();
    let decisions = named
        .into_iter()
        .map(|(info, gguf_name)| {
            let (dtype, fallback) = if info.shape.len() < 2 {
                (GgufType::F32, None)
            } else {
                let skipped = names::parse_linear_weight(cfg.family, &info.name).map_or(
                    0,
                    |(layer, kind)| {
                        retyped
                            .iter()
                            .filter(|&&(k, l)| k == kind && l < layer)
                            .count()
                    },
                );
                let wanted = rule_for(rules, &gguf_name).map_or_else(
                    || types.wanted_after(cfg, &info.name, skipped, imatrix),
                    |r| r.dtype,
                );
                fit_row(wanted, *info.shape.last().expect("2-D"))
            };
            Ok(TypeDecision {
                hf_name: info.name,
                gguf_name,
                shape: info.shape,
                dtype,
                fallback,
                importance_weighted: false,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    if let Some(unused) = rules.iter().find(|r| {
        !decisions
            .iter()
            .any(|d| d.shape.len() >= 2 && r.matches(&d.gguf_name))
    }) {
        let matrices = || decisions.iter().filter(|d| d.shape.len() >= 2);
        let example = matrices()
            .find(|d| d.gguf_name.starts_with("blk."))
            .or_else(|| matrices().next())
            .map_or(String::new(), |d| {
                format!(" (names look like `{}`)", d.gguf_name)
            });
        return Err(Error::Invalid(format!(
            "tensor type pattern `{}` matches no matrix of this model{example}",
            unused.pattern()
        )));
    }
    Ok(decisions)
}

/// [`plan_types`], with the types of tensors that `export.encoded` provides.
pub fn plan_export(export: &GgufExport<'_>, types: GgufTypes) -> Result<Vec<TypeDecision>> {
    let mut decisions = plan_types(
        export.config,
        export.tensors,
        types,
        export.tensor_types,
        export.importance.is_some(),
    )?;
    if let Some(encoded) = export.encoded {
        let encoded = FusedEncoded::new(encoded, export.config);
        for d in &mut decisions {
            if let Some(dtype) = encoded.dtype(&d.hf_name) {
                if let Some(rule) = rule_for(export.tensor_types, &d.gguf_name)
                    && rule.dtype != dtype
                {
                    return Err(Error::Invalid(format!(
                        "tensor type pattern `{}` asks {:?} for `{}`, which is written from \
                         its quantized codes as {dtype:?}",
                        rule.pattern(),
                        rule.dtype,
                        d.gguf_name
                    )));
                }
                d.dtype = dtype;
                d.fallback = encoded.fallback(&d.hf_name);
            }
        }
    }
    Ok(decisions)
}

/// Encoded tensors with the family's fused projections assembled from their encoded parts
/// (rows are independent in every block type, so the parts' bytes in row order are the fused
/// tensor's bytes). A fused tensor is encoded only when all its parts are, in one type.
pub(super) struct FusedEncoded<'a> {
    inner: &'a dyn EncodedTensors,
    cfg: &'a ModelConfig,
}

impl<'a> FusedEncoded<'a> {
    pub(super) fn new(inner: &'a dyn EncodedTensors, cfg: &'a ModelConfig) -> Self {
        Self { inner, cfg }
    }
}

impl EncodedTensors for FusedEncoded<'_> {
    fn dtype(&self, hf_name: &str) -> Option<GgufType> {
        let Some(parts) = parts_of(self.cfg, hf_name) else {
            return self.inner.dtype(hf_name);
        };
        let types: Vec<Option<GgufType>> = parts.iter().map(|p| self.inner.dtype(p)).collect();
        match types.first() {
            Some(Some(t)) if types.iter().all(|x| x == &Some(*t)) => Some(*t),
            _ => None,
        }
    }

    fn encode(&self, hf_name: &str) -> Result<Vec<u8>> {
        match parts_of(self.cfg, hf_name) {
            None => self.inner.encode(hf_name),
            Some(parts) => Ok(parts
                .iter()
                .map(|p| self.inner.encode(p))
                .collect::<Result<Vec<_>>>()?
                .concat()),
        }
    }

    fn fallback(&self, hf_name: &str) -> Option<String> {
        match parts_of(self.cfg, hf_name) {
            None => self.inner.fallback(hf_name),
            Some(parts) => parts.iter().find_map(|p| self.inner.fallback(p)),
        }
    }
}

/// The type a row of `cols` values can take, starting from `wanted` and falling back as
/// llama.cpp's `tensor_type_fallback` does (Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0,
/// IQ4_XS -> IQ4_NL, Q2_K / Q3_K -> Q4_0; anything else -> F16).
fn fit_row(wanted: GgufType, cols: usize) -> (GgufType, Option<String>) {
    let mut dtype = wanted;
    let mut reasons = Vec::new();
    while !cols.is_multiple_of(dtype.block_size()) {
        let next = match dtype {
            GgufType::Q4K => GgufType::Q5_0,
            GgufType::Q5K => GgufType::Q5_1,
            GgufType::Q6K | GgufType::Q8K => GgufType::Q8_0,
            GgufType::Q2K | GgufType::Q3K => GgufType::Q4_0,
            GgufType::Iq4Xs => GgufType::Iq4Nl,
            _ => GgufType::F16,
        };
        reasons.push(format!(
            "rows of {cols} are not a multiple of {:?}'s block of {}: {next:?}",
            dtype,
            dtype.block_size()
        ));
        dtype = next;
    }
    (dtype, (!reasons.is_empty()).then(|| reasons.join("; ")))
}

/// Writes `export` as a GGUF file at `dest` with the matrix types `types` asks for.
pub fn write_gguf(
    export: &GgufExport<'_>,
    dest: &Path,
    types: impl Into<GgufTypes>,
    overwrite: bool,
    progress: &dyn Progress,
) -> Result<GgufSummary> {
    let cfg = export.config;
    let types = types.into();
    let mut decisions = plan_export(export, types)?;
    let mut notes = Vec::new();
    let mut metadata = architecture_metadata(cfg, export.name, types.file_type(), &mut notes);
    metadata.extend(provenance_metadata(export));
    match export.tokenizer {
        Some(tok) => {
            let tokenizer = super::tokenizer_meta::tokenizer_metadata(
                tok,
                cfg,
                export.chat_template,
                &mut notes,
            )?;
            // The tokenizer's own special ids win over the model config's.
            metadata.retain(|(k, _)| tokenizer.iter().all(|(t, _)| t != k));
            metadata.extend(tokenizer);
        }
        None => notes.push(
            "the source has no tokenizer: the GGUF carries none, and llama.cpp will refuse it"
                .into(),
        ),
    }
    let rope_freqs = rope_freqs(cfg);
    let plan = rope_freqs
        .iter()
        .map(|f| PlannedTensor {
            name: ROPE_FREQS.into(),
            shape: vec![f.len()],
            dtype: GgufType::F32,
        })
        .chain(decisions.iter().map(|d| PlannedTensor {
            name: d.gguf_name.clone(),
            shape: d.shape.clone(),
            dtype: d.dtype,
        }))
        .collect();
    let mut writer = GgufWriter::create(dest, &metadata, plan, overwrite)?;
    progress.begin("writing GGUF", decisions.len() as u64, "tensors");
    let mut bytes = 0u64;
    if let Some(f) = &rope_freqs {
        let data: Vec<u8> = f.iter().flat_map(|v| v.to_le_bytes()).collect();
        bytes += data.len() as u64;
        writer.write_tensor(ROPE_FREQS, &data)?;
    }
    let tensors = JoinFused::new(export.tensors, cfg);
    let encoded = export.encoded.map(|e| FusedEncoded::new(e, cfg));
    for d in &mut decisions {
        let data = match encoded.as_ref().filter(|e| e.dtype(&d.hf_name).is_some()) {
            Some(encoded) => encoded.encode(&d.hf_name)?,
            None => {
                let tensor = gguf_layout(cfg, &d.hf_name, tensors.load(&d.hf_name)?)?;
                let weights = export
                    .importance_of(&d.hf_name)
                    .filter(|_| takes_importance(d.dtype));
                d.importance_weighted = weights.is_some();
                encode_checked(
                    &tensor,
                    d.dtype,
                    weights,
                    &d.hf_name,
                    &export.tensors.origin(),
                )?
            }
        };
        bytes += data.len() as u64;
        writer.write_tensor(&d.gguf_name, &data)?;
        progress.advance(1);
    }
    progress.finish();
    let path = writer.finish()?;
    Ok(GgufSummary {
        path,
        tensors: decisions,
        bytes,
        notes,
    })
}

/// The name llama.cpp gives its rotary divisors.
const ROPE_FREQS: &str = "rope_freqs.weight";

/// llama.cpp's `rope_freqs` values (one divisor per rotated pair) for a model whose rotary
/// frequencies are rescaled per pair (Llama-3.1), as its converter computes them.
fn rope_freqs(cfg: &ModelConfig) -> Option<Vec<f32>> {
    if !matches!(
        cfg.rope_scaling,
        RopeScaling::Llama3 { .. } | RopeScaling::Divisors(_)
    ) {
        return None;
    }
    let d = cfg.rotary_dim();
    let inv_freq: Vec<f64> = (0..d / 2)
        .map(|i| 1.0 / cfg.rope_theta.powf(2.0 * i as f64 / d as f64))
        .collect();
    Some(
        cfg.rope_scaling
            .divisors(&inv_freq)
            .into_iter()
            .map(|v| v as f32)
            .collect(),
    )
}

/// The tensor as llama.cpp's graph reads it: llama-family q/k rows permuted for its rotary
/// layout, Gemma's norms holding `1 + w`.
fn gguf_layout(cfg: &ModelConfig, hf_name: &str, t: Tensor) -> Result<Tensor> {
    if norms_hold_unit_offset(cfg.family) && is_norm_weight(hf_name) {
        return Ok((t + 1.0)?);
    }
    if !is_rope_permuted(cfg.family) {
        return Ok(t);
    }
    if hf_name.contains(".self_attn.q_proj.") {
        permute_rows(&t, cfg.num_heads)
    } else if hf_name.contains(".self_attn.k_proj.") {
        permute_rows(&t, cfg.num_kv_heads)
    } else {
        Ok(t)
    }
}

/// Whether `dtype` is fitted with importance weights when a matrix is given: Q2_K / Q3_K by
/// candle's fits; Q4_K / Q5_K, IQ4_NL / IQ4_XS, Q4_0 / Q5_0 / Q4_1 / Q5_1 / Q6_K by
/// microllm's own ([`q4_k`](super::q4_k), [`iq4`], [`weighted`]), as llama.cpp does. Q8_0 is not (llama.cpp ignores the matrix for it too).
pub(super) fn takes_importance(dtype: GgufType) -> bool {
    matches!(
        dtype,
        GgufType::Q2K
            | GgufType::Q3K
            | GgufType::Q4K
            | GgufType::Q5K
            | GgufType::Q6K
            | GgufType::Q4_0
            | GgufType::Q5_0
            | GgufType::Q4_1
            | GgufType::Q5_1
            | GgufType::Iq4Nl
            | GgufType::Iq4Xs
    )
}

/// The types microllm packs row by row itself, with the row's importance when given.
#[derive(Clone, Copy)]
enum RowPacker<'a> {
    Q4_0(&'a [f32]),
    Q5_0(&'a [f32]),
    Q4_1(&'a [f32]),
    Q5_1(&'a [f32]),
    Q4K(Option<&'a [f32]>),
    Q5K(Option<&'a [f32]>),
    Q6K(Option<&'a [f32]>),
    Iq4Nl(Option<&'a [f32]>),
    Iq4Xs(Option<&'a [f32]>),
}

impl RowPacker<'_> {
    fn pack(self, row: &[f32], out: &mut Vec<u8>) {
        match self {
            RowPacker::Q4_0(w) => weighted::q4_0_row(row, w, out),
            RowPacker::Q5_0(w) => weighted::q5_0_row(row, w, out),
            RowPacker::Q4_1(w) => weighted::q4_1_row(row, w, out),
            RowPacker::Q5_1(w) => weighted::q5_1_row(row, w, out),
            RowPacker::Q4K(w) => super::q4_k::q4_k_row(row, w, out),
            RowPacker::Q5K(w) => super::q4_k::q5_k_row(row, w, out),
            RowPacker::Q6K(w) => weighted::q6_k_row(row, w, out),
            RowPacker::Iq4Nl(w) => iq4::iq4_nl_row(row, w, out),
            RowPacker::Iq4Xs(w) => iq4::iq4_xs_row(row, w, out),
        }
    }
}

/// [`encode`], its refusals as errors naming the tensor.
pub(super) fn encode_checked(
    t: &Tensor,
    dtype: GgufType,
    importance: Option<&[f32]>,
    hf_name: &str,
    origin: &str,
) -> Result<Vec<u8>> {
    encode(t, dtype, importance).map_err(|e| {
        let (name, origin) = (hf_name.to_string(), origin.to_string());
        match e {
            EncodeError::Values(msg) => Error::NonFinite { name, origin, msg },
            EncodeError::Other(msg) => Error::TensorData { name, origin, msg },
        }
    })
}

/// The tensor's bytes in `dtype`, refusing non-finite values (block quantizers would turn them
/// into garbage silently). Blocks never straddle rows, so the values are cut into chunks of
/// whole rows and packed on all cores: Q8_0 / Q4_0 / Q4_1 by microllm's own packers
/// ([`blocks`]), Q4_K and Q5_K by [`q4_k`](super::q4_k), IQ4_NL / IQ4_XS by [`iq4`], Q6_K (and, with per-column `importance`
/// weights, Q4_0 / Q5_0 / Q4_1 / Q5_1) by [`weighted`], other types by candle's ggml port
/// (see [`takes_importance`]).
fn encode(
    t: &Tensor,
    dtype: GgufType,
    importance: Option<&[f32]>,
) -> std::result::Result<Vec<u8>, EncodeError> {
    // A contiguous f32 tensor is read in place: a copy of a 100 MB embedding costs more in
    // fresh-page zeroing than its quantization (`perf` on `convert --gguf-type q4_0`).
    let (storage, layout) = t.storage_and_layout();
    let values: std::borrow::Cow<'_, [f32]> = match (&*storage, layout.contiguous_offsets()) {
        (candle_core::Storage::Cpu(candle_core::CpuStorage::F32(v)), Some((start, end))) => {
            std::borrow::Cow::Borrowed(&v[start..end])
        }
        _ => std::borrow::Cow::Owned(
            t.flatten_all()
                .and_then(|f| f.to_vec1::<f32>())
                .map_err(|e| EncodeError::Other(e.to_string()))?,
        ),
    };
    let (finite, largest) = values
        .par_chunks(1 << 16)
        .map(finite_and_largest)
        .reduce(|| (true, 0f32), |a, b| (a.0 & b.0, a.1.max(b.1)));
    if !finite {
        return Err(EncodeError::Values(
            "contains NaN or infinite values".into(),
        ));
    }
    // Every type but F32 and BF16 stores values or block scales as f16: a weight beyond its
    // range would be written as inf. Real weights sit far below it.
    if !matches!(dtype, GgufType::F32 | GgufType::BF16) && largest > f32::from(half::f16::MAX) {
        return Err(EncodeError::Values(format!(
            "holds values up to {largest:e}, beyond the f16 range (65504) that {} stores \
             values or scales in: write it as F32 or BF16",
            dtype.name()
        )));
    }
    let cols = t.dims().last().copied().unwrap_or(1).max(1);
    let rows = values.len() / cols;
    let rows_per_chunk = rows.div_ceil(4 * rayon::current_num_threads()).max(1);
    let pack: Option<blocks::Packer> = match dtype {
        GgufType::Q8_0 => Some(blocks::q8_0),
        GgufType::Q4_0 => Some(blocks::q4_0),
        GgufType::Q4_1 => Some(blocks::q4_1),
        _ => None,
    };
    // Types microllm fits row by row as current llama.cpp does (candle's Q4_K, Q5_K and Q6_K follow
    // an older llama.cpp, and it has no weighted Q4_0 / Q5_0 / Q4_1 / Q5_1).
    let by_row: Option<RowPacker<'_>> = match (dtype, importance) {
        (GgufType::Q4_0, Some(w)) => Some(RowPacker::Q4_0(w)),
        (GgufType::Q5_0, Some(w)) => Some(RowPacker::Q5_0(w)),
        (GgufType::Q4_1, Some(w)) => Some(RowPacker::Q4_1(w)),
        (GgufType::Q5_1, Some(w)) => Some(RowPacker::Q5_1(w)),
        (GgufType::Q4K, w) => Some(RowPacker::Q4K(w)),
        (GgufType::Q5K, w) => Some(RowPacker::Q5K(w)),
        (GgufType::Q6K, w) => Some(RowPacker::Q6K(w)),
        (GgufType::Iq4Nl, w) => Some(RowPacker::Iq4Nl(w)),
        (GgufType::Iq4Xs, w) => Some(RowPacker::Iq4Xs(w)),
        _ => None,
    };
    if importance.is_some_and(|w| w.len() != cols) {
        return Err(EncodeError::Other(format!(
            "the importance vector has {} values for rows of {cols}",
            importance.map_or(0, <[f32]>::len)
        )));
    }
    // Each task packs its chunk of rows into its place in the one output buffer (whole-tensor
    // parts joined afterwards would hold the encoded tensor twice). microllm's packers fill a
    // row-sized buffer that stays in cache and is copied into place row by row; a chunk-sized
    // buffer was a fresh allocation per chunk (pages the kernel zeroes) copied once more
    // (Q4_0 export 0.60 -> 0.54 s median, docs/benchmarks.md).
    let row_bytes = cols / dtype.block_size() * dtype.type_size();
    let mut encoded = vec![0u8; rows * row_bytes];
    encoded
        .par_chunks_mut(rows_per_chunk * row_bytes)
        .zip(values.par_chunks(rows_per_chunk * cols))
        .try_for_each(|(dest, chunk)| match (by_row, pack) {
            (Some(packer), _) => pack_rows(chunk, dest, cols, |row, out| packer.pack(row, out)),
            (None, Some(pack)) => pack_rows(chunk, dest, cols, pack),
            (None, None) => quantize_with_candle(t, chunk, dest, cols, dtype, importance),
        })?;
    Ok(encoded)
}

/// Packs `chunk`'s rows of `cols` values into `dest` one row at a time, through a row-sized
/// buffer that stays in cache.
fn pack_rows(
    chunk: &[f32],
    dest: &mut [u8],
    cols: usize,
    pack_row: impl Fn(&[f32], &mut Vec<u8>),
) -> std::result::Result<(), EncodeError> {
    let rows = chunk.len() / cols;
    let row_bytes = dest.len() / rows.max(1);
    let mut row_buf = Vec::with_capacity(row_bytes);
    for (row, place) in chunk
        .chunks_exact(cols)
        .zip(dest.chunks_exact_mut(row_bytes))
    {
        row_buf.clear();
        pack_row(row, &mut row_buf);
        if row_buf.len() != row_bytes {
            return Err(EncodeError::Other(format!(
                "{} bytes packed for a row of {row_bytes}",
                row_buf.len()
            )));
        }
        place.copy_from_slice(&row_buf);
    }
    Ok(())
}

/// Quantizes `chunk`'s rows with candle's ggml port into `dest`.
fn quantize_with_candle(
    t: &Tensor,
    chunk: &[f32],
    dest: &mut [u8],
    cols: usize,
    dtype: GgufType,
    importance: Option<&[f32]>,
) -> std::result::Result<(), EncodeError> {
    // A fresh tensor per chunk: candle's quantizer reads a storage from its start, ignoring a
    // view's offset, so a narrowed view would quantize the wrong rows.
    let other = |e: candle_core::Error| EncodeError::Other(e.to_string());
    let part = Tensor::from_slice(chunk, (chunk.len() / cols, cols), t.device()).map_err(other)?;
    let dtype = dtype
        .candle()
        .ok_or_else(|| EncodeError::Other(format!("no quantizer for {dtype}")))?;
    let q = match importance {
        Some(w) => QTensor::quantize_imatrix(&part, w, dtype),
        None => QTensor::quantize(&part, dtype),
    }
    .map_err(other)?;
    let packed = q.data().map_err(other)?;
    if packed.len() != dest.len() {
        return Err(EncodeError::Other(format!(
            "{} bytes packed for {} expected",
            packed.len(),
            dest.len()
        )));
    }
    dest.copy_from_slice(&packed);
    Ok(())
}

/// Whether every value is finite, and the largest magnitude: one pass for both, in lanes of
/// 16 that the compiler turns into vector compares (a fold through `f32::max` and
/// `is_finite` stayed scalar and was a third of `convert --gguf-type q4_0`'s time, `perf`).
fn finite_and_largest(values: &[f32]) -> (bool, f32) {
    const LANES: usize = 16;
    let (mut bad, mut big) = ([false; LANES], [0f32; LANES]);
    let chunks = values.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for i in 0..LANES {
            let a = c[i].abs();
            // NaN and infinity are not finite (a compare against infinity, per lane).
            bad[i] |= !a.is_finite();
            big[i] = if a > big[i] { a } else { big[i] };
        }
    }
    for &v in tail {
        let a = v.abs();
        bad[0] |= !a.is_finite();
        big[0] = if a > big[0] { a } else { big[0] };
    }
    let largest = big.iter().fold(0f32, |m, &a| if a > m { a } else { m });
    (!bad.contains(&true), largest)
}

/// Why a tensor could not be encoded.
#[derive(Debug)]
enum EncodeError {
    /// Its values: non-finite, or beyond what the type can store.
    Values(String),
    /// Anything else (the quantizer failed, an importance vector of the wrong length).
    Other(String),
}

/// `general.basename`, `general.size_label` (parameters counted from the tensor shapes, as
/// llama.cpp's converter labels them: `135M`, `7B`) and `general.license`.
fn provenance_metadata(export: &GgufExport<'_>) -> Vec<(String, Value)> {
    let params: u64 = export
        .tensors
        .infos()
        .iter()
        .map(|t| t.shape.iter().product::<usize>() as u64)
        .sum();
    let mut m = vec![
        (
            "general.basename".to_string(),
            Value::String(export.name.into()),
        ),
        (
            "general.size_label".to_string(),
            Value::String(size_label(params)),
        ),
    ];
    if let Some(l) = export.license {
        m.push(("general.license".into(), Value::String(l.into())));
    }
    m
}

/// A parameter count as a short label with at least two significant digits, as llama.cpp's
/// converter writes it: `135M`, `1.1B`, `6.7B`, `13B`.
fn size_label(params: u64) -> String {
    let p = params as f64;
    let (scaled, unit) = match p {
        p if p > 1e12 => (p * 1e-12, "T"),
        p if p > 1e9 => (p * 1e-9, "B"),
        p if p > 1e6 => (p * 1e-6, "M"),
        p => (p * 1e-3, "K"),
    };
    let integer_digits = format!("{}", scaled.round() as u64)
        .trim_start_matches('0')
        .len();
    let decimals = 2usize.saturating_sub(integer_digits);
    format!("{scaled:.decimals$}{unit}")
}

/// `general.*` and `{arch}.*` keys; what llama.cpp cannot express goes onto `notes`.
fn architecture_metadata(
    cfg: &ModelConfig,
    name: &str,
    file_type: u32,
    notes: &mut Vec<String>,
) -> Vec<(String, Value)> {
    let arch = architecture_of(cfg.family);
    let k = |key: &str| format!("{arch}.{key}");
    let u32v = |v: usize| Value::U32(v as u32);
    let mut m = vec![
        (
            "general.architecture".to_string(),
            Value::String(arch.into()),
        ),
        ("general.name".to_string(), Value::String(name.into())),
        ("general.file_type".to_string(), Value::U32(file_type)),
        ("general.quantization_version".to_string(), Value::U32(2)),
        (k("context_length"), u32v(cfg.max_position_embeddings)),
        (k("embedding_length"), u32v(cfg.hidden_size)),
        (k("block_count"), u32v(cfg.num_layers)),
        (k("feed_forward_length"), u32v(cfg.intermediate_size)),
        (k("attention.head_count"), u32v(cfg.num_heads)),
        (k("attention.head_count_kv"), u32v(cfg.num_kv_heads)),
        (k("attention.key_length"), u32v(cfg.head_dim)),
        (k("attention.value_length"), u32v(cfg.head_dim)),
        (k("rope.dimension_count"), u32v(cfg.rotary_dim())),
        (k("rope.freq_base"), Value::F32(cfg.rope_theta as f32)),
        (k("vocab_size"), u32v(cfg.vocab_size)),
    ];
    let eps = Value::F32(cfg.norm_eps as f32);
    match cfg.layout().norm {
        NormKind::Rms => m.push((k("attention.layer_norm_rms_epsilon"), eps)),
        NormKind::Layer => m.push((k("attention.layer_norm_epsilon"), eps)),
    }
    if let Some(w) = cfg.sliding_window {
        m.push((k("attention.sliding_window"), u32v(w)));
    }
    if let Some(layers) = &cfg.sliding_layers {
        m.push((
            k("attention.sliding_window_pattern"),
            Value::Array(layers.iter().map(|&b| Value::Bool(b)).collect()),
        ));
    }
    if let Some(theta) = cfg.local_rope_theta {
        m.push((k("rope.freq_base_swa"), Value::F32(theta as f32)));
    }
    if let RopeScaling::Linear { factor } = cfg.rope_scaling {
        m.push((k("rope.scaling.type"), Value::String("linear".into())));
        m.push((k("rope.scaling.factor"), Value::F32(factor as f32)));
    }
    if cfg.family == Family::Gemma3 {
        // llama.cpp scales queries by head_dim^-0.5 (hidden / heads for the 62-block 27B).
        let implied = if cfg.num_layers == 62 {
            (cfg.hidden_size / cfg.num_heads) as f64
        } else {
            cfg.head_dim as f64
        };
        if let Some(s) = cfg.query_pre_attn_scalar.filter(|s| *s != implied) {
            notes.push(format!(
                "query_pre_attn_scalar {s} differs from the {implied} llama.cpp assumes for \
                 this model: llama.cpp will scale attention scores differently"
            ));
        }
    }
    if let Some(bos) = cfg.bos_token_id {
        m.push(("tokenizer.ggml.bos_token_id".into(), Value::U32(bos)));
    }
    if let Some(&eos) = cfg.eos_token_ids.first() {
        m.push(("tokenizer.ggml.eos_token_id".into(), Value::U32(eos)));
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_value_check_finds_non_finite_values_and_the_largest_anywhere() {
        let mut v: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.37).sin()).collect();
        v[517] = -3.5;
        assert_eq!(finite_and_largest(&v), (true, 3.5));
        v[999] = 7.0; // in the tail after the lanes
        assert_eq!(finite_and_largest(&v), (true, 7.0));
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut w = v.clone();
            w[3] = bad;
            assert!(!finite_and_largest(&w).0, "{bad}");
            w[3] = 0.0;
            w[998] = bad;
            assert!(!finite_and_largest(&w).0, "{bad} in the tail");
        }
    }

    #[test]
    fn chunked_encoding_equals_whole_tensor_quantization() {
        let t = Tensor::randn(0f32, 1.0, (600, 256), &candle_core::Device::Cpu).unwrap();
        for dtype in [
            GgufType::Q8_0,
            GgufType::Q4_0,
            GgufType::Q4_1,
            GgufType::Q3K,
            GgufType::F16,
        ] {
            let whole = QTensor::quantize(&t, dtype.candle().unwrap()).unwrap();
            assert!(encode(&t, dtype, None).unwrap() == whole.data().unwrap().into_owned());
        }
        // The types microllm fits itself: chunks on all cores equal the rows one by one.
        let rows = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (dtype, packer) in [
            (GgufType::Q4K, RowPacker::Q4K(None)),
            (GgufType::Q5K, RowPacker::Q5K(None)),
            (GgufType::Iq4Nl, RowPacker::Iq4Nl(None)),
            (GgufType::Iq4Xs, RowPacker::Iq4Xs(None)),
        ] {
            let mut one_by_one = Vec::new();
            for row in rows.chunks_exact(256) {
                packer.pack(row, &mut one_by_one);
            }
            assert!(encode(&t, dtype, None).unwrap() == one_by_one, "{dtype}");
        }
        // Q6_K is microllm's own fit (current llama.cpp's; candle follows an older one): the
        // chunked encoding equals the rows packed one by one, and decodes (through candle)
        // no worse than candle's own quantization.
        let values = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let mut rows = Vec::new();
        for row in values.chunks_exact(256) {
            weighted::q6_k_row(row, None, &mut rows);
        }
        let ours = encode(&t, GgufType::Q6K, None).unwrap();
        assert!(ours == rows);
        let error = |q: QTensor| -> f32 {
            let back = q.dequantize(&candle_core::Device::Cpu).unwrap();
            (back - &t)
                .unwrap()
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar()
                .unwrap()
        };
        let decoded = candle_core::quantized::ggml_file::qtensor_from_ggml(
            GgufType::Q6K.candle().unwrap(),
            &ours,
            vec![600, 256],
            &candle_core::Device::Cpu,
        )
        .unwrap();
        let candles = QTensor::quantize(&t, GgufType::Q6K.candle().unwrap()).unwrap();
        assert!(error(decoded) <= error(candles) * 1.001);
        let mut bad = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        bad[600 * 256 - 1] = f32::NAN;
        let bad = Tensor::from_vec(bad, (600, 256), &candle_core::Device::Cpu).unwrap();
        let err = encode(&bad, GgufType::Q8_0, None).unwrap_err();
        assert!(
            matches!(&err, EncodeError::Values(m) if m.contains("NaN")),
            "{err:?}"
        );
        let mut big = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        big[7] = 1e6;
        let big = Tensor::from_vec(big, (600, 256), &candle_core::Device::Cpu).unwrap();
        for dtype in [GgufType::Q4_0, GgufType::F16, GgufType::Q4K] {
            let err = encode(&big, dtype, None).unwrap_err();
            assert!(
                matches!(&err, EncodeError::Values(m) if m.contains("1e6")),
                "{err:?}"
            );
        }
        encode(&big, GgufType::F32, None).unwrap();
    }

    #[test]
    fn size_labels_read_like_llama_cpp_ones() {
        assert_eq!(size_label(134_515_008), "135M");
        assert_eq!(size_label(6_738_415_616), "6.7B");
        assert_eq!(size_label(1_100_048_384), "1.1B");
        assert_eq!(size_label(13_015_864_320), "13B");
        assert_eq!(size_label(4_000_000), "4.0M");
        assert_eq!(size_label(20_480), "20K");
    }

    #[test]
    fn fallbacks_follow_llama_cpp() {
        assert_eq!(fit_row(GgufType::Q4K, 512).0, GgufType::Q4K);
        let (t, why) = fit_row(GgufType::Q4K, 576);
        assert_eq!(t, GgufType::Q5_0);
        assert!(why.unwrap().contains("576"));
        assert_eq!(fit_row(GgufType::Q6K, 576).0, GgufType::Q8_0);
        assert_eq!(fit_row(GgufType::Q3K, 1536 + 32).0, GgufType::Q4_0);
        assert_eq!(fit_row(GgufType::Q4_0, 48).0, GgufType::F16);
    }
}
