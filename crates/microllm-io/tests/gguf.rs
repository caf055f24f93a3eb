//! GGUF reading against the real SmolLM2-135M-Instruct Q4_1 file from the shared assets.
//!
//! These tests need /work/shared/assets (fetched by scripts/fetch-assets.sh). They fail, never
//! skip, when it is missing: a reader that was never run against a real file is untested.

use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::Content;
use microllm_core::names::{self, LinearKind};
use microllm_core::{Activation, Family};
use microllm_io::gguf;

fn assets() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/assets");
    assert!(
        dir.join("models").is_dir(),
        "shared test assets not found at {}: run scripts/fetch-assets.sh",
        dir.display()
    );
    dir
}

fn smollm_path() -> PathBuf {
    let p = assets().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        p.is_file(),
        "{} is missing: run scripts/fetch-assets.sh",
        p.display()
    );
    p
}

fn smollm() -> microllm_io::Checkpoint {
    gguf::open(&smollm_path()).expect("open SmolLM2 GGUF")
}

#[test]
fn smollm_config() {
    let ck = smollm();
    assert_eq!(ck.format, microllm_io::CheckpointFormat::Gguf);
    let c = &ck.config;
    assert_eq!(c.family, Family::Llama);
    assert_eq!(c.num_layers, 30);
    assert_eq!(c.hidden_size, 576);
    assert_eq!(c.intermediate_size, 1536);
    assert_eq!(c.num_heads, 9);
    assert_eq!(c.num_kv_heads, 3);
    assert_eq!(c.head_dim, 64);
    assert_eq!(c.rope_theta, 100_000.0);
    assert_eq!(c.partial_rotary_factor, 1.0);
    assert_eq!(c.norm_eps, 1e-5);
    assert!(c.tie_word_embeddings);
    assert_eq!(c.vocab_size, 49152);
    assert_eq!(c.max_position_embeddings, 8192);
    assert_eq!(c.activation, Activation::Silu);
    assert!(!c.qkv_bias && !c.o_bias && !c.mlp_bias && !c.lm_head_bias);
    assert_eq!(c.sliding_window, None);
    assert_eq!(c.bos_token_id, Some(1));
    assert_eq!(c.eos_token_ids, [2]);
    assert_eq!(c.torch_dtype, None);
    let params = c.parameter_count();
    assert!((134_000_000..135_000_000).contains(&params), "{params}");
    let template = ck.chat_template.as_deref().expect("chat template");
    assert!(template.contains("<|im_start|>"), "{template}");
}

#[test]
fn smollm_tensors_have_hf_names_and_shapes() {
    let ck = smollm();
    let src = &ck.tensors;
    let f = Family::Llama;
    let mut expected = vec![
        (names::EMBED_TOKENS.to_string(), vec![49152, 576]),
        (format!("{}.weight", names::final_norm(f)), vec![576]),
    ];
    for l in 0..30 {
        for kind in LinearKind::ALL {
            let shape = match kind {
                LinearKind::Q | LinearKind::O => vec![576, 576],
                LinearKind::K | LinearKind::V => vec![192, 576],
                LinearKind::Gate | LinearKind::Up => vec![1536, 576],
                LinearKind::Down => vec![576, 1536],
            };
            expected.push((names::linear_weight(f, l, kind), shape));
        }
        expected.push((format!("{}.weight", names::attn_norm(l)), vec![576]));
        expected.push((format!("{}.weight", names::mlp_norm(f, l)), vec![576]));
    }
    assert_eq!(expected.len(), 30 * 7 + 30 * 2 + 2);
    for (name, shape) in &expected {
        let info = src.info(name).unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!(&info.shape, shape, "{name}");
    }
    assert_eq!(src.infos().len(), expected.len());
    assert!(
        !src.contains("lm_head.weight"),
        "tied model must not list lm_head"
    );
    let q = src.info("model.layers.0.self_attn.q_proj.weight").unwrap();
    assert_eq!(q.dtype, "Q4_1");
    assert_eq!(q.stored_bytes, 576 * 576 / 32 * 20);
    assert_eq!(src.info(names::EMBED_TOKENS).unwrap().dtype, "Q8_0");
    assert_eq!(src.info("model.norm.weight").unwrap().dtype, "F32");
    let total: u64 = src.infos().iter().map(|i| i.stored_bytes).sum();
    let file_len = std::fs::metadata(smollm_path()).unwrap().len();
    assert!(
        total < file_len && total > file_len * 9 / 10,
        "{total} of {file_len}"
    );

    // Every tensor dequantizes to f32 in its announced shape.
    for info in src.infos() {
        let t = src.load(&info.name).unwrap();
        assert_eq!(t.dims(), info.shape.as_slice(), "{}", info.name);
        assert_eq!(t.dtype(), candle_core::DType::F32);
    }
    let err = src.load("model.layers.99.mlp.up_proj.weight").unwrap_err();
    assert!(
        err.to_string()
            .contains("model.layers.99.mlp.up_proj.weight")
    );
}

