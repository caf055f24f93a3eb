//! Every architecture against transformers' reference (f32, eager attention): logits, hidden
//! states after every block, and the cached (incremental) forward against the full one.

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use microllm_models::{Decoder, KvCache};

/// Reference logits are f32; accumulated rounding differences stay well below this.
const LOGITS_TOLERANCE: f32 = 1e-4;
const HIDDEN_TOLERANCE: f32 = 1e-4;

fn fixture(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/fixtures")
        .join(name);
    assert!(dir.is_dir(), "missing fixture {}", dir.display());
    dir
}

struct Reference {
    ids: Tensor,
    logits: Tensor,
    hidden: Vec<Tensor>,
}

fn reference(name: &str) -> Reference {
    let path = fixture(name).join("reference.safetensors");
    let tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    let ids = tensors["input_ids"].to_dtype(DType::U32).unwrap();
    let mut hidden = Vec::new();
    while let Some(h) = tensors.get(&format!("hidden_states.{}", hidden.len())) {
        hidden.push(h.clone());
    }
    Reference {
        ids,
        logits: tensors["logits"].clone(),
        hidden,
    }
}

fn load(name: &str) -> Decoder {
    let ckpt = microllm_io::open(fixture(name).to_str().unwrap()).unwrap();
    Decoder::load(&ckpt.config, ckpt.tensors.as_ref()).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

const FAMILIES: [&str; 8] = [
    "llama-tiny",
    "mistral-tiny",
    "qwen2-tiny",
    "phi-tiny",
    "gemma3-tiny",
    "qwen3-tiny",
    "phi3-tiny",
    "llama3-tiny",
];

#[test]
fn logits_and_hidden_states_match_the_reference() {
    for name in FAMILIES {
        let model = load(name);
        let r = reference(name);
        let (logits, hidden) = model.forward_with_hidden(&r.ids).unwrap();
        let d = max_diff(&logits, &r.logits);
        let hidden_d = hidden
            .iter()
            .zip(&r.hidden)
            .map(|(a, b)| max_diff(a, b))
            .fold(0f32, f32::max);
        eprintln!("{name}: max |logits - reference| = {d:.2e}, hidden states {hidden_d:.2e}");
        assert!(d <= LOGITS_TOLERANCE, "{name}: logits differ by {d}");
        assert_eq!(
            hidden.len(),
            r.hidden.len(),
            "{name}: number of hidden states"
        );
        for (i, (ours, theirs)) in hidden.iter().zip(&r.hidden).enumerate() {
            let d = max_diff(ours, theirs);
            assert!(
                d <= HIDDEN_TOLERANCE,
                "{name}: hidden state {i} differs by {d}"
            );
        }
        let plain = model.forward(&r.ids).unwrap();
        assert_eq!(
            max_diff(&plain, &logits),
            0.0,
            "{name}: forward != forward_with_hidden"
        );
    }
}

#[test]
fn cached_decoding_equals_the_full_forward() {
    for name in FAMILIES {
        let model = load(name);
        let r = reference(name);
        let full = model.forward(&r.ids).unwrap();
        let seq = r.ids.dim(1).unwrap();
        // A prompt of 5 tokens, then one token at a time: crosses mistral's window of 8.
        let mut cache = KvCache::new(model.config());
        let mut parts = vec![
            model
                .forward_cached(&r.ids.narrow(1, 0, 5).unwrap(), &mut cache)
                .unwrap(),
        ];
        for t in 5..seq {
            let step = r.ids.narrow(1, t, 1).unwrap();
            parts.push(model.forward_cached(&step, &mut cache).unwrap());
        }
        assert_eq!(cache.len(), seq);
        let incremental = Tensor::cat(&parts, 1).unwrap();
        let d = max_diff(&incremental, &full);
        eprintln!("{name}: max |cached - full| = {d:.2e}");
        assert!(
            d <= LOGITS_TOLERANCE,
            "{name}: cached decoding differs by {d}"
        );
    }
}

#[test]
fn sliding_window_matters_for_mistral() {
    // Guard against a window that is silently ignored: with the window removed, the logits of
    // late positions must move away from the reference.
    let ckpt = microllm_io::open(fixture("mistral-tiny").to_str().unwrap()).unwrap();
    let mut cfg = ckpt.config.clone();
    assert_eq!(cfg.sliding_window, Some(8));
    cfg.sliding_window = None;
    let unwindowed = Decoder::load(&cfg, ckpt.tensors.as_ref()).unwrap();
    let r = reference("mistral-tiny");
    let d = max_diff(&unwindowed.forward(&r.ids).unwrap(), &r.logits);
    assert!(
        d > 1e-3,
        "removing the window changed the logits by only {d}"
    );
}

#[test]
fn family_features_are_not_ignored() {
    // Each distinctive feature of the newer families, switched off, must move the logits
    // away from the reference: a feature that is silently ignored would pass the match test
    // only if the fixture did not exercise it.
    type Tweak = fn(&mut microllm_core::ModelConfig);
    let cases: [(&str, &str, Tweak); 4] = [
        ("llama3-tiny", "llama3 rope rescaling", |c| {
            c.rope_scaling = microllm_core::RopeScaling::None
        }),
        ("gemma3-tiny", "local rope base", |c| {
            c.local_rope_theta = None
        }),
        ("gemma3-tiny", "per-layer windows", |c| {
            c.sliding_layers = Some(vec![true; c.num_layers])
        }),
        ("gemma3-tiny", "query_pre_attn_scalar", |c| {
            c.query_pre_attn_scalar = Some(64.0)
        }),
    ];
    for (name, feature, tweak) in cases {
        let ckpt = microllm_io::open(fixture(name).to_str().unwrap()).unwrap();
        let mut cfg = ckpt.config.clone();
        tweak(&mut cfg);
        let model = Decoder::load(&cfg, ckpt.tensors.as_ref()).unwrap();
        let r = reference(name);
        let d = max_diff(&model.forward(&r.ids).unwrap(), &r.logits);
        assert!(
            d > 1e-3,
            "{name}: without {feature} the logits moved by only {d}"
        );
    }
}

#[test]
fn linear_taps_see_every_linear_input() {
    use microllm_core::{LinearKind, Result};
    use microllm_models::LinearTap;

    #[derive(Default)]
    struct Recorder(Vec<(usize, LinearKind, Vec<usize>)>);
    impl LinearTap for Recorder {
        fn observe(&mut self, layer: usize, kind: LinearKind, input: &Tensor) -> Result<()> {
            self.0.push((layer, kind, input.dims().to_vec()));
            Ok(())
        }
    }

    for (name, linears) in [("llama-tiny", 7), ("phi-tiny", 6)] {
        let model = load(name);
        let r = reference(name);
        let mut x = model.embed(&r.ids).unwrap();
        let at = model.positions(0);
        let mut rec = Recorder::default();
        for block in model.blocks() {
            x = block.forward(&x, at, None, &mut rec).unwrap();
        }
        let cfg = model.config();
        assert_eq!(rec.0.len(), cfg.num_layers * linears, "{name}");
        for (layer, kind, dims) in &rec.0 {
            let block = &model.blocks()[*layer];
            let in_features = block.linear(*kind).unwrap().in_features();
            assert_eq!(dims, &vec![2, 24, in_features], "{name} {layer} {kind:?}");
        }
        let d = max_diff(&model.head(&x).unwrap(), &r.logits);
        assert!(
            d <= LOGITS_TOLERANCE,
            "{name}: block-by-block forward differs by {d}"
        );
    }
}

#[test]
fn long_prompts_cross_query_chunks() {
    // 200 tokens: the full forward attends in two query chunks (128 + 72), which must agree
    // with a cached pass fed in uneven pieces, window included (mistral).
    for name in ["llama-tiny", "mistral-tiny", "phi-tiny", "gemma3-tiny"] {
        let model = load(name);
        let vocab = model.config().vocab_size as u32;
        let ids: Vec<u32> = (0..400u32).map(|i| (i * 7919 + 13) % vocab).collect();
        let ids = Tensor::from_vec(ids, (2, 200), &Device::Cpu).unwrap();
        let full = model.forward(&ids).unwrap();
        let mut cache = KvCache::new(model.config());
        let mut parts = Vec::new();
        let mut start = 0;
        for len in [1, 130, 2, 67] {
            let piece = ids.narrow(1, start, len).unwrap();
            parts.push(model.forward_cached(&piece, &mut cache).unwrap());
            start += len;
        }
        let d = max_diff(&Tensor::cat(&parts, 1).unwrap(), &full);
        eprintln!("{name}: 200 tokens, max |cached - full| = {d:.2e}");
        assert!(d <= LOGITS_TOLERANCE, "{name}: long prompt differs by {d}");
    }
}

#[test]
fn positions_beyond_the_tables_and_bad_ids_are_errors() {
    let model = load("llama-tiny");
    let vocab = model.config().vocab_size as u32;
    let ids = Tensor::new(&[[1u32, vocab]], &Device::Cpu).unwrap();
    let err = model.forward(&ids).unwrap_err().to_string();
    assert!(err.contains(&format!("token id {vocab}")), "{err}");
    let ids = Tensor::new(&[[1u32, u32::MAX]], &Device::Cpu).unwrap();
    assert!(model.forward(&ids).is_err(), "u32::MAX is not padding");
    let max = model.config().max_position_embeddings;
    let ids = Tensor::zeros((1, max + 1), DType::U32, &Device::Cpu).unwrap();
    let err = model.forward(&ids).unwrap_err().to_string();
    assert!(err.contains("beyond"), "{err}");
}

/// The block-at-a-time decoder (teachers larger than memory) matches the reference logits on
/// every family, tied and untied heads, with the batch of the reference windows.
#[test]
fn streamed_decoder_matches_the_reference() {
    for name in FAMILIES {
        let ckpt = microllm_io::open(fixture(name).to_str().unwrap()).unwrap();
        let r = reference(name);
        let streamed = microllm_models::StreamedDecoder::new(
            &ckpt.config,
            ckpt.tensors.as_ref(),
            r.ids.dims()[1],
        )
        .unwrap();
        let logits = streamed
            .forward(&r.ids, &microllm_core::NoProgress)
            .unwrap();
        let d = max_diff(&logits, &r.logits);
        assert!(
            d <= LOGITS_TOLERANCE,
            "{name}: streamed logits differ by {d}"
        );
    }
}
