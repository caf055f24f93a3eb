//! From stored quantized blocks to output files.
//!
//! Two views of a finished run's [`BlockStore`]:
//!
//! * [`QuantizedSource`]: the model as a [`TensorSource`], block linears dequantized from
//!   their codes, tensors the pass changed otherwise (AWQ's folded norms and biases) as
//!   stored, everything else from the original source. Any writer that takes a source
//!   (safetensors / Hugging Face directories, GGUF at F16) writes the quantized model from it.
//! * [`GgufCodes`]: GGUF bytes for the block linears, packed *exactly* from the codes where a
//!   ggml block type can hold the grid ([`exact_gguf_type`]): symmetric 2-4 bit -> Q4_0,
//!   symmetric 5-8 bit -> Q8_0, asymmetric 2-4 bit -> Q4_1 (whose f16 block minimum
//!   `-scale * zero` is the one rounding added), for groups that are whole multiples of 32
//!   and contiguous. Narrower codes sit inside the wider grid (a 3-bit code `c` with zero 4 is
//!   the Q4_0 code `c + 4`), so a 3-bit GPTQ model is a valid Q4_0 file whose weights are
//!   exactly the 3-bit ones. Anything else is stored as F16 of the dequantized weights, and
//!   [`EncodedTensors::fallback`] says why.

use std::collections::BTreeMap;
use std::sync::Mutex;

use candle_core::{DType, Device, Tensor};
use microllm_core::{
    CodeType, Error, Family, LinearKind, ModelConfig, PackedMatrix, Result, TensorInfo,
    TensorSource, names,
};
use microllm_io::gguf::EncodedTensors;
use microllm_io::gguf::GgufType;
use microllm_io::gguf::blocks::{
    GroupCodes, QK, q4_0_from_codes, q4_1_from_codes, q8_0_from_codes,
};
use microllm_io::gguf::names::{is_rope_permuted, permute_rows};
use microllm_io::quantized::QuantizedDirSource;
use microllm_models::{Activations, PackedWeight};
use microllm_quant::{QuantScheme, QuantizedWeight};

use crate::store::{BlockStore, StoredBlock};

/// The ggml block type that holds a `[out, in]` weight quantized with `scheme` exactly, or why
/// none does. `contiguous` is false for act-order without static groups (scattered groups).
pub fn exact_gguf_type(
    scheme: &QuantScheme,
    in_features: usize,
    contiguous: bool,
) -> std::result::Result<GgufType, String> {
    if scheme.code_type != CodeType::Int {
        return Err(format!(
            "{:?} codes are not integers on a grid (no ggml block type holds them)",
            scheme.code_type
        ));
    }
    let group = scheme.group_len(in_features);
    if !in_features.is_multiple_of(group) {
        return Err(format!(
            "groups of {group} do not divide the row of {in_features} (a shorter last group)"
        ));
    }
    if !group.is_multiple_of(QK) {
        return Err(format!(
            "groups of {group} are not whole 32-weight ggml blocks (use a group size that is a \
             multiple of 32)"
        ));
    }
    if !contiguous {
        return Err("act-order groups are not contiguous (use static groups)".into());
    }
    if !scheme.f16_scales {
        return Err("scales were not rounded to f16".into());
    }
    match (scheme.symmetric, scheme.bits) {
        (true, 2..=4) => Ok(GgufType::Q4_0),
        (true, 5..=8) => Ok(GgufType::Q8_0),
        (false, 2..=4) => Ok(GgufType::Q4_1),
        (false, bits) => Err(format!(
            "no ggml block type holds asymmetric {bits}-bit codes"
        )),
        (true, bits) => Err(format!("unsupported bit width {bits}")),
    }
}

/// One block cached at a time: writers visit tensors block by block.
pub(crate) struct BlockCache<'a> {
    store: &'a BlockStore,
    current: Mutex<Option<(usize, StoredBlock)>>,
}

impl<'a> BlockCache<'a> {
    pub(crate) fn new(store: &'a BlockStore) -> Self {
        Self {
            store,
            current: Mutex::new(None),
        }
    }

    /// Runs `f` on stored block `layer` (loading it unless it is the cached one).
    fn with_block<T>(&self, layer: usize, f: impl FnOnce(&StoredBlock) -> Result<T>) -> Result<T> {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if current.as_ref().is_none_or(|(l, _)| *l != layer) {
            *current = Some((layer, self.store.load_block(layer)?));
        }
        let (_, block) = current.as_ref().expect("loaded above");
        f(block)
    }

