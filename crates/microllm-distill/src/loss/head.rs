//! The output head and the logit losses, fused.
//!
//! For a batch of 8 windows of 256 tokens, SmolLM2's logits are 2048 x 49152 floats (400 MB),
//! and autograd would keep them, their softmax and their gradient alive together. Here the
//! head runs over chunks of [`CHUNK_ROWS`] rows: logits of the chunk, then the row kernel
//! ([`super::row_loss`]) turns them into the loss's gradient in place, then that gradient
//! goes back through the head (`dh = dlogits · W`, and `dW`, `db` when the head is trained).
//! Only `dh` (`[rows, hidden]`) survives; it is handed to autograd with
//! [`super::grad_node::attach`]. With frozen embeddings no `[vocab, hidden]` gradient is ever
//! formed.

use std::sync::Mutex;

use candle_core::{CpuStorage, DType, InplaceOp1, Layout, Tensor};
use microllm_core::{Error, Result};
use rayon::prelude::*;

use super::grad_node::attach;
use super::row::{LogitMix, RowScale, RowTerms, Scratch, TeacherRow, row_loss};
use microllm_models::Decoder;

use crate::real::Real;
use crate::student::Student;

/// Rows of logits materialised at a time.
pub const CHUNK_ROWS: usize = 128;

/// The teacher's side of every row.
#[derive(Debug, Clone, Copy)]
pub enum Teacher<'a> {
    None,
    /// A live teacher's logits `[rows, vocab]`.
    Dense(&'a Tensor),
    /// A live teacher's last block output `[rows, hidden]` (before its final norm): its
    /// logits are made one chunk of rows at a time beside the student's, so `[rows, vocab]`
    /// teacher logits never exist (403 MB of f32 for SmolLM2's 8 x 256 tokens; with a
    /// 150k-token vocabulary, 1.2 GB).
    Hidden {
        decoder: &'a Decoder,
        hidden: &'a Tensor,
    },
    /// Stored top-k: `ids`/`logp` `[rows, k]`, `log_rest` `[rows]`.
    TopK {
        k: usize,
        ids: &'a [u32],
        logp: &'a [f32],
        log_rest: &'a [f32],
    },
}

/// What the logit losses compare against, one entry per row of hidden states.
#[derive(Debug, Clone, Copy)]
pub struct LogitTargets<'a> {
    /// The next token of each row (`None` at a window's last position).
    pub labels: &'a [Option<u32>],
    pub teacher: Teacher<'a>,
}

/// The fused head's result.
#[derive(Debug)]
pub struct HeadLoss {
    /// The weighted loss as a scalar autograd node.
    pub loss: Tensor,
    /// Its value.
    pub value: f64,
    /// Mean of each term over the rows it covers (divergences before `τ²` and weights).
    pub terms: RowTerms,
}

/// Runs the row kernel over a chunk of logits, in place.
struct ChunkKernel<'a> {
    first_row: usize,
    targets: LogitTargets<'a>,
    mix: LogitMix,
    scale: RowScale,
    /// Dense teacher rows of this chunk (contiguous).
    dense: Option<Tensor>,
    terms: Mutex<Vec<RowTerms>>,
}

impl ChunkKernel<'_> {
    fn run<T: Real>(&self, data: &mut [T], dense: Option<&[T]>, vocab: usize) {
        let t = &self.targets;
        let terms: Vec<RowTerms> = data
            .par_chunks_mut(vocab)
            .enumerate()
            .map_init(Scratch::default, |scratch, (i, row)| {
                let r = self.first_row + i;
                let teacher = match (t.teacher, dense) {
                    (Teacher::Dense(_) | Teacher::Hidden { .. }, Some(d)) => {
                        TeacherRow::Dense(&d[i * vocab..(i + 1) * vocab])
                    }
                    (
                        Teacher::TopK {
                            k,
                            ids,
                            logp,
                            log_rest,
                        },
                        _,
                    ) => TeacherRow::TopK {
                        ids: &ids[r * k..(r + 1) * k],
                        logp: &logp[r * k..(r + 1) * k],
                        log_rest: log_rest[r],
                    },
                    _ => TeacherRow::None,
                };
                row_loss(row, scratch, teacher, t.labels[r], &self.mix, self.scale)
            })
            .collect();
        *self.terms.lock().expect("terms lock") = terms;
    }
}

