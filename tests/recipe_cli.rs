//! `microllm run` and `microllm recipe` on the fixture models: a prune -> quantize -> eval
//! recipe end to end, resume after SIGKILL, gates and their exit codes, JUnit, sweeps, bad
//! recipes named by YAML path and line with nothing written, the configs/ recipes, and the
//! committed JSON Schema.

mod common;

use std::path::{Path, PathBuf};

use common::{calib_ids, fixture, json, microllm, random_llama, recipe, write};

/// Token ids for calibration and evaluation: 16 x 32 pseudo-random ids below the fixtures'
/// vocabulary of 384.
fn ids(tmp: &Path) -> PathBuf {
    calib_ids(tmp, 16, 32, 384)
}

/// Linear weights of a model, as f32.
fn linears(path: &Path) -> Vec<(String, Vec<f32>)> {
    let ckpt = microllm_io::open(path.to_str().unwrap()).unwrap();
    ckpt.tensors
        .infos()
        .into_iter()
        .filter(|i| {
            microllm_core::names::parse_linear_weight(ckpt.config.family, &i.name).is_some()
        })
        .map(|i| {
            let t = ckpt.tensors.load(&i.name).unwrap();
            (i.name, t.flatten_all().unwrap().to_vec1::<f32>().unwrap())
        })
        .collect()
}

const PRUNE_QUANTIZE_EVAL: &str = "  - prune:\n      method: sparsegpt\n      pattern: \"2:4\"\n  - quantize:\n      bits: 4\n      group_size: 32\n  - eval: {}\n";

