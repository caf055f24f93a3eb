//! GGUF tensor names and layouts, translated to and from the Hugging Face ones.
//!
//! Inside microllm every tensor goes by its Hugging Face name (see
//! [`microllm_core::names`]), so a GGUF file is renamed on the way in: `blk.3.ffn_down.weight`
//! becomes `model.layers.3.mlp.down_proj.weight` (`mlp.fc2` for Phi). The table is per family
//! because the families spell some modules differently and some GGUF tensors only exist in
//! some families (no `ffn_gate` in Phi's plain MLP, no `ffn_norm` in its parallel block); a
//! name outside the family's table is an error rather than a tensor nobody will read.
//!
//! Names are not the only difference. llama.cpp applies rotary embeddings to *adjacent* pairs
//! of each head's dimensions, while the Hugging Face LLaMA code rotates the two *halves* of the
//! head against each other. To make one file serve its rope, llama.cpp's converter reorders
//! the rows of `attn_q` and `attn_k` of llama-family models:
//! `w.reshape(n_head, 2, head_dim / 2, in).swap(1, 2).reshape(out, in)`.
//! [`unpermute_rows`] undoes it (and [`permute_rows`] redoes it, for writers), so the weights
//! we hand out equal the Hugging Face ones. Qwen2 and Phi-2 are converted without the
//! permutation (their llama.cpp rope mode is the half-rotating "neox" one), so they must not
//! be un-permuted.

use candle_core::Tensor;
use microllm_core::names::{self, LinearKind};
use microllm_core::{Error, Family, MlpKind, Result};

/// The fused q/k/v projection (Phi-2 conversions, Phi-3).
pub const FUSED_QKV: &str = "attn_qkv";

/// What one GGUF tensor becomes under Hugging Face naming.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mapped {
    /// Exactly one Hugging Face tensor of this name.
    One(String),
    /// A fused `blk.{layer}.{stem}.{suffix}` whose rows stack `parts` in order (q, k, v in
    /// `attn_qkv`; Phi-3's gate and up in `ffn_up`); it becomes the parts' tensors.
    Fused {
        layer: usize,
        suffix: &'static str,
        parts: &'static [LinearKind],
    },
}

/// A per-block tensor, independent of how a family spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Linear(LinearKind),
    AttnNorm,
    MlpNorm,
    PostAttnNorm,
    PostMlpNorm,
    QNorm,
    KNorm,
}

/// GGUF block tensor stems, in llama.cpp's spelling.
const BLOCK_PARTS: [(&str, Part); 13] = [
    ("attn_q", Part::Linear(LinearKind::Q)),
    ("attn_k", Part::Linear(LinearKind::K)),
    ("attn_v", Part::Linear(LinearKind::V)),
    ("attn_output", Part::Linear(LinearKind::O)),
    ("ffn_gate", Part::Linear(LinearKind::Gate)),
    ("ffn_up", Part::Linear(LinearKind::Up)),
    ("ffn_down", Part::Linear(LinearKind::Down)),
    ("attn_norm", Part::AttnNorm),
    ("ffn_norm", Part::MlpNorm),
    ("post_attention_norm", Part::PostAttnNorm),
    ("post_ffw_norm", Part::PostMlpNorm),
    ("attn_q_norm", Part::QNorm),
    ("attn_k_norm", Part::KNorm),
];

const QKV: &[LinearKind] = &[LinearKind::Q, LinearKind::K, LinearKind::V];
const GATE_UP: &[LinearKind] = &[LinearKind::Gate, LinearKind::Up];

/// The fused GGUF tensors of a family: (stem, parts). Phi-3 stores its gate and up as one
/// `ffn_up` of twice the MLP width (llama.cpp's phi3 graph has no `ffn_gate`).
fn fused_stems(family: Family) -> &'static [(&'static str, &'static [LinearKind])] {
    match family {
        Family::Phi3 => &[(FUSED_QKV, QKV), ("ffn_up", GATE_UP)],
        Family::Phi => &[(FUSED_QKV, QKV)],
        _ => &[],
    }
}