    pub(crate) fn with<T>(
        &self,
        layer: usize,
        kind: LinearKind,
        f: impl FnOnce(&QuantizedWeight) -> Result<T>,
    ) -> Result<T> {
        self.with_block(layer, |block| {
            let q = block.weights.get(&kind).ok_or_else(|| {
                Error::Invalid(format!(
                    "the work directory has no quantized {kind:?} weight for block {layer}"
                ))
            })?;
            f(q)
        })
    }

    /// The weight a stored linear computes with: dequantized codes, or a pruned dense weight.
    fn weight(&self, layer: usize, kind: LinearKind) -> Result<Tensor> {
        self.with_block(layer, |block| match block.dense.get(&kind) {
            Some(w) => Ok(w.clone()),
            None => {
                let q = block.weights.get(&kind).ok_or_else(|| {
                    Error::Invalid(format!(
                        "the work directory has no {kind:?} weight for block {layer}"
                    ))
                })?;
                q.dequantize(&Device::Cpu)
            }
        })
    }
}

/// The quantized model as a tensor source (see the module docs).
pub struct QuantizedSource<'a> {
    family: Family,
    base: &'a dyn TensorSource,
    blocks: BlockCache<'a>,
    /// One block's replaced tensors at a time (see [`BlockStore::load_replaced`]).
    replaced: Mutex<Option<(usize, BTreeMap<String, Tensor>)>>,
}

impl<'a> QuantizedSource<'a> {
    pub fn new(cfg: &ModelConfig, base: &'a dyn TensorSource, store: &'a BlockStore) -> Self {
        Self {
            family: cfg.family,
            base,
            blocks: BlockCache::new(store),
            replaced: Mutex::new(None),
        }
    }

    /// The stored replacement of tensor `name` of block `layer` (AWQ's or SmoothQuant's folded
    /// norms and biases), if the pass changed it.
    fn replaced(&self, layer: usize, name: &str) -> Result<Option<Tensor>> {
        let mut current = self.replaced.lock().unwrap_or_else(|e| e.into_inner());
        if current.as_ref().is_none_or(|(l, _)| *l != layer) {
            *current = Some((layer, self.blocks.store.load_replaced(layer)?));
        }
        let (_, tensors) = current.as_ref().expect("loaded above");
        Ok(tensors.get(name).cloned())
    }
}

impl TensorSource for QuantizedSource<'_> {
    fn origin(&self) -> String {
        format!("{} (quantized)", self.base.origin())
    }

    fn infos(&self) -> Vec<TensorInfo> {
        self.base.infos()
    }

    fn info(&self, name: &str) -> Option<TensorInfo> {
        self.base.info(name)
    }

    fn load(&self, name: &str) -> Result<Tensor> {
        if let Some((layer, kind)) = names::parse_linear_weight(self.family, name) {
            return self.blocks.weight(layer, kind);
        }
        if let Some(layer) = names::parse_block(name)
            && let Some(t) = self.replaced(layer, name)?
        {
            return Ok(t);
        }
        self.base.load(name)
    }
}

/// Where [`GgufCodes`] takes the codes from.
enum CodeSource<'a> {
    /// A quantization run's stored blocks.
    Store(BlockCache<'a>),
    /// A GPTQ / compressed-tensors checkpoint.
    Checkpoint(&'a QuantizedDirSource),
}

/// Exact GGUF blocks for the stored linears (see the module docs).
pub struct GgufCodes<'a> {
    cfg: &'a ModelConfig,
    blocks: CodeSource<'a>,
}

impl<'a> GgufCodes<'a> {
    pub fn new(cfg: &'a ModelConfig, store: &'a BlockStore) -> Self {
        Self {
            cfg,
            blocks: CodeSource::Store(BlockCache::new(store)),
        }
    }

    /// The packed linears of a GPTQ / compressed-tensors checkpoint (`convert` to GGUF):
    /// those whose codes a ggml block type holds are written exactly.
    pub fn from_checkpoint(cfg: &'a ModelConfig, src: &'a QuantizedDirSource) -> Self {
        Self {
            cfg,
            blocks: CodeSource::Checkpoint(src),
        }
    }

    fn decide(&self, hf_name: &str) -> Option<std::result::Result<GgufType, String>> {
        let (layer, kind) = names::parse_linear_weight(self.cfg.family, hf_name)?;
        self.blocks
            .with(self.cfg.family, layer, kind, |q| {
                let contiguous = q.g_idx.is_none();
                Ok(exact_gguf_type(&q.scheme, q.in_features(), contiguous))
            })
            .ok()
    }