#[test]
fn prune_quantize_eval_recipe_runs_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let ids = ids(tmp.path());
    let out = tmp.path().join("out/model.gguf");
    let text = recipe(
        &fixture("llama-tiny"),
        &ids,
        PRUNE_QUANTIZE_EVAL,
        &format!("  path: {}\n", out.display()),
    );
    let r = write(tmp.path(), "r.yaml", &text);
    microllm().arg("run").arg(&r).assert().success();

    let report = json(&tmp.path().join("out/model.report.json"));
    assert_eq!(report["schema_version"], 2);
    assert_eq!(report["passes"].as_array().unwrap().len(), 3);
    let layers = report["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 21);
    for l in layers {
        assert_eq!(l["sparsity"], 0.5, "{l}");
        assert_eq!(l["output_type"], "Q4_0", "{l}");
        assert!(l["gptq_loss"].as_f64().unwrap() >= 0.0);
    }
    let eval = &report["eval"];
    assert_eq!(eval["of_output"], true);
    assert_eq!(eval["compressed"]["windows"], 4);
    let m = &report["metrics"];
    let kl = m["kl"].as_f64().unwrap();
    let top1 = m["top1_agreement"].as_f64().unwrap();
    assert!(
        kl > 0.0 && kl.is_finite(),
        "a pruned, quantized model differs: KL {kl}"
    );
    assert!((0.0..1.0).contains(&top1), "{top1}");
    assert_eq!(
        m["size_mb"].as_f64().unwrap(),
        std::fs::metadata(&out).unwrap().len() as f64 / 1e6
    );
    assert!((m["sparsity"].as_f64().unwrap() - 0.5).abs() < 1e-12);
    assert!(m["peak_rss_mb"].as_f64().unwrap() > 0.0);
    assert_eq!(report["model"]["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(report["calibration"]["tokens_used"], 8 * 32);

    // The GGUF holds the 2:4 pattern exactly (pruned weights are the grids' zero points).
    for (name, w) in linears(&out) {
        for group in w.chunks(4) {
            assert!(group.iter().filter(|&&x| x != 0.0).count() <= 2, "{name}");
        }
    }
    // All three renderings, the HTML with its charts (error and sparsity per layer).
    let md = std::fs::read_to_string(tmp.path().join("out/model.report.md")).unwrap();
    assert!(
        md.contains("## Layers") && md.contains("KL divergence"),
        "{md}"
    );
    let html = std::fs::read_to_string(tmp.path().join("out/model.report.html")).unwrap();
    assert_eq!(html.matches("<svg class=\"chart\"").count(), 2, "{html}");
    assert!(html.contains("Sparsity per layer"));
    assert!(!tmp.path().join("out/model.gguf.microllm-work").exists());
}

/// The calibration forward's arithmetic is the recipe's `calibration.compute`: recorded in
/// the report, and the 8-bit default (the quantized linears run on their Q4_0 blocks with
/// 8-bit activations) leads GPTQ to layers as accurate as the f32 forward does.
#[test]
fn calibration_compute_is_recorded_and_int8_matches_f32() {
    let tmp = tempfile::tempdir().unwrap();
    let ids = ids(tmp.path());
    let passes = "  - quantize:\n      bits: 4\n      group_size: 32\n";
    let mut errors = Vec::new();
    for compute in ["int8", "f32"] {
        let out = tmp.path().join(format!("{compute}/model.gguf"));
        let text = recipe(
            &fixture("llama-tiny"),
            &ids,
            passes,
            &format!("  path: {}\n", out.display()),
        )
        .replace(
            "seqlen: 32\n",
            &format!("seqlen: 32\n  compute: {compute}\n"),
        );
        let r = write(tmp.path(), &format!("{compute}.yaml"), &text);
        microllm().arg("run").arg(&r).assert().success();
        let report = json(&tmp.path().join(format!("{compute}/model.report.json")));
        assert_eq!(report["calibration"]["compute"], compute);
        let kernel = report["calibration"]["hessian_kernel"].as_str().unwrap();
        assert!(
            ["gemm", "tiled-f32", "tiled-bf16"].contains(&kernel),
            "{kernel}"
        );
        if compute == "f32" {
            assert_ne!(kernel, "tiled-bf16", "f32 compute keeps f32 products");
        }
        let layers = report["layers"].as_array().unwrap();
        let mean: f64 = layers
            .iter()
            .map(|l| l["weight_error"].as_f64().unwrap())
            .sum::<f64>()
            / layers.len() as f64;
        errors.push(mean);
    }
    let (int8, f32) = (errors[0], errors[1]);
    assert!(
        (int8 - f32).abs() <= 0.1 * f32,
        "mean relative weight error: int8 {int8}, f32 {f32}"
    );
}

/// An eval of an uncompressed copy: the comparison's oracle (same logits: KL 0, top-1 1).
#[test]
fn an_unchanged_model_has_zero_kl_and_full_agreement() {
    let tmp = tempfile::tempdir().unwrap();
    let ids = ids(tmp.path());
    let out = tmp.path().join("copy");
    let text = recipe(
        &fixture("qwen2-tiny"),
        &ids,
        "  - eval: {}\n",
        &format!("  path: {}\n  dtype: f32\n", out.display()),
    );
    let r = write(tmp.path(), "r.yaml", &text);
    microllm().arg("run").arg(&r).assert().success();
    let m = json(&tmp.path().join("copy.report.json"))["metrics"].clone();
    assert_eq!(m["kl"], 0.0);
    assert_eq!(m["top1_agreement"], 1.0);
    assert_eq!(m["ppl_increase"], 0.0);
}

/// Runs `args` and returns the exit code and stderr.
fn status(args: &[&std::ffi::OsStr]) -> (i32, String) {
    let out = microllm().args(args).output().unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn gates_pass_fail_and_exit_codes() {
    let tmp = tempfile::tempdir().unwrap();
    let ids = ids(tmp.path());
    let out = tmp.path().join("q.gguf");
    let text = recipe(
        &fixture("mistral-tiny"),
        &ids,
        "  - quantize: {bits: 4, group_size: 32}\n  - eval: {}\ngates:\n  - size_mb <= 100\n",
        &format!("  path: {}\n  overwrite: true\n", out.display()),
    );
    let r = write(tmp.path(), "r.yaml", &text);
    let junit = tmp.path().join("gates.xml");
    // Passing: exit 0, the gate PASS in every rendering and in JUnit.
    let (code, err) = status(&[
        "run".as_ref(),
        r.as_os_str(),
        "--junit".as_ref(),
        junit.as_os_str(),
    ]);
    assert_eq!(code, 0, "{err}");
    let report = json(&tmp.path().join("q.report.json"));
    assert_eq!(report["gates_passed"], true);
    assert_eq!(report["gates"][0]["passed"], true);
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(xml.contains("tests=\"1\" failures=\"0\""), "{xml}");

    // Failing (a --gate added to the recipe's): exit 3, the output and reports still written.
    let (code, err) = status(&[
        "run".as_ref(),
        r.as_os_str(),
        "--gate".as_ref(),
        "top1_agreement>=1.5".as_ref(),
        "--junit".as_ref(),
        junit.as_os_str(),
    ]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("a gate failed"), "{err}");
    let report = json(&tmp.path().join("q.report.json"));
    assert_eq!(report["gates_passed"], false);
    let gates = report["gates"].as_array().unwrap();
    assert_eq!(gates.len(), 2);
    assert_eq!(
        (gates[0]["passed"].as_bool(), gates[1]["passed"].as_bool()),
        (Some(true), Some(false))
    );
    let md = std::fs::read_to_string(tmp.path().join("q.report.md")).unwrap();
    assert!(
        md.contains("## Gates: FAILED") && md.contains("| `top1_agreement >= 1.5` |"),
        "{md}"
    );
    let html = std::fs::read_to_string(tmp.path().join("q.report.html")).unwrap();
    assert!(
        html.contains("<span class=\"fail\">FAIL</span>")
            && html.contains("<span class=\"pass\">PASS</span>")
    );
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(
        xml.contains("tests=\"2\" failures=\"1\"")
            && xml.contains("<failure message=\"top1_agreement = "),
        "{xml}"
    );

    // An error is not a gate failure: exit 1.
    let (code, _) = status(&["run".as_ref(), tmp.path().join("missing.yaml").as_os_str()]);
    assert_eq!(code, 1);
}

fn line_of(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).unwrap() + 1
}

/// Runs a bad recipe: it fails naming `path (line N)` and `msg`, and leaves the directory as
/// it was.
fn refused(tmp: &Path, text: &str, path: &str, line_needle: &str, msg: &str) {
    let r = write(tmp, "bad.yaml", text);
    let before: Vec<_> = std::fs::read_dir(tmp)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let (code, err) = status(&["run".as_ref(), r.as_os_str()]);
    assert_eq!(code, 1, "{err}");
    let want = format!("{path} (line {}): ", line_of(text, line_needle));
    assert!(err.contains(&want), "`{want}` not in: {err}");
    assert!(err.contains(msg), "`{msg}` not in: {err}");
    let after: Vec<_> = std::fs::read_dir(tmp)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(before, after, "files appeared for {path}");
    // Validation alone says the same.
    let (code, err2) = status(&["recipe".as_ref(), "validate".as_ref(), r.as_os_str()]);
    assert_eq!(code, 1);
    assert!(err2.contains(&want), "{err2}");
}

#[test]
fn bad_recipes_name_the_yaml_path_and_line_and_write_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let ids = ids(tmp.path());
    let model = fixture("llama-tiny");
    let out = format!("  path: {}\n", tmp.path().join("never.gguf").display());
    let bad = |passes: &str| recipe(&model, &ids, passes, &out);

    let t = bad("  - quantize:\n      bitz: 4\n");
    refused(
        tmp.path(),
        &t,
        "passes[0].quantize.bitz",
        "bitz",
        "unknown field `bitz`",
    );
    let t = bad("  - quantize:\n      bits: four\n");
    refused(
        tmp.path(),
        &t,
        "passes[0].quantize.bits",
        "four",
        "invalid type",
    );
    let t =
        bad("  - prune: {method: magnitude}\n  - quantize:\n      bits: 4\n      group_size: 48\n");
    refused(
        tmp.path(),
        &t,
        "passes[1].quantize.group_size",
        "group_size",
        "group size 48 does not divide the rows of `model.layers.0.self_attn.q_proj.weight` (64 columns)",
    );
    // A pass that needs calibration with none given: reported at the pass.
    let t = bad("  - quantize: {bits: 4}\n").replace(
        &format!(
            "calibration:\n  data: {}\n  samples: 8\n  seqlen: 32\n",
            ids.display()
        ),
        "",
    );
    refused(
        tmp.path(),
        &t,
        "calibration.data",
        "- quantize",
        "needs calibration data",
    );
    // An output format the passes cannot produce.
    let t = recipe(
        &model,
        &ids,
        "  - prune: {method: magnitude, sparsity: 0.5}\n",
        &format!(
            "  path: {}\n  format: gptq\n",
            tmp.path().join("never").display()
        ),
    );
    refused(
        tmp.path(),
        &t,
        "output.format",
        "format: gptq",
        "gptq output needs a quantize pass",
    );
    // Per-tensor types retype llama.cpp's RTN types, not GPTQ's codes.
    let t = recipe(
        &model,
        &ids,
        "  - quantize: {bits: 4}\n",
        &format!(
            "  path: {}\n  tensor_types: [\"attn_v=q8_0\"]\n",
            tmp.path().join("never.gguf").display()
        ),
    );
    refused(
        tmp.path(),
        &t,
        "output.tensor_types",
        "tensor_types",
        "GPTQ and RTN codes keep the blocks",
    );
    let t = bad("  - quantize: {bits: 4}\ngates: [\"speed <= 3\"]\n");
    refused(
        tmp.path(),
        &t,
        "gates[0]",
        "gates",
        "`speed` is not a metric",
    );
    let t = bad("  - quantize: {bits: 4}\n  - prune: {method: magnitude}\n");
    refused(
        tmp.path(),
        &t,
        "passes[1].prune",
        "- prune",
        "pruning after quantization",
    );
    let t = bad("  - quantize: {bits: 4, method: rtn, act_order: true}\n");
    refused(
        tmp.path(),
        &t,
        "passes[0].quantize.act_order",
        "act_order",
        "applies to",
    );
    let t = bad("  - quantize: {bits: 4, importance_matrix: true}\n");
    refused(
        tmp.path(),
        &t,
        "passes[0].quantize.importance_matrix",
        "importance_matrix",
        "applies to method ggml",
    );
    let t = bad("  - prune:\n      method: wanda\n      pattern: \"2:4\"\n      schedule: owl\n");
    refused(
        tmp.path(),
        &t,
        "passes[0].prune.schedule",
        "schedule",
        "an N:M pattern fixes every block's",
    );
    let t = bad("  - prune: {method: wanda, owl_lambda: 0.1}\n");
    refused(
        tmp.path(),
        &t,
        "passes[0].prune.owl_lambda",
        "owl_lambda",
        "applies to schedule owl",
    );
    // Distill passes: their place, how long they train, their losses, their keys.
    let t = bad("  - quantize: {bits: 4, method: rtn}\n  - distill: {steps: 2}\n");
    refused(
        tmp.path(),
        &t,
        "passes[1].distill",
        "- distill",
        "distillation after passes[0] (quantize)",
    );
    let t = bad("  - distill: {lr: 0.001}\n");
    refused(
        tmp.path(),
        &t,
        "passes[0].distill.steps",
        "- distill",
        "give `steps: N` or `tokens: N`",
    );
    let t = bad("  - distill:\n      steps: 2\n      logits: store\n      loss: {jsd: 1}\n");
    refused(
        tmp.path(),
        &t,
        "passes[0].distill.loss",
        "loss",
        "a store holds its top-k",
    );
    let t = bad("  - distill:\n      steps: 2\n      loss: {kld: 1}\n");
    refused(
        tmp.path(),
        &t,
        "passes[0].distill.loss.kld",
        "kld",
        "unknown field `kld`",
    );
    let t = bad("  - distill: {steps: 2}\n  - structured_prune: {drop_layers: 1}\n");
    refused(
        tmp.path(),
        &t,
        "passes[1].structured_prune",
        "- structured_prune",
        "a distill pass has already changed",
    );
    let t = bad("  - quantize:\n    bits: 4\n  - eval: {}\n x\n");
    refused(tmp.path(), &t, "recipe", " x", "not valid YAML");

    // A value from --set says so instead of a line.
    let r = write(tmp.path(), "ok.yaml", &bad("  - quantize: {bits: 4}\n"));
    let (code, err) = status(&[
        "run".as_ref(),
        r.as_os_str(),
        "--set".as_ref(),
        "passes.0.bits=9".as_ref(),
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("passes[0].quantize.bits (from the command line): 9 bits"),
        "{err}"
    );
    assert!(!tmp.path().join("never.gguf").exists());
}

/// SIGKILL in the middle of the layerwise pass of structured -> prune -> quantize -> eval,
/// then `--resume`: the same output bytes and the same per-layer records as a run that was
/// never interrupted.
#[test]
fn killed_recipe_resumes_to_identical_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("random-llama");
    random_llama(&model);
    let calib = calib_ids(tmp.path(), 32, 256, 384);
    let passes = "  - structured_prune: {mlp_keep: 0.75}\n  - prune: {method: sparsegpt, sparsity: 0.5}\n  - quantize: {bits: 4, group_size: 64}\n  - eval: {windows: 2}\n";
    let text = |out: &Path| {
        recipe(
            &model,
            &calib,
            passes,
            &format!("  path: {}\n", out.display()),
        )
        .replace("samples: 8\n  seqlen: 32", "samples: 32\n  seqlen: 256")
    };
    let whole = tmp.path().join("whole.gguf");
    let r1 = write(tmp.path(), "whole.yaml", &text(&whole));
    microllm().arg("run").arg(&r1).assert().success();

    let resumed = tmp.path().join("resumed.gguf");
    let r2 = write(tmp.path(), "resumed.yaml", &text(&resumed));
    let work = tmp.path().join("resumed.gguf.microllm-work");
    common::run_and_kill_when(&r2, &work.join("block-00002.safetensors"));
    assert!(!resumed.exists(), "killed before the output was written");
    assert!(
        !work.join("block-00005.safetensors").exists(),
        "killed mid-pass"
    );
    assert!(work.join("structured-scores.json").exists());

    let out = microllm()
        .arg("run")
        .arg(&r2)
        .arg("--resume")
        .assert()
        .success();
    let stdout = String::from_utf8_lossy(&out.get_output().stdout).to_string();
    assert!(stdout.contains("resumed after"), "{stdout}");
    assert!(
        std::fs::read(&whole).unwrap() == std::fs::read(&resumed).unwrap(),
        "resumed output differs from the uninterrupted one"
    );
    let a = json(&tmp.path().join("whole.report.json"));
    let b = json(&tmp.path().join("resumed.report.json"));
    assert_eq!(a["structure"]["layers"], b["structure"]["layers"]);
    let strip = |v: &serde_json::Value| -> Vec<serde_json::Value> {
        // Records without the reported GPTQ loss (a parallel sum, not bit-stable).
        v["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                let mut l = l.clone();
                l.as_object_mut().unwrap().remove("gptq_loss");
                l
            })
            .collect()
    };
    assert_eq!(strip(&a), strip(&b));
    assert_eq!(a["metrics"]["ppl"], b["metrics"]["ppl"]);
    assert!(b["passes"][1]["resumed"].as_bool().unwrap());
    assert!(
        !work.exists(),
        "the work directory is removed after success"
    );
}

