//! Which GGUF block type each tensor gets: one type for every matrix, or one of llama.cpp's
//! named mixes (the k-quant ones and IQ4_NL / IQ4_XS).
//!
//! A mix such as `Q4_K_M` is what llama.cpp users ask `llama-quantize` for: a base type for
//! most matrices and more bits where round-to-nearest hurts most: the value projection, the
//! down projection of the first and last eighth of the blocks and every third block between
//! them, and the output head. The rules here are llama.cpp's `llama_tensor_get_type` for
//! dense (non-expert) models, so a file made by either tool has the same types; they are
//! applied before the row-length fallback (k-quants need rows that are multiples of 256),
//! exactly as llama.cpp orders them.

use crate::gguf::GgufType;
use microllm_core::{LinearKind, ModelConfig, names};

/// The block types of an export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgufTypes {
    /// One type for every matrix (llama.cpp's `--pure`), the output head excepted (see
    /// [`GgufTypes::wanted`]).
    Pure(GgufType),
    /// One of llama.cpp's named mixes.
    Mix(KQuantMix),
}

impl From<GgufType> for GgufTypes {
    fn from(t: GgufType) -> Self {
        GgufTypes::Pure(t)
    }
}

/// llama.cpp's named mixes: the k-quant file types (`LLAMA_FTYPE_MOSTLY_*_K_*`) and the two
/// 4-bit i-quant ones, which share their names with their base types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KQuantMix {
    Q2K,
    Q3KS,
    Q3KM,
    Q3KL,
    Q4KS,
    Q4KM,
    Q5KS,
    Q5KM,
    Iq4Nl,
    Iq4Xs,
}

impl KQuantMix {
    /// The type of every matrix no rule singles out.
    pub fn base(self) -> GgufType {
        match self {
            KQuantMix::Q2K => GgufType::Q2K,
            KQuantMix::Q3KS | KQuantMix::Q3KM | KQuantMix::Q3KL => GgufType::Q3K,
            KQuantMix::Q4KS | KQuantMix::Q4KM => GgufType::Q4K,
            KQuantMix::Q5KS | KQuantMix::Q5KM => GgufType::Q5K,
            KQuantMix::Iq4Nl => GgufType::Iq4Nl,
            KQuantMix::Iq4Xs => GgufType::Iq4Xs,
        }
    }

