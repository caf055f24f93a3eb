//! One module per subcommand: its arguments (clap) and its `run`.

pub mod convert;
pub mod data_args;
pub mod distill;
pub mod eval;
pub mod eval_task;
pub mod generate;
pub mod inspect;
pub mod logits;
pub mod pipeline;
pub mod prune;
pub mod quantize;
pub mod recipe;
pub mod run;

use std::path::Path;

use anyhow::{Context, Result};
use microllm_io::Checkpoint;
use microllm_models::{Activations, Decoder};

/// Opens a model source, with the spec in the error context.
pub fn open_model(spec: &str) -> Result<Checkpoint> {
    microllm_io::open(spec).with_context(|| format!("opening model `{spec}`"))
}

/// How a loaded model computes its products (see `microllm_models::packed`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Compute {
    /// Weights in their stored types, activations quantized to 8 bits where the type has an
    /// integer kernel, as llama.cpp runs the file.
    #[default]
    Int8,
    /// Weights in their stored types, activations in f32: the dense model's numbers at the
    /// file's memory.
    F32,
    /// Every weight dequantized to f32 on load.
    Dense,
}

/// The `--compute` flag shared by the commands that run a model.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct ComputeArgs {
    /// How products are computed: `int8` keeps the file's weight types and quantizes
    /// activations to 8 bits where the type has an integer kernel (as llama.cpp does);
    /// `f32` keeps the weight types with f32 activations; `dense` dequantizes every weight
    /// to f32 on load.
    #[arg(long, value_enum, default_value_t = Compute::Int8)]
    pub compute: Compute,
}

impl Compute {
    fn packed(self) -> Option<Activations> {
        match self {
            Self::Int8 => Some(Activations::Int8),
            Self::F32 => Some(Activations::F32),
            Self::Dense => None,
        }
    }
}

/// Builds the decoder of an opened checkpoint, computing as `compute` says.
pub fn load_decoder(ckpt: &Checkpoint, compute: Compute) -> Result<Decoder> {
    Decoder::load_with(&ckpt.config, ckpt.tensors.as_ref(), compute.packed())
        .with_context(|| format!("loading weights from {}", ckpt.path.display()))
}

/// When a forward pass of `ckpt` came out non-finite (`err` holds a [`NonFinite`] error),
/// the error naming the tensor responsible, found by reading the weights; else `err` itself.
///
/// [`NonFinite`]: microllm_core::Error::NonFinite
pub fn explain_non_finite(ckpt: &Checkpoint, err: anyhow::Error) -> anyhow::Error {
    let non_finite = err.chain().any(|e| {
        matches!(
            e.downcast_ref::<microllm_core::Error>(),
            Some(microllm_core::Error::NonFinite { .. })
        )
    });
    if !non_finite {
        return err;
    }
    match microllm_core::first_non_finite(ckpt.tensors.as_ref()) {
        Ok(Some(name)) => anyhow::Error::new(microllm_core::Error::NonFinite {
            name,
            origin: ckpt.path.display().to_string(),
            msg: "contains NaN or infinite values, so the model's outputs are not finite".into(),
        }),
        _ => err,
    }
}

/// `--tensor-type` rules followed by those of `--tensor-type-file` (llama-quantize's layout:
/// `PATTERN=TYPE` entries separated by spaces or newlines).
pub fn tensor_type_specs(rules: &[String], file: Option<&Path>) -> Result<Vec<String>> {
    let mut specs = rules.to_vec();
    if let Some(path) = file {
        let text = read_text(path)?;
        specs.extend(text.split_whitespace().map(str::to_string));
    }
    Ok(specs)
}

/// `--bits`: the code widths microllm supports ([`microllm_core::CODE_BITS`]).
pub fn code_bits() -> clap::builder::RangedI64ValueParser<u8> {
    let bits = microllm_core::CODE_BITS;
    clap::value_parser!(u8).range(i64::from(*bits.start())..=i64::from(*bits.end()))
}

/// Parses a floating-point flag, refusing NaN and infinities: `--sparsity nan` must be an
/// error, not a silent default (every f64 flag uses it).
pub fn finite_f64(s: &str) -> std::result::Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|e| format!("`{s}` is not a number: {e}"))?;
    if v.is_finite() {
        Ok(v)
    } else {
        Err(format!("`{s}` is not a finite number"))
    }
}

/// Reads a UTF-8 text file, naming the file and the first bad byte otherwise.
pub fn read_text(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        microllm_core::Error::format(
            path,
            format!("not valid UTF-8 text (first invalid byte at offset {at})"),
        )
        .into()
    })
}

/// Sets candle's element-wise thread pool to one thread unless the user chose otherwise.
///
/// candle runs element-wise ops on its own pool beside rayon's, and its main thread spins
/// while the pool's workers finish; a training step issues thousands of small element-wise
/// ops, and on two cores (shared with other work) the spinning cost 15-20% of the step's CPU
/// time in `crates/microllm-distill/examples/step_phases.rs`. The matrix products still use
/// every core.
pub fn single_threaded_elementwise() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // SAFETY: callers call it before any thread of this process exists (no progress
        // bar, no thread pool, no model opened yet).
        unsafe { std::env::set_var("CANDLE_NUM_THREADS", "1") };
    }
}

/// Writes an `eval --json` document atomically (temporary file, then rename) and says where.
fn write_json(path: &std::path::Path, doc: &serde_json::Value) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(doc)? + "\n";
    microllm_io::write::write_file_atomic(path, |tmp| {
        std::fs::write(tmp, &text).map_err(|e| microllm_core::Error::io(tmp, e))
    })?;
    println!("wrote        {}", path.display());
    Ok(())
}
