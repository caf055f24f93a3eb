//! Structured pruning: removing MLP channels, attention heads and decoder blocks.
//!
//! Unstructured sparsity only pays off where a runtime reads a sparse format; removing whole
//! structures instead gives a smaller *dense* model that every runtime loads as is. Three
//! structures can go, each chosen from scores measured elsewhere (the calibration pass lives
//! in `microllm-pipeline`; this module is pure logic on scores and tensors):
//!
//! * MLP channels (intermediate neurons): row `j` of gate/up (`fc1`, with its bias) and
//!   column `j` of down (`fc2`) leave together, so the block computes exactly what the
//!   original computes with that channel's contribution zeroed.
//! * Attention heads, respecting grouped-query attention: either whole KV groups (a key/value
//!   head and every query head reading it) or the same number of query heads from every
//!   group, so the result is again a valid GQA layout (`num_heads` a multiple of
//!   `num_kv_heads`); o_proj columns (and q/k/v biases) go with them. `head_dim` never
//!   changes, and the writers put it explicitly into config.json (hidden_size / num_heads no
//!   longer gives it).
//! * Whole decoder blocks (depth pruning), by ShortGPT's block influence; the remaining
//!   blocks are renumbered.
//!
//! Every block keeps the same number of channels and heads because config.json has one
//! `intermediate_size` and one `num_attention_heads` for all layers; which ones are kept
//! differs per layer. [`targets`] turns the user's fractions into those counts (and refuses
//! what cannot be spread evenly), [`StructuredPlan`] records the kept indices per layer, and
//! [`PrunedSource`] serves the smaller model as a lazy [`TensorSource`](microllm_core::TensorSource),
//! slicing each tensor as a writer asks for it, so nothing is materialised whole.

mod plan;
mod select;
mod slice;

pub use plan::{
    HeadMode, LayerPlan, Scores, StructuredPlan, StructuredSpec, Targets, round_channels, targets,
};
pub use select::{blocks_to_drop, select_heads, top_k};
pub use slice::PrunedSource;