    /// Rows permuted as llama.cpp expects for llama-family q/k.
    fn rope_heads(&self, kind: LinearKind) -> Option<usize> {
        if !is_rope_permuted(self.cfg.family) {
            return None;
        }
        match kind {
            LinearKind::Q => Some(self.cfg.num_heads),
            LinearKind::K => Some(self.cfg.num_kv_heads),
            _ => None,
        }
    }
}

impl CodeSource<'_> {
    fn with<T>(
        &self,
        family: Family,
        layer: usize,
        kind: LinearKind,
        f: impl FnOnce(&QuantizedWeight) -> Result<T>,
    ) -> Result<T> {
        match self {
            CodeSource::Store(blocks) => blocks.with(layer, kind, f),
            CodeSource::Checkpoint(src) => {
                let name = names::linear_weight(family, layer, kind);
                let codes = src.codes(&name).ok_or_else(|| {
                    Error::Invalid(format!(
                        "`{name}` is not a packed linear of {}",
                        src.origin()
                    ))
                })??;
                f(&codes)
            }
        }
    }
}

impl EncodedTensors for GgufCodes<'_> {
    fn dtype(&self, hf_name: &str) -> Option<GgufType> {
        self.decide(hf_name).map(|d| d.unwrap_or(GgufType::F16))
    }

    fn fallback(&self, hf_name: &str) -> Option<String> {
        self.decide(hf_name)?
            .err()
            .map(|why| format!("F16 (dequantized): {why}"))
    }

    fn encode(&self, hf_name: &str) -> Result<Vec<u8>> {
        let (layer, kind) = names::parse_linear_weight(self.cfg.family, hf_name)
            .ok_or_else(|| Error::Invalid(format!("`{hf_name}` is not a quantized linear")))?;
        let heads = self.rope_heads(kind);
        self.blocks.with(self.cfg.family, layer, kind, |q| {
            let q = match heads {
                Some(h) => permute_weight_rows(q, h)?,
                None => q.clone(),
            };
            let in_features = q.in_features();
            match exact_gguf_type(&q.scheme, in_features, q.g_idx.is_none()) {
                Ok(dtype) => pack_exact(&q, dtype).map_err(|msg| Error::TensorData {
                    name: hf_name.to_string(),
                    origin: "quantized blocks".into(),
                    msg,
                }),
                Err(_) => {
                    let w = q.dequantize(&Device::Cpu)?.to_dtype(DType::F16)?;
                    let values = w.flatten_all()?.to_vec1::<half::f16>()?;
                    Ok(values.iter().flat_map(|v| v.to_le_bytes()).collect())
                }
            }
        })
    }
}

/// The weight with its rows reordered by llama.cpp's rotary permutation over `heads` heads.
/// Groups lie within rows, so codes, scales and zeros move row by row.
fn permute_weight_rows(q: &QuantizedWeight, heads: usize) -> Result<QuantizedWeight> {
    let [out, inp] = q.shape;
    let ng = q.n_groups();
    let dev = Device::Cpu;
    let codes = Tensor::from_slice(&q.codes, (out, inp), &dev)?;
    let scales = Tensor::from_slice(&q.scales, (out, ng), &dev)?;
    let zeros = Tensor::from_slice(&q.zeros, (out, ng), &dev)?;
    let flat_u8 = |t: Tensor| -> Result<Vec<u8>> { Ok(t.flatten_all()?.to_vec1::<u8>()?) };
    Ok(QuantizedWeight {
        codes: flat_u8(permute_rows(&codes, heads)?)?,
        scales: permute_rows(&scales, heads)?.flatten_all()?.to_vec1()?,
        zeros: flat_u8(permute_rows(&zeros, heads)?)?,
        ..q.clone()
    })
}

/// `q` as a packed weight computing with `activations`, when a ggml block type holds its
/// codes exactly (the GGUF output's own blocks, so a calibration forward after the weight is
/// quantized computes what that file will); `None` when none does.
pub(crate) fn packed_weight(
    name: &str,
    q: &QuantizedWeight,
    activations: Activations,
) -> Result<Option<PackedWeight>> {
    let [out, inp] = q.shape;
    let Ok(dtype) = exact_gguf_type(&q.scheme, inp, q.g_idx.is_none()) else {
        return Ok(None);
    };
    let Some(block_type) = dtype.block_type() else {
        return Ok(None);
    };
    let data = pack_exact(q, dtype).map_err(|msg| Error::TensorData {
        name: name.to_string(),
        origin: "quantized blocks".into(),
        msg,
    })?;
    let matrix = PackedMatrix::new(name, block_type, out, inp, data)?;
    Ok(Some(PackedWeight::new(&matrix, activations)?))
}

