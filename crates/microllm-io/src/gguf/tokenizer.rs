//! Rebuilding a `tokenizers::Tokenizer` from GGUF metadata.
//!
//! A GGUF file carries its tokenizer as raw tables (`tokenizer.ggml.tokens`, `.merges`,
//! `.scores`, `.token_type`) plus a few flags, not as a `tokenizer.json`. Evaluation and
//! generation need exactly the token ids the model was trained on, so this module reassembles
//! the pipeline the Hugging Face tokenizer of the same model runs:
//!
//! * `tokenizer.ggml.model = "gpt2"`: byte-level BPE over the token list and merges. The
//!   pre-tokenizer is chosen by `tokenizer.ggml.pre`, llama.cpp's name for the pre-split regex:
//!   - `smollm`, `starcoder`: digits split one by one, then the GPT-2 byte-level split (getting
//!     this wrong changes token counts: SmolLM2 on wiki.eval.txt gives 107380 instead of
//!     107364);
//!   - `default`, `gpt2`, `gpt-2`: the GPT-2 byte-level split;
//!   - `qwen2`, `llama-bpe` / `llama3`: their split regex (digits alone, resp. in runs of up
//!     to three), then byte-level without the GPT-2 regex; `qwen2` also NFC-normalises;
//!   - any other name: the GPT-2 byte-level split, *without failing*. The weights are still
//!     usable, and for most byte-level models the GPT-2 split differs only in rare corner cases
//!     (digit runs, contractions); token counts may then differ slightly from the reference.
//! * `tokenizer.ggml.model = "llama"` (SentencePiece): the tables become an
//!   [`SpmVocab`](crate::spm::SpmVocab), built into BPE with merges derived from the scores
//!   (see [`crate::spm`]) and kept on the tokenizer, so that writing GGUF again carries the
//!   same scores.
//! * any other model (`bert`, `t5`, `rwkv`, ...): no tokenizer ([`None`]); the checkpoint
//!   still opens and its weights can be used.
//!
//! Tokens of type control (3) become special added tokens and user-defined ones (4) plain added
//! tokens, so chat markers such as `<|im_start|>` are always single tokens. A BOS (EOS) is
//! added by the post-processor only when `tokenizer.ggml.add_bos_token` (`add_eos_token`)
//! says so; its default follows llama.cpp (on for SentencePiece models, off for gpt2 ones).

use microllm_core::{Error, Result};
use tokenizers::SplitDelimiterBehavior;
use tokenizers::models::bpe::{BPE, Merges};
use tokenizers::normalizers::NFC;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::PostProcessorWrapper;
use tokenizers::processors::sequence::Sequence as PostSequence;
use tokenizers::processors::template::TemplateProcessing;

use super::meta::Meta;
use crate::Tokenizer;
use crate::spm::{Piece, PieceKind, SpmVocab, added_tokens, bos_eos_template, build, first_ids};

/// The pre-split regex of Qwen2 (digits one by one).
pub(crate) const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// The pre-split regex of LLaMA-3 (digits in runs of up to three).
pub(crate) const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The tables every tokenizer model needs.
struct Tables<'a> {
    tokens: Vec<&'a str>,
    types: Vec<i64>,
    origin: String,
}

impl Tables<'_> {
    fn err(&self, msg: impl std::fmt::Display) -> Error {
        Error::Tokenizer {
            origin: self.origin.clone(),
            msg: msg.to_string(),
        }
    }

    fn token(&self, id: Option<u32>) -> Option<(String, u32)> {
        let id = id?;
        self.tokens.get(id as usize).map(|t| ((*t).to_string(), id))
    }
}

/// Rebuilds the tokenizer described by the metadata, if it is of a kind we can rebuild.
pub(crate) fn from_metadata(meta: &Meta<'_>) -> Result<Option<Tokenizer>> {
    let Some(model) = meta.str("tokenizer.ggml.model")? else {
        return Ok(None);
    };
    let origin = meta.path.display().to_string();
    let Some(tokens) = meta.str_array("tokenizer.ggml.tokens")? else {
        return Err(Error::config(
            meta.path,
            "tokenizer.ggml.tokens",
            format!("tokenizer model `{model}` is declared but the token list is missing"),
        ));
    };
    let types = match meta.i64_array("tokenizer.ggml.token_type")? {
        Some(t) if t.len() == tokens.len() => t,
        Some(t) => {
            return Err(Error::config(
                meta.path,
                "tokenizer.ggml.token_type",
                format!("{} entries for {} tokens", t.len(), tokens.len()),
            ));
        }
        None => vec![1; tokens.len()],
    };
    let tables = Tables {
        tokens,
        types,
        origin: origin.clone(),
    };
    Ok(Some(match model {
        "gpt2" => Tokenizer::new(gpt2(meta, &tables)?, origin),
        "llama" => {
            let vocab = sentencepiece_vocab(meta, &tables)?;
            Tokenizer::new(build(&vocab, &origin)?, origin).with_spm(vocab)
        }
        _ => return Ok(None),
    }))
}