impl InplaceOp1 for ChunkKernel<'_> {
    fn name(&self) -> &'static str {
        "logit-loss"
    }

    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> candle_core::Result<()> {
        let Some((start, end)) = l.contiguous_offsets() else {
            candle_core::bail!("logit-loss expects contiguous logits")
        };
        let vocab = *l.dims().last().unwrap_or(&1);
        match s {
            CpuStorage::F32(v) => match &self.dense {
                Some(d) => crate::real::with_data::<f32, _>(d, "logit-loss", |d| {
                    self.run(&mut v[start..end], Some(d), vocab);
                    Ok(())
                })?,
                None => self.run::<f32>(&mut v[start..end], None, vocab),
            },
            CpuStorage::F64(v) => match &self.dense {
                Some(d) => crate::real::with_data::<f64, _>(d, "logit-loss", |d| {
                    self.run(&mut v[start..end], Some(d), vocab);
                    Ok(())
                })?,
                None => self.run::<f64>(&mut v[start..end], None, vocab),
            },
            other => candle_core::bail!(
                "logit-loss: unsupported dtype {:?}",
                crate::real::dtype_of(other)
            ),
        }
        Ok(())
    }
}

fn check_targets(rows: usize, vocab: usize, t: &LogitTargets<'_>) -> Result<()> {
    let bad = |msg: String| Err(Error::Invalid(msg));
    if t.labels.len() != rows {
        return bad(format!("{} labels for {rows} rows", t.labels.len()));
    }
    if let Some(y) = t.labels.iter().flatten().find(|&&y| y as usize >= vocab) {
        return bad(format!("label {y} is outside the vocabulary of {vocab}"));
    }
    match t.teacher {
        Teacher::None => {}
        Teacher::Dense(d) => {
            if d.dims() != [rows, vocab] {
                return bad(format!(
                    "teacher logits {:?} for {rows} rows of {vocab}",
                    d.dims()
                ));
            }
        }
        Teacher::Hidden { decoder, hidden } => {
            let teacher_vocab = decoder.config().vocab_size;
            if hidden.dim(0)? != rows || teacher_vocab != vocab {
                return bad(format!(
                    "teacher hidden states {:?} (vocabulary {teacher_vocab}) for {rows} rows of \
                     {vocab}",
                    hidden.dims()
                ));
            }
        }
        Teacher::TopK {
            k,
            ids,
            logp,
            log_rest,
        } => {
            if ids.len() != rows * k || logp.len() != rows * k || log_rest.len() != rows {
                return bad(format!(
                    "top-{k} teacher rows do not cover {rows} positions"
                ));
            }
            if let Some(id) = ids.iter().find(|&&i| i as usize >= vocab) {
                return bad(format!(
                    "teacher token id {id} is outside the vocabulary of {vocab}"
                ));
            }
        }
    }
    Ok(())
}

/// An f32 gradient sum the head weight's gradient is added into, times `scale`, instead of
/// going through autograd (the trainer's accumulator of that weight).
#[derive(Debug)]
pub struct WeightGradSum<'a> {
    pub sum: &'a mut [f32],
    pub scale: f32,
}

/// The weighted logit loss of `hidden` (the student's final-norm output `[rows, hidden]`)
/// through the student's head, as an autograd scalar.
pub fn head_loss(
    student: &Student,
    hidden: &Tensor,
    targets: &LogitTargets<'_>,
    mix: &LogitMix,
) -> Result<HeadLoss> {
    head_loss_into(student, hidden, targets, mix, None)
}

