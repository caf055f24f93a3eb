//! The whole model: embeddings, blocks, final norm and head.

use std::sync::{Arc, RwLock};

use candle_core::{DType, Tensor};
use microllm_core::{Error, ModelConfig, Result, TensorSource, names};

use crate::attention::{KvCache, Positions, RopeTables};
use crate::block::{Block, NoTap};
use crate::layers::{Linear, LinearWeight, Norm, load_weight};
use crate::packed::Activations;

/// A decoder-only transformer of any supported family.
#[derive(Debug, Clone)]
pub struct Decoder {
    cfg: ModelConfig,
    embed: LinearWeight,
    blocks: Vec<Block>,
    final_norm: Norm,
    /// The output head; with tied embeddings its weight is the embedding matrix.
    head: Linear,
    /// Rotary tables for the first [`INITIAL_POSITIONS`] positions (fewer when the model has
    /// fewer); longer sequences use [`Self::longer`].
    rope: RopeTables,
    /// Tables grown on demand past `rope`, up to `max_position_embeddings`, kept for reuse.
    longer: Arc<RwLock<Option<Arc<RopeTables>>>>,
}

/// Positions the rotary tables cover when a decoder is loaded. Tables sized to a config's
/// `max_position_embeddings` would take 67 MB for a 128k-context model (131072 positions x 64
/// pairs x cos and sin x 4 bytes) and cannot be allocated at all for a hostile 2^40, so they
/// start at what evaluations use and grow when a sequence needs it.
pub const INITIAL_POSITIONS: usize = 4096;

impl Decoder {
    /// Loads every weight from `src` as f32, checking shapes against `cfg`.
    pub fn load(cfg: &ModelConfig, src: &dyn TensorSource) -> Result<Self> {
        Self::load_with(cfg, src, None)
    }

    /// As [`load`](Self::load); with `packed`, every matrix the source holds in a packed type
    /// (embeddings and output head included) stays in it, so the model takes about its file's
    /// memory, and products run on the packed blocks with those activations.
    pub fn load_with(
        cfg: &ModelConfig,
        src: &dyn TensorSource,
        packed: Option<Activations>,
    ) -> Result<Self> {
        let (v, h) = (cfg.vocab_size, cfg.hidden_size);
        let embed = match packed {
            Some(acts) => load_weight(src, names::EMBED_TOKENS, [v, h], acts)?,
            None => LinearWeight::Dense(src.load_shaped(names::EMBED_TOKENS, &[v, h])?),
        };
        let blocks = (0..cfg.num_layers)
            .map(|layer| Block::load_with(cfg, layer, src, packed))
            .collect::<Result<Vec<_>>>()?;
        let final_norm = Norm::load(src, names::final_norm(cfg.family), cfg)?;
        let head = load_head(cfg, src, packed, || Ok(embed.clone()))?;
        Ok(Self {
            cfg: cfg.clone(),
            embed,
            blocks,
            final_norm,
            head,
            rope: RopeTables::new(cfg, cfg.max_position_embeddings.clamp(1, INITIAL_POSITIONS))?,
            longer: Arc::default(),
        })
    }

    /// The configuration the decoder was loaded with.
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// The blocks, in order.
    pub fn blocks(&self) -> &[Block] {
        &self.blocks
    }

    /// The blocks, for stages that rewrite weights in place.
    pub fn blocks_mut(&mut self) -> &mut [Block] {
        &mut self.blocks
    }

    /// The rotary tables of the first positions ([`INITIAL_POSITIONS`], or
    /// `max_position_embeddings` when smaller), shared by every block.
    pub fn rope(&self) -> &RopeTables {
        &self.rope
    }

    /// Tables covering positions `0..end`: the initial ones, or tables grown (and kept) up to
    /// `max_position_embeddings`; a sequence beyond it is an error.
    fn tables_for(&self, end: usize) -> Result<Option<Arc<RopeTables>>> {
        if end <= self.rope.positions() {
            return Ok(None);
        }
        let max = self.cfg.max_position_embeddings;
        if end > max {
            return Err(Error::Invalid(format!(
                "position {end} is beyond the model's context of {max} positions \
                 (max_position_embeddings)"
            )));
        }
        // A panic while the tables were being replaced leaves either the old or the new
        // (complete) value in the slot, so a poisoned lock is still safe to read.
        if let Some(t) = self
            .longer
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            && t.positions() >= end
        {
            return Ok(Some(t.clone()));
        }
        let mut slot = self.longer.write().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = slot.as_ref()
            && t.positions() >= end
        {
            return Ok(Some(t.clone()));
        }
        // Doubling keeps a long generation from rebuilding the tables at every token.
        let positions = end
            .max(2 * self.rope.positions())
            .next_power_of_two()
            .min(max);
        let tables = Arc::new(RopeTables::new(&self.cfg, positions)?);
        *slot = Some(tables.clone());
        Ok(Some(tables))
    }

