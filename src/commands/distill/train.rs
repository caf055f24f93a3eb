//! `microllm distill`: the training command, as a one-pass recipe.
//!
//! The flags become a recipe (a `structured_prune` pass for --student-from-teacher, the
//! `distill` pass, an `eval` pass for --eval) run by the pipeline like `quantize` and
//! `prune`, so the command and a recipe's distill pass share every check (all made before
//! any long work: losses, vocabularies and tokenizers of teacher and student, stores, hidden
//! widths, layer maps), the resume logic (`OUT.microllm-work`) and the report
//! (`OUT.report.json` / `.md` / `.html`). `--print-recipe` shows the recipe.

use std::path::PathBuf;

use anyhow::{Result, bail};
use microllm_distill::loss::{HiddenKind, LossSpec};
use microllm_distill::models::resolve_model_spec;
use microllm_pipeline::recipe::{
    CalibrationData, DistillLoss, DistillStage, EvalStage, EvaluationData, MomentStorage, Output,
    OutputFormat, Pass, Recipe, RecipeDoc, ReportOptions,
};

use crate::commands::convert::Dtype;
use crate::commands::pipeline::{Invocation, Verdict, execute};

/// How AdamW stores its moments (`--moments`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum Moments {
    Bf16,
    F32,
}

#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    /// The teacher: a directory, a .gguf file, a hub id or a short name (mistral-7b, phi-2,
    /// tinyllama, llama-2-7b, smollm2-135m, ...). Needed for a live teacher, for
    /// --student-from-teacher, and to check a store's teacher.
    #[arg(long)]
    pub(super) teacher: Option<String>,
    /// The student checkpoint (same kinds of source as --teacher).
    #[arg(long, conflicts_with = "student_from_teacher")]
    pub(super) student: Option<String>,
    /// Cut the student out of the teacher by structured pruning, e.g. "drop-layers=6" or
    /// "drop-layers=4,mlp-keep=0.75" (keys: drop-layers, mlp-keep, heads-keep, mlp-multiple,
    /// head-mode); importance is measured on --calib-samples windows of --data.
    #[arg(long)]
    pub(super) student_from_teacher: Option<String>,
    /// Training text (UTF-8; or a .safetensors file with int64 `input_ids`), cut into windows
    /// of --seqlen tokens.
    #[arg(long, required = true)]
    pub(super) data: Option<PathBuf>,
    /// A teacher-logit store from `microllm distill logits` (made from --data) to train
    /// against instead of a live teacher.
    #[arg(long)]
    pub(super) logits: Option<PathBuf>,
    /// Loss terms and weights: kl (forward KL), reverse-kl, jsd, ce (next-token
    /// cross-entropy), hidden-mse, hidden-cos; e.g. kl:1.0,ce:0.1.
    #[arg(long, default_value = "kl:1")]
    pub(super) loss: String,
    /// Temperature of the divergences (scaled by T²); a store fixes it.
    #[arg(long, value_parser = crate::commands::finite_f64, default_value_t = 1.0)]
    pub(super) temperature: f64,
    /// Optimizer steps.
    #[arg(long, conflicts_with = "tokens", required_unless_present = "tokens")]
    pub(super) steps: Option<u64>,
    /// Training tokens (rounded up to whole steps).
    #[arg(long)]
    pub(super) tokens: Option<u64>,
    /// Peak learning rate (AdamW).
    #[arg(long, value_parser = crate::commands::finite_f64, default_value_t = 2e-4)]
    pub(super) lr: f64,
    /// Linear warmup steps.
    #[arg(long, default_value_t = 10)]
    pub(super) warmup_steps: u64,
    /// The cosine schedule ends at this fraction of --lr.
    #[arg(long, value_parser = crate::commands::finite_f64, default_value_t = 0.1)]
    pub(super) min_lr_ratio: f64,
    /// Windows per micro-batch.
    #[arg(long, default_value_t = 8)]
    pub(super) batch: usize,
    /// Tokens per training window.
    #[arg(long, default_value_t = 256)]
    pub(super) seqlen: usize,
    /// Micro-batches per optimizer step (gradient accumulation).
    #[arg(long, default_value_t = 1)]
    pub(super) accumulation: usize,
    /// Clip the global gradient norm to this.
    #[arg(long, value_parser = crate::commands::finite_f64, default_value_t = 1.0)]
    pub(super) clip: f64,
    /// AdamW weight decay (matrices only).
    #[arg(long, value_parser = crate::commands::finite_f64, default_value_t = 0.0)]
    pub(super) weight_decay: f64,
    /// How AdamW stores its two moments: bf16 (stochastically rounded; half the optimizer's
    /// memory) or f32.
    #[arg(long, value_enum, default_value_t = Moments::Bf16)]
    pub(super) moments: Moments,
    /// Seed of the data order and of learned projections.
    #[arg(long, default_value_t = 0)]
    pub(super) seed: u64,
    /// Keep the token embedding and the output head fixed (no [vocab, hidden] gradient:
    /// much faster with large vocabularies).
    #[arg(long)]
    pub(super) freeze_embeddings: bool,
    /// Keep the first N student blocks fixed; with --freeze-embeddings the backward pass stops
    /// at block N (a derived student's first blocks are often the teacher's, untouched).
    #[arg(long, default_value_t = 0)]
    pub(super) freeze_blocks: usize,
    /// Hidden-state pairs STUDENT:TEACHER, e.g. 0:1,5:11 [default: a derived student's source
    /// blocks, else evenly spread].
    #[arg(long)]
    pub(super) layer_map: Option<String>,
    /// Learn a projection from the student's hidden width to the teacher's (required when
    /// they differ).
    #[arg(long)]
    pub(super) hidden_projection: bool,
    /// Held-out text for perplexity before, during (--eval-every) and after training.
    #[arg(long)]
    pub(super) eval: Option<PathBuf>,
    #[arg(long, default_value_t = 512)]
    pub(super) eval_ctx: usize,
    #[arg(long, default_value_t = 24)]
    pub(super) eval_windows: usize,
    /// Evaluate every N steps (0: before and after only).
    #[arg(long, default_value_t = 0)]
    pub(super) eval_every: u64,
    /// Checkpoint every N steps (optimizer state and data position included; 0: never).
    #[arg(long, default_value_t = 50)]
    pub(super) checkpoint_every: u64,
    /// Calibration windows for --student-from-teacher importance.
    #[arg(long, default_value_t = 8)]
    pub(super) calib_samples: usize,
    #[arg(long, default_value_t = 512)]
    pub(super) calib_seqlen: usize,
    /// Continue from the checkpoint in OUT.microllm-work.
    #[arg(long)]
    pub(super) resume: bool,
    /// Replace --out if it exists.
    #[arg(long)]
    pub(super) force: bool,
    /// Weight dtype of the output directory.
    #[arg(long, value_enum, default_value_t = Dtype::F32)]
    pub(super) dtype: Dtype,
    /// Output directory (Hugging Face layout).
    #[arg(long, short, required = true)]
    pub(super) out: Option<PathBuf>,
    /// Validate and print the plan (the student's shape, the estimated time) without running.
    #[arg(long)]
    pub(super) dry_run: bool,
    /// Print the one-pass recipe these flags mean (for `microllm run`) and exit.
    #[arg(long)]
    pub(super) print_recipe: bool,
}