#[test]
fn smollm_q_and_k_are_unpermuted_exactly() {
    // What llama.cpp stored, read independently through candle.
    let path = smollm_path();
    let mut file = std::fs::File::open(&path).unwrap();
    let content = Content::read(&mut file).unwrap();
    let mut raw = |n: &str| {
        content
            .tensor(&mut file, n, &candle_core::Device::Cpu)
            .unwrap()
            .dequantize(&candle_core::Device::Cpu)
            .unwrap()
    };
    let ck = smollm();
    let same = |a: &candle_core::Tensor, b: &candle_core::Tensor| {
        let d = (a - b).unwrap().abs().unwrap().max_all().unwrap();
        d.to_scalar::<f32>().unwrap() == 0.0
    };
    for (layer, hf, gg, heads) in [
        (3, LinearKind::Q, "attn_q", 9),
        (3, LinearKind::K, "attn_k", 3),
    ] {
        let hf_t = ck
            .tensors
            .load(&names::linear_weight(Family::Llama, layer, hf))
            .unwrap();
        let gg_t = raw(&format!("blk.{layer}.{gg}.weight"));
        assert!(!same(&hf_t, &gg_t), "{gg} was not reordered");
        let back = gguf::names::permute_rows(&hf_t, heads).unwrap();
        assert!(same(&back, &gg_t), "{gg}: permute(load) != stored");
    }
    // v is not permuted.
    let v = ck
        .tensors
        .load(&names::linear_weight(Family::Llama, 3, LinearKind::V))
        .unwrap();
    assert!(same(&v, &raw("blk.3.attn_v.weight")));
}

#[test]
fn smollm_tokenizer_matches_reference() {
    let ck = smollm();
    let tk = ck.require_tokenizer().unwrap();
    assert_eq!(tk.vocab_size(), 49152);
    let text = std::fs::read_to_string(assets().join("data/wiki.eval.txt")).unwrap();
    let ids = tk.encode(&text, false).unwrap();
    assert_eq!(
        ids.len(),
        107_364,
        "wiki.eval.txt token count (107380 means digits are not split one by one)"
    );
    let prompt = "The capital of France is";
    let ids = tk.encode(prompt, false).unwrap();
    assert_eq!(tk.decode(&ids).unwrap(), prompt);
    // add_bos_token is false: special tokens add nothing.
    assert_eq!(tk.encode(prompt, true).unwrap(), ids);
    // Chat markers are single tokens; digits are split one by one.
    assert_eq!(
        tk.encode("<|im_start|>user\nHi<|im_end|>", false).unwrap()[0],
        1
    );
    assert_eq!(tk.token_id("<|im_end|>"), Some(2));
    assert_eq!(tk.encode("2024", false).unwrap().len(), 4);
}

#[test]
fn bad_magic_names_the_file() {
    let mut f = tempfile::Builder::new().suffix(".gguf").tempfile().unwrap();
    f.write_all(b"NOPE, not a gguf file at all").unwrap();
    f.flush().unwrap();
    let path = f.path();
    let err = gguf::open(path).unwrap_err();
    assert!(
        matches!(err, microllm_core::Error::Format { .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains("GGUF"), "{msg}");
    let msg = microllm_io::open(path.to_str().unwrap())
        .unwrap_err()
        .to_string();
    assert!(msg.contains(&path.display().to_string()), "{msg}");
}

#[test]
fn truncated_file_names_file_and_tensor() {
    let real = std::fs::read(smollm_path()).unwrap();
    let content = Content::read(&mut std::io::Cursor::new(&real)).unwrap();
    let cut = real.len() as u64 / 2;
    // The first tensor (in file order) whose data reaches past the cut.
    let victim = content
        .tensor_infos
        .iter()
        .filter(|(_, i)| {
            let n = i.shape.elem_count() / i.ggml_dtype.block_size();
            content.tensor_data_offset + i.offset + (n * i.ggml_dtype.type_size()) as u64 > cut
        })
        .min_by_key(|(_, i)| i.offset)
        .map(|(n, _)| n.clone())
        .unwrap();
    assert!(content.tensor_data_offset < cut);

    let mut f = tempfile::Builder::new().suffix(".gguf").tempfile().unwrap();
    f.write_all(&real[..cut as usize]).unwrap();
    f.flush().unwrap();
    let path = f.path();
    let msg = gguf::open(path).unwrap_err().to_string();
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(
        msg.contains(&format!("`{victim}`")),
        "{msg} (expected {victim})"
    );
    assert!(msg.contains("truncated"), "{msg}");

    // Cut inside the header: the file, the key cut and the likely cause named.
    let mut g = tempfile::Builder::new().suffix(".gguf").tempfile().unwrap();
    g.write_all(&real[..1000]).unwrap();
    g.flush().unwrap();
    let msg = gguf::open(g.path()).unwrap_err().to_string();
    assert!(msg.contains(&g.path().display().to_string()), "{msg}");
    assert!(
        msg.contains("metadata") && msg.contains("cut short"),
        "{msg}"
    );
}