/// Whether the family's blocks have this part (as separate GGUF and Hugging Face tensors).
fn family_has(family: Family, part: Part) -> bool {
    let layout = family.layout();
    let fused = family
        .fused_linears()
        .iter()
        .any(|f| matches!(part, Part::Linear(k) if f.parts.contains(&k)));
    match part {
        _ if fused => false,
        Part::Linear(LinearKind::Gate) => layout.mlp == MlpKind::Gated,
        Part::MlpNorm => !layout.parallel,
        Part::PostAttnNorm | Part::PostMlpNorm => layout.post_norms,
        Part::QNorm | Part::KNorm => layout.qk_norm,
        _ => true,
    }
}

/// Hugging Face module path of a block part, without `.weight` / `.bias`.
fn hf_block_module(family: Family, layer: usize, part: Part) -> String {
    match part {
        Part::Linear(kind) => format!("{}.{}", names::block_prefix(layer), kind.module(family)),
        Part::AttnNorm => names::attn_norm(layer),
        Part::MlpNorm => names::mlp_norm(family, layer),
        Part::PostAttnNorm => names::post_attn_norm(layer),
        Part::PostMlpNorm => names::post_mlp_norm(layer),
        Part::QNorm => names::q_norm(layer),
        Part::KNorm => names::k_norm(layer),
    }
}

/// Top-level tensors: (GGUF stem, Hugging Face module).
fn globals(family: Family) -> [(&'static str, &'static str); 3] {
    let embed = names::EMBED_TOKENS
        .strip_suffix(".weight")
        .unwrap_or(names::EMBED_TOKENS);
    [
        ("token_embd", embed),
        ("output_norm", names::final_norm(family)),
        ("output", names::LM_HEAD),
    ]
}

/// Splits `x.weight` / `x.bias` into the stem and a static suffix.
fn split_suffix(name: &str) -> Option<(&str, &'static str)> {
    if let Some(stem) = name.strip_suffix(".weight") {
        Some((stem, "weight"))
    } else {
        name.strip_suffix(".bias").map(|stem| (stem, "bias"))
    }
}

/// The layer number of `12.rest`, spelled canonically (`01` and `+1` do not map, so names
/// stay unique), and the rest.
fn layer_and_rest(s: &str) -> Option<(usize, &str)> {
    let (layer, rest) = s.split_once('.')?;
    let n: usize = layer.parse().ok()?;
    (n.to_string() == layer).then_some((n, rest))
}

/// The Hugging Face name(s) of a GGUF tensor, or `None` if the family has no such tensor.
pub fn gguf_to_hf(family: Family, gguf: &str) -> Option<Mapped> {
    let (stem, suffix) = split_suffix(gguf)?;
    if let Some((_, hf)) = globals(family).into_iter().find(|(g, _)| *g == stem) {
        return Some(Mapped::One(format!("{hf}.{suffix}")));
    }
    let (layer, part) = layer_and_rest(stem.strip_prefix("blk.")?)?;
    if let Some((_, parts)) = fused_stems(family).iter().find(|(g, _)| *g == part) {
        return Some(Mapped::Fused {
            layer,
            suffix,
            parts,
        });
    }
    let (_, part) = BLOCK_PARTS.into_iter().find(|(g, _)| *g == part)?;
    if !family_has(family, part) {
        return None;
    }
    Some(Mapped::One(format!(
        "{}.{suffix}",
        hf_block_module(family, layer, part)
    )))
}

/// The GGUF name of a Hugging Face tensor, or `None` if GGUF has no spelling for it.
///
/// q/k/v map to the separate `attn_q` / `attn_k` / `attn_v` tensors, except in families whose
/// checkpoints fuse them (Phi-3), whose fused Hugging Face modules (`self_attn.qkv_proj`,
/// `mlp.gate_up_proj`) map to `attn_qkv` / `ffn_up`.
pub fn hf_to_gguf(family: Family, hf: &str) -> Option<String> {
    let (stem, suffix) = split_suffix(hf)?;
    if let Some((g, _)) = globals(family).into_iter().find(|(_, h)| *h == stem) {
        return Some(format!("{g}.{suffix}"));
    }
    let (layer, module) = layer_and_rest(stem.strip_prefix("model.layers.")?)?;
    if let Some(fused) = family.fused_linears().iter().find(|f| f.module == module) {
        let (g, _) = fused_stems(family)
            .iter()
            .find(|(_, parts)| *parts == fused.parts)?;
        return Some(format!("blk.{layer}.{g}.{suffix}"));
    }
    BLOCK_PARTS
        .into_iter()
        .filter(|(_, part)| family_has(family, *part))
        .find(|(_, part)| hf_block_module(family, layer, *part) == stem)
        .map(|(g, _)| format!("blk.{layer}.{g}.{suffix}"))
}

