//! The offline teacher-logit store.
//!
//! A 7B teacher cannot sit beside a student on a small machine, so its logits are computed
//! once (on any machine, in shards) and stored compactly; training reads them. Per position
//! the store keeps the teacher's top-k token ids and log-probabilities and the log of the
//! remaining mass (the "rest" bucket of [`crate::loss`]), at the temperature given when the
//! store was made, in safetensors shards described by a JSON manifest:
//!
//! ```text
//! DIR/manifest.json                     teacher (spec, SHA-256), tokenizer and data SHA-256,
//!                                       seqlen, top_k, temperature, windows, shards
//! DIR/shard-00001-of-00002.safetensors  input_ids u32 [w, L], topk_ids u16|u32 [w, L, k],
//!                                       topk_logp f32 [w, L, k], log_rest f32 [w, L]
//! ```
//!
//! Ids are u16 when the vocabulary fits (SmolLM2's 49152 does), else u32. With k = 64 a
//! position takes 2·64 + 4·64 + 4 + 4 = 392 bytes.

mod manifest;
mod read;
mod topk;
mod write;

pub use manifest::{DataRecord, MANIFEST_FILE, Manifest, ShardRecord, TeacherRecord};
pub use read::{StoredWindow, TeacherStore};
pub use topk::top_k_row;
pub use write::{LogitsJob, LogitsSummary, TeacherModel, merge_stores, write_store};
