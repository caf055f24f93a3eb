//! The `microllm` command line.
//!
//! This binary only parses arguments, renders progress and prints results: every piece of
//! work is a call into the library crates, which return values and report progress through
//! [`microllm_core::Progress`]. Errors print their whole chain plus a `hint:` line and exit
//! non-zero.

mod commands;
mod progress;
mod render;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Make language models small enough for laptops, phones and edge boxes, and measure what
/// it cost.
///
/// A MODEL is a Hugging Face directory (config.json + safetensors), a .gguf file, or a hub
/// repo id such as HuggingFaceTB/SmolLM2-135M (fetched into the local Hugging Face cache;
/// HF_HUB_OFFLINE=1 uses the cache only). Append :FILE.gguf to a repo id to pick one GGUF file.
#[derive(Debug, Parser)]
#[command(
    name = "microllm",
    version,
    propagate_version = true,
    after_help = "Examples:
  microllm inspect  --model SmolLM2-135M-Instruct.Q4_1.gguf
  microllm eval     --model SmolLM2-135M-Instruct.Q4_1.gguf --data wiki.eval.txt --ctx 512
  microllm generate --model HuggingFaceTB/SmolLM2-135M --prompt \"The capital of France is\"
  microllm convert  --model model.gguf --out model-hf --dtype bf16
  microllm quantize --model model-hf --bits 4 --calib c4.calib.txt --out model-q4.gguf
  microllm prune    --model model-hf --method wanda --pattern 2:4 --calib c4.calib.txt --out pruned
  microllm prune    --model model-hf --structured --mlp-keep 0.75 --drop-layers 4 --calib c4.calib.txt --out small
  microllm run      configs/gptq-w4-gguf.yaml --gate ppl_increase_pct<=5 --junit gates.xml

Exit status: 0 success, 1 error, 2 bad usage, 3 a gate failed (microllm run)."
)]
struct Cli {
    /// Worker threads for every pool (matrix products, GPTQ solves, element-wise work);
    /// default: one per core, or RAYON_NUM_THREADS when set.
    #[arg(long, global = true, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    threads: Option<u16>,
    #[command(subcommand)]
    command: Command,
}

/// Sizes the thread pools before any exists: rayon's global pool (which faer also runs on)
/// and candle's both read `RAYON_NUM_THREADS` when they start.
fn set_threads(threads: Option<u16>) {
    if let Some(n) = threads {
        // SAFETY: called from `main` right after argument parsing, before any thread of this
        // process exists.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", n.to_string()) };
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show a model's architecture, parameter count, tensor types and size.
    Inspect(commands::inspect::Args),
    /// Measure perplexity on a text file.
    Eval(commands::eval::Args),
    /// Write the model's logits for given token ids (for comparisons with other runtimes).
    Logits(commands::logits::Args),
    /// Continue a prompt greedily (a quick sanity check of a model).
    Generate(commands::generate::Args),
    /// Convert any model source to a Hugging Face directory that transformers loads.
    Convert(commands::convert::Args),
    /// Quantize with GPTQ or round-to-nearest, block by block, to GGUF or safetensors.
    Quantize(commands::quantize::Args),
    /// Prune weights (magnitude, Wanda, SparseGPT, N:M) or whole channels, heads and blocks.
    Prune(commands::prune::Args),
    /// Run a YAML recipe: passes, output, reports (JSON, Markdown, HTML), gates.
    Run(commands::run::Args),
    /// Validate a recipe, or print the recipe JSON Schema.
    Recipe(commands::recipe::Args),
    /// Distill a teacher into a student (live or from stored teacher logits), or store logits.
    Distill(Box<commands::distill::Args>),
}

/// Large buffers on transparent huge pages: see [`microllm_core::alloc`] for the page faults
/// this saves.
#[global_allocator]
static ALLOC: microllm_core::alloc::HugePageAlloc = microllm_core::alloc::HugePageAlloc;

/// The exit status of a run whose gates failed (distinct from errors, 1, and usage, 2).
const GATES_FAILED: u8 = 3;

/// A closed output pipe (`microllm inspect | head`) ends the process quietly, as it does for
/// other command-line tools, instead of a panic in `println!`: Rust ignores SIGPIPE by
/// default.
#[cfg(unix)]
fn die_quietly_on_closed_pipe() {
    // SAFETY: restoring a signal's default disposition at start-up, before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() -> ExitCode {
    quiet_library_backtraces();
    #[cfg(unix)]
    die_quietly_on_closed_pipe();
    let cli = Cli::parse();
    set_threads(cli.threads);
    use commands::pipeline::Verdict;
    let done = |r: anyhow::Result<()>| r.map(|()| Verdict::Planned);
    let result = match cli.command {
        Command::Inspect(args) => done(commands::inspect::run(args)),
        Command::Eval(args) => done(commands::eval::run(args)),
        Command::Logits(args) => done(commands::logits::run(args)),
        Command::Generate(args) => done(commands::generate::run(args)),
        Command::Convert(args) => done(commands::convert::run(args)),
        Command::Quantize(args) => commands::quantize::run(args),
        Command::Prune(args) => commands::prune::run(args),
        Command::Run(args) => commands::run::run(args),
        Command::Recipe(args) => done(commands::recipe::run(args)),
        Command::Distill(args) => commands::distill::run(*args),
    };
    match result {
        Ok(Verdict::Ran {
            gates_passed: false,
        }) => {
            eprintln!("error: a gate failed (see the report); exit status {GATES_FAILED}");
            ExitCode::from(GATES_FAILED)
        }
        Ok(_) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            if let Some(hint) = hint(&err) {
                eprintln!("hint: {hint}");
            }
            ExitCode::FAILURE
        }
    }
}

