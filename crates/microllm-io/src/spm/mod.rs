//! SentencePiece vocabularies: the tables llama.cpp's `llama` tokenizer model runs on.
//!
//! A SentencePiece vocabulary reaches microllm in three shapes: a GGUF's `tokenizer.ggml.*`
//! tables, the `tokenizer.model` protobuf that older checkpoints (Vicuna, Alpaca) ship alone
//! ([`proto`]), and a Hugging Face `tokenizer.json` converted from one: BPE with byte fallback
//! and `▁` for spaces ([`from_json`]). It leaves in one shape, GGUF. [`SpmVocab`] is the form
//! they share: pieces with scores and kinds, the special ids, and the three flags that change
//! what a text tokenizes to. From it [`build`] makes the `tokenizers` pipeline evaluation runs,
//! and [`SpmVocab::gguf_metadata`] the keys llama.cpp reads.
//!
//! Scores matter. llama.cpp's SentencePiece tokenizer repeatedly merges the adjacent pair whose
//! merged piece scores best, so scores *are* the merge order. A `tokenizer.model` carries the
//! trained scores; a `tokenizer.json` carries ranked merges instead, from which
//! [`from_json`] derives scores that make llama.cpp merge in the same order.

mod build;
pub mod from_json;
pub mod proto;

use candle_core::quantized::gguf_file::Value;
use microllm_core::{Error, Result};

pub(crate) use build::{added_tokens, bos_eos_template, build, first_ids};

/// What a piece is, with llama.cpp's / SentencePiece's numbering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PieceKind {
    Normal,
    Unknown,
    /// `<s>`, `</s>`, chat markers: never produced from text by merging.
    Control,
    /// Always one token wherever its text appears.
    UserDefined,
    Unused,
    /// `<0xNN>`: byte fallback for characters no piece covers.
    Byte,
}

impl PieceKind {
    /// The `tokenizer.ggml.token_type` code (the same as SentencePiece's `Type` enum).
    pub fn code(self) -> i32 {
        match self {
            PieceKind::Normal => 1,
            PieceKind::Unknown => 2,
            PieceKind::Control => 3,
            PieceKind::UserDefined => 4,
            PieceKind::Unused => 5,
            PieceKind::Byte => 6,
        }
    }

    /// The kind a code names; unknown codes read as normal, as llama.cpp does.
    pub fn from_code(code: i64) -> Self {
        match code {
            2 => PieceKind::Unknown,
            3 => PieceKind::Control,
            4 => PieceKind::UserDefined,
            5 => PieceKind::Unused,
            6 => PieceKind::Byte,
            _ => PieceKind::Normal,
        }
    }
}

/// One vocabulary entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Piece {
    pub text: String,
    pub score: f32,
    pub kind: PieceKind,
}

/// A SentencePiece vocabulary and the behaviour around it.
#[derive(Debug, Clone, PartialEq)]
pub struct SpmVocab {
    /// In id order.
    pub pieces: Vec<Piece>,
    pub unk_id: Option<u32>,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub pad_id: Option<u32>,
    /// Whether encoding a text puts BOS (EOS) around it.
    pub add_bos: bool,
    pub add_eos: bool,
    /// Whether a `▁` is put before the text (SentencePiece's `add_dummy_prefix`; off for
    /// Gemma).
    pub add_space_prefix: bool,
}

impl SpmVocab {
    /// The text of piece `id`, with the id, when there is one.
    pub(crate) fn piece(&self, id: Option<u32>) -> Option<(String, u32)> {
        let id = id?;
        self.pieces.get(id as usize).map(|p| (p.text.clone(), id))
    }

    /// The id of the first piece whose text is `text`.
    pub(crate) fn id_of(&self, text: Option<&str>) -> Option<u32> {
        piece_id(&self.pieces, text)
    }

    /// The `tokenizer.*` keys of a GGUF whose model has `vocab_size` embedding rows. Rows
    /// beyond the vocabulary (models pad their embeddings to a multiple of 64 or 128) get
    /// unused placeholder pieces, noted on `notes`; a vocabulary larger than the model is an
    /// error naming `origin`.
    pub fn gguf_metadata(
        &self,
        vocab_size: usize,
        origin: &str,
        notes: &mut Vec<String>,
    ) -> Result<Vec<(String, Value)>> {
        if self.pieces.len() > vocab_size {
            return Err(Error::Tokenizer {
                origin: origin.to_string(),
                msg: format!(
                    "{} SentencePiece pieces for a model with {vocab_size} embedding rows",
                    self.pieces.len()
                ),
            });
        }
        let padding = vocab_size - self.pieces.len();
        if padding > 0 {
            notes.push(format!(
                "{padding} embedding rows beyond the tokenizer's {} pieces written as unused \
                 pieces",
                self.pieces.len()
            ));
        }
        let n = self.pieces.len();
        let texts = self
            .pieces
            .iter()
            .map(|p| Value::String(p.text.clone()))
            .chain((n..vocab_size).map(|id| Value::String(format!("[PAD{id}]"))));
        let scores = self
            .pieces
            .iter()
            .map(|p| Value::F32(p.score))
            .chain((n..vocab_size).map(|_| Value::F32(-1000.0)));
        let kinds = self
            .pieces
            .iter()
            .map(|p| Value::I32(p.kind.code()))
            .chain((n..vocab_size).map(|_| Value::I32(PieceKind::Unused.code())));
        let key = |k: &str| format!("tokenizer.ggml.{k}");
        let mut meta = vec![
            (key("model"), Value::String("llama".into())),
            (key("pre"), Value::String("default".into())),
            (key("tokens"), Value::Array(texts.collect())),
            (key("scores"), Value::Array(scores.collect())),
            (key("token_type"), Value::Array(kinds.collect())),
        ];
        for (name, id) in [
            ("bos_token_id", self.bos_id),
            ("eos_token_id", self.eos_id),
            ("unknown_token_id", self.unk_id),
            ("padding_token_id", self.pad_id),
        ] {
            if let Some(id) = id {
                meta.push((key(name), Value::U32(id)));
            }
        }
        meta.extend([
            (key("add_bos_token"), Value::Bool(self.add_bos)),
            (key("add_eos_token"), Value::Bool(self.add_eos)),
            (key("add_space_prefix"), Value::Bool(self.add_space_prefix)),
        ]);
        Ok(meta)
    }
}

/// The id of the first of `pieces` whose text is `text`.
pub(crate) fn piece_id(pieces: &[Piece], text: Option<&str>) -> Option<u32> {
    let text = text?;
    pieces.iter().position(|p| p.text == text).map(|i| i as u32)
}

/// Whether `text` is a byte-fallback piece, `<0xNN>` with two upper-case hex digits.
pub(crate) fn is_byte_piece(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() == 6
        && text.starts_with("<0x")
        && b[5] == b'>'
        && b[3..5]
            .iter()
            .all(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(c))
}

#[cfg(test)]
mod tests;