pub fn run(args: TrainArgs) -> Result<Verdict> {
    let doc = RecipeDoc::from_recipe(&recipe(&args)?);
    let inv = Invocation {
        dry_run: args.dry_run,
        resume: args.resume,
        print_recipe: args.print_recipe,
        by_flag: true,
        default_name: "distill".into(),
        ..Invocation::default()
    };
    execute(doc, &inv)
}

/// The one-pass recipe the flags mean: the student is the recipe's model (--student, or the
/// teacher cut down by a `structured_prune` pass), the teacher the pass's `teacher` (or,
/// for a derived student, the recipe's model itself).
pub(super) fn recipe(args: &TrainArgs) -> Result<Recipe> {
    let loss = LossSpec::parse(&args.loss)?;
    let data = args.data.clone().expect("clap requires --data");
    let out = args.out.clone().expect("clap requires --out");
    let teacher = args.teacher.as_deref().map(resolve_model_spec);
    let (model, structured) = match (&args.student, &args.student_from_teacher) {
        (Some(s), _) => (resolve_model_spec(s), None),
        (None, Some(derivation)) => {
            let Some(t) = &teacher else {
                bail!(
                    "--student-from-teacher needs --teacher (the student is cut out of its weights)"
                );
            };
            (
                t.clone(),
                Some(super::derivation::structured_pass(derivation)?),
            )
        }
        (None, None) => {
            bail!(
                "give the student: --student CHECKPOINT or --student-from-teacher \"drop-layers=N\""
            )
        }
    };
    let derived = structured.is_some();
    if teacher.is_none() && args.logits.is_none() && loss.uses_teacher_logits() {
        bail!(
            "--loss {} compares with a teacher: pass --teacher (live) or --logits (a store)",
            args.loss
        );
    }
    if loss.hidden.is_some() && (teacher.is_none() || args.logits.is_some()) {
        bail!(
            "hidden-state losses compare with the teacher's hidden states: they need a live \
             --teacher (a logit store holds no hidden states)"
        );
    }
    let mut passes: Vec<Pass> = structured.into_iter().collect();
    passes.push(Pass::Distill(distill_stage(
        args,
        &loss,
        data.clone(),
        teacher.filter(|_| !derived),
    )));
    let evaluation = args.eval.as_ref().map(|e| {
        passes.push(Pass::Eval(EvalStage::default()));
        EvaluationData {
            data: e.clone(),
            ctx: args.eval_ctx,
            windows: args.eval_windows,
            tasks: Vec::new(),
        }
    });
    Ok(Recipe {
        version: microllm_pipeline::recipe::RECIPE_VERSION,
        name: Some("distill".into()),
        model,
        calibration: derived.then_some(CalibrationData {
            data,
            samples: args.calib_samples,
            seqlen: args.calib_seqlen,
            seed: 0,
            allow_short: false,
            compute: Default::default(),
        }),
        evaluation,
        passes,
        output: Output {
            path: out,
            format: Some(OutputFormat::Safetensors),
            dtype: Some(args.dtype.recipe()),
            gguf_type: None,
            tensor_types: Vec::new(),
            target_bpw: None,
            target_size: None,
            overwrite: args.force,
        },
        report: ReportOptions::default(),
        gates: Vec::new(),
        matrix: Default::default(),
    })
}

