//! `tokenizer.model`, SentencePiece's `ModelProto`, read without a protobuf dependency.
//!
//! Only a handful of fields matter for llama.cpp, and protobuf's wire format is small, so a
//! reader of our own (varints, length-delimited fields, 32-bit floats) is less weight than a
//! code generator. The fields read (numbers from `sentencepiece_model.proto`):
//!
//! * `pieces` (1), each `piece` (1), `score` (2), `type` (3);
//! * `trainer_spec` (2): `model_type` (3), `unk_id` (40), `bos_id` (41), `eos_id` (42),
//!   `pad_id` (43), a negative id meaning "none";
//! * `normalizer_spec` (3): `add_dummy_prefix` (3, default true).
//!
//! Unknown fields are skipped, as protobuf readers must. A truncated or malformed file is an
//! error naming the file and the byte offset.

use std::path::Path;

use microllm_core::{Error, Result};

use super::{Piece, PieceKind, SpmVocab};

const WIRE_VARINT: u8 = 0;
const WIRE_I64: u8 = 1;
const WIRE_LEN: u8 = 2;
const WIRE_I32: u8 = 5;

/// SentencePiece's `TrainerSpec.ModelType`.
const MODEL_TYPE_BPE: u64 = 2;
const MODEL_TYPE_UNIGRAM: u64 = 1;

/// One field as it sits on the wire.
enum Field<'a> {
    Varint(u64),
    Fixed32(u32),
    Bytes(&'a [u8]),
    Other,
}

/// A cursor over one message's bytes; `base` is its offset in the file, for errors.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    base: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], base: usize) -> Self {
        Self { buf, pos: 0, base }
    }

    fn offset(&self) -> usize {
        self.base + self.pos
    }

    fn varint(&mut self) -> std::result::Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let &b = self
                .buf
                .get(self.pos)
                .ok_or_else(|| format!("truncated varint at byte {}", self.offset()))?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(format!(
            "varint longer than 10 bytes at byte {}",
            self.offset()
        ))
    }

    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| {
                format!(
                    "field of {n} bytes at byte {} runs past the end of its message",
                    self.offset()
                )
            })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    /// The next `(field number, value, offset of the value)`, or `None` at the end.
    fn next(&mut self) -> std::result::Result<Option<(u64, Field<'a>, usize)>, String> {
        if self.pos == self.buf.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let at = self.offset();
        let value = match (key & 7) as u8 {
            WIRE_VARINT => Field::Varint(self.varint()?),
            WIRE_I64 => {
                self.take(8)?;
                Field::Other
            }
            WIRE_LEN => {
                let n = self.varint()? as usize;
                Field::Bytes(self.take(n)?)
            }
            WIRE_I32 => {
                let b = self.take(4)?;
                Field::Fixed32(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            }
            w => return Err(format!("unsupported wire type {w} at byte {at}")),
        };
        Ok(Some((key >> 3, value, at)))
    }
}

/// A protobuf `int32` id; negative (SentencePiece's "disabled") is `None`.
fn id_of(v: u64) -> Option<u32> {
    u32::try_from(v as i64).ok()
}

/// Reads `path`. The flags for BOS/EOS follow SentencePiece's defaults for LLaMA-style
/// models (BOS on, EOS off); callers override them from `tokenizer_config.json`.
pub fn read(path: &Path) -> Result<SpmVocab> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse(&bytes).map_err(|msg| Error::Tokenizer {
        origin: path.display().to_string(),
        msg: format!("not a SentencePiece model: {msg}"),
    })
}

