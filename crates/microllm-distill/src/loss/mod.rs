//! Distillation losses.
//!
//! - [`row`]: the logit losses of one position and their gradient (forward KL, reverse KL,
//!   JSD with temperature; cross-entropy on the next token), for a live teacher's full
//!   distribution or a stored top-k with a rest bucket;
//! - [`head_loss`]: those losses through the student's output head, fused, over all
//!   positions of a batch;
//! - [`hidden`]: hidden-state MSE / cosine with an optional learned projection;
//! - [`spec`]: the `--loss` mix.

mod grad_node;
mod head;
pub mod hidden;
mod row;
mod spec;

pub use grad_node::attach;
pub use head::{
    CHUNK_ROWS, HeadLoss, LogitTargets, Teacher, WeightGradSum, head_loss, head_loss_into,
};
pub use hidden::HiddenLoss;
pub use row::{LogitMix, RowScale, RowTerms, Scratch, TeacherRow, row_loss};
pub use spec::{HiddenKind, LOSS_NAMES, LossSpec};