/// candle attaches a captured backtrace to its errors when `RUST_BACKTRACE` is set, and it
/// ended up inside the messages microllm prints. Messages must read the same in any
/// environment, so library backtraces stay off unless `RUST_LIB_BACKTRACE` asks for them;
/// panics still follow `RUST_BACKTRACE`.
fn quiet_library_backtraces() {
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        // SAFETY: called first thing in `main`, before any other thread exists.
        unsafe { std::env::set_var("RUST_LIB_BACKTRACE", "0") };
    }
}

/// A suggestion for the user, when the error's kind makes one obvious.
fn hint(err: &anyhow::Error) -> Option<String> {
    use microllm_core::Error;
    const DIVERGED: &str = "lower the learning rate (--lr; a distill pass's `lr`), raise the \
         warmup (--warmup-steps; `warmup_steps`) or tighten clipping (--clip; `clip`); --resume \
         continues from the checkpoint";
    if let Some(microllm_distill::DistillError::NonFinite { .. }) = err.downcast_ref() {
        return Some(DIVERGED.into());
    }
    let core = err.chain().find_map(|e| e.downcast_ref::<Error>())?;
    Some(match core {
        Error::Diverged(_) => DIVERGED.into(),
        Error::UnsupportedArchitecture { supported, .. } => {
            format!("microllm runs these families: {supported}")
        }
        Error::Source { .. } => "pass a model directory, a .gguf file, or a hub repo id \
             (owner/name); set HF_HUB_OFFLINE=1 to use only the local cache"
            .into(),
        Error::Format { .. } | Error::TensorData { .. } => {
            "the file looks damaged or incomplete: download or convert it again".into()
        }
        Error::NonFinite { .. } => "the model's weights hold NaN or infinite values, or \
             values the output type cannot represent: check the source model, or choose a \
             wider output type"
            .into(),
        Error::MissingTensor { .. } | Error::Shape { .. } | Error::UnexpectedTensor { .. } => {
            "the weights do not match config.json: check that both come from the same model".into()
        }
        Error::Config { .. } => "fix or complete the named key in the configuration file".into(),
        _ => return recipe_hint(err),
    })
}

/// A hint for recipe errors.
fn recipe_hint(err: &anyhow::Error) -> Option<String> {
    err.chain()
        .find_map(|e| e.downcast_ref::<microllm_pipeline::recipe::RecipeError>())
        .map(|_| {
            "docs/recipes.md lists every key; `microllm recipe schema` prints the JSON Schema"
                .into()
        })
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Clap's own consistency checks (duplicate flags, bad defaults) over every subcommand.
    #[test]
    fn command_line_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
