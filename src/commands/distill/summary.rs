//! What the command prints before and after training.

use std::path::Path;

use microllm_distill::report::DistillReport;
use microllm_distill::store::TeacherStore;
use microllm_distill::train::TrainSettings;

use super::setup::StudentSource;
use super::train::TrainArgs;

pub(super) fn print_plan(
    args: &TrainArgs,
    student: &StudentSource<'_>,
    s: &TrainSettings,
    windows: usize,
    store: Option<&TeacherStore>,
) {
    let r = &student.record;
    println!(
        "distill      {} -> {}",
        r.model.spec,
        args.out.as_deref().unwrap_or(Path::new("")).display()
    );
    if !r.dropped_blocks.is_empty() {
        println!(
            "student      {} blocks (teacher blocks {:?} dropped), {} parameters",
            r.model.layers, r.dropped_blocks, r.model.parameters
        );
    } else {
        println!(
            "student      {} blocks, {} parameters",
            r.model.layers, r.model.parameters
        );
    }
    println!(
        "loss         {} at temperature {}",
        args.loss, s.mix.temperature
    );
    if let Some(st) = store {
        println!(
            "targets      store {} (top-{}, {:.1} bytes/token)",
            st.dir().display(),
            st.manifest().top_k,
            st.manifest().bytes_per_token()
        );
    }
    println!(
        "schedule     {} steps x {} tokens ({} windows of {} x {} accumulation) = {} tokens; {} windows available",
        s.steps,
        s.tokens_per_step(),
        s.batch,
        s.seqlen,
        s.accumulation,
        s.steps * s.tokens_per_step(),
        windows
    );
}

pub(super) fn print_summary(r: &DistillReport) {
    if let Some(step) = r.resumed_at_step {
        println!("resumed at step {step}");
    }
    if let (Some(before), Some(after)) = (&r.eval_before, r.evals.last()) {
        println!(
            "perplexity   {:.4} -> {:.4} (student before -> after)",
            before.perplexity, after.perplexity
        );
    }
    if let Some(last) = r.curve.last() {
        println!(
            "final loss   {:.4} (kl {:.4}, ce {:.4})",
            last.loss, last.kl, last.ce
        );
    }
    println!(
        "trained      {} steps, {} tokens in {:.0} s ({:.1} tokens/s); evaluation {:.0} s",
        r.steps, r.tokens, r.train_seconds, r.tokens_per_second, r.eval_seconds
    );
    println!("wrote        {}", r.output);
}
