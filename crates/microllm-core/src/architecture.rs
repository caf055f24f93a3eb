//! The full set of tensors a configuration calls for, and the check of a checkpoint against it.
//!
//! The decoder loads tensors one block at a time and checks each shape as it goes, but a
//! command that only copies or re-encodes tensors (convert, quantize's RTN export, pruning)
//! never asks for most of them by name: a checkpoint with a missing norm, an extra block or an
//! embedding shorter than `vocab_size` was written out without complaint. [`check_tensors`]
//! compares the whole set against the configuration once, when a checkpoint is opened, so every
//! command refuses such a model before it starts, naming the tensor.

use crate::names::{self, LinearKind};
use crate::{Error, MlpKind, ModelConfig, NormKind, Result, TensorSource};

/// Every tensor the configuration calls for, with its shape, in load order.
pub fn expected_tensors(cfg: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let f = cfg.family;
    let layout = cfg.layout();
    let (v, h, i, d) = (
        cfg.vocab_size,
        cfg.hidden_size,
        cfg.intermediate_size,
        cfg.head_dim,
    );
    let mut out = vec![(names::EMBED_TOKENS.to_string(), vec![v, h])];
    let norm = |out: &mut Vec<(String, Vec<usize>)>, prefix: String, width: usize| {
        if layout.norm == NormKind::Layer {
            out.push((format!("{prefix}.bias"), vec![width]));
        }
        out.push((format!("{prefix}.weight"), vec![width]));
    };
    for layer in 0..cfg.num_layers {
        norm(&mut out, names::attn_norm(layer), h);
        if !layout.parallel {
            norm(&mut out, names::mlp_norm(f, layer), h);
        }
        if layout.post_norms {
            norm(&mut out, names::post_attn_norm(layer), h);
            norm(&mut out, names::post_mlp_norm(layer), h);
        }
        if layout.qk_norm {
            norm(&mut out, names::q_norm(layer), d);
            norm(&mut out, names::k_norm(layer), d);
        }
        for kind in LinearKind::ALL {
            let (rows, cols, bias) = match kind {
                LinearKind::Q => (cfg.q_dim(), h, cfg.qkv_bias),
                LinearKind::K | LinearKind::V => (cfg.kv_dim(), h, cfg.qkv_bias),
                LinearKind::O => (h, cfg.q_dim(), cfg.o_bias),
                LinearKind::Gate if layout.mlp == MlpKind::Plain => continue,
                LinearKind::Gate | LinearKind::Up => (i, h, cfg.mlp_bias),
                LinearKind::Down => (h, i, cfg.mlp_bias),
            };
            out.push((names::linear_weight(f, layer, kind), vec![rows, cols]));
            if bias {
                out.push((names::linear_bias(f, layer, kind), vec![rows]));
            }
        }
    }
    norm(&mut out, names::final_norm(f).to_string(), h);
    if !cfg.tie_word_embeddings {
        out.push((format!("{}.weight", names::LM_HEAD), vec![v, h]));
    }
    if cfg.lm_head_bias {
        out.push((format!("{}.bias", names::LM_HEAD), vec![v]));
    }
    out
}

/// Stored tensors that carry nothing the model needs and are skipped: the rotary frequencies
/// older transformers versions saved in every block.
fn is_ignorable(name: &str) -> bool {
    name.ends_with(".rotary_emb.inv_freq")
}

/// Checks that `src` holds exactly the tensors `cfg` calls for: each present, each of its
/// shape, and nothing else but a tied model's redundant copy of its output head (with the
/// embedding's shape) and [ignorable](is_ignorable) buffers. `origin` names the checkpoint.
pub fn check_tensors(cfg: &ModelConfig, src: &dyn TensorSource) -> Result<()> {
    let expected = expected_tensors(cfg);
    let mut wanted: std::collections::HashMap<&str, &[usize]> = expected
        .iter()
        .map(|(n, s)| (n.as_str(), s.as_slice()))
        .collect();
    let tied_head = format!("{}.weight", names::LM_HEAD);
    if cfg.tie_word_embeddings {
        wanted.insert(tied_head.as_str(), &expected[0].1);
    }
    let present = src.infos();
    for info in &present {
        if let Some(shape) = wanted.get(info.name.as_str()) {
            if info.shape != *shape {
                return Err(Error::Shape {
                    name: info.name.clone(),
                    origin: src.origin(),
                    expected: shape.to_vec(),
                    actual: info.shape.clone(),
                });
            }
            continue;
        }
        if is_ignorable(&info.name) {
            continue;
        }
        let why = match block_of(&info.name) {
            Some(layer) if layer >= cfg.num_layers => format!(
                "it belongs to block {layer}, but the configuration has {} blocks \
                 (num_hidden_layers)",
                cfg.num_layers
            ),
            _ => format!(
                "a {} model of this configuration has no such tensor",
                cfg.family
            ),
        };
        return Err(Error::UnexpectedTensor {
            name: info.name.clone(),
            origin: src.origin(),
            msg: format!("unexpected tensor: {why}"),
        });
    }
    let names: std::collections::HashSet<&str> = present.iter().map(|i| i.name.as_str()).collect();
    if let Some((name, _)) = expected.iter().find(|(n, _)| !names.contains(n.as_str())) {
        return Err(Error::MissingTensor {
            name: name.clone(),
            origin: src.origin(),
        });
    }
    Ok(())
}

