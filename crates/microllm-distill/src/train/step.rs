//! One micro-batch: its windows, the teacher's side (stored top-k or a live teacher's
//! logits and hidden states), the student's forward and losses, the backward pass, and the
//! gradients added into the accumulators.
//!
//! Without a hidden-state loss the backward pass is checkpointed per block: the forward keeps
//! only each block's input (`[rows, hidden]`), not the activations autograd would keep for
//! the backward of every block (about 110 MB per block of SmolLM2 at 8 x 256 tokens), and the
//! backward recomputes one block at a time from its input, pulling the gradient of the
//! block's output back through it (`sum(y * dL/dy)` differentiated). The gradients are the
//! same; the cost is a second forward of each block (by docs/benchmarks.md's count of 0.24 of
//! 0.67 GFLOP per token in the forward, about a third more arithmetic), the gain that a step
//! holds one block's graph instead of all of them.

use candle_core::{Device, Tensor, Var};
use microllm_core::Error;
use microllm_models::{Decoder, NoTap};

use super::{GradAccumulator, Targets, TrainJob};
use crate::error::DistillResult;
use crate::loss::{HiddenLoss, LogitTargets, RowTerms, Teacher, WeightGradSum, head_loss_into};

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

/// The teacher's last block output (before its final norm; the head runs later, a chunk of
/// rows at a time, in the loss) and the hidden states of `blocks`, all `[rows, hidden]`.
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
    let last = x.reshape((b * s, x.dim(2)?))?;
    let kept = kept
        .into_iter()
        .map(|t| t.ok_or_else(|| Error::Invalid("a layer-map teacher block does not exist".into())))
        .collect::<microllm_core::Result<Vec<_>>>()?;
    Ok((last, kept))
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
    let (live, teacher_hidden) = match &job.targets {
        Targets::Live { teacher, .. } => {
            let blocks = job
                .hidden
                .map(HiddenLoss::teacher_blocks)
                .unwrap_or_default();
            let (last, hidden) = live_teacher(teacher, &ids, &blocks)?;
            (Some((*teacher, last)), hidden)
        }
        _ => (None, Vec::new()),
    };
    let teacher = match (&live, &batch.stored) {
        (Some((decoder, hidden)), _) => Teacher::Hidden { decoder, hidden },
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
    let hidden_loss = job.hidden.is_some() && s.hidden_weight != 0.0;
    if !hidden_loss {
        let (loss, terms) = checkpointed_step(job, vars, acc, &ids, &targets)?;
        return Ok(MicroResult {
            loss,
            terms,
            hidden: 0.0,
        });
    }
    let student_blocks = job
        .hidden
        .map(HiddenLoss::student_blocks)
        .unwrap_or_default();
    let out = job.student.forward(&ids, &student_blocks)?;
    let mut loss_value = 0.0;
    let mut total: Option<Tensor> = None;
    let mut terms = RowTerms::default();
    let refs: Vec<&Var> = vars.iter().map(|(_, v)| v).collect();
    if s.mix.uses_teacher() || s.mix.ce != 0.0 {
        let sink = head_sink(job, &refs, acc);
        let head = head_loss_into(job.student, &out.hidden, &targets, &s.mix, sink)?;
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
        acc.add(&refs, &grads, 1.0 / s.accumulation as f32)?;
    }
    Ok(MicroResult {
        loss: loss_value,
        terms,
        hidden: hidden_value,
    })
}

/// Where the head weight's gradient goes: straight into its accumulator (an f32 student
/// with a trained head), or, `None`, through autograd.
fn head_sink<'a>(
    job: &TrainJob<'_>,
    refs: &[&Var],
    acc: &'a mut GradAccumulator,
) -> Option<WeightGradSum<'a>> {
    let (weight, _) = job.student.head();
    let var = weight.var.as_ref()?;
    if var.dtype() != candle_core::DType::F32 {
        return None;
    }
    let scale = 1.0 / job.settings.accumulation as f32;
    acc.sum_of(refs, var)
        .map(|sum| WeightGradSum { sum, scale })
}

