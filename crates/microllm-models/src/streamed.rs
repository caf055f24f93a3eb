//! A decoder that holds one block at a time, for models larger than memory.
//!
//! [`crate::Decoder`] keeps every weight as f32: 27 GB for a 7B model, more than the 24 GiB a
//! CPU box has. Computing teacher logits does not need that: a batch of windows goes through
//! the embedding, then each block in turn (loaded from the memory-mapped checkpoint, run on
//! the whole batch, dropped), then the final norm and the head. Peak memory is the largest
//! of one block's weights, the embedding or head matrix, and the batch's activations and
//! logits; the price is reading every weight once per batch, so callers batch as many
//! windows as their activation budget allows.

use candle_core::Tensor;
use microllm_core::{ModelConfig, Progress, Result, TensorSource, names};

use crate::attention::{Positions, RopeTables};
use crate::block::{Block, NoTap};
use crate::decoder::{checked_ids, load_head, scale_embeddings};
use crate::layers::Norm;

/// A model read block by block from `src` on every forward pass.
pub struct StreamedDecoder<'a> {
    cfg: ModelConfig,
    src: &'a dyn TensorSource,
    rope: RopeTables,
}

impl std::fmt::Debug for StreamedDecoder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamedDecoder")
            .field("family", &self.cfg.family)
            .field("layers", &self.cfg.num_layers)
            .finish_non_exhaustive()
    }
}

impl<'a> StreamedDecoder<'a> {
    /// A decoder over `src` for sequences of up to `max_seq` tokens. Nothing is loaded yet.
    pub fn new(cfg: &ModelConfig, src: &'a dyn TensorSource, max_seq: usize) -> Result<Self> {
        Ok(Self {
            cfg: cfg.clone(),
            src,
            rope: RopeTables::new(cfg, max_seq.max(1))?,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// Logits `[batch, seq, vocab]` of `ids` (u32 `[batch, seq]`), positions from 0, the
    /// same function as [`crate::Decoder::forward`]. `progress` advances by one per block.
    pub fn forward(&self, ids: &Tensor, progress: &dyn Progress) -> Result<Tensor> {
        let cfg = &self.cfg;
        let (b, s) = ids.dims2()?;
        let flat = checked_ids(cfg, ids)?;
        let (v, h) = (cfg.vocab_size, cfg.hidden_size);
        let mut x = {
            let embed = self.src.load_shaped(names::EMBED_TOKENS, &[v, h])?;
            let x = embed.index_select(&flat, 0)?.reshape((b, s, h))?;
            scale_embeddings(cfg, x)?
        };
        let at = Positions {
            rope: &self.rope,
            offset: 0,
        };
        progress.begin("blocks", cfg.num_layers as u64, "blocks");
        for layer in 0..cfg.num_layers {
            let block = Block::load(cfg, layer, self.src)?;
            x = block.forward(&x, at, None, &mut NoTap)?;
            progress.advance(1);
        }
        progress.finish();
        let normed = Norm::load(self.src, names::final_norm(cfg.family), cfg)?.forward(&x)?;
        drop(x);
        // A tied head reloads the embedding, dropped after the lookup to keep the peak low.
        let head = load_head(cfg, self.src, None, || {
            Ok(crate::LinearWeight::Dense(
                self.src.load_shaped(names::EMBED_TOKENS, &[v, h])?,
            ))
        })?;
        head.forward(&normed)
    }
}
