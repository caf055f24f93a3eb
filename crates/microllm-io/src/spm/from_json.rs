//! A Hugging Face `tokenizer.json` converted from SentencePiece -> [`SpmVocab`].
//!
//! Such a file (LLaMA-2, TinyLlama, Mistral, Gemma) is BPE with `byte_fallback`, spaces
//! replaced by `▁` in its normalizer or by a `Metaspace` pre-tokenizer, and ranked merges
//! instead of scores. The pieces are its vocabulary in id order; kinds follow from the text
//! (`<0xNN>` is a byte piece, the model's `unk_token` the unknown piece) and from the added
//! tokens (special ones are control pieces, the others user-defined).
//!
//! Scores are derived from the merges: a piece scores minus the rank of the first merge that
//! produces it, so llama.cpp's best-score-first merging applies merges in rank order, as the
//! BPE model does. Pieces no merge produces score below every merged piece; control, byte and
//! unknown pieces score 0, as in the `tokenizer.model` files such tokenizers came from.
//! (llama.cpp's own converter writes -1000 for every piece of a `tokenizer.json`, so that all
//! merges tie and the leftmost pair always wins.)

use serde_json::Value as Json;

use super::build::SPM_SPACE;
use super::{Piece, PieceKind, SpmVocab, is_byte_piece, piece_id};
use crate::SpecialTokens;