/// The logit losses' forward and backward with per-block recomputation (see the module
/// docs); returns the loss and its terms. A loss that is not finite is returned without a
/// backward pass (the caller stops the run).
fn checkpointed_step(
    job: &TrainJob<'_>,
    vars: &[(String, Var)],
    acc: &mut GradAccumulator,
    ids: &Tensor,
    targets: &LogitTargets<'_>,
) -> DistillResult<(f64, RowTerms)> {
    let s = job.settings;
    if !(s.mix.uses_teacher() || s.mix.ce != 0.0) {
        return Err(Error::Invalid("the loss weights nothing".into()).into());
    }
    let student = job.student;
    let (batch, seq) = ids.dims2()?;
    let refs: Vec<&Var> = vars.iter().map(|(_, v)| v).collect();
    let scale = 1.0 / s.accumulation as f32;

    // Forward, keeping each block's input and no graph.
    let embedded = student.embed(ids)?;
    let mut inputs = Vec::with_capacity(student.num_blocks());
    let mut x = embedded.detach();
    for layer in 0..student.num_blocks() {
        let y = student.block_forward(&x, layer, batch, seq)?.detach();
        inputs.push(std::mem::replace(&mut x, y));
    }

    // The final norm, head and loss, differentiated down to the last block's output.
    let last = Var::from_tensor(&x)?;
    drop(x);
    let head = head_loss_into(
        student,
        &student.final_hidden(last.as_tensor())?,
        targets,
        &s.mix,
        head_sink(job, &refs, acc),
    )?;
    if !head.value.is_finite() {
        return Ok((head.value, head.terms));
    }
    let grads = head.loss.backward()?;
    acc.add(&refs, &grads, scale)?;
    let mut upstream = grads.get(last.as_tensor()).cloned();
    drop(grads);

    // Block by block, last first: recompute, pull the output's gradient back through it.
    for layer in (0..student.num_blocks()).rev() {
        let input = inputs.pop().expect("one input per block");
        let Some(dy) = upstream.take() else { break };
        if !student.backward_reaches(layer) {
            break;
        }
        let input = Var::from_tensor(&input)?;
        let y = student.block_forward(input.as_tensor(), layer, batch, seq)?;
        let grads = (y * dy)?.sum_all()?.backward()?;
        acc.add(&refs, &grads, scale)?;
        upstream = grads.get(input.as_tensor()).cloned();
    }
    if let (Some(dx), true) = (upstream, student.trains_embedding()) {
        let grads = (embedded * dx)?.sum_all()?.backward()?;
        acc.add(&refs, &grads, scale)?;
    }
    Ok((head.value, head.terms))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use candle_core::DType;

    use super::*;
    use crate::loss::{LogitMix, head_loss};
    use crate::student::{Freeze, Student};
    use crate::train::{AdamWConfig, TrainSettings};

    const SEQ: usize = 8;

    fn settings() -> TrainSettings {
        TrainSettings {
            mix: LogitMix {
                kl: 0.0,
                reverse_kl: 0.0,
                jsd: 0.0,
                ce: 1.0,
                temperature: 1.0,
            },
            hidden_weight: 0.0,
            lr: 1e-3,
            warmup_steps: 0,
            min_lr_ratio: 1.0,
            steps: 1,
            batch: 2,
            seqlen: SEQ,
            accumulation: 1,
            clip_norm: 1.0,
            adamw: AdamWConfig::default(),
            seed: 0,
            freeze_embeddings: false,
            freeze_blocks: 0,
            eval_every: 0,
            checkpoint_every: 0,
        }
    }

    /// The gradients of a cross-entropy micro-batch through the whole autograd graph (the
    /// path with a hidden-state loss) and through the per-block recomputation.
    fn both_ways(family: &str, freeze: Freeze) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures");
        let ckpt = microllm_io::open(dir.join(family).to_str().unwrap()).unwrap();
        let student =
            Student::load(&ckpt.config, ckpt.tensors.as_ref(), DType::F32, freeze, SEQ).unwrap();
        let vocab = ckpt.config.vocab_size as u32;
        let tokens: Vec<u32> = (0..2 * SEQ as u32).map(|i| (i * 37 + 11) % vocab).collect();
        let work = tempfile::tempdir().unwrap();
        let s = settings();
        let job = TrainJob {
            settings: &s,
            student: &student,
            targets: Targets::Labels { tokens: &tokens },
            hidden: None,
            eval: None,
            work_dir: work.path(),
            resume: false,
            fingerprint: "test".into(),
        };
        let vars: Vec<(String, Var)> = student
            .trainable()
            .map(|(n, v)| (n.to_string(), v.clone()))
            .collect();
        let refs: Vec<&Var> = vars.iter().map(|(_, v)| v).collect();
        let ids = Tensor::from_slice(&tokens, (2, SEQ), &Device::Cpu).unwrap();
        let labels: Vec<Option<u32>> = (0..tokens.len())
            .map(|i| (i % SEQ + 1 < SEQ).then(|| tokens[i + 1]))
            .collect();
        let targets = LogitTargets {
            labels: &labels,
            teacher: Teacher::None,
        };

        let mut whole = GradAccumulator::new(&refs);
        let out = student.forward(&ids, &[]).unwrap();
        let head = head_loss(&student, &out.hidden, &targets, &s.mix).unwrap();
        whole
            .add(&refs, &head.loss.backward().unwrap(), 1.0)
            .unwrap();

        let mut recomputed = GradAccumulator::new(&refs);
        let (loss, _) = checkpointed_step(&job, &vars, &mut recomputed, &ids, &targets).unwrap();
        assert!((loss - head.value).abs() < 1e-6 * head.value.abs());
        (whole.sums, recomputed.sums)
    }

    fn assert_same(family: &str, freeze: Freeze) {
        let (whole, recomputed) = both_ways(family, freeze);
        let mut largest = 0f32;
        for (a, b) in whole.iter().zip(&recomputed) {
            largest = a.iter().fold(largest, |m, x| m.max(x.abs()));
            let d = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            assert!(d <= 1e-5, "{family} {freeze:?}: gradients differ by {d}");
        }
        assert!(largest > 1e-4, "{family}: the gradients are not all zero");
    }

    #[test]
    fn recomputed_blocks_give_the_whole_graphs_gradients() {
        assert_same("llama-tiny", Freeze::default());
        // Tied embeddings (the head's and the embedding's gradients meet in one matrix),
        // sandwich norms and scaled embeddings.
        assert_same("gemma3-tiny", Freeze::default());
        // Parallel blocks.
        assert_same("phi-tiny", Freeze::default());
    }

    #[test]
    fn recomputation_stops_where_nothing_below_is_trained() {
        let freeze = Freeze {
            embeddings: true,
            blocks: 1,
        };
        assert_same("llama-tiny", freeze);
        assert_same(
            "qwen2-tiny",
            Freeze {
                embeddings: false,
                blocks: 1,
            },
        );
    }
}