/// `--matrix`: every combination runs with its own output and report, and one comparison
/// report (JSON, Markdown, HTML with the Pareto chart) is written.
#[test]
fn a_sweep_writes_every_variant_and_a_comparison() {
    let tmp = tempfile::tempdir().unwrap();
    let ids = ids(tmp.path());
    let out = tmp.path().join("s.gguf");
    let text = recipe(
        &fixture("llama-tiny"),
        &ids,
        "  - quantize: {method: rtn, bits: 4, group_size: 32}\n  - eval: {}\n",
        &format!("  path: {}\n", out.display()),
    );
    let r = write(tmp.path(), "s.yaml", &text);
    microllm()
        .arg("run")
        .arg(&r)
        .args(["--matrix", "bits=2,8", "--matrix", "group_size=16,32"])
        .assert()
        .success();
    for v in [
        "bits2-group_size16",
        "bits2-group_size32",
        "bits8-group_size16",
        "bits8-group_size32",
    ] {
        assert!(tmp.path().join(format!("s-{v}.gguf")).exists(), "{v}");
        let rep = json(&tmp.path().join(format!("s-{v}.report.json")));
        assert!(rep["variant"]["bits"].is_number(), "{rep}");
    }
    let sweep = json(&tmp.path().join("s.sweep.json"));
    let variants = sweep["variants"].as_array().unwrap();
    assert_eq!(variants.len(), 4);
    // 8-bit codes are in Q8_0 blocks (bigger) and lose less: neither dominates every 2-bit one.
    let front = sweep["pareto_front"].as_array().unwrap();
    assert!(!front.is_empty() && front.len() <= 4);
    let html = std::fs::read_to_string(tmp.path().join("s.sweep.html")).unwrap();
    assert_eq!(html.matches("class=\"point\"").count(), 4);
    assert!(html.contains("Pareto"));
}

