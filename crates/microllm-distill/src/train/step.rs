//! One micro-batch: its windows, the teacher's side (stored top-k or a live teacher's
//! logits and hidden states), the student's forward and losses, the backward pass, and the
//! gradients added into the accumulators.

use candle_core::{Device, Tensor, Var};
use microllm_core::Error;
use microllm_models::{Decoder, NoTap};

use super::{GradAccumulator, Targets, TrainJob};
use crate::error::DistillResult;
use crate::loss::{HiddenLoss, LogitTargets, RowTerms, Teacher, head_loss};

/// One micro-batch's inputs.
struct Batch {
    ids: Vec<u32>,
    labels: Vec<Option<u32>>,
    /// Stored top-k of every position, when the targets are a store.
    stored: Option<(Vec<u32>, Vec<f32>, Vec<f32>)>,
}

fn batch_of(job: &TrainJob<'_>, windows: &[usize]) -> DistillResult<Batch> {
    let l = job.settings.seqlen;
    let mut ids = Vec::with_capacity(windows.len() * l);
    let mut stored =
        matches!(job.targets, Targets::Store(_)).then(|| (Vec::new(), Vec::new(), Vec::new()));
    for &w in windows {
        match &job.targets {
            Targets::Store(store) => {
                let win = store.window(w)?;
                ids.extend_from_slice(&win.input_ids);
                let s = stored.as_mut().expect("store targets");
                s.0.extend(win.ids);
                s.1.extend(win.logp);
                s.2.extend(win.log_rest);
            }
            Targets::Live { tokens, .. } | Targets::Labels { tokens } => {
                ids.extend_from_slice(&tokens[w * l..(w + 1) * l]);
            }
        }
    }
    let labels = (0..ids.len())
        .map(|i| (i % l + 1 < l).then(|| ids[i + 1]))
        .collect();
    Ok(Batch {
        ids,
        labels,
        stored,
    })
}

/// The teacher's logits `[rows, vocab]` and the hidden states of `blocks`, `[rows, hidden]`.
fn live_teacher(
    teacher: &Decoder,
    ids: &Tensor,
    blocks: &[usize],
) -> microllm_core::Result<(Tensor, Vec<Tensor>)> {
    let (b, s) = ids.dims2()?;
    let mut x = teacher.embed(ids)?;
    let mut kept = vec![None; blocks.len()];
    teacher.with_positions(0, s, |at| {
        for (i, block) in teacher.blocks().iter().enumerate() {
            x = block.forward(&x, at, None, &mut NoTap)?;
            for (slot, _) in blocks.iter().enumerate().filter(|(_, k)| **k == i) {
                kept[slot] = Some(x.reshape((b * s, x.dim(2)?))?);
            }
        }
        Ok(())
    })?;
    let logits = teacher.head(&x)?;
    let vocab = logits.dim(2)?;
    let kept = kept
        .into_iter()
        .map(|t| t.ok_or_else(|| Error::Invalid("a layer-map teacher block does not exist".into())))
        .collect::<microllm_core::Result<Vec<_>>>()?;
    Ok((logits.reshape((b * s, vocab))?, kept))
}

/// Loss value, its terms and hidden part, after one micro-batch's backward pass.
pub(super) struct MicroResult {
    pub loss: f64,
    pub terms: RowTerms,
    pub hidden: f64,
}

pub(super) fn micro_step(
    job: &TrainJob<'_>,
    vars: &[(String, Var)],
    acc: &mut GradAccumulator,
    windows: &[usize],
) -> DistillResult<MicroResult> {
    let s = job.settings;
    let batch = batch_of(job, windows)?;
    let ids = Tensor::from_slice(&batch.ids, (windows.len(), s.seqlen), &Device::Cpu)?;
    let student_blocks = job
        .hidden
        .map(HiddenLoss::student_blocks)
        .unwrap_or_default();
    let out = job.student.forward(&ids, &student_blocks)?;
    let (dense, teacher_hidden) = match &job.targets {
        Targets::Live { teacher, .. } => {
            let blocks = job
                .hidden
                .map(HiddenLoss::teacher_blocks)
                .unwrap_or_default();
            let (logits, hidden) = live_teacher(teacher, &ids, &blocks)?;
            (Some(logits), hidden)
        }
        _ => (None, Vec::new()),
    };
    let teacher = match (&dense, &batch.stored) {
        (Some(d), _) => Teacher::Dense(d),
        (_, Some((i, p, r))) => Teacher::TopK {
            k: i.len() / batch.ids.len(),
            ids: i,
            logp: p,
            log_rest: r,
        },
        _ => Teacher::None,
    };
    let targets = LogitTargets {
        labels: &batch.labels,
        teacher,
    };
    let mut loss_value = 0.0;
    let mut total: Option<Tensor> = None;
    let mut terms = RowTerms::default();
    if s.mix.uses_teacher() || s.mix.ce != 0.0 {
        let head = head_loss(job.student, &out.hidden, &targets, &s.mix)?;
        loss_value += head.value;
        terms = head.terms;
        total = Some(head.loss);
    }
    let mut hidden_value = 0.0;
    if let (Some(h), true) = (job.hidden, s.hidden_weight != 0.0) {
        let term = h.loss(&out.blocks, &teacher_hidden)?;
        hidden_value = term.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
        loss_value += s.hidden_weight * hidden_value;
        let weighted = (term * s.hidden_weight)?;
        total = Some(match total {
            Some(t) => (t + weighted)?,
            None => weighted,
        });
    }
    let total = total.ok_or_else(|| Error::Invalid("the loss weights nothing".into()))?;
    if loss_value.is_finite() {
        let grads = total.backward()?;
        let refs: Vec<&Var> = vars.iter().map(|(_, v)| v).collect();
        acc.add(&refs, &grads, 1.0 / s.accumulation as f32)?;
    }
    Ok(MicroResult {
        loss: loss_value,
        terms,
        hidden: hidden_value,
    })
}