    /// llama.cpp's name of the mix.
    pub fn name(self) -> &'static str {
        match self {
            KQuantMix::Q2K => "Q2_K",
            KQuantMix::Q3KS => "Q3_K_S",
            KQuantMix::Q3KM => "Q3_K_M",
            KQuantMix::Q3KL => "Q3_K_L",
            KQuantMix::Q4KS => "Q4_K_S",
            KQuantMix::Q4KM => "Q4_K_M",
            KQuantMix::Q5KS => "Q5_K_S",
            KQuantMix::Q5KM => "Q5_K_M",
            KQuantMix::Iq4Nl => "IQ4_NL",
            KQuantMix::Iq4Xs => "IQ4_XS",
        }
    }

    /// llama.cpp's `general.file_type` number of the mix.
    pub fn file_type(self) -> u32 {
        match self {
            KQuantMix::Q2K => 10,
            KQuantMix::Q3KS => 11,
            KQuantMix::Q3KM => 12,
            KQuantMix::Q3KL => 13,
            KQuantMix::Q4KS => 14,
            KQuantMix::Q4KM => 15,
            KQuantMix::Q5KS => 16,
            KQuantMix::Q5KM => 17,
            KQuantMix::Iq4Nl => 25,
            KQuantMix::Iq4Xs => 30,
        }
    }

    /// Whether the mix's name is also a block type's (IQ4_NL, IQ4_XS), so that a per-tensor
    /// rule may name it.
    pub fn names_a_type(self) -> bool {
        matches!(self, KQuantMix::Iq4Nl | KQuantMix::Iq4Xs)
    }

    /// The type of linear `kind` of block `layer`, before any row-length fallback, when the
    /// export does or does not fit with an importance matrix.
    fn linear(self, kind: LinearKind, layer: usize, cfg: &ModelConfig, imatrix: bool) -> GgufType {
        use GgufType::{Q3K, Q4K, Q5K, Q6K};
        use KQuantMix as M;
        let n = cfg.num_layers;
        let gqa = cfg.num_heads / cfg.num_kv_heads.max(1);
        let more_bits = use_more_bits(layer, n);
        let picked = match (kind, self) {
            (LinearKind::V, M::Q2K) => Some(if gqa >= 4 { Q4K } else { Q3K }),
            (LinearKind::V, M::Q3KM) => Some(if layer < 2 { Q5K } else { Q4K }),
            (LinearKind::V, M::Q3KL) => Some(Q5K),
            (LinearKind::V, M::Q4KM | M::Q5KM) if more_bits => Some(Q6K),
            (LinearKind::V, M::Q4KS) if layer < 4 => Some(Q5K),
            (LinearKind::V, M::Iq4Nl | M::Iq4Xs) if gqa >= 4 => Some(Q5K),
            (LinearKind::Down, M::Q2K) => Some(Q3K),
            (LinearKind::Down, M::Q3KM) => Some(if layer < n / 16 { Q5K } else { Q4K }),
            (LinearKind::Down, M::Q3KL) => Some(Q5K),
            (LinearKind::Down, M::Q4KM | M::Q5KM) if more_bits => Some(Q6K),
            (LinearKind::Down, M::Q4KS) if layer < n / 8 => Some(Q5K),
            (LinearKind::Down, M::Iq4Nl | M::Iq4Xs) if layer < n / 8 && !imatrix => Some(Q5K),
            (LinearKind::O, M::Q2K) => Some(Q3K),
            (LinearKind::O, M::Q3KM) => Some(Q4K),
            (LinearKind::O, M::Q3KL) => Some(Q5K),
            _ => None,
        };
        picked.unwrap_or(self.base())
    }
}

impl KQuantMix {
    /// llama.cpp's type for a fused `attn_qkv`: one step up from the base in the medium and
    /// large mixes.
    fn fused_qkv(self) -> GgufType {
        match self {
            KQuantMix::Q3KM | KQuantMix::Q3KL => GgufType::Q4K,
            KQuantMix::Q4KM => GgufType::Q5K,
            KQuantMix::Q5KM => GgufType::Q6K,
            _ => self.base(),
        }
    }
}

/// llama.cpp's choice of blocks that get more bits: the first and last eighth, and every
/// third block in between.
fn use_more_bits(layer: usize, n_layers: usize) -> bool {
    let eighth = n_layers / 8;
    layer < eighth || layer >= 7 * n_layers / 8 || (layer - eighth) % 3 == 2
}

impl GgufTypes {
    /// The type a mix or pure setting asks for `hf_name` (a matrix), before the row-length
    /// fallback. The output head (or, with tied embeddings, the embedding that serves as it)
    /// gets Q6_K in quantized files, as in llama.cpp (whose rows that do not fit it fall back
    /// to Q8_0, here as for every other tensor).
    /// `imatrix`: whether the export fits with an importance matrix (llama.cpp's i-quant
    /// mixes give the first blocks' down projections Q5_K without one).
    pub fn wanted(&self, cfg: &ModelConfig, hf_name: &str, imatrix: bool) -> GgufType {
        self.wanted_after(cfg, hf_name, 0, imatrix)
    }