/// [`head_loss`], with the head weight's gradient (when the head is trained) added straight
/// into `weight_grad` when given: chunk by chunk, by a matrix product that accumulates into
/// the sum, so no `[vocab, hidden]` gradient is ever allocated (through autograd: a running
/// sum, each chunk's part and the copy autograd hands back, 113 MB each for SmolLM2). The
/// returned loss then carries no gradient for that weight. Needs an f32 student.
pub fn head_loss_into(
    student: &Student,
    hidden: &Tensor,
    targets: &LogitTargets<'_>,
    mix: &LogitMix,
    mut weight_grad: Option<WeightGradSum<'_>>,
) -> Result<HeadLoss> {
    let (rows, _) = hidden.dims2()?;
    let (w, b) = student.head();
    let vocab = w.tensor.dim(0)?;
    check_targets(rows, vocab, targets)?;
    let with_teacher = mix.uses_teacher() && !matches!(targets.teacher, Teacher::None);
    let div_rows = if with_teacher { rows } else { 0 };
    let ce_rows = if mix.ce != 0.0 {
        targets.labels.iter().filter(|l| l.is_some()).count()
    } else {
        0
    };
    let scale = RowScale {
        divergence: 1.0 / div_rows.max(1) as f64,
        ce: 1.0 / ce_rows.max(1) as f64,
    };
    // The products below are computed, not differentiated: their gradients are attached
    // explicitly at the end. From the weight itself (a variable when the head is trained)
    // autograd would record every chunk's logits and every partial `dW`, and keep them until
    // the step's graph is dropped: 3.9 GB of SmolLM2's 8 x 256-token step with a trained
    // (tied) head.
    let h = hidden.detach();
    let weight = w.tensor.detach();
    if let Some(g) = &weight_grad
        && (weight.dtype() != DType::F32 || g.sum.len() != weight.elem_count())
    {
        return Err(Error::Invalid(format!(
            "the head's gradient sum holds {} f32 values for a {:?} {:?} weight",
            g.sum.len(),
            weight.dtype(),
            weight.dims()
        )));
    }
    let bias = b.map(|b| b.tensor.detach());
    let mut d_hidden = Vec::new();
    let mut d_weight: Option<Tensor> = None;
    let mut d_bias: Option<Tensor> = None;
    let mut sums = RowTerms::default();
    for first_row in (0..rows).step_by(CHUNK_ROWS) {
        let n = CHUNK_ROWS.min(rows - first_row);
        let h_chunk = h.narrow(0, first_row, n)?;
        let mut logits = h_chunk.matmul(&weight.t()?)?;
        if let Some(b) = &bias {
            logits = logits.broadcast_add(b)?;
        }
        let dense = match targets.teacher {
            Teacher::Dense(d) if with_teacher => Some(
                d.narrow(0, first_row, n)?
                    .to_dtype(h.dtype())?
                    .contiguous()?,
            ),
            Teacher::Hidden { decoder, hidden } if with_teacher => {
                let rows = hidden.narrow(0, first_row, n)?.unsqueeze(0)?;
                let logits = decoder.head(&rows)?.squeeze(0)?;
                Some(logits.to_dtype(h.dtype())?.contiguous()?)
            }
            _ => None,
        };
        let kernel = ChunkKernel {
            first_row,
            targets: *targets,
            mix: *mix,
            scale,
            dense,
            terms: Mutex::new(Vec::new()),
        };
        logits.inplace_op1(&kernel)?;
        for t in kernel.terms.into_inner().expect("terms lock").iter() {
            sums.add(t);
        }
        let d_logits = logits;
        d_hidden.push(d_logits.matmul(&weight)?);
        if let (Some(sink), true) = (&mut weight_grad, w.var.is_some()) {
            add_scaled_product(sink, &d_logits, &h_chunk)?;
        } else if w.var.is_some() {
            let part = d_logits.t()?.matmul(&h_chunk)?;
            d_weight = Some(match d_weight {
                Some(acc) => (acc + part)?,
                None => part,
            });
        }
        if b.is_some_and(|b| b.var.is_some()) {
            let part = d_logits.sum(0)?;
            d_bias = Some(match d_bias {
                Some(acc) => (acc + part)?,
                None => part,
            });
        }
    }
    let terms = RowTerms {
        kl: sums.kl * scale.divergence,
        reverse_kl: sums.reverse_kl * scale.divergence,
        jsd: sums.jsd * scale.divergence,
        ce: sums.ce * scale.ce,
    };
    let value = terms.weighted(mix);
    let d_hidden = Tensor::cat(&d_hidden, 0)?;
    let mut loss = attach(hidden, value, d_hidden)?;
    if let Some(dw) = d_weight {
        loss = (loss + attach(&w.tensor, 0.0, dw)?)?;
    }
    if let (Some(db), Some(b)) = (d_bias, b) {
        loss = (loss + attach(&b.tensor, 0.0, db)?)?;
    }
    Ok(HeadLoss { loss, value, terms })
}

/// `sink.sum += sink.scale · d_logitsᵀ · h` for one chunk (`d_logits` `[n, vocab]`, `h`
/// `[n, hidden]`, f32), accumulated in place by gemm.
fn add_scaled_product(sink: &mut WeightGradSum<'_>, d_logits: &Tensor, h: &Tensor) -> Result<()> {
    let (n, vocab) = d_logits.dims2()?;
    let hidden = h.dim(1)?;
    if h.dim(0)? != n || sink.sum.len() != vocab * hidden {
        return Err(Error::Invalid(format!(
            "head gradient: {:?} and {:?} do not make a {}-value sum",
            d_logits.dims(),
            h.dims(),
            sink.sum.len()
        )));
    }
    let threads = rayon::current_num_threads();
    crate::real::with_data::<f32, _>(d_logits, "head gradient", |d| {
        crate::real::with_data::<f32, _>(h, "head gradient", |h| {
            // SAFETY: the lengths are checked above: `sum` is `[vocab, hidden]` row-major,
            // `d` is `[n, vocab]` read as its transpose (row stride 1, column stride
            // vocab), `h` is `[n, hidden]` row-major; `sum` is borrowed mutably, so nothing
            // else reads or writes it meanwhile.
            unsafe {
                gemm::gemm(
                    vocab,
                    hidden,
                    n,
                    sink.sum.as_mut_ptr(),
                    1,
                    hidden as isize,
                    true,
                    d.as_ptr(),
                    vocab as isize,
                    1,
                    h.as_ptr(),
                    1,
                    hidden as isize,
                    1.0,
                    sink.scale,
                    false,
                    false,
                    false,
                    gemm::Parallelism::Rayon(threads),
                );
            }
            Ok(())
        })
    })?;
    Ok(())
}
