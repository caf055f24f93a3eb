use microllm_core::{Activation, Family, ModelConfig};

use super::*;

/// A llama-style config: 2 layers, hidden 4, 4 query heads of dim 2 over 2 KV heads, 6 MLP
/// channels, q/k/v biases.
pub(crate) fn tiny_config() -> ModelConfig {
    ModelConfig {
        family: Family::Llama,
        vocab_size: 10,
        hidden_size: 4,
        intermediate_size: 6,
        num_layers: 2,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 2,
        rope_theta: 10_000.0,
        rope_scaling: microllm_core::RopeScaling::None,
        sliding_layers: None,
        local_rope_theta: None,
        query_pre_attn_scalar: None,
        partial_rotary_factor: 1.0,
        norm_eps: 1e-5,
        sliding_window: None,
        max_position_embeddings: 16,
        tie_word_embeddings: true,
        activation: Activation::Silu,
        qkv_bias: true,
        o_bias: false,
        mlp_bias: false,
        lm_head_bias: false,
        bos_token_id: None,
        eos_token_ids: vec![],
        torch_dtype: None,
        activation_quant: None,
    }
}

fn spec(mlp_keep: f64, heads_keep: f64, head_mode: HeadMode, drop_layers: usize) -> StructuredSpec {
    StructuredSpec {
        mlp_keep,
        mlp_multiple: 1,
        heads_keep,
        head_mode,
        drop_layers,
    }
}

fn err(s: StructuredSpec, cfg: &ModelConfig) -> String {
    targets(&s, cfg).unwrap_err().to_string()
}

#[test]
fn keeping_everything_is_the_identity() {
    let cfg = tiny_config();
    let t = targets(&spec(1.0, 1.0, HeadMode::PerGroup, 0), &cfg).unwrap();
    assert!(!t.removes_anything(&cfg));
    let plan =
        StructuredPlan::from_scores(&cfg, &t, HeadMode::PerGroup, &Scores::default()).unwrap();
    assert!(plan.is_identity());
    assert_eq!(plan.layers[1].channels, (0..6).collect::<Vec<_>>());
}

#[test]
fn channel_counts_round_to_the_multiple() {
    assert_eq!(round_channels(0.75, 1536, 32), 1152);
    assert_eq!(round_channels(0.75, 160, 32), 128);
    assert_eq!(round_channels(0.99, 160, 1), 158);
    assert_eq!(round_channels(1.0, 100, 32), 100);
    assert_eq!(round_channels(0.1, 160, 32), 32);
    assert_eq!(round_channels(0.001, 160, 1), 0);
}

#[test]
fn head_counts_follow_the_grouping() {
    let cfg = tiny_config();
    let t = targets(&spec(1.0, 0.5, HeadMode::KvGroups, 0), &cfg).unwrap();
    assert_eq!((t.heads, t.kv_heads), (2, 1));
    let t = targets(&spec(1.0, 0.5, HeadMode::PerGroup, 1), &cfg).unwrap();
    assert_eq!((t.heads, t.kv_heads, t.layers), (2, 2, 1));
    let c = t.config(&cfg, &[1]);
    assert_eq!((c.head_dim, c.num_heads, c.num_layers), (2, 2, 1));
}

#[test]
fn dropped_blocks_take_their_window_flags_with_them() {
    let mut cfg = tiny_config();
    cfg.num_layers = 3;
    cfg.sliding_window = Some(4);
    cfg.sliding_layers = Some(vec![true, true, false]);
    let t = targets(&spec(1.0, 1.0, HeadMode::PerGroup, 1), &cfg).unwrap();
    let c = t.config(&cfg, &[0, 2]);
    assert_eq!(c.sliding_layers, Some(vec![true, false]));
    assert_eq!((c.window_of(0), c.window_of(1)), (Some(4), None));
}

#[test]
fn bad_input_names_the_flag_and_the_numbers() {
    let cfg = tiny_config();
    let e = err(spec(0.0, 1.0, HeadMode::PerGroup, 0), &cfg);
    assert!(e.contains("--mlp-keep 0") && e.contains("(0, 1]"), "{e}");
    let e = err(spec(1.0, 1.5, HeadMode::PerGroup, 0), &cfg);
    assert!(e.contains("--heads-keep 1.5"), "{e}");
    let e = err(spec(1.0, 0.1, HeadMode::PerGroup, 0), &cfg);
    assert!(
        e.contains("keeps zero") && e.contains("4 attention heads"),
        "{e}"
    );
    let e = err(spec(1.0, 0.75, HeadMode::PerGroup, 0), &cfg);
    assert!(
        e.contains("3 of the model's 4") && e.contains("0.5000 (2 heads)"),
        "{e}"
    );
    let e = err(spec(1.0, 0.75, HeadMode::KvGroups, 0), &cfg);
    assert!(e.contains("whole KV groups of 2"), "{e}");
    let e = err(spec(1.0, 1.0, HeadMode::PerGroup, 2), &cfg);
    assert!(
        e.contains("--drop-layers 2") && e.contains("all of the model's 2"),
        "{e}"
    );
    let e = err(spec(0.01, 1.0, HeadMode::PerGroup, 0), &cfg);
    assert!(
        e.contains("keeps zero of the model's 6 MLP channels"),
        "{e}"
    );
}

#[test]
fn shapes_only_plan_has_the_target_shapes() {
    let cfg = tiny_config();
    let t = targets(&spec(0.5, 0.5, HeadMode::PerGroup, 1), &cfg).unwrap();
    let plan = StructuredPlan::shapes_only(&cfg, &t);
    assert_eq!(plan.layers.len(), 1);
    assert_eq!(plan.layers[0].heads, vec![0, 2]);
    assert_eq!(plan.layers[0].channels.len(), 3);
    assert_eq!(plan.dropped, vec![1]);
}