    /// [`GgufTypes::wanted`] for a matrix whose block llama.cpp's mix places `skipped`
    /// positions earlier, because that many matrices of its kind in earlier blocks took a
    /// per-tensor type instead of the mix's (llama.cpp counts only the ones its mix typed).
    pub fn wanted_after(
        &self,
        cfg: &ModelConfig,
        hf_name: &str,
        skipped: usize,
        imatrix: bool,
    ) -> GgufType {
        let base = self.base();
        if is_output_head(cfg, hf_name) {
            return match base {
                GgufType::F32 | GgufType::F16 | GgufType::BF16 | GgufType::Q8_0 => base,
                _ => GgufType::Q6K,
            };
        }
        match self {
            GgufTypes::Pure(t) => *t,
            GgufTypes::Mix(mix) => match names::parse_linear_weight(cfg.family, hf_name) {
                Some((layer, kind)) => {
                    mix.linear(kind, layer.saturating_sub(skipped), cfg, imatrix)
                }
                None => match crate::fused::parts_of(cfg, hf_name).as_deref() {
                    Some([q, ..])
                        if names::parse_linear_weight(cfg.family, q)
                            .is_some_and(|(_, k)| k == LinearKind::Q) =>
                    {
                        mix.fused_qkv()
                    }
                    // A fused gate/up is an `ffn_up` to llama.cpp.
                    Some([_, up]) => names::parse_linear_weight(cfg.family, up)
                        .map_or(mix.base(), |(layer, kind)| {
                            mix.linear(kind, layer, cfg, imatrix)
                        }),
                    _ => mix.base(),
                },
            },
        }
    }

    /// The type most matrices get.
    pub fn base(&self) -> GgufType {
        match self {
            GgufTypes::Pure(t) => *t,
            GgufTypes::Mix(mix) => mix.base(),
        }
    }

    /// The `general.file_type` to record.
    pub fn file_type(&self) -> u32 {
        match self {
            GgufTypes::Pure(t) => pure_file_type(*t),
            GgufTypes::Mix(mix) => mix.file_type(),
        }
    }

    /// The setting in words, for plans and reports.
    pub fn describe(&self) -> String {
        match self {
            GgufTypes::Pure(t) => format!("{t:?}"),
            GgufTypes::Mix(mix) => format!("{} (llama.cpp's mix)", mix.name()),
        }
    }
}

/// One per-tensor type, as llama-quantize's `--tensor-type PATTERN=TYPE`: the pattern is a
/// regular expression searched for (not anchored) in the GGUF tensor name, lowercased as
/// llama.cpp lowercases it; the first rule that matches a matrix gives its type in place of
/// the mix's or the pure type's, and the row-length fallback still applies after it.
/// Vectors (norms, biases) stay F32 whatever matches.
#[derive(Debug, Clone)]
pub struct TensorTypeRule {
    pattern: regex::Regex,
    pub dtype: GgufType,
}

impl TensorTypeRule {
    pub fn new(pattern: &str, dtype: GgufType) -> microllm_core::Result<Self> {
        let lowered = pattern.to_lowercase();
        let pattern = regex::Regex::new(&lowered).map_err(|e| {
            microllm_core::Error::Invalid(format!(
                "tensor type pattern `{pattern}` is not a regular expression: {e}"
            ))
        })?;
        Ok(TensorTypeRule { pattern, dtype })
    }

    /// The pattern as written (lowercased).
    pub fn pattern(&self) -> &str {
        self.pattern.as_str()
    }

    pub fn matches(&self, gguf_name: &str) -> bool {
        self.pattern.is_match(gguf_name)
    }
}

impl PartialEq for TensorTypeRule {
    fn eq(&self, other: &Self) -> bool {
        self.pattern() == other.pattern() && self.dtype == other.dtype
    }
}

/// The first of `rules` that matches `gguf_name`.
pub fn rule_for<'a>(rules: &'a [TensorTypeRule], gguf_name: &str) -> Option<&'a TensorTypeRule> {
    rules.iter().find(|r| r.matches(gguf_name))
}

/// Whether `hf_name` is the tensor llama.cpp treats as the output head.
fn is_output_head(cfg: &ModelConfig, hf_name: &str) -> bool {
    if cfg.tie_word_embeddings {
        hf_name == names::EMBED_TOKENS
    } else {
        hf_name == format!("{}.weight", names::LM_HEAD)
    }
}

