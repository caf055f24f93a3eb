//! llama-perplexity's `--winogrande` scoring, rule for rule, so a figure sets beside its output.
//!
//! llama.cpp does not score WinoGrande the way the harness does. For a sentence `first _
//! second` and options `a`, `b` it tokenizes `first + a + second` and `first + b + second`
//! (with BOS) and, when both differ from their shared prefix by more than 3 tokens, scores only
//! the tokens after `first + option` (tokenized on its own to find where that ends); otherwise
//! it scores from the first token where the two differ. The last token of each sequence is
//! left out when more than one would be scored, and each option is ranked by its mean
//! log-probability per scored token, ties going to the second option.
//!
//! Two quirks are kept on purpose, since they decide which items are scored and how. It never
//! scores the file's last line: its `-f` reader drops the file's final newline, and its CSV
//! loop stops at end of file before using the line it has just read (a file of 200 lines
//! gives "loaded 199 tasks"); the draw of `--winogrande-tasks N` is made from those. And it
//! lays both sequences' logits out in one array (the shared prefix's last row, then the first
//! sequence's rows, then the second's); when it scores from the shared prefix it reads the
//! second option's first logits from the wrong row, the first sequence's last one (its own
//! source marks this `FIXME`). Reproducing
//! that offset arithmetic is what makes per-item scores equal to its printed ones.

use candle_core::Tensor;
use microllm_core::{Error, Result};
use microllm_models::Decoder;

use super::score::final_hidden_from_prefix;
use super::{Encode, Item};
use crate::perplexity::rows_nll;

/// llama.cpp's `k_min_trailing_ctx`: the options' own tokens are skipped only when both
/// sequences run on past the shared prefix by more than this.
const MIN_TRAILING: usize = 3;

/// An item tokenized as llama-perplexity tokenizes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WinoTokens {
    /// `first + option + second`, with BOS, per option.
    pub seqs: [Vec<u32>; 2],
    /// Tokens of `first + option`, per option.
    pub n_base: [usize; 2],
    /// Tokens the two sequences share at their start.
    pub common: usize,
}

/// Which logits row predicts which token, in terms of the sequences: `(sequence, position,
/// target)`, per option.
pub(crate) type Plan = [Vec<(usize, usize, u32)>; 2];

pub(crate) fn tokenize(encoder: &dyn Encode, item: &Item, max_len: usize) -> Result<WinoTokens> {
    let blank = item.question.find('_').ok_or_else(|| {
        Error::Invalid(format!("sentence {:?} has no `_` to fill", item.question))
    })?;
    let (first, second) = (&item.question[..blank], &item.question[blank + 1..]);
    let [a, b] = &item.choices[..] else {
        return Err(Error::Invalid(format!(
            "WinoGrande has 2 options, the item has {}",
            item.choices.len()
        )));
    };
    let seqs = [
        encoder.encode(&format!("{first}{a}{second}"), true)?,
        encoder.encode(&format!("{first}{b}{second}"), true)?,
    ];
    let n_base = [
        encoder.encode(&format!("{first}{a}"), true)?.len(),
        encoder.encode(&format!("{first}{b}"), true)?.len(),
    ];
    let common = seqs[0]
        .iter()
        .zip(&seqs[1])
        .take_while(|(x, y)| x == y)
        .count();
    if let Some(seq) = seqs.iter().find(|s| s.len() > max_len) {
        return Err(Error::Invalid(format!(
            "an option's sentence has {} tokens, more than the model's context of {max_len}",
            seq.len()
        )));
    }
    if common == 0 {
        return Err(Error::Invalid(
            "the two sentences share no first token (no BOS and `_` at the start); \
             llama-perplexity cannot score such an item"
                .into(),
        ));
    }
    if seqs.iter().any(|s| s.len() == common) {
        return Err(Error::Invalid(format!(
            "options {a:?} and {b:?} leave one sentence a prefix of the other in tokens"
        )));
    }
    Ok(WinoTokens {
        seqs,
        n_base,
        common,
    })
}

/// The rows llama-perplexity reads for each option, as sequence positions (see the module
/// docs for the second option's first row).
pub(crate) fn plan(t: &WinoTokens) -> Result<Plan> {
    let cp = t.common;
    let len = [t.seqs[0].len(), t.seqs[1].len()];
    let skip_options = len.iter().all(|&l| l - cp > MIN_TRAILING);
    // Row `li` of llama.cpp's array: 0 is the shared prefix's last position, then the first
    // sequence's positions from `cp`, then the second's.
    let row = |li: usize| -> (usize, usize) {
        if li <= len[0] - cp {
            (0, cp - 1 + li)
        } else {
            (1, cp + li - 1 - (len[0] - cp))
        }
    };
    let mut plan: Plan = [Vec::new(), Vec::new()];
    for s in 0..2 {
        let base = if skip_options { t.n_base[s] } else { cp };
        if base < cp {
            return Err(Error::Invalid(format!(
                "option {} ends inside the tokens both sentences share ({base} < {cp}); \
                 llama-perplexity would read outside its logits",
                s + 1
            )));
        }
        let last = usize::from(len[s] - base > 1);
        // Where option `s`'s first scored row sits in llama.cpp's array.
        let start = if s == 0 {
            base - cp
        } else {
            (len[0] - cp) + base - cp
        };
        for (k, j) in (base - 1..len[s].saturating_sub(1 + last)).enumerate() {
            let (seq, pos) = row(start + k);
            if pos >= len[seq] {
                return Err(Error::Invalid(format!(
                    "option {} reads row {pos} of a {}-token sentence",
                    s + 1,
                    len[seq]
                )));
            }
            plan[s].push((seq, pos, t.seqs[s][j + 1]));
        }
    }
    Ok(plan)
}