/// Whether the family's GGUF norm weights hold `1 + w` for the checkpoint's `w`: llama.cpp's
/// converter folds Gemma's unit offset into the stored weight so its graph can use a plain
/// RMSNorm. Readers subtract the one, writers add it.
pub fn norms_hold_unit_offset(family: Family) -> bool {
    family.layout().norm_unit_offset
}

/// Whether `hf` names a norm weight (of a block, of q/k, or the final norm).
pub fn is_norm_weight(hf: &str) -> bool {
    hf.ends_with("norm.weight") || hf.ends_with("layernorm.weight")
}

/// Whether llama.cpp's converter permuted `attn_q` / `attn_k` rows for this family.
pub fn is_rope_permuted(family: Family) -> bool {
    match family {
        Family::Llama | Family::Mistral => true,
        Family::Qwen2 | Family::Qwen3 | Family::Phi | Family::Phi3 | Family::Gemma3 => false,
    }
}

/// Reorders the rows (dimension 0) of a q/k weight `[out, in]` or bias `[out]` within each of
/// `n_head` heads: every head's `head_dim` rows are viewed as `[a, b]` and become `[b, a]`
/// after a transpose. `(a, b) = (2, head_dim / 2)` is llama.cpp's permutation;
/// `(head_dim / 2, 2)` undoes it.
fn regroup_rows(t: &Tensor, n_head: usize, half_first: bool) -> Result<Tensor> {
    let dims = t.dims().to_vec();
    let Some(&out) = dims.first() else {
        return Err(Error::Invalid(
            "cannot regroup the rows of a scalar tensor".into(),
        ));
    };
    if n_head == 0 || out % (2 * n_head) != 0 {
        return Err(Error::Invalid(format!(
            "{out} rows cannot be split into {n_head} heads of an even head dimension"
        )));
    }
    let half = out / n_head / 2;
    let rest: usize = dims[1..].iter().product();
    let (a, b) = if half_first { (half, 2) } else { (2, half) };
    Ok(t.reshape((n_head, a, b, rest))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape(dims)?)
}

/// llama.cpp's Hugging Face -> GGUF row permutation of `attn_q` / `attn_k` (weights or biases).
/// `n_head` is the attention head count for q and the key/value head count for k.
pub fn permute_rows(t: &Tensor, n_head: usize) -> Result<Tensor> {
    regroup_rows(t, n_head, false)
}