/// llama.cpp's `general.file_type` (its `llama_ftype`) for files whose matrices are `t`.
fn pure_file_type(t: GgufType) -> u32 {
    match t {
        GgufType::F32 => 0,
        GgufType::F16 => 1,
        GgufType::Q4_0 => 2,
        GgufType::Q4_1 => 3,
        GgufType::Q8_0 | GgufType::Q8_1 | GgufType::Q8K => 7,
        GgufType::Q5_0 => 8,
        GgufType::Q5_1 => 9,
        GgufType::Q2K => 10,
        GgufType::Q3K => 11,
        GgufType::Q4K => 14,
        GgufType::Q5K => 16,
        GgufType::Q6K => 18,
        GgufType::Iq4Nl => 25,
        GgufType::Iq4Xs => 30,
        GgufType::BF16 => 32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smollm2_like() -> ModelConfig {
        let json = r#"{"architectures":["LlamaForCausalLM"],"model_type":"llama",
            "hidden_size":576,"intermediate_size":1536,"num_hidden_layers":30,
            "num_attention_heads":9,"num_key_value_heads":3,"vocab_size":49152,
            "rms_norm_eps":1e-5,"rope_theta":100000.0,"max_position_embeddings":8192,
            "tie_word_embeddings":true}"#;
        let value = serde_json::from_str(json).unwrap();
        crate::hf::parse_config(&value, std::path::Path::new("config.json")).unwrap()
    }

    #[test]
    fn more_bits_follow_llama_cpps_pattern() {
        // 32 blocks (LLaMA-7B): 0-3, 28-31 and every third from 6.
        let picked: Vec<usize> = (0..32).filter(|&i| use_more_bits(i, 32)).collect();
        assert_eq!(
            picked,
            vec![0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]
        );
    }

    #[test]
    fn q4_k_m_gives_v_and_down_more_bits_where_llama_cpp_does() {
        let cfg = smollm2_like();
        let mix = GgufTypes::Mix(KQuantMix::Q4KM);
        let v = |l| names::linear_weight(cfg.family, l, LinearKind::V);
        let down = |l| names::linear_weight(cfg.family, l, LinearKind::Down);
        let q = |l| names::linear_weight(cfg.family, l, LinearKind::Q);
        assert_eq!(mix.wanted(&cfg, &v(0), false), GgufType::Q6K);
        assert_eq!(mix.wanted(&cfg, &v(4), false), GgufType::Q4K);
        assert_eq!(mix.wanted(&cfg, &v(5), false), GgufType::Q6K);
        assert_eq!(mix.wanted(&cfg, &down(29), false), GgufType::Q6K);
        assert_eq!(mix.wanted(&cfg, &q(0), false), GgufType::Q4K);
        // The tied embedding is the output head (its 576-wide rows then fall back to Q8_0).
        assert_eq!(mix.wanted(&cfg, names::EMBED_TOKENS, false), GgufType::Q6K);
        assert_eq!(mix.file_type(), 15);
    }

    #[test]
    fn q3_k_m_and_q2_k_rules() {
        let cfg = smollm2_like();
        let name = |l, k| names::linear_weight(cfg.family, l, k);
        let q3 = GgufTypes::Mix(KQuantMix::Q3KM);
        assert_eq!(
            q3.wanted(&cfg, &name(1, LinearKind::V), false),
            GgufType::Q5K
        );
        assert_eq!(
            q3.wanted(&cfg, &name(2, LinearKind::V), false),
            GgufType::Q4K
        );
        assert_eq!(
            q3.wanted(&cfg, &name(0, LinearKind::Down), false),
            GgufType::Q5K
        );
        assert_eq!(
            q3.wanted(&cfg, &name(2, LinearKind::Down), false),
            GgufType::Q4K
        );
        assert_eq!(
            q3.wanted(&cfg, &name(7, LinearKind::O), false),
            GgufType::Q4K
        );
        assert_eq!(
            q3.wanted(&cfg, &name(7, LinearKind::Up), false),
            GgufType::Q3K
        );
        // SmolLM2 has 3 query heads per KV head: Q2_K's value projection gets Q3_K.
        let q2 = GgufTypes::Mix(KQuantMix::Q2K);
        assert_eq!(
            q2.wanted(&cfg, &name(3, LinearKind::V), false),
            GgufType::Q3K
        );
        assert_eq!(
            q2.wanted(&cfg, &name(3, LinearKind::Gate), false),
            GgufType::Q2K
        );
    }

    #[test]
    fn iq4_mixes_give_the_first_downs_q5_k_only_without_an_importance_matrix() {
        let mut cfg = smollm2_like();
        let name = |cfg: &ModelConfig, l, k| names::linear_weight(cfg.family, l, k);
        for mix in [KQuantMix::Iq4Xs, KQuantMix::Iq4Nl] {
            let m = GgufTypes::Mix(mix);
            let base = mix.base();
            let down0 = name(&cfg, 0, LinearKind::Down);
            let down3 = name(&cfg, cfg.num_layers / 8, LinearKind::Down);
            assert_eq!(m.wanted(&cfg, &down0, false), GgufType::Q5K);
            assert_eq!(m.wanted(&cfg, &down0, true), base);
            assert_eq!(m.wanted(&cfg, &down3, false), base);
            // SmolLM2's 3 query heads per KV head keep v at the base type; 4 give it Q5_K.
            assert_eq!(m.wanted(&cfg, &name(&cfg, 5, LinearKind::V), true), base);
            cfg.num_kv_heads = 1;
            assert_eq!(
                m.wanted(&cfg, &name(&cfg, 5, LinearKind::V), true),
                GgufType::Q5K
            );
            cfg.num_kv_heads = 3;
            assert!(mix.names_a_type());
        }
        assert_eq!(GgufTypes::Mix(KQuantMix::Iq4Xs).file_type(), 30);
        assert_eq!(GgufTypes::from(GgufType::Iq4Nl).file_type(), 25);
    }

    #[test]
    fn pure_types_keep_llama_cpps_head_rule() {
        let cfg = smollm2_like();
        let pure = GgufTypes::from(GgufType::Q4_0);
        assert_eq!(pure.wanted(&cfg, names::EMBED_TOKENS, false), GgufType::Q6K);
        let q8 = GgufTypes::from(GgufType::Q8_0);
        assert_eq!(q8.wanted(&cfg, names::EMBED_TOKENS, false), GgufType::Q8_0);
        let f16 = GgufTypes::from(GgufType::F16);
        assert_eq!(f16.wanted(&cfg, names::EMBED_TOKENS, false), GgufType::F16);
        assert_eq!(pure.file_type(), 2);
    }

    #[test]
    fn tensor_type_rules_search_gguf_names_first_match_wins() {
        let rules = [
            TensorTypeRule::new("BLK\\.0\\.attn_v", GgufType::Q8_0).unwrap(),
            TensorTypeRule::new("attn_(v|k)", GgufType::Q5_0).unwrap(),
        ];
        assert_eq!(rules[0].pattern(), "blk\\.0\\.attn_v");
        let pick = |n: &str| rule_for(&rules, n).map(|r| r.dtype);
        assert_eq!(pick("blk.0.attn_v.weight"), Some(GgufType::Q8_0));
        assert_eq!(pick("blk.10.attn_v.weight"), Some(GgufType::Q5_0));
        assert_eq!(pick("blk.1.attn_k.weight"), Some(GgufType::Q5_0));
        assert_eq!(pick("blk.1.attn_q.weight"), None);
        let err = TensorTypeRule::new("attn_(v", GgufType::Q8_0).unwrap_err();
        assert!(err.to_string().contains("attn_(v"), "{err}");
    }
}
