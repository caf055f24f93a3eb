//! `microllm quantize --method awq` and `--scheme w8a8-int8 [--smoothquant A]` on the fixture
//! models: the outputs hold the folded norms beside the quantized linears, W8A8 is written as
//! compressed-tensors `int-quantized` and runs with its activations quantized when read back,
//! and requests that cannot be honoured fail naming the option.

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
        diff > 0.0 && diff < 0.05 * scale,
        "activation quantization moved logits by {diff} (logits up to {scale})"
    );
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
    let err = run(&["--method", "awq", "--gguf-type", "q4_k"]);
    assert!(err.contains("--method awq"), "{err}");
}
