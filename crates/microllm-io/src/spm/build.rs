//! [`SpmVocab`] -> a `tokenizers` pipeline that tokenizes as llama.cpp does.
//!
//! BPE whose merges are derived from the piece scores: each normal piece that is the
//! concatenation of two other pieces yields a merge, ranked by the merged piece's score, which
//! is the order llama.cpp's (and SentencePiece's) greedy bigram merging applies them in. Byte
//! fallback to the `<0xNN>` pieces, `▁` for spaces (with a leading one when the vocabulary adds a
//! space prefix) and the inverse as decoder. This is how Hugging Face's `LlamaTokenizerFast` is
//! built from a SentencePiece model; ties between equal scores may break differently from
//! SentencePiece in rare cases.

use std::collections::HashMap;

use microllm_core::{Error, Result};
use tokenizers::decoders::DecoderWrapper;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{BPE, Merges, Vocab};
use tokenizers::normalizers::{NormalizerWrapper, Prepend, Replace, Sequence as NormSequence};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, Tokenizer};

use super::{PieceKind, SpmVocab};

/// SentencePiece's word-boundary marker.
pub(crate) const SPM_SPACE: &str = "\u{2581}";

/// The tokenizer `vocab` describes; errors name `origin`.
pub(crate) fn build(vocab: &SpmVocab, origin: &str) -> Result<Tokenizer> {
    let err = |e: &dyn std::fmt::Display| Error::Tokenizer {
        origin: origin.to_string(),
        msg: e.to_string(),
    };
    let mut builder = BPE::builder()
        .vocab_and_merges(
            first_ids(vocab.pieces.iter().map(|p| p.text.as_str())),
            merges(vocab),
        )
        .fuse_unk(true)
        .byte_fallback(true);
    if let Some((unk, _)) = vocab.piece(vocab.unk_id) {
        builder = builder.unk_token(unk);
    }
    let bpe = builder.build().map_err(|e| err(&e))?;

    let to_marker = Replace::new(" ", SPM_SPACE).map_err(|e| err(&e))?;
    let normalizer: NormalizerWrapper = if vocab.add_space_prefix {
        NormSequence::new(vec![
            Prepend::new(SPM_SPACE.into()).into(),
            to_marker.into(),
        ])
        .into()
    } else {
        to_marker.into()
    };
    let mut decoders: Vec<DecoderWrapper> = vec![
        Replace::new(SPM_SPACE, " ").map_err(|e| err(&e))?.into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ];
    if vocab.add_space_prefix {
        decoders.push(Strip::new(' ', 1, 0).into());
    }

    let mut tk = Tokenizer::new(bpe);
    tk.with_normalizer(Some(normalizer)).map_err(|e| err(&e))?;
    tk.with_decoder(Some(DecoderSequence::new(decoders)));
    let bos = vocab.add_bos.then(|| vocab.piece(vocab.bos_id)).flatten();
    let eos = vocab.add_eos.then(|| vocab.piece(vocab.eos_id)).flatten();
    if let Some(tp) = bos_eos_template(bos, eos, origin)? {
        tk.with_post_processor(Some(tp));
    }
    let (special, plain) = added_tokens(vocab.pieces.iter().map(|p| (p.text.as_str(), p.kind)));
    tk.add_special_tokens(special).map_err(|e| err(&e))?;
    tk.add_tokens(plain).map_err(|e| err(&e))?;
    Ok(tk)
}

/// Text -> id of `texts` in id order. On duplicates the first id wins, as in llama.cpp.
pub(crate) fn first_ids<'a>(texts: impl IntoIterator<Item = &'a str>) -> Vocab {
    let mut v = Vocab::default();
    for (id, t) in texts.into_iter().enumerate() {
        v.entry(t.to_string()).or_insert(id as u32);
    }
    v
}

/// Control and unknown pieces as special added tokens, user-defined ones as plain ones (so
/// chat markers are always single tokens).
pub(crate) fn added_tokens<'a>(
    pieces: impl IntoIterator<Item = (&'a str, PieceKind)>,
) -> (Vec<AddedToken>, Vec<AddedToken>) {
    let (mut special, mut plain) = (Vec::new(), Vec::new());
    for (text, kind) in pieces {
        match kind {
            PieceKind::Control | PieceKind::Unknown => special.push(AddedToken::from(text, true)),
            PieceKind::UserDefined => plain.push(AddedToken::from(text, false).normalized(false)),
            _ => {}
        }
    }
    (special, plain)
}

/// Merges implied by the scores: every split of a normal or user-defined piece into two
/// pieces of the vocabulary, best merged score first (then lower ids first, for determinism).
fn merges(vocab: &SpmVocab) -> Merges {
    let pieces = &vocab.pieces;
    let mut ids: HashMap<&str, usize> = HashMap::with_capacity(pieces.len());
    for (i, p) in pieces.iter().enumerate() {
        ids.entry(p.text.as_str()).or_insert(i);
    }
    let mut found: Vec<(usize, usize, usize)> = Vec::new();
    for (id, p) in pieces.iter().enumerate() {
        // llama.cpp merges into any piece by its text, user-defined ones included.
        if !super::from_json::mergeable(p.kind) {
            continue;
        }
        for (k, _) in p.text.char_indices().skip(1) {
            let (l, r) = p.text.split_at(k);
            if let (Some(&li), Some(&ri)) = (ids.get(l), ids.get(r)) {
                found.push((id, li, ri));
            }
        }
    }
    found.sort_by(|a, b| {
        pieces[b.0]
            .score
            .total_cmp(&pieces[a.0].score)
            .then((a.0, a.1, a.2).cmp(&(b.0, b.1, b.2)))
    });
    found
        .into_iter()
        .map(|(_, l, r)| (pieces[l].text.clone(), pieces[r].text.clone()))
        .collect()
}

/// A post-processor putting `bos` before and `eos` after each sequence, or `None` when
/// neither is wanted.
pub(crate) fn bos_eos_template(
    bos: Option<(String, u32)>,
    eos: Option<(String, u32)>,
    origin: &str,
) -> Result<Option<TemplateProcessing>> {
    if bos.is_none() && eos.is_none() {
        return Ok(None);
    }
    let err = |e: &dyn std::fmt::Display| Error::Tokenizer {
        origin: origin.to_string(),
        msg: format!("BOS/EOS template: {e}"),
    };
    let seq = |s: &str, type_id: u32| {
        let mut parts = Vec::new();
        if let Some((b, _)) = &bos {
            parts.push(format!("{b}:{type_id}"));
        }
        parts.push(format!("${s}:{type_id}"));
        if let Some((e, _)) = &eos {
            parts.push(format!("{e}:{type_id}"));
        }
        parts.join(" ")
    };
    let specials: Vec<(String, u32)> = bos.iter().chain(eos.iter()).cloned().collect();
    TemplateProcessing::builder()
        .try_single(seq("A", 0))
        .and_then(|b| b.try_pair(format!("{} {}", seq("A", 0), seq("B", 1))))
        .map_err(|e| err(&e))?
        .special_tokens(specials)
        .build()
        .map(Some)
        .map_err(|e| err(&e))
}