/// The distill pass the training flags mean.
fn distill_stage(
    args: &TrainArgs,
    loss: &LossSpec,
    data: PathBuf,
    teacher: Option<String>,
) -> DistillStage {
    let hidden = |kind: HiddenKind| {
        loss.hidden
            .filter(|(k, _)| *k == kind)
            .map_or(0.0, |(_, w)| w)
    };
    DistillStage {
        teacher,
        data: Some(data),
        logits: args.logits.clone(),
        loss: DistillLoss {
            kl: loss.kl,
            reverse_kl: loss.reverse_kl,
            jsd: loss.jsd,
            ce: loss.ce,
            hidden_mse: hidden(HiddenKind::Mse),
            hidden_cos: hidden(HiddenKind::Cosine),
        },
        temperature: args.temperature,
        steps: args.steps,
        tokens: args.tokens,
        lr: args.lr,
        warmup_steps: args.warmup_steps,
        min_lr_ratio: args.min_lr_ratio,
        batch: args.batch,
        seqlen: args.seqlen,
        accumulation: args.accumulation,
        clip: args.clip,
        weight_decay: args.weight_decay,
        moments: match args.moments {
            Moments::Bf16 => MomentStorage::Bf16,
            Moments::F32 => MomentStorage::F32,
        },
        seed: args.seed,
        freeze_embeddings: args.freeze_embeddings,
        freeze_blocks: args.freeze_blocks,
        layer_map: args.layer_map.clone(),
        hidden_projection: args.hidden_projection,
        eval_every: args.eval_every,
        checkpoint_every: args.checkpoint_every,
    }
}