    /// Token embeddings `[batch, seq, hidden]` of `ids` (u32 `[batch, seq]`).
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, s) = ids.dims2()?;
        let flat = checked_ids(&self.cfg, ids)?;
        let rows = match &self.embed {
            LinearWeight::Dense(w) => w.index_select(&flat, 0)?,
            LinearWeight::Packed(p) => p.gather_rows(&flat.to_vec1::<u32>()?)?,
        };
        let x = rows.reshape((b, s, self.cfg.hidden_size))?;
        scale_embeddings(&self.cfg, x)
    }

    /// Final norm and output head: logits `[batch, seq, vocab]`.
    pub fn head(&self, hidden: &Tensor) -> Result<Tensor> {
        self.head.forward(&self.final_norm.forward(hidden)?)
    }

    /// Logits `[batch, seq, vocab]` of `ids` (u32 `[batch, seq]`), positions from 0.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        self.head(&self.final_hidden(ids)?)
    }

    /// The last block's output `[batch, seq, hidden]`, before the final norm: with
    /// [`head`](Self::head) on the rows that are used, the output head (for a 50k-token
    /// vocabulary a fifth of a forward's work) runs only where its logits are needed.
    pub fn final_hidden(&self, ids: &Tensor) -> Result<Tensor> {
        let longer = self.tables_for(ids.dim(1)?)?;
        let mut x = self.embed(ids)?;
        let at = self.positions_in(longer.as_deref(), 0);
        for block in &self.blocks {
            x = block.forward(&x, at, None, &mut NoTap)?;
        }
        Ok(x)
    }

    /// Logits and hidden states: `[embeddings, block 0 out, ..., last block out after the
    /// final norm]` (the transformers convention for `output_hidden_states`).
    pub fn forward_with_hidden(&self, ids: &Tensor) -> Result<(Tensor, Vec<Tensor>)> {
        let longer = self.tables_for(ids.dim(1)?)?;
        let mut x = self.embed(ids)?;
        let at = self.positions_in(longer.as_deref(), 0);
        let mut hidden = vec![x.clone()];
        for block in &self.blocks {
            x = block.forward(&x, at, None, &mut NoTap)?;
            hidden.push(x.clone());
        }
        let normed = self.final_norm.forward(&x)?;
        *hidden.last_mut().expect("embeddings pushed") = normed.clone();
        Ok((self.head.forward(&normed)?, hidden))
    }

    /// Logits of the new tokens `ids`, continuing the sequence held in `cache`.
    pub fn forward_cached(&self, ids: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        self.head(&self.final_hidden_cached(ids, cache)?)
    }

    /// The last block's output for the new tokens `ids`, continuing the sequence held in
    /// `cache` (see [`final_hidden`](Self::final_hidden) for why the head is left out).
    pub fn final_hidden_cached(&self, ids: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        let offset = cache.len();
        let longer = self.tables_for(offset + ids.dim(1)?)?;
        let mut x = self.embed(ids)?;
        let at = self.positions_in(longer.as_deref(), offset);
        for (block, layer_cache) in self.blocks.iter().zip(cache.layers.iter_mut()) {
            x = block.forward(&x, at, Some(layer_cache), &mut NoTap)?;
        }
        Ok(x)
    }

    /// Positions for a pass starting at `offset`, over the initial tables ([`Self::rope`]).
    pub fn positions(&self, offset: usize) -> Positions<'_> {
        self.positions_in(None, offset)
    }

    /// Runs `f` with the positions `offset..offset + seq`, over tables grown when the
    /// initial ones are too short: for callers that run the blocks themselves.
    pub fn with_positions<R>(
        &self,
        offset: usize,
        seq: usize,
        f: impl FnOnce(Positions<'_>) -> Result<R>,
    ) -> Result<R> {
        let longer = self.tables_for(offset + seq)?;
        f(self.positions_in(longer.as_deref(), offset))
    }

    fn positions_in<'a>(&'a self, longer: Option<&'a RopeTables>, offset: usize) -> Positions<'a> {
        Positions {
            rope: longer.unwrap_or(&self.rope),
            offset,
        }
    }
}

/// `ids` flattened to u32, every id checked against the vocabulary: candle reads an
/// out-of-range id as an error, but u32::MAX as padding (zeros), so name the bad id either way.
pub(crate) fn checked_ids(cfg: &ModelConfig, ids: &Tensor) -> Result<Tensor> {
    let flat = ids.flatten_all()?.to_dtype(DType::U32)?;
    if let Some(&bad) = flat
        .to_vec1::<u32>()?
        .iter()
        .find(|&&id| id as usize >= cfg.vocab_size)
    {
        return Err(Error::Invalid(format!(
            "token id {bad} is outside the vocabulary of {} tokens",
            cfg.vocab_size
        )));
    }
    Ok(flat)
}

/// The output head; with tied embeddings its weight is `tied()` (the embedding matrix).
pub(crate) fn load_head(
    cfg: &ModelConfig,
    src: &dyn TensorSource,
    packed: Option<Activations>,
    tied: impl FnOnce() -> Result<LinearWeight>,
) -> Result<Linear> {
    let (v, h) = (cfg.vocab_size, cfg.hidden_size);
    if !cfg.tie_word_embeddings {
        return Linear::load_with(src, names::LM_HEAD, [v, h], cfg.lm_head_bias, packed);
    }
    let bias = if cfg.lm_head_bias {
        Some(src.load_shaped(&format!("{}.bias", names::LM_HEAD), &[v])?)
    } else {
        None
    };
    Ok(match tied()? {
        LinearWeight::Dense(w) => Linear::new(w, bias),
        LinearWeight::Packed(p) => Linear::packed(p, bias),
    })
}

/// Token embeddings as the first block sees them: multiplied by `sqrt(hidden_size)` in the
/// families that scale them (Gemma), unchanged otherwise.
pub fn scale_embeddings(cfg: &ModelConfig, x: Tensor) -> Result<Tensor> {
    Ok(match cfg.embedding_scale() {
        Some(scale) => (x * scale)?,
        None => x,
    })
}