/// The vocabulary `json` describes, or `None` when it is not SentencePiece-style. `special`
/// (from `tokenizer_config.json`) names BOS / EOS / padding and may override whether BOS / EOS
/// are added; `fallback_bos` / `fallback_eos` (the model config's ids) are used when neither it
/// nor the post-processor names them.
pub fn derive(
    json: &Json,
    special: &SpecialTokens,
    fallback_bos: Option<u32>,
    fallback_eos: Option<u32>,
) -> std::result::Result<Option<SpmVocab>, String> {
    let model = &json["model"];
    if model["type"] != "BPE" || model["byte_fallback"] != true || !marks_spaces(json) {
        return Ok(None);
    }
    let vocab = model["vocab"]
        .as_object()
        .ok_or("BPE model without a vocabulary")?;
    let added: Vec<&Json> = json["added_tokens"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    let id_of = |v: &Json, what: &str| -> std::result::Result<usize, String> {
        v.as_u64()
            .map(|i| i as usize)
            .ok_or_else(|| format!("{what} has no integer id"))
    };
    let mut n = 0;
    for (text, id) in vocab {
        n = n.max(id_of(id, text)? + 1);
    }
    for a in &added {
        n = n.max(id_of(&a["id"], "an added token")? + 1);
    }
    let mut slots: Vec<Option<Piece>> = vec![None; n];
    let unk = model["unk_token"].as_str();
    for (text, id) in vocab {
        let kind = if Some(text.as_str()) == unk {
            PieceKind::Unknown
        } else if is_byte_piece(text) {
            PieceKind::Byte
        } else {
            PieceKind::Normal
        };
        slots[id_of(id, text)?] = Some(Piece {
            text: text.clone(),
            score: 0.0,
            kind,
        });
    }
    for a in &added {
        let text = a["content"]
            .as_str()
            .ok_or("an added token has no content")?;
        let kind = if Some(text) == unk {
            PieceKind::Unknown
        } else if a["special"] == true {
            PieceKind::Control
        } else {
            PieceKind::UserDefined
        };
        slots[id_of(&a["id"], text)?] = Some(Piece {
            text: text.to_string(),
            score: 0.0,
            kind,
        });
    }
    let mut pieces: Vec<Piece> = slots
        .into_iter()
        .enumerate()
        .map(|(id, p)| {
            p.unwrap_or_else(|| Piece {
                text: format!("<unused_{id}>"),
                score: 0.0,
                kind: PieceKind::Unused,
            })
        })
        .collect();
    score_by_merges(&mut pieces, model, vocab)?;

    let find = |name: &Option<String>| piece_id(&pieces, name.as_deref());
    let (template_bos, template_eos) = template_specials(&json["post_processor"], &pieces);
    let bos_id = find(&special.bos).or(template_bos).or(fallback_bos);
    let eos_id = find(&special.eos).or(template_eos).or(fallback_eos);
    let pad_id = find(&special.pad);
    let add_bos = special
        .add_bos
        .unwrap_or(template_bos.is_some() && template_bos == bos_id);
    let add_eos = special
        .add_eos
        .unwrap_or(template_eos.is_some() && template_eos == eos_id);
    let unk_id = pieces
        .iter()
        .position(|p| p.kind == PieceKind::Unknown)
        .map(|i| i as u32);
    Ok(Some(SpmVocab {
        add_space_prefix: prepends_space(json),
        pieces,
        unk_id,
        bos_id,
        eos_id,
        pad_id,
        add_bos,
        add_eos,
    }))
}

/// Minus the rank of the first merge producing each normal or user-defined piece; pieces
/// never produced rank after all merges, in id order.
fn score_by_merges(
    pieces: &mut [Piece],
    model: &Json,
    vocab: &serde_json::Map<String, Json>,
) -> std::result::Result<(), String> {
    let merges = model["merges"]
        .as_array()
        .ok_or("BPE model without merges")?;
    let mut scored = vec![false; pieces.len()];
    for (rank, m) in merges.iter().enumerate() {
        let merged = match m {
            Json::String(s) => {
                let (a, b) = s
                    .split_once(' ')
                    .ok_or_else(|| format!("merge #{rank} `{s}` is not two pieces"))?;
                format!("{a}{b}")
            }
            Json::Array(pair) if pair.len() == 2 => format!(
                "{}{}",
                pair[0].as_str().unwrap_or_default(),
                pair[1].as_str().unwrap_or_default()
            ),
            other => return Err(format!("unexpected merge {other}")),
        };
        if let Some(id) = vocab.get(&merged).and_then(Json::as_u64) {
            let id = id as usize;
            if mergeable(pieces[id].kind) && !scored[id] {
                pieces[id].score = -(rank as f32);
                scored[id] = true;
            }
        }
    }
    let floor = merges.len() as f32;
    for (id, p) in pieces.iter_mut().enumerate() {
        if mergeable(p.kind) && !scored[id] {
            p.score = -(floor + id as f32);
        }
    }
    Ok(())
}

/// Pieces merging can produce: normal ones, and user-defined ones that are also in the BPE
/// vocabulary (Gemma's whitespace runs such as `▁▁`, which BPE builds and which are also
/// matched whole).
pub(crate) fn mergeable(kind: PieceKind) -> bool {
    matches!(kind, PieceKind::Normal | PieceKind::UserDefined)
}

/// Whether spaces become `▁`: a `Replace(" " -> "▁")` normalizer or a `Metaspace`
/// pre-tokenizer, at top level or inside a sequence.
fn marks_spaces(json: &Json) -> bool {
    let norm = &json["normalizer"];
    let replaces = |n: &Json| n["type"] == "Replace" && n["content"] == SPM_SPACE;
    any_part(norm, "normalizers", &replaces)
        || any_part(&json["pre_tokenizer"], "pretokenizers", &|p| {
            p["type"] == "Metaspace"
        })
}

/// Whether a `▁` is put before the text: a `Prepend("▁")` normalizer, or a `Metaspace` that
/// prepends (`prepend_scheme` first / always, or the older `add_prefix_space`).
fn prepends_space(json: &Json) -> bool {
    any_part(&json["normalizer"], "normalizers", &|n| {
        n["type"] == "Prepend" && n["prepend"] == SPM_SPACE
    }) || any_part(&json["pre_tokenizer"], "pretokenizers", &|p| {
        p["type"] == "Metaspace"
            && (p["prepend_scheme"] == "first"
                || p["prepend_scheme"] == "always"
                || p["add_prefix_space"] == true)
    })
}

fn any_part(node: &Json, list: &str, pred: &dyn Fn(&Json) -> bool) -> bool {
    pred(node)
        || node[list]
            .as_array()
            .is_some_and(|parts| parts.iter().any(pred))
}

/// The ids a `TemplateProcessing` post-processor puts before and after a single sequence.
fn template_specials(post: &Json, pieces: &[Piece]) -> (Option<u32>, Option<u32>) {
    let Some(single) = post["single"].as_array() else {
        return (None, None);
    };
    let id_of = |item: &Json| piece_id(pieces, item["SpecialToken"]["id"].as_str());
    let seq = single.iter().position(|i| i.get("Sequence").is_some());
    let Some(seq) = seq else {
        return (None, None);
    };
    let before = single[..seq].iter().rev().find_map(id_of);
    let after = single[seq + 1..].iter().find_map(id_of);
    (before, after)
}
