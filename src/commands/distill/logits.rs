//! `microllm distill logits`: the teacher-logit store.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use microllm_distill::fingerprint::model_sha256;
use microllm_distill::models::resolve_model_spec;
use microllm_distill::store::{
    DataRecord, LogitsJob, TeacherModel, TeacherRecord, merge_stores, write_store,
};
use microllm_models::StreamedDecoder;

use crate::progress::Bar;

#[derive(Debug, clap::Args)]
pub struct LogitsArgs {
    /// The teacher: a directory, a .gguf file, a hub id or a short name (mistral-7b, ...).
    #[arg(long, required_unless_present = "merge")]
    teacher: Option<String>,
    /// UTF-8 text to run the teacher on (or a .safetensors file with int64 `input_ids`), cut
    /// into consecutive windows of --seqlen tokens.
    #[arg(long, required_unless_present = "merge")]
    data: Option<PathBuf>,
    /// Tokens per window (training must use the same).
    #[arg(long, default_value_t = 256)]
    seqlen: usize,
    /// Log-probabilities kept per position (the rest is one bucket).
    #[arg(long, default_value_t = 64)]
    top_k: usize,
    /// Temperature of the stored distribution (training must use the same).
    #[arg(long, value_parser = crate::commands::finite_f64, default_value_t = 1.0)]
    temperature: f64,
    /// Use only the first N windows of the text.
    #[arg(long)]
    max_windows: Option<usize>,
    /// Compute shard I of N (1-based), e.g. 2/4; merge the parts with --merge.
    #[arg(long, value_parser = parse_shard)]
    shard: Option<(usize, usize)>,
    /// Merge store parts (directories of separate --shard runs) into --out.
    #[arg(long, num_args = 1.., conflicts_with_all = ["teacher", "data", "shard"])]
    merge: Vec<PathBuf>,
    /// Output directory (must not exist unless --force).
    #[arg(long, short)]
    out: PathBuf,
    /// Replace --out if it exists.
    #[arg(long)]
    force: bool,
}

/// Teachers larger than this as f32 (8 GiB: about 2B parameters) are streamed.
const STREAM_TEACHER_ABOVE_BYTES: u64 = 8 << 30;

fn parse_shard(text: &str) -> std::result::Result<(usize, usize), String> {
    let (i, n) = text.split_once('/').ok_or("expected I/N, e.g. 1/2")?;
    let (i, n): (usize, usize) = (
        i.trim().parse().map_err(|_| "I is not a number")?,
        n.trim().parse().map_err(|_| "N is not a number")?,
    );
    if i == 0 || i > n {
        return Err(format!("shard {i}/{n}: need 1 <= I <= N"));
    }
    Ok((i - 1, n))
}

pub fn run(args: LogitsArgs) -> Result<()> {
    if !args.merge.is_empty() {
        let parts: Vec<&std::path::Path> = args.merge.iter().map(PathBuf::as_path).collect();
        let m = merge_stores(&parts, &args.out, args.force)
            .with_context(|| format!("merging into {}", args.out.display()))?;
        println!(
            "merged       {} parts -> {} ({} of {} shards, {} windows of {})",
            parts.len(),
            args.out.display(),
            m.shards.len(),
            m.shard_count,
            m.windows,
            m.seqlen
        );
        if !m.is_complete() {
            println!("missing      shards {:?}", m.missing_shards());
        }
        println!("size         {:.1} bytes per token", m.bytes_per_token());
        return Ok(());
    }
    let (Some(teacher), Some(data)) = (&args.teacher, &args.data) else {
        bail!("--teacher and --data are required (or --merge PARTS)");
    };
    if args.out.exists() && !args.force {
        bail!(
            "{} already exists; pass --force to replace it",
            args.out.display()
        );
    }
    let spec = resolve_model_spec(teacher);
    let ckpt = crate::commands::open_model(&spec)?;
    let text = microllm_distill::training_data::TrainingData::read(data, ckpt.tokenizer.as_ref())?;
    // A teacher whose f32 weights would not fit beside everything else is read block by
    // block (every weight once per batch of windows) instead of loaded whole.
    let params: u64 = ckpt
        .tensors
        .infos()
        .iter()
        .map(|t| t.shape.iter().product::<usize>() as u64)
        .sum();
    let (decoder, streamed);
    let teacher_model = if params * 4 > STREAM_TEACHER_ABOVE_BYTES {
        println!(
            "teacher      streamed block by block ({:.1} GB as f32)",
            params as f64 * 4e-9
        );
        streamed = StreamedDecoder::new(&ckpt.config, ckpt.tensors.as_ref(), args.seqlen)?;
        TeacherModel::Streamed(&streamed)
    } else {
        decoder = crate::commands::load_decoder(&ckpt, crate::commands::Compute::F32)?;
        TeacherModel::Loaded(&decoder)
    };
    let job = LogitsJob {
        teacher: teacher_model,
        teacher_record: TeacherRecord {
            spec: teacher.clone(),
            sha256: model_sha256(&ckpt.path)?,
            family: ckpt.config.family.to_string(),
            vocab_size: ckpt.config.vocab_size,
        },
        tokenizer_sha256: microllm_distill::fingerprint::tokenizer_id(ckpt.tokenizer.as_ref()),
        data: DataRecord {
            path: data.display().to_string(),
            sha256: text.sha256.clone(),
            tokens: text.tokens.len(),
        },
        tokens: &text.tokens,
        seqlen: args.seqlen,
        top_k: args.top_k,
        temperature: args.temperature,
        max_windows: args.max_windows,
        shard: args.shard.unwrap_or((0, 1)),
    };
    let summary = write_store(&job, &args.out, args.force, &Bar::new())
        .with_context(|| format!("computing teacher logits into {}", args.out.display()))?;
    let m = &summary.manifest;
    let shard = &m.shards[0];
    println!(
        "teacher      {} ({}, vocabulary {})",
        teacher, m.teacher.family, m.teacher.vocab_size
    );
    println!(
        "windows      {}..{} of {} ({} tokens of {} each), shard {} of {}",
        shard.first_window,
        shard.end_window,
        m.windows,
        summary.tokens,
        m.seqlen,
        shard.index + 1,
        m.shard_count
    );
    println!(
        "stored       top-{} log-probabilities + rest mass at temperature {}",
        m.top_k, m.temperature
    );
    println!(
        "size         {:.1} MB, {:.1} bytes per token",
        summary.bytes as f64 / 1e6,
        summary.bytes_per_token
    );
    println!(
        "speed        {:.1} tokens/s ({:.1} s)",
        summary.tokens as f64 / summary.seconds.max(1e-9),
        summary.seconds
    );
    println!("wrote        {}", args.out.display());
    Ok(())
}
