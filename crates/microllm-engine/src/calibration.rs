//! What every calibrated pass starts from: the calibration windows' embeddings.

use candle_core::{Device, Tensor};
use microllm_core::{Error, ModelConfig, Result, TensorSource, names};

/// The embeddings `[1, seq, hidden]` of each calibration window, refusing token ids outside
/// the vocabulary (candle would read them as padding or fail without naming them).
pub(crate) fn embed_windows(
    cfg: &ModelConfig,
    src: &dyn TensorSource,
    windows: &[Vec<u32>],
) -> Result<Vec<Tensor>> {
    let table = src.load_shaped(names::EMBED_TOKENS, &[cfg.vocab_size, cfg.hidden_size])?;
    windows
        .iter()
        .map(|w| {
            if let Some(&bad) = w.iter().find(|&&id| id as usize >= cfg.vocab_size) {
                return Err(Error::Invalid(format!(
                    "calibration token id {bad} is outside the vocabulary of {} tokens",
                    cfg.vocab_size
                )));
            }
            let ids = Tensor::from_slice(w, w.len(), &Device::Cpu)?;
            microllm_models::scale_embeddings(
                cfg,
                table
                    .index_select(&ids, 0)?
                    .reshape((1, w.len(), cfg.hidden_size))?,
            )
        })
        .collect()
}
