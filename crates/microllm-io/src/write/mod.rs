//! Writers. Every output is assembled under a temporary name beside its destination and
//! renamed into place only when complete ([`AtomicDir`]), so an interrupted or failed run
//! never leaves a half-written model where a user (or a runtime) would pick it up.

mod atomic;
mod hf_dir;
mod packed;
mod planned;
mod safetensors;
mod sparse;

pub(crate) use atomic::temp_sibling;
pub use atomic::{AtomicDir, link_dir, write_file_atomic};
pub use hf_dir::{HfOutput, HfWriteOptions, WriteSummary, hf_config_json, write_hf_dir};
pub use packed::{LinearLayout, PackedLinears, PackedOutput, write_packed_dir};
pub use safetensors::{OutDtype, serialize_safetensors_file, write_safetensors};
pub use sparse::{SparseOutput, sparsity_section, write_sparse_dir};