/// The block index of a `model.layers.{n}.…` name.
fn block_of(name: &str) -> Option<usize> {
    name.strip_prefix("model.layers.")?
        .split('.')
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::*;
    use crate::{Activation, Family, MemorySource, RopeScaling};

    fn cfg(family: Family, tied: bool) -> ModelConfig {
        ModelConfig {
            family,
            vocab_size: 10,
            hidden_size: 8,
            intermediate_size: 12,
            num_layers: 2,
            num_heads: 2,
            num_kv_heads: 1,
            head_dim: 4,
            rope_theta: 10000.0,
            rope_scaling: RopeScaling::None,
            partial_rotary_factor: 1.0,
            norm_eps: 1e-5,
            sliding_window: None,
            sliding_layers: None,
            local_rope_theta: None,
            query_pre_attn_scalar: None,
            max_position_embeddings: 16,
            tie_word_embeddings: tied,
            activation: Activation::Silu,
            qkv_bias: family == Family::Phi,
            o_bias: family == Family::Phi,
            mlp_bias: family == Family::Phi,
            lm_head_bias: family == Family::Phi,
            bos_token_id: None,
            eos_token_ids: vec![],
            torch_dtype: None,
            activation_quant: None,
        }
    }

    fn source(cfg: &ModelConfig) -> MemorySource {
        let mut src = MemorySource::new("test");
        for (name, shape) in expected_tensors(cfg) {
            src.insert(
                name,
                Tensor::zeros(shape, candle_core::DType::F32, &Device::Cpu).unwrap(),
            );
        }
        src
    }

    #[test]
    fn a_complete_model_passes_and_each_defect_is_named() {
        for family in [Family::Llama, Family::Phi, Family::Gemma3, Family::Qwen3] {
            let c = cfg(family, family != Family::Phi);
            let src = source(&c);
            check_tensors(&c, &src).unwrap();

            let zeros =
                |s: &[usize]| Tensor::zeros(s, candle_core::DType::F32, &Device::Cpu).unwrap();
            let mut extra = src.clone();
            extra.insert("model.layers.2.input_layernorm.weight", zeros(&[8]));
            let e = check_tensors(&c, &extra).unwrap_err().to_string();
            assert!(
                e.contains("model.layers.2.input_layernorm.weight") && e.contains("block 2"),
                "{e}"
            );

            let mut unknown = src.clone();
            unknown.insert("model.layers.0.mystery.weight", zeros(&[8]));
            let e = check_tensors(&c, &unknown).unwrap_err().to_string();
            assert!(e.contains("mystery"), "{e}");

            let mut short = src.clone();
            short.insert(names::EMBED_TOKENS, zeros(&[9, 8]));
            let e = check_tensors(&c, &short).unwrap_err().to_string();
            assert!(e.contains("[10, 8]") && e.contains("[9, 8]"), "{e}");

            let mut ignorable = src.clone();
            ignorable.insert("model.layers.0.self_attn.rotary_emb.inv_freq", zeros(&[2]));
            check_tensors(&c, &ignorable).unwrap();
        }
    }

    #[test]
    fn missing_tensors_are_named() {
        let c = cfg(Family::Llama, false);
        let full = source(&c);
        for (name, _) in expected_tensors(&c) {
            let mut src = MemorySource::new("test");
            for info in full.infos().into_iter().filter(|i| i.name != name) {
                src.insert(info.name.clone(), full.load(&info.name).unwrap());
            }
            let e = check_tensors(&c, &src).unwrap_err().to_string();
            assert!(e.contains(&name) && e.contains("not found"), "{name}: {e}");
        }
    }

    #[test]
    fn a_tied_model_may_carry_its_head_with_the_embedding_shape() {
        let c = cfg(Family::Llama, true);
        let mut src = source(&c);
        let zeros = |s: &[usize]| Tensor::zeros(s, candle_core::DType::F32, &Device::Cpu).unwrap();
        src.insert("lm_head.weight", zeros(&[10, 8]));
        check_tensors(&c, &src).unwrap();
        src.insert("lm_head.weight", zeros(&[10, 4]));
        assert!(check_tensors(&c, &src).is_err());
    }
}
