//! GPTQ and compressed-tensors checkpoints written by `microllm quantize` and read back by
//! microllm's readers: every linear dequantizes to exactly the quantizer's weights (the f32
//! safetensors output of the same run), for 2/3/4/8 bits, symmetric and asymmetric grids,
//! act-order on and off; and broken checkpoints fail with the key or tensor named.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::{fixture, microllm};

/// Pre-tokenized calibration data: `rows` x `seq` pseudo-random ids below `vocab`.
fn calib_ids(dir: &Path, rows: usize, seq: usize, vocab: u64) -> PathBuf {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let bytes: Vec<u8> = (0..rows * seq)
        .flat_map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state % vocab) as i64).to_le_bytes()
        })
        .collect();
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::I64, vec![rows, seq], &bytes)
            .unwrap();
    let path = dir.join("calib.safetensors");
    safetensors::serialize_to_file([("input_ids", view)], None, &path).unwrap();
    path
}

/// Every tensor of a model as microllm's readers present it (f32, Hugging Face names).
fn tensors(model: &Path) -> BTreeMap<String, Vec<f32>> {
    let ckpt = microllm_io::open(model.to_str().unwrap()).unwrap();
    ckpt.tensors
        .infos()
        .into_iter()
        .map(|i| {
            let t = ckpt.tensors.load(&i.name).unwrap();
            (i.name, t.flatten_all().unwrap().to_vec1::<f32>().unwrap())
        })
        .collect()
}

fn quantize(model: &Path, calib: &Path, out: &Path, extra: &[&str]) {
    microllm()
        .args(["quantize", "--samples", "8", "--seqlen", "32", "--model"])
        .arg(model)
        .arg("--calib")
        .arg(calib)
        .arg("--out")
        .arg(out)
        .args(extra)
        .assert()
        .success();
}

fn config(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap()
}

#[test]
fn packed_outputs_hold_exactly_the_quantized_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let calib = calib_ids(tmp.path(), 16, 32, 384);
    let cases: [(&str, &[&str]); 12] = [
        ("llama-tiny", &["--bits", "4", "--group-size", "32"]),
        ("llama-tiny", &["--bits", "3", "--asym", "--act-order"]),
        (
            "phi-tiny",
            &["--bits", "2", "--group-size", "channel", "--act-order"],
        ),
        (
            "qwen2-tiny",
            &["--bits", "8", "--asym", "--group-size", "32"],
        ),
        (
            "mistral-tiny",
            &["--bits", "4", "--asym", "--group-size", "16", "--act-order"],
        ),
        (
            "llama-tiny",
            &["--bits", "2", "--asym", "--group-size", "channel"],
        ),
        ("qwen2-tiny", &["--bits", "3", "--act-order"]),
        (
            "llama-tiny",
            &["--bits", "8", "--act-order", "--method", "gptq"],
        ),
        // Phi-3's fused qkv/gate_up: parts stacked, one g_idx per fused matrix.
        (
            "phi3-tiny",
            &["--bits", "4", "--asym", "--group-size", "32", "--act-order"],
        ),
        ("gemma3-tiny", &["--bits", "4", "--group-size", "8"]),
        ("qwen3-tiny", &["--bits", "3", "--act-order"]),
        (
            "llama3-tiny",
            &["--bits", "4", "--asym", "--group-size", "32"],
        ),
    ];
    for (i, (name, args)) in cases.into_iter().enumerate() {
        let model = fixture(name);
        let dense = tmp.path().join(format!("{i}-dense"));
        let mut dense_args = args.to_vec();
        dense_args.extend(["--format", "safetensors", "--dtype", "f32"]);
        quantize(&model, &calib, &dense, &dense_args);
        let scattered = tensors(&dense);
        let act_order = args.contains(&"--act-order");
        // compressed-tensors fixes act-order groups up front (its library has no g_idx form
        // any more): its reference is the dense run with --static-groups.
        let static_groups = if act_order {
            let dense = tmp.path().join(format!("{i}-dense-static"));
            let mut static_args = dense_args.clone();
            static_args.push("--static-groups");
            quantize(&model, &calib, &dense, &static_args);
            tensors(&dense)
        } else {
            scattered.clone()
        };
        let original = tensors(&model);
        for format in ["gptq", "compressed-tensors"] {
            let expected = if format == "gptq" {
                &scattered
            } else {
                &static_groups
            };
            let out = tmp.path().join(format!("{i}-{format}"));
            let mut packed_args = args.to_vec();
            packed_args.extend(["--format", format]);
            quantize(&model, &calib, &out, &packed_args);
            let got = tensors(&out);
            assert_eq!(
                got.keys().collect::<Vec<_>>(),
                expected.keys().collect::<Vec<_>>(),
                "{name} {args:?} {format}"
            );
            for (tensor, values) in &got {
                assert!(
                    values == &expected[tensor],
                    "{name} {args:?} {format}: `{tensor}` differs from the quantizer's output \
                     by {}",
                    common::max_abs_diff(values, &expected[tensor])
                );
                let linear = tensor.ends_with(".weight")
                    && (tensor.contains("_proj.")
                        || tensor.contains(".fc")
                        || tensor.contains(".dense."));
                if linear {
                    assert!(values != &original[tensor], "{tensor} was not quantized");
                }
            }
            let qc = &config(&out)["quantization_config"];
            let bits: u64 = args[1].parse().unwrap();
            if format == "gptq" {
                assert_eq!(qc["quant_method"], "gptq");
                assert_eq!(qc["bits"], bits);
                assert_eq!(qc["desc_act"], act_order);
                assert_eq!(qc["sym"], !args.contains(&"--asym"));
                assert_eq!(qc["checkpoint_format"], "gptq");
                let side: serde_json::Value = serde_json::from_str(
                    &std::fs::read_to_string(out.join("quantize_config.json")).unwrap(),
                )
                .unwrap();
                assert_eq!(&side, qc);
            } else {
                assert_eq!(qc["quant_method"], "compressed-tensors");
                assert_eq!(qc["format"], "pack-quantized");
                let w = &qc["config_groups"]["group_0"]["weights"];
                assert_eq!(w["num_bits"], bits);
                let want = if act_order {
                    serde_json::json!("static")
                } else {
                    serde_json::Value::Null
                };
                assert_eq!(w["actorder"], want, "{name} {args:?}");
                let bytes = std::fs::read(out.join("model.safetensors")).unwrap();
                let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
                assert!(
                    !st.names().iter().any(|n| n.ends_with("weight_g_idx")),
                    "{name} {args:?}: static groups store no g_idx"
                );
            }
        }
    }
}

