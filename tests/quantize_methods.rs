//! `microllm quantize --method awq` and `--scheme w8a8-int8|w8a8-fp8|w8a16-fp8
//! [--smoothquant A]` on the fixture models: the outputs hold the folded norms beside the
//! quantized linears, W8A8 is written as compressed-tensors `int-quantized` (FP8:
//! `float-quantized`) and runs with its activations quantized when read back, FP8 weights are
//! E4M3 bytes, and requests that cannot be honoured fail naming the option.

mod common;

use std::path::Path;

use candle_core::{Device, Tensor};
use common::{calib_ids, fixture, microllm};
use microllm_core::ActivationQuant;
use microllm_models::Decoder;

fn quantize(model: &str, calib: &Path, out: &Path, extra: &[&str]) -> serde_json::Value {
    microllm()
        .args(["quantize", "--samples", "8", "--seqlen", "32", "--model"])
        .arg(fixture(model))
        .arg("--calib")
        .arg(calib)
        .arg("--out")
        .arg(out)
        .args(extra)
        .assert()
        .success();
    let report = out.with_file_name(format!(
        "{}.report.json",
        out.file_stem().unwrap().to_string_lossy()
    ));
    serde_json::from_str(&std::fs::read_to_string(report).unwrap()).unwrap()
}

