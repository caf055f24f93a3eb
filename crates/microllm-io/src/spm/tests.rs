use serde_json::json;

use super::*;
use crate::SpecialTokens;

/// A toy LLaMA-style vocabulary: `<unk> <s> </s>`, 256 byte pieces, then normal pieces where
/// `▁hello` is reachable only by merging.
fn toy_vocab() -> SpmVocab {
    let mut pieces = vec![
        Piece {
            text: "<unk>".into(),
            score: 0.0,
            kind: PieceKind::Unknown,
        },
        Piece {
            text: "<s>".into(),
            score: 0.0,
            kind: PieceKind::Control,
        },
        Piece {
            text: "</s>".into(),
            score: 0.0,
            kind: PieceKind::Control,
        },
    ];
    for b in 0..=255u8 {
        pieces.push(Piece {
            text: format!("<0x{b:02X}>"),
            score: 0.0,
            kind: PieceKind::Byte,
        });
    }
    for (i, text) in ["▁h", "ll", "▁he", "llo", "▁hello", "▁", "h", "e", "l", "o"]
        .iter()
        .enumerate()
    {
        pieces.push(Piece {
            text: (*text).into(),
            score: -(i as f32),
            kind: PieceKind::Normal,
        });
    }
    SpmVocab {
        pieces,
        unk_id: Some(0),
        bos_id: Some(1),
        eos_id: Some(2),
        pad_id: None,
        add_bos: true,
        add_eos: false,
        add_space_prefix: true,
    }
}

#[test]
fn protobuf_round_trips() {
    let vocab = toy_vocab();
    let bytes = proto::encode(&vocab);
    assert_eq!(proto::parse(&bytes).unwrap(), vocab);

    let mut gemma_like = vocab.clone();
    gemma_like.add_space_prefix = false;
    gemma_like.pad_id = Some(0);
    gemma_like.bos_id = None;
    assert_eq!(
        proto::parse(&proto::encode(&gemma_like)).unwrap(),
        gemma_like
    );
}

#[test]
fn malformed_protobuf_is_refused_with_the_offset() {
    let bytes = proto::encode(&toy_vocab());
    let cut = proto::parse(&bytes[..bytes.len() / 2]).unwrap_err();
    assert!(cut.contains("byte"), "{cut}");
    assert!(proto::parse(&[]).unwrap_err().contains("no pieces"));
    // Field 1, wire type 7 (invalid).
    assert!(proto::parse(&[0x0f]).unwrap_err().contains("wire type 7"));

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.model");
    std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
    let err = proto::read(&path).unwrap_err().to_string();
    assert!(err.contains("tokenizer.model"), "{err}");
}

#[test]
fn built_tokenizer_merges_by_score_and_falls_back_to_bytes() {
    let vocab = toy_vocab();
    let tk = crate::Tokenizer::new(build(&vocab, "toy").unwrap(), "toy");
    let hello = tk.token_id("▁hello").unwrap();
    assert_eq!(tk.encode("hello", false).unwrap(), [hello]);
    assert_eq!(tk.encode("hello", true).unwrap(), [1, hello]);
    let h = tk.token_id("▁h").unwrap();
    assert_eq!(tk.encode("hi!", false).unwrap(), [h, 3 + 0x69, 3 + 0x21]);
    assert_eq!(tk.decode(&[hello]).unwrap(), "hello");
    assert_eq!(tk.encode("</s>", false).unwrap(), [2]);

    let mut no_prefix = vocab;
    no_prefix.add_space_prefix = false;
    no_prefix.add_bos = false;
    let tk = crate::Tokenizer::new(build(&no_prefix, "toy").unwrap(), "toy");
    let h = tk.token_id("h").unwrap();
    assert_eq!(tk.encode("h", true).unwrap(), [h]);
}

#[test]
fn gguf_metadata_pads_to_the_model_and_refuses_a_smaller_one() {
    let vocab = toy_vocab();
    let n = vocab.pieces.len();
    let mut notes = Vec::new();
    let meta = vocab.gguf_metadata(n + 2, "toy", &mut notes).unwrap();
    let get = |k: &str| &meta.iter().find(|(key, _)| key == k).unwrap().1;
    let Value::Array(tokens) = get("tokenizer.ggml.tokens") else {
        panic!("tokens")
    };
    assert_eq!(tokens.len(), n + 2);
    let Value::Array(types) = get("tokenizer.ggml.token_type") else {
        panic!("types")
    };
    assert!(matches!(types[n + 1], Value::I32(5)));
    assert!(matches!(types[3], Value::I32(6)));
    assert!(matches!(get("tokenizer.ggml.model"), Value::String(m) if m == "llama"));
    assert!(matches!(
        get("tokenizer.ggml.add_space_prefix"),
        Value::Bool(true)
    ));
    assert!(matches!(
        get("tokenizer.ggml.unknown_token_id"),
        Value::U32(0)
    ));
    assert_eq!(notes.len(), 1);

    let err = vocab.gguf_metadata(n - 1, "toy", &mut notes).unwrap_err();
    assert!(err.to_string().contains("embedding rows"), "{err}");
}