/// `quantize --print-recipe` prints the recipe its flags mean; `microllm run` on it writes the
/// same bytes as the command.
#[test]
fn a_command_and_its_printed_recipe_write_the_same_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let ids = ids(tmp.path());
    let via_flags = tmp.path().join("flags.gguf");
    let via_recipe = tmp.path().join("recipe.gguf");
    let args = |out: &Path| -> Vec<std::ffi::OsString> {
        let mut v: Vec<std::ffi::OsString> = [
            "quantize",
            "--samples",
            "8",
            "--seqlen",
            "32",
            "--bits",
            "3",
            "--asym",
            "--model",
        ]
        .iter()
        .map(Into::into)
        .collect();
        v.extend([
            fixture("phi-tiny").into(),
            "--calib".into(),
            ids.clone().into(),
            "--out".into(),
            out.into(),
        ]);
        v
    };
    microllm().args(args(&via_flags)).assert().success();
    let printed = microllm()
        .args(args(&via_recipe))
        .arg("--print-recipe")
        .assert()
        .success();
    let yaml = String::from_utf8_lossy(&printed.get_output().stdout).to_string();
    assert!(
        yaml.contains("- quantize:") && yaml.contains("symmetric: false"),
        "{yaml}"
    );
    assert!(!via_recipe.exists(), "--print-recipe writes nothing");
    let r = write(tmp.path(), "printed.yaml", &yaml);
    microllm().arg("run").arg(&r).assert().success();
    assert!(std::fs::read(&via_flags).unwrap() == std::fs::read(&via_recipe).unwrap());
}