/// Parses a serialised `ModelProto`.
pub fn parse(bytes: &[u8]) -> std::result::Result<SpmVocab, String> {
    let mut vocab = SpmVocab {
        pieces: Vec::new(),
        unk_id: Some(0),
        bos_id: Some(1),
        eos_id: Some(2),
        pad_id: None,
        add_bos: true,
        add_eos: false,
        add_space_prefix: true,
    };
    let mut model_type = MODEL_TYPE_UNIGRAM;
    let mut top = Reader::new(bytes, 0);
    while let Some((field, value, at)) = top.next()? {
        match (field, value) {
            (1, Field::Bytes(b)) => vocab.pieces.push(piece(b, at)?),
            (2, Field::Bytes(b)) => {
                let mut r = Reader::new(b, at);
                while let Some((f, v, _)) = r.next()? {
                    match (f, v) {
                        (3, Field::Varint(t)) => model_type = t,
                        (40, Field::Varint(id)) => vocab.unk_id = id_of(id),
                        (41, Field::Varint(id)) => vocab.bos_id = id_of(id),
                        (42, Field::Varint(id)) => vocab.eos_id = id_of(id),
                        (43, Field::Varint(id)) => vocab.pad_id = id_of(id),
                        _ => {}
                    }
                }
            }
            (3, Field::Bytes(b)) => {
                let mut r = Reader::new(b, at);
                while let Some((f, v, _)) = r.next()? {
                    if let (3, Field::Varint(on)) = (f, v) {
                        vocab.add_space_prefix = on != 0;
                    }
                }
            }
            _ => {}
        }
    }
    if vocab.pieces.is_empty() {
        return Err("it has no pieces".into());
    }
    if model_type != MODEL_TYPE_BPE && model_type != MODEL_TYPE_UNIGRAM {
        return Err(format!(
            "model type {model_type} (only BPE and unigram models have scores llama.cpp can use)"
        ));
    }
    let n = vocab.pieces.len();
    for id in [
        &mut vocab.unk_id,
        &mut vocab.bos_id,
        &mut vocab.eos_id,
        &mut vocab.pad_id,
    ] {
        if id.is_some_and(|i| i as usize >= n) {
            *id = None;
        }
    }
    Ok(vocab)
}

fn piece(bytes: &[u8], base: usize) -> std::result::Result<Piece, String> {
    let mut p = Piece {
        text: String::new(),
        score: 0.0,
        kind: PieceKind::Normal,
    };
    let mut r = Reader::new(bytes, base);
    while let Some((f, v, at)) = r.next()? {
        match (f, v) {
            (1, Field::Bytes(b)) => {
                p.text = std::str::from_utf8(b)
                    .map_err(|_| format!("piece at byte {at} is not UTF-8"))?
                    .to_string();
            }
            (2, Field::Fixed32(bits)) => p.score = f32::from_bits(bits),
            (3, Field::Varint(t)) => p.kind = PieceKind::from_code(t as i64),
            _ => {}
        }
    }
    if p.text.is_empty() {
        return Err(format!("empty piece at byte {base}"));
    }
    Ok(p)
}

/// Serialises `vocab` as a `ModelProto` (BPE): the inverse of [`parse`], for tests and for
/// writing a `tokenizer.model` beside a model that has none.
pub fn encode(vocab: &SpmVocab) -> Vec<u8> {
    fn varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }
    fn key(out: &mut Vec<u8>, field: u64, wire: u8) {
        varint(out, (field << 3) | u64::from(wire));
    }
    fn bytes(out: &mut Vec<u8>, field: u64, b: &[u8]) {
        key(out, field, WIRE_LEN);
        varint(out, b.len() as u64);
        out.extend_from_slice(b);
    }
    let id = |v: Option<u32>| v.map_or(-1i64, i64::from) as u64;
    let mut out = Vec::new();
    for p in &vocab.pieces {
        let mut m = Vec::new();
        bytes(&mut m, 1, p.text.as_bytes());
        key(&mut m, 2, WIRE_I32);
        m.extend_from_slice(&p.score.to_le_bytes());
        key(&mut m, 3, WIRE_VARINT);
        varint(&mut m, p.kind.code() as u64);
        bytes(&mut out, 1, &m);
    }
    let mut trainer = Vec::new();
    for (field, v) in [
        (3, MODEL_TYPE_BPE),
        (40, id(vocab.unk_id)),
        (41, id(vocab.bos_id)),
        (42, id(vocab.eos_id)),
        (43, id(vocab.pad_id)),
    ] {
        key(&mut trainer, field, WIRE_VARINT);
        varint(&mut trainer, v);
    }
    bytes(&mut out, 2, &trainer);
    let mut normalizer = Vec::new();
    key(&mut normalizer, 3, WIRE_VARINT);
    varint(&mut normalizer, u64::from(vocab.add_space_prefix));
    bytes(&mut out, 3, &normalizer);
    out
}
