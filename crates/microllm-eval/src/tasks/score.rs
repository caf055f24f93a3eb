//! Log-likelihoods of an item's choices, with the context the choices share run once.

use candle_core::{Device, Tensor};
use microllm_core::{Error, Result};
use microllm_models::{Decoder, KvCache};

use super::{Encode, Request, TaskProtocol};
use crate::perplexity::{HEAD_ROWS, rows_nll};

/// A choice as the model runs it: its tokens, and the index of the first one scored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Sequence {
    pub tokens: Vec<u32>,
    pub first: usize,
}

/// Summed log-probability of a choice's scored tokens, and how many there are.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct ChoiceScore {
    pub logprob: f64,
    pub tokens: usize,
}

/// The requests' token sequences under `protocol` (see the module docs of `tasks`), at most
/// `max_len + 1` tokens each (the harness keeps the last ones, so the model sees `max_len`).
pub(crate) fn tokenize(
    encoder: &dyn Encode,
    requests: &[Request],
    protocol: TaskProtocol,
    add_special: bool,
    max_len: usize,
) -> Result<Vec<Sequence>> {
    let seqs = match protocol {
        TaskProtocol::LmEval => requests
            .iter()
            .map(|r| harness_pair(encoder, r, add_special, max_len))
            .collect::<Result<Vec<_>>>()?,
        TaskProtocol::LlamaCpp => {
            let tokens = requests
                .iter()
                .map(|r| encoder.encode(&format!("{}{}", r.context, r.continuation), true))
                .collect::<Result<Vec<_>>>()?;
            // llama.cpp scores from the first token where the choices differ.
            let shortest = tokens.iter().map(Vec::len).min().unwrap_or(0);
            let first = common_prefix(tokens.iter().map(Vec::as_slice))
                .min(shortest.saturating_sub(1))
                .max(1);
            if let Some(t) = tokens.iter().find(|t| t.len() > max_len) {
                return Err(Error::Invalid(format!(
                    "a choice has {} tokens, more than the model's context of {max_len}",
                    t.len()
                )));
            }
            tokens
                .into_iter()
                .map(|tokens| Sequence { tokens, first })
                .collect()
        }
    };
    if let Some(bad) = seqs
        .iter()
        .position(|s| s.first == 0 || s.first >= s.tokens.len())
    {
        return Err(Error::Invalid(format!(
            "choice {bad} ({:?} after {:?}) has no token to score after its context",
            requests[bad].continuation, requests[bad].context
        )));
    }
    Ok(seqs)
}

/// The harness's `_encode_pair`: trailing whitespace of the context moves to the
/// continuation; the continuation's tokens are those of the whole string past the context's
/// own tokens; the sequence is cut from the left to `max_len + 1` tokens.
fn harness_pair(
    encoder: &dyn Encode,
    request: &Request,
    add_special: bool,
    max_len: usize,
) -> Result<Sequence> {
    let trimmed = request.context.trim_end();
    let moved = &request.context[trimmed.len()..];
    let whole = encoder.encode(
        &format!("{trimmed}{moved}{}", request.continuation),
        add_special,
    )?;
    let mut tokens = encoder.encode(trimmed, add_special)?;
    let mut first = tokens.len();
    tokens.extend_from_slice(whole.get(first..).unwrap_or(&[]));
    if tokens.len() > max_len + 1 {
        let cut = tokens.len() - (max_len + 1);
        tokens.drain(..cut);
        first = first.saturating_sub(cut);
    }
    Ok(Sequence { tokens, first })
}

/// Length of the prefix all `seqs` share.
fn common_prefix<'a>(mut seqs: impl Iterator<Item = &'a [u32]>) -> usize {
    let Some(head) = seqs.next() else {
        return 0;
    };
    seqs.fold(head.len(), |n, s| {
        head.iter()
            .zip(s)
            .take(n)
            .take_while(|(a, b)| a == b)
            .count()
    })
}

/// The final hidden states of `seqs` `[seqs.len(), longest - shared, hidden]` (row `r` of a
/// sequence is its position `shared + r`), with their first `shared` tokens (the same in
/// all) run once into a KV cache and the rest as one batch continuing from it, each padded at
/// its end to the longest (a causal model's earlier positions never see the padding); and the
/// tokens run through the model.
pub(crate) fn final_hidden_from_prefix(
    model: &Decoder,
    seqs: &[&[u32]],
    shared: usize,
) -> Result<(Tensor, usize)> {
    let mut cache = KvCache::new(model.config());
    if shared > 0 {
        let ids = Tensor::from_slice(&seqs[0][..shared], (1, shared), &Device::Cpu)?;
        model.final_hidden_cached(&ids, &mut cache)?;
    }
    let tails: Vec<&[u32]> = seqs.iter().map(|s| &s[shared..]).collect();
    let width = tails.iter().map(|t| t.len()).max().unwrap_or(0);
    let mut batch = Vec::with_capacity(tails.len() * width);
    for tail in &tails {
        batch.extend_from_slice(tail);
        let pad = *tail
            .last()
            .expect("every sequence has a token past the shared ones");
        batch.resize(batch.len() + width - tail.len(), pad);
    }
    cache.repeat_batch(seqs.len())?;
    let ids = Tensor::from_vec(batch, (seqs.len(), width), &Device::Cpu)?;
    let hidden = model.final_hidden_cached(&ids, &mut cache)?;
    Ok((
        hidden,
        shared + tails.iter().map(|t| t.len()).sum::<usize>(),
    ))
}