/// Mean log-probability per scored token of each option (NaN where none is scored, as
/// llama.cpp's 0/0), and the tokens run through the model.
pub(crate) fn score(model: &Decoder, t: &WinoTokens, plan: &Plan) -> Result<([f64; 2], usize)> {
    // Positions before the shared prefix's last one run once, from a cache; each sequence
    // then runs from that position to its end.
    let shared = t.common - 1;
    let seqs = [t.seqs[0].as_slice(), t.seqs[1].as_slice()];
    let (hidden, run) = final_hidden_from_prefix(model, &seqs, shared)?;

    let mut means = [f64::NAN; 2];
    for (mean, rows) in means.iter_mut().zip(plan) {
        if rows.is_empty() {
            continue;
        }
        let picked = rows
            .iter()
            .map(|&(seq, pos, _)| hidden.narrow(0, seq, 1)?.narrow(1, pos - shared, 1))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let logits = model.head(&Tensor::cat(&picked, 1)?)?.squeeze(0)?;
        let targets: Vec<u32> = rows.iter().map(|r| r.2).collect();
        *mean = -rows_nll(&logits, &targets)? / rows.len() as f64;
    }
    Ok((means, run))
}

/// llama-perplexity's choice: the first option only when its mean is strictly larger.
pub(crate) fn pick(means: [f64; 2]) -> usize {
    if means[0] > means[1] { 0 } else { 1 }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One token per word, BOS 0: enough to lay out which rows are read.
    fn words(text: &str, add_special: bool) -> Result<Vec<u32>> {
        let mut ids: Vec<u32> = add_special.then_some(0).into_iter().collect();
        ids.extend(
            text.split_whitespace()
                .map(|w| w.bytes().map(u32::from).sum::<u32>()),
        );
        Ok(ids)
    }

    fn item(sentence: &str, a: &str, b: &str) -> Item {
        Item {
            question: sentence.into(),
            choices: vec![a.into(), b.into()],
            gold: 0,
            subject: None,
            verbatim: false,
        }
    }

    #[test]
    fn long_tails_score_only_the_words_after_the_option() {
        // BOS the cat|dog sat on the big mat: 5 tokens after "BOS the option".
        let t = tokenize(&words, &item("the _ sat on the big mat", "cat", "dog"), 100).unwrap();
        assert_eq!((t.common, t.n_base), (2, [3, 3]));
        let p = plan(&t).unwrap();
        // Targets "sat on the big" (positions 3..=6; the last, "mat", is left out), predicted
        // from positions 2..=5 of each sentence.
        let positions: Vec<_> = p[0].iter().map(|r| (r.0, r.1)).collect();
        assert_eq!(positions, [(0, 2), (0, 3), (0, 4), (0, 5)]);
        let positions: Vec<_> = p[1].iter().map(|r| (r.0, r.1)).collect();
        assert_eq!(positions, [(1, 2), (1, 3), (1, 4), (1, 5)]);
        assert_eq!(p[0][0].2, t.seqs[0][3]);
    }

    #[test]
    fn short_tails_score_from_the_difference_with_llama_cpp_row_offset() {
        // BOS the cat|dog sat .: 2 tokens after the option, so scoring starts at the option.
        let t = tokenize(&words, &item("the _ sat .", "cat", "dog"), 100).unwrap();
        assert_eq!(t.common, 2);
        let p = plan(&t).unwrap();
        // Option 1: "cat" and "sat" from positions 1 and 2 of its own sentence.
        let first: Vec<_> = p[0].iter().map(|r| (r.0, r.1)).collect();
        assert_eq!(first, [(0, 1), (0, 2)]);
        // Option 2: "dog" read from the first sentence's last row (llama.cpp's FIXME), then
        // "sat" from its own position 2.
        let second: Vec<_> = p[1].iter().map(|r| (r.0, r.1)).collect();
        assert_eq!(second, [(0, 4), (1, 2)]);
        assert_eq!(
            p[1][0].2, t.seqs[1][2],
            "the target is still the option's token"
        );
    }

    #[test]
    fn ties_go_to_the_second_option() {
        assert_eq!(pick([-1.0, -1.0]), 1);
        assert_eq!(pick([-0.5, -1.0]), 0);
        assert_eq!(pick([f64::NAN, -1.0]), 1);
    }

    #[test]
    fn sentences_without_a_blank_or_shared_start_are_refused() {
        let err = tokenize(&words, &item("no blank", "a", "b"), 100).unwrap_err();
        assert!(err.to_string().contains("no `_`"), "{err}");
        let no_bos = |text: &str, _: bool| words(text, false);
        let err = tokenize(&no_bos, &item("_ sat down", "Ann", "Bo"), 100).unwrap_err();
        assert!(err.to_string().contains("share no first token"), "{err}");
    }
}