/// The on-disk layout as the consumers expect it: int32 packs, f16 scales, non-monotonic
/// g_idx with act-order, zero points only for asymmetric compressed-tensors.
#[test]
fn packed_tensors_have_the_reference_shapes() {
    let tmp = tempfile::tempdir().unwrap();
    let calib = calib_ids(tmp.path(), 16, 32, 384);
    let model = fixture("llama-tiny");
    let gptq = tmp.path().join("gptq");
    quantize(
        &model,
        &calib,
        &gptq,
        &["--bits", "3", "--act-order", "--format", "gptq"],
    );
    let bytes = std::fs::read(gptq.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let p = "model.layers.0.mlp.gate_proj";
    // gate_proj: [160, 64], groups of 32 (the default 128 does not divide 160).
    let shape = |n: &str| st.tensor(&format!("{p}.{n}")).unwrap().shape().to_vec();
    assert_eq!(shape("qweight"), vec![64 * 3 / 32, 160]);
    assert_eq!(shape("qzeros"), vec![2, 160 * 3 / 32]);
    assert_eq!(shape("scales"), vec![2, 160]);
    assert_eq!(shape("g_idx"), vec![64]);
    assert_eq!(
        st.tensor(&format!("{p}.scales")).unwrap().dtype(),
        safetensors::Dtype::F16
    );
    let g: Vec<i32> = st
        .tensor(&format!("{p}.g_idx"))
        .unwrap()
        .data()
        .chunks_exact(4)
        .map(|c| i32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert!(g.windows(2).any(|w| w[1] < w[0]), "act-order g_idx: {g:?}");
    assert!(st.tensor(&format!("{p}.weight")).is_err());
    assert!(st.tensor("model.embed_tokens.weight").is_ok());

    let ct = tmp.path().join("ct");
    quantize(
        &model,
        &calib,
        &ct,
        &["--bits", "4", "--asym", "--format", "compressed-tensors"],
    );
    let bytes = std::fs::read(ct.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let shape = |n: &str| st.tensor(&format!("{p}.{n}")).unwrap().shape().to_vec();
    assert_eq!(shape("weight_packed"), vec![160, 8]);
    assert_eq!(shape("weight_scale"), vec![160, 2]);
    assert_eq!(shape("weight_zero_point"), vec![20, 2]);
    assert_eq!(shape("weight_shape"), vec![2]);
    assert!(st.tensor(&format!("{p}.weight_g_idx")).is_err());
}

/// Rewrites one tensor of `dir/model.safetensors` with `edit(name, shape, bytes)`.
fn edit_tensor(dir: &Path, target: &str, new_shape: Vec<usize>, new_bytes: Vec<u8>) {
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let owned: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(name, v)| {
            if name == target {
                (name, v.dtype(), new_shape.clone(), new_bytes.clone())
            } else {
                (name, v.dtype(), v.shape().to_vec(), v.data().to_vec())
            }
        })
        .collect();
    let views: Vec<_> = owned
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &path).unwrap();
}

fn fails(model: &Path) -> String {
    let out = microllm()
        .args(["inspect", "--model"])
        .arg(model)
        .assert()
        .failure();
    String::from_utf8_lossy(&out.get_output().stderr).to_string()
}

fn set_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut v = config(dir);
    edit(&mut v);
    std::fs::write(dir.join("config.json"), v.to_string()).unwrap();
}