/// The pre-tokenizer llama.cpp means by a `tokenizer.ggml.pre` name (see the module docs).
pub fn byte_level_pre_tokenizer(pre: &str) -> Result<PreTokenizerWrapper> {
    let gpt2 = || ByteLevel::new(false, true, true);
    let split = |regex: &str| -> Result<PreTokenizerWrapper> {
        let split = Split::new(
            SplitPattern::Regex(regex.to_string()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| Error::Invalid(format!("pre-tokenizer `{pre}`: {e}")))?;
        Ok(PreSequence::new(vec![
            split.into(),
            ByteLevel::new(false, true, false).into(),
        ])
        .into())
    };
    match pre {
        "smollm" | "starcoder" => {
            Ok(PreSequence::new(vec![Digits::new(true).into(), gpt2().into()]).into())
        }
        "qwen2" => split(QWEN2_SPLIT),
        "llama-bpe" | "llama3" => split(LLAMA3_SPLIT),
        _ => Ok(gpt2().into()),
    }
}

/// Byte-level BPE (`tokenizer.ggml.model = "gpt2"`).
fn gpt2(meta: &Meta<'_>, t: &Tables<'_>) -> Result<tokenizers::Tokenizer> {
    let merges_raw = meta.str_array("tokenizer.ggml.merges")?.ok_or_else(|| {
        Error::config(
            meta.path,
            "tokenizer.ggml.merges",
            "a gpt2 tokenizer needs its merges",
        )
    })?;
    let merges: Merges = merges_raw
        .iter()
        .enumerate()
        .map(|(i, m)| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| t.err(format!("merge #{i} `{m}` is not two tokens")))
        })
        .collect::<Result<_>>()?;
    let bpe = BPE::builder()
        .vocab_and_merges(first_ids(t.tokens.iter().copied()), merges)
        .build()
        .map_err(|e| t.err(e))?;

    let pre = meta.str("tokenizer.ggml.pre")?.unwrap_or("default");
    let mut tk = tokenizers::Tokenizer::new(bpe);
    if pre == "qwen2" {
        tk.with_normalizer(Some(NFC)).map_err(|e| t.err(e))?;
    }
    tk.with_pre_tokenizer(Some(byte_level_pre_tokenizer(pre)?));
    tk.with_decoder(Some(ByteLevel::default()));
    let template = special_template(meta, t)?;
    let byte_level: PostProcessorWrapper = ByteLevel::new(false, false, true).into();
    tk.with_post_processor(Some(match template {
        Some(tp) => PostSequence::new(vec![byte_level, tp.into()]).into(),
        None => byte_level,
    }));
    add_tokens(&mut tk, t)?;
    Ok(tk)
}

/// The SentencePiece tables of a `tokenizer.ggml.model = "llama"` file.
fn sentencepiece_vocab(meta: &Meta<'_>, t: &Tables<'_>) -> Result<SpmVocab> {
    let scores = meta
        .f64_array("tokenizer.ggml.scores")?
        .filter(|s| s.len() == t.tokens.len())
        .ok_or_else(|| {
            Error::config(
                meta.path,
                "tokenizer.ggml.scores",
                "a SentencePiece tokenizer needs one score per token",
            )
        })?;
    let pieces = t
        .tokens
        .iter()
        .zip(&t.types)
        .zip(scores)
        .map(|((text, &ty), score)| Piece {
            text: (*text).to_string(),
            score: score as f32,
            kind: PieceKind::from_code(ty),
        })
        .collect();
    let id = |key: &str| -> Result<Option<u32>> {
        Ok(meta.u32(key)?.filter(|&i| (i as usize) < t.tokens.len()))
    };
    Ok(SpmVocab {
        pieces,
        unk_id: id("tokenizer.ggml.unknown_token_id")?,
        bos_id: id("tokenizer.ggml.bos_token_id")?,
        eos_id: id("tokenizer.ggml.eos_token_id")?,
        pad_id: id("tokenizer.ggml.padding_token_id")?,
        add_bos: meta.bool("tokenizer.ggml.add_bos_token")?.unwrap_or(true),
        add_eos: meta.bool("tokenizer.ggml.add_eos_token")?.unwrap_or(false),
        add_space_prefix: meta
            .bool("tokenizer.ggml.add_space_prefix")?
            .unwrap_or(true),
    })
}