fn load(path: &Path, name: &str) -> Vec<f32> {
    let ckpt = microllm_io::open(path.to_str().unwrap()).unwrap();
    let t = ckpt.tensors.load(name).unwrap();
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn logits(model: &Decoder, vocab: usize) -> Tensor {
    let ids: Vec<u32> = (0..32).map(|i| (i * 37 % vocab) as u32).collect();
    let ids = Tensor::from_vec(ids, (1, 32), &Device::Cpu).unwrap();
    model.forward(&ids).unwrap()
}

/// AWQ folds its scales into the norms (and, without grouped-query attention, into v's rows):
/// the written checkpoint carries the changed norms, its linears are the quantized ones, and
/// the report records what AWQ chose.
#[test]
fn awq_writes_folded_norms_with_the_codes() {
    let tmp = tempfile::tempdir().unwrap();
    let calib = calib_ids(tmp.path(), 8, 32, 384);
    for model in ["phi-tiny", "llama-tiny"] {
        let out = tmp.path().join(format!("{model}-awq"));
        let report = quantize(
            model,
            &calib,
            &out,
            &[
                "--method",
                "awq",
                "--bits",
                "4",
                "--group-size",
                "32",
                "--format",
                "compressed-tensors",
            ],
        );
        assert_eq!(report["method"], "awq", "{model}");
        let layers = report["layers"].as_array().unwrap();
        assert!(
            layers.iter().all(|l| l["awq"].is_object()),
            "{model}: every linear has an AWQ record"
        );
        let scaled = layers
            .iter()
            .filter(|l| l["kind"] == "q" && l["awq"]["ratio"].is_number())
            .count();
        let norm = "model.layers.0.input_layernorm.weight";
        let (before, after) = (load(&fixture(model), norm), load(&out, norm));
        if layers
            .iter()
            .any(|l| l["layer"] == 0 && l["kind"] == "q" && l["awq"]["ratio"].is_number())
        {
            assert_ne!(before, after, "{model}: the folded norm was written");
        }
        assert!(scaled > 0, "{model}: AWQ scaled no q/k/v input");
        // Untouched tensors pass through.
        let embed = "model.embed_tokens.weight";
        assert_eq!(load(&fixture(model), embed), load(&out, embed), "{model}");
        let notes = report["notes"].to_string();
        assert!(notes.contains("AWQ scaled the inputs"), "{notes}");
    }
}

/// W8A8 int8: compressed-tensors `int-quantized` with dynamic per-token int8 activations,
/// 8-bit per-channel symmetric int8 weights; microllm reads the activation scheme back and
/// runs with it (the logits differ from the weight-only reading, slightly).
#[test]
fn w8a8_int8_is_written_as_int_quantized_and_runs_with_quantized_activations() {
    let tmp = tempfile::tempdir().unwrap();
    let calib = calib_ids(tmp.path(), 8, 32, 384);
    let out = tmp.path().join("w8a8");
    let report = quantize(
        "llama-tiny",
        &calib,
        &out,
        &["--scheme", "w8a8-int8", "--smoothquant", "0.5"],
    );
    assert_eq!(report["scheme"]["bits"], 8);
    assert_eq!(report["scheme"]["smoothquant"], 0.5);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    let qc = &config["quantization_config"];
    assert_eq!(qc["format"], "int-quantized");
    let group = &qc["config_groups"]["group_0"];
    assert_eq!(group["weights"]["strategy"], "channel");
    assert_eq!(group["input_activations"]["strategy"], "token");
    assert_eq!(group["input_activations"]["dynamic"], true);

    let ckpt = microllm_io::open(out.to_str().unwrap()).unwrap();
    assert_eq!(
        ckpt.config.activation_quant,
        Some(ActivationQuant::Int8PerToken)
    );
    let info = ckpt
        .tensors
        .info("model.layers.0.self_attn.q_proj.weight")
        .unwrap();
    assert_eq!(info.dtype, "Q8-ct");
    // SmoothQuant changed the norms in front of q/k/v and gate/up.
    let norm = "model.layers.0.input_layernorm.weight";
    assert_ne!(load(&fixture("llama-tiny"), norm), load(&out, norm));

    assert_activations_move_logits(&ckpt, 0.05);
}

/// Running `ckpt` as served (activations quantized) moves its logits from the weight-only
/// reading of the same weights, by less than `max_rel` of their largest magnitude.
fn assert_activations_move_logits(ckpt: &microllm_io::Checkpoint, max_rel: f32) {
    let vocab = ckpt.config.vocab_size;
    let served = Decoder::load(&ckpt.config, ckpt.tensors.as_ref()).unwrap();
    let mut weight_only_cfg = ckpt.config.clone();
    weight_only_cfg.activation_quant = None;
    let weight_only = Decoder::load(&weight_only_cfg, ckpt.tensors.as_ref()).unwrap();
    let (a, b) = (logits(&served, vocab), logits(&weight_only, vocab));
    let max_abs = |t: Tensor| {
        t.abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    let diff = max_abs((&a - &b).unwrap());
    let scale = max_abs(b);
    assert!(
        diff > 0.0 && diff < max_rel * scale,
        "activation quantization moved logits by {diff} (logits up to {scale})"
    );
}

/// The raw dtype and bytes of tensor `name` in the single-file checkpoint directory `dir`.
fn raw_tensor(dir: &Path, name: &str) -> (safetensors::Dtype, Vec<u8>) {
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor(name).unwrap();
    (t.dtype(), t.data().to_vec())
}

/// FP8: GPTQ on the E4M3 grid written as compressed-tensors `float-quantized` (W8A8, FP8
/// activations per token) or `naive-quantized` with `type: float` (weights only); the weight
/// is E4M3 bytes (no NaN), and what microllm reads back is exactly byte value x scale.
#[test]
fn fp8_schemes_are_written_as_e4m3_bytes_and_w8a8_runs_with_fp8_activations() {
    use microllm_core::fp8::e4m3_to_f32;
    let tmp = tempfile::tempdir().unwrap();
    let calib = calib_ids(tmp.path(), 8, 32, 384);
    let name = "model.layers.1.mlp.down_proj";
    for (scheme, format, activations, group) in [
        (
            "w8a8-fp8",
            "float-quantized",
            Some(ActivationQuant::Fp8PerToken),
            None,
        ),
        ("w8a16-fp8", "naive-quantized", None, Some("32")),
    ] {
        let out = tmp.path().join(scheme);
        let mut args = vec!["--scheme", scheme];
        if let Some(g) = group {
            args.extend(["--group-size", g]);
        }
        let report = quantize("llama-tiny", &calib, &out, &args);
        assert_eq!(report["scheme"]["code_type"], "fp8-e4m3", "{scheme}");
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap())
                .unwrap();
        let qc = &config["quantization_config"];
        assert_eq!(qc["format"], format);
        let g0 = &qc["config_groups"]["group_0"];
        assert_eq!(g0["weights"]["type"], "float");
        assert_eq!(
            g0["weights"]["strategy"],
            if group.is_some() { "group" } else { "channel" }
        );
        assert_eq!(g0["input_activations"].is_null(), activations.is_none());

        let (dtype, codes) = raw_tensor(&out, &format!("{name}.weight"));
        assert_eq!(dtype, safetensors::Dtype::F8_E4M3);
        assert!(codes.iter().all(|&b| b & 0x7F != 0x7F), "NaN byte written");
        let (_, scale_bytes) = raw_tensor(&out, &format!("{name}.weight_scale"));
        let scales: Vec<f32> = scale_bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let ckpt = microllm_io::open(out.to_str().unwrap()).unwrap();
        assert_eq!(ckpt.config.activation_quant, activations);
        let read = load(&out, &format!("{name}.weight"));
        // Scales are [out, n_groups] over a row-major [out, in] weight.
        let per_scale = read.len() / scales.len();
        for (j, (&w, &c)) in read.iter().zip(&codes).enumerate() {
            assert_eq!(w, scales[j / per_scale] * e4m3_to_f32(c), "{scheme} at {j}");
        }
        if activations.is_some() {
            // E4M3 keeps 3 mantissa bits: each input moves by up to 1/16 of itself (int8 by
            // 1/255 of the token's largest), and the random fixture's two blocks add them up.
            assert_activations_move_logits(&ckpt, 0.15);
        }
    }
}

/// Wanda 2:4 + SmoothQuant W8A8 (issue 16's composition) written as compressed-tensors: the
/// quantized weights hold the pruned zeros (every 4 consecutive inputs keep at most 2), the
/// config declares `sparsity_config` with the 2:4 structure over `dense` storage beside the
/// `int-quantized` scheme, and the checkpoint reads back with its activation scheme.
#[test]
fn pruned_and_quantized_compressed_tensors_declare_both() {
    let tmp = tempfile::tempdir().unwrap();
    let ids = calib_ids(tmp.path(), 8, 32, 384);
    let out = tmp.path().join("wanda-w8a8");
    let recipe = common::recipe(
        &fixture("llama-tiny"),
        &ids,
        "  - prune: {method: wanda, pattern: \"2:4\"}\n  - quantize: {method: gptq, scheme: w8a8-int8, smoothquant: 0.5}\n",
        &format!("  path: {}\n  format: compressed-tensors\n", out.display()),
    );
    let file = common::write(tmp.path(), "r.yaml", &recipe);
    microllm().arg("run").arg(&file).assert().success();
    let config = common::json(&out.join("config.json"));
    let qc = &config["quantization_config"];
    assert_eq!(qc["format"], "int-quantized");
    let sparsity = &qc["sparsity_config"];
    assert_eq!(sparsity["format"], "dense");
    assert_eq!(sparsity["sparsity_structure"], "2:4");
    let global = sparsity["global_sparsity"].as_f64().unwrap();
    assert!((0.5..0.6).contains(&global), "global sparsity {global}");

    let ckpt = microllm_io::open(out.to_str().unwrap()).unwrap();
    assert_eq!(
        ckpt.config.activation_quant,
        Some(ActivationQuant::Int8PerToken)
    );
    let w = load(&out, "model.layers.0.mlp.up_proj.weight");
    for quad in w.chunks_exact(4) {
        let kept = quad.iter().filter(|&&v| v != 0.0).count();
        assert!(kept <= 2, "{quad:?}");
    }
}

#[test]
fn method_and_scheme_conflicts_name_the_option() {
    let tmp = tempfile::tempdir().unwrap();
    let calib = calib_ids(tmp.path(), 4, 32, 384);
    let run = |args: &[&str]| -> String {
        let out = microllm()
            .args(["quantize", "--seqlen", "32", "--samples", "4", "--model"])
            .arg(fixture("llama-tiny"))
            .arg("--calib")
            .arg(&calib)
            .arg("--out")
            .arg(tmp.path().join("x"))
            .args(args)
            .assert()
            .failure();
        assert!(!tmp.path().join("x").exists());
        String::from_utf8_lossy(&out.get_output().stderr).to_string()
    };
    let err = run(&["--scheme", "w8a8-int8", "--format", "gguf"]);
    assert!(
        err.contains("--format") && err.contains("compressed-tensors"),
        "{err}"
    );
    let err = run(&["--smoothquant", "0.5"]);
    assert!(err.contains("--scheme"), "{err}");
    let err = run(&["--scheme", "w8a8-int8", "--smoothquant", "1.5"]);
    assert!(err.contains("smoothquant") && err.contains("1.5"), "{err}");
    let err = run(&[
        "--method",
        "awq",
        "--scheme",
        "w8a8-int8",
        "--smoothquant",
        "0.5",
    ]);
    assert!(err.contains("smoothquant") && err.contains("AWQ"), "{err}");
    let err = run(&["--scheme", "w8a16-fp8", "--format", "gptq"]);
    assert!(
        err.contains("FP8") && err.contains("compressed-tensors"),
        "{err}"
    );
    let err = run(&["--scheme", "w8a16-fp8", "--smoothquant", "0.5"]);
    assert!(err.contains("w8a8-fp8"), "{err}");
    let err = run(&["--method", "awq", "--gguf-type", "q4_k"]);
    assert!(err.contains("--method awq"), "{err}");
}
