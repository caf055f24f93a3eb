//! The stored blocks of a quantization run as packed linears for the GPTQ and
//! compressed-tensors writers (`microllm_io::write::write_packed_dir`).
//!
//! The writers take the canonical `QuantizedWeight` as the quantizer made it; this module
//! serves the stored ones by weight name and builds each format's `quantization_config` from
//! the run's scheme.

use microllm_core::{ActivationQuant, Family, ModelConfig, Result, names};
use microllm_io::quantized::compressed::{CtConfig, CtFormat};
use microllm_io::quantized::gptq::GptqConfig;
use microllm_io::write::{LinearLayout, PackedLinears};
use microllm_quant::{QuantScheme, QuantizedWeight};
use serde_json::Value;

use crate::output::BlockCache;
use crate::store::BlockStore;

/// A run's stored linears, by Hugging Face weight name.
pub struct StoredLinears<'a> {
    family: Family,
    store: &'a BlockStore,
    blocks: BlockCache<'a>,
}

impl<'a> StoredLinears<'a> {
    pub fn new(cfg: &ModelConfig, store: &'a BlockStore) -> Self {
        Self {
            family: cfg.family,
            store,
            blocks: BlockCache::new(store),
        }
    }

    /// Groups whose zero point is 0 (written as GPTQ v1's wrapped field; see
    /// `microllm_io::quantized::gptq`), over every stored linear.
    pub fn gptq_wrapped_zeros(&self, num_layers: usize) -> Result<usize> {
        let mut n = 0;
        for layer in 0..num_layers {
            let block = self.store.load_block(layer)?;
            n += block
                .weights
                .values()
                .map(|q| q.zeros.iter().filter(|&&z| z == 0).count())
                .sum::<usize>();
        }
        Ok(n)
    }

    /// The fraction of the stored linears' weights that are exactly zero (pruned), for
    /// `sparsity_config.global_sparsity`.
    pub fn zero_fraction(&self, num_layers: usize) -> Result<f64> {
        let (mut zeros, mut total) = (0usize, 0usize);
        for layer in 0..num_layers {
            let block = self.store.load_block(layer)?;
            for q in block.weights.values() {
                let groups = q.g_idx();
                let ng = q.n_groups();
                let inp = q.in_features();
                zeros += q
                    .codes
                    .iter()
                    .enumerate()
                    .filter(|&(j, &c)| {
                        let k = (j / inp) * ng + groups[j % inp] as usize;
                        q.scheme.code_type.unscaled(c, q.zeros[k]) == 0.0
                    })
                    .count();
                total += q.codes.len();
            }
        }
        Ok(zeros as f64 / total.max(1) as f64)
    }
}

/// `sparsity_config` for a pruned and quantized compressed-tensors checkpoint: the weights are
/// stored as the quantization scheme stores them (`format: dense` for the sparsity
/// compressor), the structure declared for consumers that exploit it.
pub fn dense_sparsity_config(structure: &str, global_sparsity: f64) -> Value {
    microllm_io::write::sparsity_section("dense", structure, global_sparsity)
}

impl PackedLinears for StoredLinears<'_> {
    fn layout(&self, weight_name: &str) -> Option<LinearLayout> {
        let (layer, kind) = names::parse_linear_weight(self.family, weight_name)?;
        self.blocks
            .with(layer, kind, |q| Ok(LinearLayout::of(q)))
            .ok()
    }

    fn codes(&self, weight_name: &str) -> Result<QuantizedWeight> {
        let (layer, kind) =
            names::parse_linear_weight(self.family, weight_name).ok_or_else(|| {
                microllm_core::Error::Invalid(format!("`{weight_name}` is not a quantized linear"))
            })?;
        self.blocks.with(layer, kind, |q| Ok(q.clone()))
    }
}

/// config.json's `quantization_config` for a GPTQ checkpoint of a run with `scheme`.
/// `act_order` with scattered groups is GPTQ's `desc_act`.
pub fn gptq_quantization_config(
    scheme: &QuantScheme,
    desc_act: bool,
    static_groups: bool,
    damp_percent: f64,
) -> Value {
    GptqConfig {
        bits: scheme.bits,
        group_size: scheme.group_size,
        sym: scheme.symmetric,
        desc_act,
        v1: true,
    }
    .to_json(damp_percent, static_groups)
}

/// config.json's `quantization_config` for a compressed-tensors checkpoint of a run with
/// `scheme` (`g_idx` stored when act-order groups are scattered; `static_act_order`: the solve
/// ran in activation order over groups fixed up front, compressed-tensors' `"static"`, which
/// stores nothing extra; with `activations`, the W8A8 format declaring them,
/// `int-quantized` or, for FP8 codes, `float-quantized`; FP8 weights alone are
/// `naive-quantized`). The output head and embeddings are not quantized: `lm_head` is listed
/// in `ignore`, as llm-compressor does.
pub fn compressed_quantization_config(
    scheme: &QuantScheme,
    scattered_groups: bool,
    static_act_order: bool,
    activations: Option<ActivationQuant>,
) -> Value {
    let mut config = CtConfig {
        bits: scheme.bits,
        symmetric: scheme.symmetric,
        group_size: scheme.group_size,
        block_rows: None,
        actorder: scattered_groups,
        format: CtFormat::for_scheme(scheme.code_type, activations.is_some()),
        activations,
        code_type: scheme.code_type,
    }
    .to_json(&["lm_head".to_string()]);
    if static_act_order && !scattered_groups {
        config["config_groups"]["group_0"]["weights"]["actorder"] = "static".into();
    }
    config
}