/// A post-processor adding BOS / EOS when the metadata asks for them (off by default for
/// byte-level BPE, as in llama.cpp).
fn special_template(meta: &Meta<'_>, t: &Tables<'_>) -> Result<Option<TemplateProcessing>> {
    let wanted = |flag: &str, id_key: &str| -> Result<Option<(String, u32)>> {
        Ok(if meta.bool(flag)?.unwrap_or(false) {
            t.token(meta.u32(id_key)?)
        } else {
            None
        })
    };
    let bos = wanted(
        "tokenizer.ggml.add_bos_token",
        "tokenizer.ggml.bos_token_id",
    )?;
    let eos = wanted(
        "tokenizer.ggml.add_eos_token",
        "tokenizer.ggml.eos_token_id",
    )?;
    bos_eos_template(bos, eos, &t.origin)
}

fn add_tokens(tk: &mut tokenizers::Tokenizer, t: &Tables<'_>) -> Result<()> {
    let kinds = t.types.iter().map(|&ty| PieceKind::from_code(ty));
    let (special, plain) = added_tokens(t.tokens.iter().copied().zip(kinds));
    tk.add_special_tokens(special).map_err(|e| t.err(e))?;
    tk.add_tokens(plain).map_err(|e| t.err(e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::gguf_file::Value;
    use std::collections::HashMap;
    use std::path::Path;

    fn strings(v: &[&str]) -> Value {
        Value::Array(v.iter().map(|s| Value::String(s.to_string())).collect())
    }

    /// A toy SentencePiece vocabulary: `▁hello` is reachable only by merging.
    fn spm_meta() -> HashMap<String, Value> {
        let mut tokens: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
        let mut types = vec![2, 3, 3];
        let mut scores = vec![0f32; 3];
        for b in 0..=255u8 {
            tokens.push(format!("<0x{b:02X}>"));
            types.push(6);
            scores.push(0.0);
        }
        for (tok, score) in [
            ("\u{2581}", -10.0),
            ("h", -10.0),
            ("e", -10.0),
            ("l", -10.0),
            ("o", -10.0),
            ("\u{2581}h", -1.0),
            ("ll", -2.0),
            ("\u{2581}he", -3.0),
            ("llo", -4.0),
            ("\u{2581}hello", -5.0),
        ] {
            tokens.push(tok.into());
            types.push(1);
            scores.push(score);
        }
        let mut m = HashMap::new();
        m.insert("tokenizer.ggml.model".into(), Value::String("llama".into()));
        let refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
        m.insert("tokenizer.ggml.tokens".into(), strings(&refs));
        m.insert(
            "tokenizer.ggml.token_type".into(),
            Value::Array(types.into_iter().map(Value::I32).collect()),
        );
        m.insert(
            "tokenizer.ggml.scores".into(),
            Value::Array(scores.into_iter().map(Value::F32).collect()),
        );
        m.insert("tokenizer.ggml.bos_token_id".into(), Value::U32(1));
        m.insert("tokenizer.ggml.eos_token_id".into(), Value::U32(2));
        m.insert("tokenizer.ggml.unknown_token_id".into(), Value::U32(0));
        m
    }

    #[test]
    fn sentencepiece_from_scores() {
        let map = spm_meta();
        let tk = from_metadata(&Meta::new(Path::new("spm.gguf"), &map))
            .unwrap()
            .unwrap();
        let hello = tk.token_id("\u{2581}hello").unwrap();
        assert_eq!(tk.encode("hello", false).unwrap(), [hello]);
        // BOS is on by default for SentencePiece models.
        assert_eq!(tk.encode("hello", true).unwrap(), [1, hello]);
        // `i` and `!` are not pieces: byte fallback.
        let ids = tk.encode("hi!", false).unwrap();
        let h = tk.token_id("\u{2581}h").unwrap();
        assert_eq!(ids, [h, 3 + 0x69, 3 + 0x21]);
        assert_eq!(tk.decode(&ids).unwrap(), "hi!");
        assert_eq!(tk.decode(&[hello]).unwrap(), "hello");
        // Control tokens are atomic.
        assert_eq!(tk.encode("</s>", false).unwrap(), [2]);
    }

    #[test]
    fn unknown_tokenizer_model_gives_none() {
        let mut map = HashMap::new();
        map.insert("tokenizer.ggml.model".into(), Value::String("bert".into()));
        map.insert("tokenizer.ggml.tokens".into(), strings(&["a"]));
        let meta = Meta::new(Path::new("b.gguf"), &map);
        assert!(from_metadata(&meta).unwrap().is_none());
        assert!(
            from_metadata(&Meta::new(Path::new("b.gguf"), &HashMap::new()))
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn every_named_pre_tokenizer_builds() {
        for pre in [
            "smollm",
            "starcoder",
            "default",
            "gpt2",
            "qwen2",
            "llama-bpe",
            "odd",
        ] {
            byte_level_pre_tokenizer(pre).unwrap();
        }
    }
}