/// The configs/ recipes run on a fixture (model and data replaced with --set); their gates
/// are evaluated and decide the exit status. quickstart.yaml is validated on the real model
/// (scripts/quickstart.sh runs it).
#[test]
fn the_configs_run_on_a_fixture() {
    let tmp = tempfile::tempdir().unwrap();
    let ids = ids(tmp.path());
    for name in [
        "gptq-w4-gguf",
        "awq-w4-gguf",
        "w8a8-int8",
        "w8a8-fp8",
        "wanda-2of4",
        "ci-gate",
        "prune-distill-quantize",
    ] {
        let config = common::repo_root().join(format!("configs/{name}.yaml"));
        let out = tmp.path().join(name);
        let directory = matches!(name, "wanda-2of4" | "w8a8-int8" | "w8a8-fp8");
        let out = if directory {
            out
        } else {
            out.with_extension("gguf")
        };
        let set = |kv: String| ["--set".to_string(), kv];
        let mut args = vec!["run".to_string(), config.display().to_string()];
        for kv in [
            format!("model={}", fixture("llama-tiny").display()),
            format!("calibration.data={}", ids.display()),
            "calibration.samples=8".into(),
            "calibration.seqlen=32".into(),
            format!("evaluation.data={}", ids.display()),
            "evaluation.ctx=32".into(),
            "evaluation.windows=4".into(),
            format!("output.path={}", out.display()),
        ] {
            args.extend(set(kv));
        }
        if name == "awq-w4-gguf" {
            // The fixture's down projection reads 160 columns: groups of 32 divide it.
            args.extend(set("passes.0.quantize.group_size=32".into()));
        }
        if name == "prune-distill-quantize" {
            // The fixture has 3 blocks; train briefly on its short windows.
            for kv in [
                "passes.0.drop_layers=1",
                "passes.2.steps=2",
                "passes.2.batch=2",
                "passes.2.seqlen=16",
            ] {
                args.extend(set(kv.into()));
            }
        }
        let (code, err) = status(&args.iter().map(std::ffi::OsStr::new).collect::<Vec<_>>());
        let stem = if directory {
            out.clone()
        } else {
            out.with_extension("")
        };
        let report = json(&PathBuf::from(format!("{}.report.json", stem.display())));
        let passed = report["gates_passed"].as_bool().unwrap();
        assert_eq!(code, if passed { 0 } else { 3 }, "{name}: {err}");
        assert!(out.exists(), "{name}");
        if name == "ci-gate" {
            assert_eq!(report["gates"].as_array().unwrap().len(), 4);
        }
        if name == "wanda-2of4" {
            assert_eq!(report["output"]["linear_sparsity"], 0.5);
        }
        if name == "awq-w4-gguf" {
            assert_eq!(report["method"], "awq");
        }
        if name == "w8a8-int8" {
            assert_eq!(report["scheme"]["activations"], "int8-per-token");
            assert_eq!(report["gates"].as_array().unwrap().len(), 1);
        }
        if name == "w8a8-fp8" {
            assert_eq!(report["scheme"]["activations"], "fp8-per-token");
            assert_eq!(report["scheme"]["code_type"], "fp8-e4m3");
        }
        if name == "prune-distill-quantize" {
            assert_eq!(report["method"], "structured+distill+gptq");
            assert_eq!(report["distill"]["steps"], 2);
            assert_eq!(report["passes"].as_array().unwrap().len(), 6);
        }
    }
    let quickstart = common::repo_root().join("configs/quickstart.yaml");
    let assets = common::assets();
    let plan = microllm()
        .arg("run")
        .arg(&quickstart)
        .arg("--dry-run")
        .args([
            "--set",
            &format!("model={}", common::smollm2_gguf().display()),
        ])
        .args([
            "--set",
            &format!(
                "calibration.data={}",
                assets.join("data/c4.calib.txt").display()
            ),
        ])
        .args([
            "--set",
            &format!(
                "evaluation.data={}",
                assets.join("data/wiki.eval.txt").display()
            ),
        ])
        .args([
            "--set",
            &format!("output.path={}", tmp.path().join("q.gguf").display()),
        ])
        .assert()
        .success();
    let stdout = String::from_utf8_lossy(&plan.get_output().stdout).to_string();
    assert!(stdout.contains("210 block linears      Q4_0"), "{stdout}");
    assert!(stdout.contains("estimated time"), "{stdout}");
    assert!(!tmp.path().join("q.gguf").exists());
}

/// The committed JSON Schema is the one the types generate.
#[test]
fn the_committed_schema_is_in_sync() {
    let out = microllm().args(["recipe", "schema"]).assert().success();
    let generated: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    let committed = json(&common::repo_root().join("configs/recipe.schema.json"));
    assert_eq!(
        generated, committed,
        "configs/recipe.schema.json is stale: regenerate it with `microllm recipe schema > configs/recipe.schema.json`"
    );
    assert!(committed["properties"]["passes"].is_object());
}
