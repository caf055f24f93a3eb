//! Distillation losses.

mod grad_node;
mod head;
mod row;

pub use grad_node::attach;
pub use head::{CHUNK_ROWS, HeadLoss, LogitTargets, Teacher, head_loss};
pub use row::{LogitMix, RowScale, RowTerms, Scratch, TeacherRow, row_loss};
