//! Canonical tensor names.
//!
//! Inside microllm every tensor goes by its Hugging Face name, whatever file it came from
//! (GGUF readers translate on the way in, writers on the way out). These helpers are the one
//! place those names are spelled, per family.

use crate::Family;

/// The linear layers of a decoder block.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum LinearKind {
    Q,
    K,
    V,
    O,
    /// The gate projection of a gated MLP (absent in plain MLPs).
    Gate,
    /// The up projection (`fc1` in Phi).
    Up,
    /// The down projection (`fc2` in Phi).
    Down,
}

impl LinearKind {
    /// All kinds, in forward order.
    pub const ALL: [LinearKind; 7] = [
        LinearKind::Q,
        LinearKind::K,
        LinearKind::V,
        LinearKind::O,
        LinearKind::Gate,
        LinearKind::Up,
        LinearKind::Down,
    ];

    /// Whether the layer belongs to attention.
    pub fn is_attention(self) -> bool {
        matches!(
            self,
            LinearKind::Q | LinearKind::K | LinearKind::V | LinearKind::O
        )
    }

    /// Module path inside a block, e.g. `self_attn.q_proj`.
    pub fn module(self, family: Family) -> &'static str {
        match (family, self) {
            (_, LinearKind::Q) => "self_attn.q_proj",
            (_, LinearKind::K) => "self_attn.k_proj",
            (_, LinearKind::V) => "self_attn.v_proj",
            (Family::Phi, LinearKind::O) => "self_attn.dense",
            (_, LinearKind::O) => "self_attn.o_proj",
            (_, LinearKind::Gate) => "mlp.gate_proj",
            (Family::Phi, LinearKind::Up) => "mlp.fc1",
            (_, LinearKind::Up) => "mlp.up_proj",
            (Family::Phi, LinearKind::Down) => "mlp.fc2",
            (_, LinearKind::Down) => "mlp.down_proj",
        }
    }
}

/// `model.layers.{layer}`.
pub fn block_prefix(layer: usize) -> String {
    format!("model.layers.{layer}")
}

/// The block a tensor name belongs to (`model.layers.{layer}.…`), if any.
pub fn parse_block(name: &str) -> Option<usize> {
    let rest = name.strip_prefix("model.layers.")?;
    rest.split_once('.')?.0.parse().ok()
}

/// Weight of a linear layer, e.g. `model.layers.3.mlp.down_proj.weight`.
pub fn linear_weight(family: Family, layer: usize, kind: LinearKind) -> String {
    format!("model.layers.{layer}.{}.weight", kind.module(family))
}

/// The block and kind of a linear layer's weight name (the inverse of [`linear_weight`]).
pub fn parse_linear_weight(family: Family, name: &str) -> Option<(usize, LinearKind)> {
    let rest = name.strip_prefix("model.layers.")?;
    let (layer, module) = rest.split_once('.')?;
    let layer = layer.parse().ok()?;
    let module = module.strip_suffix(".weight")?;
    LinearKind::ALL
        .into_iter()
        .find(|k| k.module(family) == module)
        .map(|k| (layer, k))
}

/// Bias of a linear layer.
pub fn linear_bias(family: Family, layer: usize, kind: LinearKind) -> String {
    format!("model.layers.{layer}.{}.bias", kind.module(family))
}

/// Prefix of the norm before attention (and, in parallel blocks, before the MLP too).
pub fn attn_norm(layer: usize) -> String {
    format!("model.layers.{layer}.input_layernorm")
}

/// Prefix of the norm before the MLP in sequential blocks. Gemma names it
/// `pre_feedforward_layernorm`; its `post_attention_layernorm` is [`post_attn_norm`].
pub fn mlp_norm(family: Family, layer: usize) -> String {
    match family {
        Family::Gemma3 => format!("model.layers.{layer}.pre_feedforward_layernorm"),
        _ => format!("model.layers.{layer}.post_attention_layernorm"),
    }
}

/// Prefix of the norm on the attention output (Gemma's sandwich norms).
pub fn post_attn_norm(layer: usize) -> String {
    format!("model.layers.{layer}.post_attention_layernorm")
}

/// Prefix of the norm on the MLP output (Gemma's sandwich norms).
pub fn post_mlp_norm(layer: usize) -> String {
    format!("model.layers.{layer}.post_feedforward_layernorm")
}

/// Prefix of the per-head query norm (Qwen3, Gemma 3).
pub fn q_norm(layer: usize) -> String {
    format!("model.layers.{layer}.self_attn.q_norm")
}

/// Prefix of the per-head key norm (Qwen3, Gemma 3).
pub fn k_norm(layer: usize) -> String {
    format!("model.layers.{layer}.self_attn.k_norm")
}

/// Weight of fused module `module` (e.g. `self_attn.qkv_proj`) of block `layer`.
pub fn fused_weight(layer: usize, module: &str) -> String {
    format!("model.layers.{layer}.{module}.weight")
}

/// Prefix of the final norm.
pub fn final_norm(family: Family) -> &'static str {
    match family {
        Family::Phi => "model.final_layernorm",
        _ => "model.norm",
    }
}

/// Token embedding matrix `[vocab, hidden]`.
pub const EMBED_TOKENS: &str = "model.embed_tokens.weight";

/// Output head prefix (`lm_head.weight`, `lm_head.bias`).
pub const LM_HEAD: &str = "lm_head";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_weight_names_parse_back() {
        for family in [Family::Llama, Family::Phi] {
            for kind in LinearKind::ALL {
                let name = linear_weight(family, 12, kind);
                assert_eq!(parse_linear_weight(family, &name), Some((12, kind)));
            }
        }
        assert_eq!(
            parse_linear_weight(Family::Llama, "model.layers.1.mlp.fc1.weight"),
            None
        );
        assert_eq!(
            parse_linear_weight(Family::Llama, "model.norm.weight"),
            None
        );
    }

    #[test]
    fn phi_uses_its_own_module_names() {
        assert_eq!(
            linear_weight(Family::Phi, 2, LinearKind::O),
            "model.layers.2.self_attn.dense.weight"
        );
        assert_eq!(
            linear_weight(Family::Llama, 0, LinearKind::Down),
            "model.layers.0.mlp.down_proj.weight"
        );
        assert_eq!(final_norm(Family::Phi), "model.final_layernorm");
    }
}
