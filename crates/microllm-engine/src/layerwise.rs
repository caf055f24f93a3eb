//! The streaming engine: one decoder block in memory at a time (DESIGN.md, "How data flows").
//!
//! Calibration windows are embedded once; then for each block: load it from the source,
//! quantize it true-sequentially on the hidden states entering it ([`quantize_block`]), which
//! leaves the quantized block's outputs as the next block's inputs (errors propagate, as in
//! GPTQ's sequential mode), store it in the [`BlockStore`], drop it. Peak memory is one block,
//! its Hessians and the calibration activations, never the model. Embeddings, final norm and
//! head are not quantized here: writers take them from the source.
//!
//! Every finished block and the hidden states after it are on disk, so a killed run resumes at
//! the block after the last one stored and computes bit for bit what it would have.

use std::time::Instant;

use candle_core::Tensor;
use microllm_core::{Error, ModelConfig, Progress, Result, TensorSource};
use microllm_models::{Activations, Block, Positions, RopeTables};
use microllm_prune::SparsityPattern;
use microllm_quant::QuantScheme;

use crate::block_quant::{BlockMethod, BlockPhases, BlockSpec, LinearRecord, compress_block};
use crate::store::BlockStore;

/// What to quantize and how.
pub struct LayerwiseJob<'a> {
    pub config: &'a ModelConfig,
    pub source: &'a dyn TensorSource,
    /// Calibration windows of token ids, all of the same length (unused by RTN).
    pub calibration: &'a [Vec<u32>],
    pub scheme: QuantScheme,
    pub method: BlockMethod,
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct LayerwiseSummary {
    /// One record per linear of every block, in block order.
    pub records: Vec<LinearRecord>,
    /// Wall time of each block (as recorded when it was computed, also for resumed blocks).
    pub block_seconds: Vec<f64>,
    /// Blocks found finished in the work directory.
    pub resumed_blocks: usize,
    /// Where the time of the blocks computed in this run went (resumed ones not counted).
    pub phases: BlockPhases,
}

/// What to prune and/or quantize, and how: the general form of [`LayerwiseJob`].
pub struct CompressJob<'a> {
    pub config: &'a ModelConfig,
    pub source: &'a dyn TensorSource,
    /// Calibration windows of token ids, all of the same length (unused without calibration).
    pub calibration: &'a [Vec<u32>],
    pub spec: BlockSpec,
    /// Unstructured sparsity of each block, overriding `spec`'s (a per-block schedule such as
    /// OWL's); `None` prunes every block as `spec` says.
    pub block_sparsity: Option<Vec<f64>>,
    /// How the calibration forward computes: `Some` keeps the weights the source holds packed
    /// (GGUF blocks) in their types, and runs the quantized linears on the GGUF blocks that
    /// hold their codes exactly, with these activations; `None` runs every block in f32.
    pub packed: Option<Activations>,
}

impl CompressJob<'_> {
    /// The spec of block `layer`: `spec`, with the block's scheduled sparsity.
    fn spec_for(&self, layer: usize) -> Result<BlockSpec> {
        let mut spec = self.spec;
        if let (Some(sparsities), Some(prune)) = (&self.block_sparsity, spec.prune.as_mut()) {
            let sparsity = *sparsities.get(layer).ok_or_else(|| {
                Error::Invalid(format!(
                    "the sparsity schedule has {} blocks, the model {}",
                    sparsities.len(),
                    self.config.num_layers
                ))
            })?;
            prune.pattern = SparsityPattern::Unstructured { sparsity };
            prune.pattern.validate()?;
        }
        Ok(spec)
    }
}

/// Quantizes every block of `job` into `store`, resuming after the blocks already there.
pub fn run_layerwise(
    job: &LayerwiseJob<'_>,
    store: &BlockStore,
    progress: &dyn Progress,
) -> Result<LayerwiseSummary> {
    let job = CompressJob {
        config: job.config,
        source: job.source,
        calibration: job.calibration,
        spec: BlockSpec {
            scheme: Some(job.scheme),
            method: job.method,
            prune: None,
            awq: None,
            smooth: None,
        },
        block_sparsity: None,
        packed: None,
    };
    run_compress(&job, store, progress)
}

/// Prunes and/or quantizes every block of `job` into `store`, resuming after the blocks
/// already there.
pub fn run_compress(
    job: &CompressJob<'_>,
    store: &BlockStore,
    progress: &dyn Progress,
) -> Result<LayerwiseSummary> {
    let cfg = job.config;
    let calibrated = job.spec.calibrated();
    if calibrated && job.calibration.is_empty() {
        return Err(Error::Invalid(
            "this pass measures calibration activations (GPTQ, AWQ, SmoothQuant): no \
             calibration samples were given"
                .into(),
        ));
    }
    let (start, mut hidden) = resume_point(job, store)?;
    let seqlen = job.calibration.first().map_or(1, Vec::len).max(1);
    let rope = RopeTables::new(cfg, seqlen)?;
    let at = Positions {
        rope: &rope,
        offset: 0,
    };
    progress.begin("quantizing blocks", cfg.num_layers as u64, "blocks");
    progress.advance(start as u64);
    if calibrated && start == 0 {
        hidden = crate::calibration::embed_windows(cfg, job.source, job.calibration)?;
    }
    let mut phases = BlockPhases::default();
    for layer in start..cfg.num_layers {
        let began = Instant::now();
        // Without calibration nothing runs the block: its weights are read dense, as always.
        let packed = job.packed.filter(|_| calibrated);
        let mut block = Block::load_with(cfg, layer, job.source, packed)?;
        let output = compress_block(&mut block, &mut hidden, at, &job.spec_for(layer)?)?;
        drop(block);
        let seconds = began.elapsed().as_secs_f64();
        phases += output.phases;
        store.save_block(layer, &output, seconds)?;
        if calibrated && layer + 1 < cfg.num_layers {
            store.save_hidden(layer, &hidden)?;
        }
        progress.advance(1);
    }
    progress.finish();
    let mut summary = LayerwiseSummary {
        records: Vec::new(),
        block_seconds: Vec::new(),
        resumed_blocks: start,
        phases,
    };
    for layer in 0..cfg.num_layers {
        let stored = store.load_block(layer)?;
        summary.records.extend(stored.records);
        summary.block_seconds.push(stored.seconds);
    }
    Ok(summary)
}

/// The first block to compute and, for calibrated runs resuming, the hidden states entering it.
fn resume_point(job: &CompressJob<'_>, store: &BlockStore) -> Result<(usize, Vec<Tensor>)> {
    let done = (0..job.config.num_layers)
        .take_while(|&l| store.has_block(l))
        .count();
    if !job.spec.calibrated() {
        return Ok((done, Vec::new()));
    }
    if done == job.config.num_layers {
        return Ok((done, Vec::new()));
    }
    match store.load_hidden()? {
        // Blocks after `after` may exist (killed between the two writes): recomputed.
        Some((after, hidden)) if after < done => Ok((after + 1, hidden)),
        _ => Ok((0, Vec::new())),
    }
}