#[test]
fn broken_checkpoints_fail_naming_the_key_or_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixture("llama-tiny");
    let rtn = ["--method", "rtn", "--bits", "4", "--format"];
    let gptq = tmp.path().join("gptq");
    microllm()
        .arg("quantize")
        .args(rtn)
        .arg("gptq")
        .arg("--model")
        .arg(&model)
        .arg("--out")
        .arg(&gptq)
        .assert()
        .success();

    // qzeros with one group too many.
    let name = "model.layers.1.self_attn.v_proj.qzeros";
    let broken = tmp.path().join("bad-shape");
    common::copy_dir(&gptq, &broken);
    edit_tensor(&broken, name, vec![3, 4], vec![0; 3 * 4 * 4]);
    let err = fails(&broken);
    assert!(
        err.contains(name) && err.contains("expected shape"),
        "{err}"
    );

    let unknown = tmp.path().join("unknown");
    common::copy_dir(&gptq, &unknown);
    set_config(&unknown, |v| {
        v["quantization_config"]["quant_method"] = "hqq".into()
    });
    let err = fails(&unknown);
    assert!(
        err.contains("quantization_config.quant_method") && err.contains("hqq"),
        "{err}"
    );
    // GPTQ tensors declared as AWQ (whose qweight runs along the input): the shapes disagree,
    // and the error names the tensor.
    set_config(&unknown, |v| {
        v["quantization_config"]["quant_method"] = "awq".into()
    });
    let err = fails(&unknown);
    assert!(err.contains("expected shape"), "{err}");

    let ct = tmp.path().join("ct");
    microllm()
        .arg("quantize")
        .args(rtn)
        .arg("compressed-tensors")
        .arg("--model")
        .arg(&model)
        .arg("--out")
        .arg(&ct)
        .assert()
        .success();
    set_config(&ct, |v| {
        v["quantization_config"]["format"] = "marlin-24".into();
    });
    let err = fails(&ct);
    assert!(
        err.contains("quantization_config.format") && err.contains("marlin-24"),
        "{err}"
    );
}

/// `convert` from GPTQ (symmetric) and compressed-tensors (asymmetric) group-32 checkpoints
/// to GGUF copies the codes into Q4_0 / Q4_1 blocks: the GGUF decodes to the quantizer's
/// weights (Q4_0 bit for bit, Q4_1 up to the f16 rounding of its block minimum).
#[test]
fn convert_to_gguf_copies_the_codes() {
    let tmp = tempfile::tempdir().unwrap();
    let calib = calib_ids(tmp.path(), 16, 32, 384);
    let model = fixture("llama-tiny");
    let cases = [
        (
            "gptq",
            &["--bits", "4", "--group-size", "32"][..],
            "Q4_0",
            0.0f32,
        ),
        (
            "compressed-tensors",
            &["--bits", "3", "--asym", "--group-size", "32"][..],
            "Q4_1",
            1e-3,
        ),
    ];
    for (format, args, gguf_type, tol) in cases {
        let dense = tmp.path().join(format!("{format}-dense"));
        quantize(
            &model,
            &calib,
            &dense,
            &[args, &["--format", "safetensors", "--dtype", "f32"]].concat(),
        );
        let packed = tmp.path().join(format!("{format}-packed"));
        quantize(
            &model,
            &calib,
            &packed,
            &[args, &["--format", format]].concat(),
        );
        let gguf = tmp.path().join(format!("{format}.gguf"));
        microllm()
            .args(["convert", "--model"])
            .arg(&packed)
            .arg("--out")
            .arg(&gguf)
            .assert()
            .success();
        let ckpt = microllm_io::open(gguf.to_str().unwrap()).unwrap();
        let q = ckpt
            .tensors
            .info("model.layers.1.mlp.up_proj.weight")
            .unwrap();
        assert_eq!(q.dtype, gguf_type, "{format}");
        let (a, b) = (tensors(&gguf), tensors(&dense));
        for (tensor, values) in &a {
            if tensor.ends_with("proj.weight") {
                let scale = b[tensor].iter().fold(0f32, |m, x| m.max(x.abs()));
                let diff = common::max_abs_diff(values, &b[tensor]);
                assert!(diff <= tol * scale, "{format} {tensor}: {diff}");
            }
        }
    }
}