/// Packs `q` into `dtype` blocks: codes shifted onto the block type's grid, and scales and
/// zeros repeated for every 32-weight block of a group.
fn pack_exact(q: &QuantizedWeight, dtype: GgufType) -> std::result::Result<Vec<u8>, String> {
    let [out, inp] = q.shape;
    let group = q.scheme.group_len(inp);
    let per_group = group / QK;
    let ng = q.n_groups();
    // The zero point the block type implies (none for Q4_1, which stores a minimum).
    let target_zero: Option<i32> = match dtype {
        GgufType::Q4_0 => Some(8),
        GgufType::Q8_0 => Some(128),
        _ => None,
    };
    let mut codes = Vec::with_capacity(q.codes.len());
    let mut scales = Vec::with_capacity(out * inp / QK);
    let mut zeros = Vec::with_capacity(out * inp / QK);
    for r in 0..out {
        for g in 0..ng {
            let k = r * ng + g;
            let zero = q.zeros[k] as i32;
            let shift = target_zero.map_or(0, |t| t - zero);
            let row = &q.codes[r * inp + g * group..r * inp + (g + 1) * group];
            codes.extend(row.iter().map(|&c| (c as i32 + shift) as u8));
            for _ in 0..per_group {
                scales.push(q.scales[k]);
                zeros.push(target_zero.map_or(zero, |t| t) as u8);
            }
        }
    }
    let codes = GroupCodes {
        codes: &codes,
        scales: &scales,
        zeros: &zeros,
        cols: inp,
    };
    match dtype {
        GgufType::Q4_0 => q4_0_from_codes(&codes),
        GgufType::Q4_1 => q4_1_from_codes(&codes),
        GgufType::Q8_0 => q8_0_from_codes(&codes),
        other => Err(format!("no exact packing into {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use microllm_quant::rtn_quantize;

    fn weights(out: usize, inp: usize) -> Vec<f32> {
        (0..out * inp)
            .map(|k| ((k * 7919 % 997) as f32 / 997.0 - 0.5) * 0.2)
            .collect()
    }

    fn scheme(bits: u8, symmetric: bool) -> QuantScheme {
        QuantScheme {
            f16_scales: true,
            ..QuantScheme::new(bits, Some(32), symmetric).unwrap()
        }
    }

    /// The packed weight a calibration forward runs on computes with exactly the codes' values
    /// (Q4_0 for symmetric codes), and with them up to the f16 rounding of the block minimum
    /// for asymmetric ones (Q4_1).
    #[test]
    fn packed_weight_holds_the_codes() {
        let (out, inp) = (16, 64);
        let w = weights(out, inp);
        for (symmetric, tolerance) in [(true, 0.0), (false, 1e-3)] {
            let q = rtn_quantize(&w, [out, inp], scheme(4, symmetric)).unwrap();
            let packed = packed_weight("w", &q, Activations::F32).unwrap().unwrap();
            let values = |t: Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let want = values(q.dequantize(&Device::Cpu).unwrap());
            let got = values(packed.dequantize().unwrap());
            for (k, (a, b)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (a - b).abs() <= tolerance,
                    "symmetric {symmetric}, [{k}]: {a} vs {b}"
                );
            }
        }
    }

    /// FP8 bytes are not integer codes: no ggml block type is claimed to hold them, so
    /// neither the GGUF writer nor the calibration forward reads them as integers.
    #[test]
    fn fp8_codes_have_no_ggml_type() {
        let fp8 = QuantScheme {
            f16_scales: true,
            ..QuantScheme::fp8(Some(32)).unwrap()
        };
        let why = exact_gguf_type(&fp8, 64, true).unwrap_err();
        assert!(why.contains("not integers"), "{why}");
        assert_eq!(
            exact_gguf_type(&scheme(4, true), 64, true),
            Ok(GgufType::Q4_0)
        );
        let q = rtn_quantize(&weights(4, 64), [4, 64], fp8).unwrap();
        assert!(packed_weight("w", &q, Activations::Int8).unwrap().is_none());
    }
}
