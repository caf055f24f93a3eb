//! What the compressing commands (`quantize`, `prune`) share: drawing calibration windows,
//! measuring perplexity before and after, and the work directory beside the output.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use microllm_eval::{PerplexityOptions, PerplexityResult};
use microllm_io::Checkpoint;
use microllm_io::calibration::CalibrationSet;

use crate::progress::Bar;

/// Where calibration windows come from and how many.
#[derive(Debug, Clone, Copy)]
pub struct CalibrationRequest<'a> {
    /// A UTF-8 text file, or a `.safetensors` file with int64 `input_ids`.
    pub path: Option<&'a Path>,
    pub samples: usize,
    pub seqlen: usize,
    pub seed: u64,
    /// Accept fewer windows than asked (recorded) instead of failing.
    pub allow_short: bool,
    /// What to tell a user who gave no file (which method needs it, what else to do).
    pub missing_hint: &'a str,
}

/// Draws the calibration windows, with a too-short file an error unless allowed.
pub fn draw(req: CalibrationRequest<'_>, ckpt: &Checkpoint) -> Result<CalibrationSet> {
    let Some(path) = req.path else {
        bail!(
            "{}: pass --calib FILE (text, e.g. a few hundred KB of web text)",
            req.missing_hint
        );
    };
    if req.samples == 0 || req.seqlen == 0 {
        bail!("--samples and --seqlen must be positive");
    }
    let is_ids = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"));
    let set = if is_ids {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let ids: Vec<u32> = microllm_io::arrays::read_token_ids(path, "input_ids")?.concat();
        CalibrationSet::draw_from(&bytes, &ids, req.samples, req.seqlen, req.seed)
    } else {
        let text = super::read_text(path)?;
        let ids = ckpt
            .require_tokenizer()?
            .encode(&text, false)
            .with_context(|| format!("tokenizing {}", path.display()))?;
        CalibrationSet::draw(&text, &ids, req.samples, req.seqlen, req.seed)
    };
    if set.windows.is_empty() || (set.shortfall() > 0 && !req.allow_short) {
        bail!(
            "{} holds {} tokens: {} windows of {}, fewer than the {} asked for; use a longer \
             file, fewer --samples or a shorter --seqlen{}",
            path.display(),
            set.text_tokens,
            set.available,
            set.seqlen,
            set.requested,
            if set.windows.is_empty() {
                ""
            } else {
                ", or --allow-short-calib"
            }
        );
    }
    Ok(set)
}

/// Perplexity of the original model and of the written output on the text in `data`.
pub fn evaluate_before_after(
    data: &Path,
    opts: PerplexityOptions,
    original: &Checkpoint,
    output: &Path,
) -> Result<(PerplexityResult, PerplexityResult)> {
    let text = super::read_text(data)?;
    let tokens = original
        .require_tokenizer()?
        .encode(&text, true)
        .with_context(|| format!("tokenizing {}", data.display()))?;
    let measure = |c: &Checkpoint| -> Result<PerplexityResult> {
        let model = super::load_decoder(c)?;
        Ok(microllm_eval::perplexity(
            &model,
            &tokens,
            opts,
            &Bar::new(),
        )?)
    };
    let base = measure(original).context("evaluating the original model")?;
    let written = super::open_model(&output.to_string_lossy())?;
    let after = measure(&written).context("evaluating the output")?;
    Ok((base, after))
}

/// The work directory of a run writing `out`: `OUT.microllm-work` beside it.
pub fn work_dir(out: &Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".microllm-work");
    out.with_file_name(name)
}