/// The inverse of [`permute_rows`]: GGUF -> Hugging Face layout.
pub fn unpermute_rows(t: &Tensor, n_head: usize) -> Result<Tensor> {
    regroup_rows(t, n_head, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn one(s: &str) -> Option<Mapped> {
        Some(Mapped::One(s.to_string()))
    }

    #[test]
    fn llama_names_map_both_ways() {
        let f = Family::Llama;
        let cases = [
            ("token_embd.weight", "model.embed_tokens.weight"),
            ("output_norm.weight", "model.norm.weight"),
            ("output.weight", "lm_head.weight"),
            (
                "blk.0.attn_q.weight",
                "model.layers.0.self_attn.q_proj.weight",
            ),
            (
                "blk.1.attn_k.weight",
                "model.layers.1.self_attn.k_proj.weight",
            ),
            ("blk.2.attn_v.bias", "model.layers.2.self_attn.v_proj.bias"),
            (
                "blk.3.attn_output.weight",
                "model.layers.3.self_attn.o_proj.weight",
            ),
            (
                "blk.4.ffn_gate.weight",
                "model.layers.4.mlp.gate_proj.weight",
            ),
            ("blk.5.ffn_up.weight", "model.layers.5.mlp.up_proj.weight"),
            (
                "blk.29.ffn_down.weight",
                "model.layers.29.mlp.down_proj.weight",
            ),
            (
                "blk.6.attn_norm.weight",
                "model.layers.6.input_layernorm.weight",
            ),
            (
                "blk.7.ffn_norm.weight",
                "model.layers.7.post_attention_layernorm.weight",
            ),
        ];
        for (g, h) in cases {
            assert_eq!(gguf_to_hf(f, g), one(h), "{g}");
            assert_eq!(hf_to_gguf(f, h).as_deref(), Some(g), "{h}");
        }
        assert_eq!(
            gguf_to_hf(Family::Qwen2, "blk.0.attn_q.bias"),
            one("model.layers.0.self_attn.q_proj.bias")
        );
    }

    #[test]
    fn phi_names_use_phi_modules() {
        let f = Family::Phi;
        let cases = [
            (
                "blk.0.attn_output.weight",
                "model.layers.0.self_attn.dense.weight",
            ),
            ("blk.0.ffn_up.bias", "model.layers.0.mlp.fc1.bias"),
            ("blk.0.ffn_down.weight", "model.layers.0.mlp.fc2.weight"),
            ("output_norm.bias", "model.final_layernorm.bias"),
            ("output.bias", "lm_head.bias"),
            (
                "blk.3.attn_norm.bias",
                "model.layers.3.input_layernorm.bias",
            ),
        ];
        for (g, h) in cases {
            assert_eq!(gguf_to_hf(f, g), one(h), "{g}");
            assert_eq!(hf_to_gguf(f, h).as_deref(), Some(g), "{h}");
        }
        assert_eq!(
            gguf_to_hf(f, "blk.2.attn_qkv.weight"),
            Some(Mapped::Fused {
                layer: 2,
                suffix: "weight",
                parts: QKV,
            })
        );
        // Phi has neither a gate nor a second norm.
        assert_eq!(gguf_to_hf(f, "blk.0.ffn_gate.weight"), None);
        assert_eq!(gguf_to_hf(f, "blk.0.ffn_norm.weight"), None);
    }

    #[test]
    fn new_families_name_their_norms_and_fused_tensors() {
        let g = Family::Gemma3;
        let cases = [
            (
                "blk.1.post_attention_norm.weight",
                "model.layers.1.post_attention_layernorm.weight",
            ),
            (
                "blk.1.ffn_norm.weight",
                "model.layers.1.pre_feedforward_layernorm.weight",
            ),
            (
                "blk.1.post_ffw_norm.weight",
                "model.layers.1.post_feedforward_layernorm.weight",
            ),
            (
                "blk.2.attn_q_norm.weight",
                "model.layers.2.self_attn.q_norm.weight",
            ),
            (
                "blk.2.attn_k_norm.weight",
                "model.layers.2.self_attn.k_norm.weight",
            ),
        ];
        for (gg, h) in cases {
            assert_eq!(gguf_to_hf(g, gg), one(h), "{gg}");
            assert_eq!(hf_to_gguf(g, h).as_deref(), Some(gg), "{h}");
        }
        assert_eq!(
            hf_to_gguf(Family::Qwen3, "model.layers.0.self_attn.k_norm.weight").as_deref(),
            Some("blk.0.attn_k_norm.weight")
        );
        assert_eq!(gguf_to_hf(Family::Llama, "blk.0.attn_q_norm.weight"), None);
        let p = Family::Phi3;
        assert_eq!(
            gguf_to_hf(p, "blk.3.ffn_up.weight"),
            Some(Mapped::Fused {
                layer: 3,
                suffix: "weight",
                parts: GATE_UP,
            })
        );
        assert_eq!(
            hf_to_gguf(p, "model.layers.3.mlp.gate_up_proj.weight").as_deref(),
            Some("blk.3.ffn_up.weight")
        );
        assert_eq!(
            hf_to_gguf(p, "model.layers.3.self_attn.qkv_proj.weight").as_deref(),
            Some("blk.3.attn_qkv.weight")
        );
        // The parts have no GGUF spelling of their own in a fused family.
        assert_eq!(
            hf_to_gguf(p, "model.layers.3.self_attn.q_proj.weight"),
            None
        );
        assert_eq!(gguf_to_hf(p, "blk.3.ffn_gate.weight"), None);
    }

    #[test]
    fn unknown_names_do_not_map() {
        for g in [
            "rope_freqs.weight",
            "blk.0.attn_q",
            "blk.x.attn_q.weight",
            "blk.01.attn_q.weight",
            "blk.0.attn_q.scale",
            "blk.0.ssm_in.weight",
        ] {
            assert_eq!(gguf_to_hf(Family::Llama, g), None, "{g}");
        }
        assert_eq!(hf_to_gguf(Family::Llama, "model.layers.0.foo.weight"), None);
    }

    fn rows(t: &Tensor) -> Vec<Vec<f32>> {
        t.to_vec2().unwrap()
    }

    #[test]
    fn unpermute_inverts_permute() {
        // 3 heads of dim 8, 5 inputs, distinct values.
        let w = Tensor::arange(0f32, 24.0 * 5.0, &Device::Cpu)
            .unwrap()
            .reshape((24, 5))
            .unwrap();
        let p = permute_rows(&w, 3).unwrap();
        assert_ne!(rows(&p), rows(&w));
        assert_eq!(rows(&unpermute_rows(&p, 3).unwrap()), rows(&w));
        assert_eq!(
            rows(&permute_rows(&unpermute_rows(&w, 3).unwrap(), 3).unwrap()),
            rows(&w)
        );
        let b = Tensor::arange(0f32, 24.0, &Device::Cpu).unwrap();
        let back = unpermute_rows(&permute_rows(&b, 3).unwrap(), 3).unwrap();
        assert_eq!(back.to_vec1::<f32>().unwrap(), b.to_vec1::<f32>().unwrap());
    }

    #[test]
    fn unpermute_matches_hand_worked_example() {
        // Worked by hand. One head of dim 6: Hugging Face rows h0..h5 are the halves
        // [h0 h1 h2 | h3 h4 h5]; llama.cpp interleaves them into pairs (h0,h3) (h1,h4) (h2,h5),
        // i.e. GGUF rows are [h0 h3 h1 h4 h2 h5]. Un-permuting GGUF rows g0..g5 must give
        // [g0 g2 g4 g1 g3 g5].
        let g = Tensor::new(&[0f32, 1., 2., 3., 4., 5.], &Device::Cpu).unwrap();
        let h = unpermute_rows(&g, 1).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(h, [0., 2., 4., 1., 3., 5.]);
        let back = permute_rows(
            &Tensor::new(&[0f32, 1., 2., 3., 4., 5.], &Device::Cpu).unwrap(),
            1,
        )
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
        assert_eq!(back, [0., 3., 1., 4., 2., 5.]);

        // Two heads of dim 4, two inputs; row i holds [10 i, 10 i + 1]. Per head GGUF rows
        // [a b c d] become [a c b d].
        let w = Tensor::new(
            &[
                [0f32, 1.],
                [10., 11.],
                [20., 21.],
                [30., 31.],
                [40., 41.],
                [50., 51.],
                [60., 61.],
                [70., 71.],
            ],
            &Device::Cpu,
        )
        .unwrap();
        let order: Vec<f32> = rows(&unpermute_rows(&w, 2).unwrap())
            .iter()
            .map(|r| r[0] / 10.0)
            .collect();
        assert_eq!(order, [0., 2., 1., 3., 4., 6., 5., 7.]);
    }

    #[test]
    fn regroup_rejects_odd_heads() {
        let w = Tensor::zeros((6, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert!(unpermute_rows(&w, 2).is_err());
        assert!(unpermute_rows(&w, 0).is_err());
    }

    #[test]
    fn only_llama_family_is_permuted() {
        assert!(is_rope_permuted(Family::Llama));
        assert!(is_rope_permuted(Family::Mistral));
        assert!(!is_rope_permuted(Family::Qwen2));
        assert!(!is_rope_permuted(Family::Phi));
    }
}