/// A LLaMA-2-style `tokenizer.json` over the toy pieces, merges in the toy's score order.
fn llama_json(legacy_normalizer: bool) -> serde_json::Value {
    let vocab = toy_vocab();
    let map: serde_json::Map<String, serde_json::Value> = vocab
        .pieces
        .iter()
        .enumerate()
        .map(|(i, p)| (p.text.clone(), json!(i)))
        .collect();
    let merges = ["▁ h", "l l", "▁h e", "ll o", "▁he llo"];
    let (normalizer, pre) = if legacy_normalizer {
        (
            json!({"type": "Sequence", "normalizers": [
                {"type": "Prepend", "prepend": "▁"},
                {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}),
            json!(null),
        )
    } else {
        (
            json!(null),
            json!({"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first",
                   "split": false}),
        )
    };
    json!({
        "model": {"type": "BPE", "byte_fallback": true, "unk_token": "<unk>", "fuse_unk": true,
                  "vocab": map, "merges": merges},
        "normalizer": normalizer,
        "pre_tokenizer": pre,
        "post_processor": {"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                     {"Sequence": {"id": "A", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}},
        "decoder": null,
        "truncation": null,
        "padding": null,
        "version": "1.0",
        "added_tokens": [
            {"id": 0, "content": "<unk>", "special": true, "single_word": false,
             "lstrip": false, "rstrip": false, "normalized": false},
            {"id": 1, "content": "<s>", "special": true, "single_word": false,
             "lstrip": false, "rstrip": false, "normalized": false},
            {"id": 2, "content": "</s>", "special": true, "single_word": false,
             "lstrip": false, "rstrip": false, "normalized": false}]
    })
}

#[test]
fn tokenizer_json_yields_the_vocabulary_it_was_converted_from() {
    for legacy in [true, false] {
        let derived = from_json::derive(&llama_json(legacy), &SpecialTokens::default(), None, None)
            .unwrap()
            .unwrap();
        let toy = toy_vocab();
        assert_eq!(derived.pieces.len(), toy.pieces.len());
        for (d, t) in derived.pieces.iter().zip(&toy.pieces) {
            assert_eq!((&d.text, d.kind), (&t.text, t.kind));
        }
        // Merged pieces score in merge order, above every unmerged piece.
        let score = |t: &str| derived.pieces.iter().find(|p| p.text == t).unwrap().score;
        assert!(score("▁h") > score("ll") && score("ll") > score("▁hello"));
        assert!(score("▁hello") > score("h"));
        assert_eq!(
            (derived.unk_id, derived.bos_id, derived.eos_id),
            (Some(0), Some(1), None)
        );
        assert!(derived.add_bos && !derived.add_eos && derived.add_space_prefix);
    }
}

#[test]
fn tokenizer_config_overrides_the_flags_and_names_the_specials() {
    let special = SpecialTokens::from_config(&json!({
        "add_bos_token": false, "add_eos_token": true,
        "eos_token": {"content": "</s>", "special": true}, "pad_token": "<unk>"
    }));
    let v = from_json::derive(&llama_json(true), &special, None, Some(7))
        .unwrap()
        .unwrap();
    assert!(!v.add_bos && v.add_eos);
    assert_eq!((v.eos_id, v.pad_id), (Some(2), Some(0)));
}

#[test]
fn gemma_style_json_has_no_space_prefix_and_byte_level_is_not_sentencepiece() {
    let mut gemma = llama_json(true);
    gemma["normalizer"] = json!({"type": "Replace", "pattern": {"String": " "}, "content": "▁"});
    let v = from_json::derive(&gemma, &SpecialTokens::default(), None, None)
        .unwrap()
        .unwrap();
    assert!(!v.add_space_prefix);

    let mut byte_level = llama_json(true);
    byte_level["model"]["byte_fallback"] = json!(false);
    byte_level["normalizer"] = json!(null);
    byte_level["pre_tokenizer"] = json!({"type": "ByteLevel"});
    assert!(
        from_json::derive(&byte_level, &SpecialTokens::default(), None, None)
            .unwrap()
            .is_none()
    );
}

#[test]
fn derived_vocabulary_tokenizes_like_the_json_it_came_from() {
    let json = llama_json(true);
    let original = tokenizers::Tokenizer::from_bytes(json.to_string().as_bytes()).unwrap();
    let derived = from_json::derive(&json, &SpecialTokens::default(), None, None)
        .unwrap()
        .unwrap();
    let rebuilt = build(&derived, "toy").unwrap();
    for text in [
        "hello",
        "hello hello",
        "hell",
        "he llo!",
        " hello",
        "ollh e",
    ] {
        let a = original.encode(text, true).unwrap();
        let b = rebuilt.encode(text, true).unwrap();
        assert_eq!(a.get_ids(), b.get_ids(), "{text:?}");
    }
}
