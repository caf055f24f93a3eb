//! The GGUF writer with an importance matrix: every matrix whose type takes importance
//! weights is fitted with them, the others by plain round-to-nearest, and the writer says
//! which were weighted. Types candle fits (Q4_K here) are stored exactly as candle's
//! quantizer produces them; Q6_K is microllm's own fit (llama.cpp's current one, checked
//! byte for byte against llama-quantize by scripts/interop/imatrix.sh), held here to lose no
//! more than candle's under the same weights.

use candle_core::quantized::QTensor;
use candle_core::{Device, Tensor};
use microllm_core::{LinearKind, MemorySource, NoProgress, TensorSource, names};
use microllm_io::gguf::GgufType;
use microllm_io::gguf::{GgufExport, GgufTypes, ImportanceMatrix, KQuantMix, write_gguf};

/// A one-block llama whose rows (256 and 512 wide) fit k-quant blocks.
fn wide_llama() -> (microllm_core::ModelConfig, MemorySource) {
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 1,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 64,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 64,
        "tie_word_embeddings": true
    });
    let cfg = microllm_io::hf::parse_config(&config, "config.json".as_ref()).unwrap();
    let dev = Device::Cpu;
    let mut src = MemorySource::new("memory");
    let mut put = |name: String, shape: &[usize]| {
        src.insert(name, Tensor::randn(0f32, 0.05, shape, &dev).unwrap());
    };
    put(names::EMBED_TOKENS.into(), &[64, 256]);
    let (q, kv, i) = (cfg.q_dim(), cfg.kv_dim(), cfg.intermediate_size);
    for (kind, shape) in [
        (LinearKind::Q, [q, 256]),
        (LinearKind::K, [kv, 256]),
        (LinearKind::V, [kv, 256]),
        (LinearKind::O, [256, q]),
        (LinearKind::Gate, [i, 256]),
        (LinearKind::Up, [i, 256]),
        (LinearKind::Down, [256, i]),
    ] {
        put(names::linear_weight(cfg.family, 0, kind), &shape);
    }
    src.insert(
        names::attn_norm(0) + ".weight",
        Tensor::ones(256, candle_core::DType::F32, &dev).unwrap(),
    );
    src.insert(
        names::mlp_norm(cfg.family, 0) + ".weight",
        Tensor::ones(256, candle_core::DType::F32, &dev).unwrap(),
    );
    src.insert(
        format!("{}.weight", names::final_norm(cfg.family)),
        Tensor::ones(256, candle_core::DType::F32, &dev).unwrap(),
    );
    (cfg, src)
}

#[test]
fn k_quant_blocks_are_fitted_with_the_importance_weights() {
    let (cfg, src) = wide_llama();
    let mut matrix = ImportanceMatrix::new(100);
    for kind in LinearKind::ALL {
        let name = names::linear_weight(cfg.family, 0, kind);
        let cols = src
            .infos()
            .into_iter()
            .find(|i| i.name == name)
            .unwrap()
            .shape[1];
        // Importance spread over four orders of magnitude, so weighting changes the blocks.
        let w = (0..cols).map(|j| 10f32.powi((j % 5) as i32 - 2)).collect();
        matrix.insert(name, w);
    }
    let export = GgufExport {
        tensor_types: &[],
        config: &cfg,
        tensors: &src,
        tokenizer: None,
        chat_template: None,
        name: "wide",
        license: None,
        encoded: None,
        importance: Some(&matrix),
    };
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("wide.gguf");
    // Q4_K_M: Q4_K for most linears, Q6_K for block 0's v and down; the embedding (the tied
    // head) Q6_K; all take importance weights, but the embedding has none measured.
    let mix = GgufTypes::Mix(KQuantMix::Q4KM);
    let summary = write_gguf(&export, &path, mix, false, &NoProgress).unwrap();
    let written = microllm_io::open(path.to_str().unwrap()).unwrap();
    let mut weighted = 0;
    for d in summary.tensors.iter().filter(|d| d.shape.len() == 2) {
        let original = src.load(&d.hf_name).unwrap();
        let stored = written.tensors.load(&d.hf_name).unwrap();
        let columns = matrix.columns(&d.hf_name);
        let expected = match columns {
            Some(w) => QTensor::quantize_imatrix(&original, w, d.dtype.candle().unwrap()).unwrap(),
            None => QTensor::quantize(&original, d.dtype.candle().unwrap()).unwrap(),
        };
        let expected = expected.dequantize(&Device::Cpu).unwrap();
        if matches!(d.dtype, GgufType::Q4K | GgufType::Q6K) {
            // microllm's own fits (current llama.cpp's searches) against candle's (an older
            // llama.cpp's): squared error, each column weighted by its importance (1 without
            // a matrix), no worse.
            let cols = original.dim(1).unwrap();
            let weights = columns.map_or(vec![1f32; cols], <[f32]>::to_vec);
            let weights = Tensor::from_vec(weights, (1, cols), &Device::Cpu).unwrap();
            let loss = |q: &Tensor| -> f32 {
                (q - &original)
                    .unwrap()
                    .sqr()
                    .unwrap()
                    .broadcast_mul(&weights)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar()
                    .unwrap()
            };
            let (ours, candles) = (loss(&stored), loss(&expected));
            assert!(ours <= candles * 1.01, "{}: {ours} vs {candles}", d.hf_name);
        } else {
            let diff = (stored - expected)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert_eq!(diff, 0.0, "{} ({:?})", d.hf_name, d.dtype);
        }
        assert_eq!(d.importance_weighted, columns.is_some());
        weighted += usize::from(d.importance_weighted);
    }
    assert_eq!(weighted, 7);
    let dtype_of = |kind| {
        let name = names::linear_weight(cfg.family, 0, kind);
        summary
            .tensors
            .iter()
            .find(|d| d.hf_name == name)
            .unwrap()
            .dtype
    };
    assert_eq!(dtype_of(LinearKind::V), GgufType::Q6K);
    assert_eq!(dtype_of(LinearKind::Down), GgufType::Q6K);
    assert_eq!(dtype_of(LinearKind::Q), GgufType::Q4K);
}