/// Scores every sequence; returns the scores and the tokens run through the model. The
/// tokens all sequences share before any is scored are run once; the sequences' own tokens
/// then run as one batch continuing from that cache, each padded at its end to the longest
/// (a causal model's earlier positions never see the padding).
pub(crate) fn score_choices(
    model: &Decoder,
    seqs: &[Sequence],
) -> Result<(Vec<ChoiceScore>, usize)> {
    let first_scored = seqs.iter().map(|s| s.first).min().unwrap_or(1);
    let shared = common_prefix(seqs.iter().map(|s| s.tokens.as_slice())).min(first_scored - 1);
    // The last token of a sequence predicts nothing that is scored.
    let inputs: Vec<&[u32]> = seqs
        .iter()
        .map(|s| &s.tokens[..s.tokens.len() - 1])
        .collect();
    let (hidden, run) = final_hidden_from_prefix(model, &inputs, shared)?;

    let mut scores = Vec::with_capacity(seqs.len());
    for (k, seq) in seqs.iter().enumerate() {
        let targets = &seq.tokens[seq.first..];
        let row0 = seq.first - 1 - shared;
        let mut nll = 0.0;
        for offset in (0..targets.len()).step_by(HEAD_ROWS) {
            let n = HEAD_ROWS.min(targets.len() - offset);
            let rows = hidden.narrow(0, k, 1)?.narrow(1, row0 + offset, n)?;
            let logits = model.head(&rows)?.squeeze(0)?;
            nll += rows_nll(&logits, &targets[offset..offset + n])?;
        }
        scores.push(ChoiceScore {
            logprob: -nll,
            tokens: targets.len(),
        });
    }
    Ok((scores, run))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A toy encoder: one token per byte, BOS 0 when asked, spaces kept with the next word
    /// as byte-level BPE does (here simply: bytes).
    fn bytes(text: &str, add_special: bool) -> Result<Vec<u32>> {
        let mut ids: Vec<u32> = add_special.then_some(0).into_iter().collect();
        ids.extend(text.bytes().map(u32::from));
        Ok(ids)
    }

    fn request(context: &str, continuation: &str) -> Request {
        Request {
            context: context.into(),
            continuation: continuation.into(),
            norm_chars: continuation.trim().chars().count(),
        }
    }

    #[test]
    fn harness_moves_trailing_space_to_the_continuation() {
        let seqs = tokenize(
            &bytes,
            &[request("Q: ", "ab")],
            TaskProtocol::LmEval,
            false,
            1000,
        )
        .unwrap();
        assert_eq!(seqs[0].tokens, b"Q: ab".map(u32::from).to_vec());
        assert_eq!(
            seqs[0].first, 2,
            "the space is scored with the continuation"
        );
    }

    #[test]
    fn harness_cuts_long_sequences_from_the_left() {
        let seqs = tokenize(
            &bytes,
            &[request("abcdef", "gh")],
            TaskProtocol::LmEval,
            false,
            4,
        )
        .unwrap();
        assert_eq!(seqs[0].tokens, b"defgh".map(u32::from).to_vec());
        assert_eq!(seqs[0].first, 3);
    }

    #[test]
    fn llama_scores_from_where_the_choices_differ() {
        let seqs = tokenize(
            &bytes,
            &[request("ctx", " the cat"), request("ctx", " the dog")],
            TaskProtocol::LlamaCpp,
            false,
            1000,
        )
        .unwrap();
        // BOS + "ctx the " is shared: 1 + 8 tokens.
        assert_eq!(seqs[0].tokens[0], 0);
        assert_eq!(seqs[0].first, 9);
        assert_eq!(seqs[1].first, 9);
    }

    #[test]
    fn empty_continuations_are_refused() {
        let err = tokenize(
            &bytes,
            &[request("ctx", "")],
            TaskProtocol::LmEval,
            false,
            100,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("no token to score"), "{err}");
    }

    #[test]
    fn common_prefix_of_sequences() {
        let a: &[u32] = &[1, 2, 3];
        assert_eq!(common_prefix([a, &[1, 2, 4], &[1, 2]].into_iter()), 2);
        assert_eq!(common_prefix([a].into_iter()), 3);
        assert_eq!(common_prefix(std::iter::empty()), 0);
    }
}
