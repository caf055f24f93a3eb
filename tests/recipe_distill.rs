//! Recipes with a `distill` pass on the fixture models: structured pruning, then distillation
//! from the original (live, or from a stored teacher-logit store), then the later passes on
//! the trained student; the report's record and curves.

mod common;

use std::path::Path;

use common::{calib_ids, fixture, json, microllm, recipe, write};
use predicates::prelude::PredicateBooleanExt;

/// structured_prune -> eval -> distill -> eval of the output: distillation brings the pruned
/// student closer to its teacher on the data it trained on.
const PRUNE_EVAL_DISTILL_EVAL: &str = "  - structured_prune: {drop_layers: 1}\n  - eval: {}\n  - distill:\n      steps: 12\n      batch: 4\n      seqlen: 32\n      lr: 0.003\n      warmup_steps: 2\n      eval_every: 6\n  - eval: {}\n";

fn run_recipe(tmp: &Path, passes: &str, out: &Path) -> serde_json::Value {
    let ids = calib_ids(tmp, 16, 32, 384);
    let text = recipe(
        &fixture("llama-tiny"),
        &ids,
        passes,
        &format!("  path: {}\n  format: safetensors\n", out.display()),
    );
    let r = write(tmp, "r.yaml", &text);
    microllm().arg("run").arg(&r).assert().success();
    // A directory output's reports sit beside it: OUT.report.json.
    let mut name = out.file_name().unwrap().to_os_string();
    name.push(".report.json");
    json(&out.with_file_name(name))
}

#[test]
fn distill_pass_heals_the_pruned_student_and_charts_its_curves() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("student");
    let report = run_recipe(tmp.path(), PRUNE_EVAL_DISTILL_EVAL, &out);

    assert_eq!(report["method"], "structured+distill");
    let d = &report["distill"];
    assert_eq!(d["steps"], 12);
    assert_eq!(d["tokens"], 12 * 4 * 32);
    assert_eq!(d["targets"], "live teacher (full distribution)");
    assert_eq!(d["loss"], "kl:1");
    let evals = d["evals"].as_array().unwrap();
    let steps: Vec<u64> = evals.iter().map(|e| e["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, [0, 6, 12], "before training, then every 6 steps");
    assert_eq!(d["curve"].as_array().unwrap().len(), 12);

    // The eval before distillation measured the pruned student in memory, the one after the
    // written output: KL to the original fell.
    let passes = report["passes"].as_array().unwrap();
    let before = &passes[1]["eval"];
    let after = &passes[3]["eval"];
    assert_eq!(before["of_output"], false);
    assert_eq!(after["of_output"], true);
    let (kl0, kl1) = (
        before["kl_divergence"].as_f64().unwrap(),
        after["kl_divergence"].as_f64().unwrap(),
    );
    assert!(kl1 < 0.9 * kl0, "KL to the teacher {kl0} -> {kl1}");
    // The distill pass's own perplexity curve ends at the output's perplexity.
    let last = evals.last().unwrap()["perplexity"].as_f64().unwrap();
    let written = after["compressed"]["perplexity"].as_f64().unwrap();
    assert!(
        (last - written).abs() < 1e-3 * written,
        "{last} vs {written}"
    );

    // The written student is the pruned shape and loads.
    let cfg = json(&out.join("config.json"));
    assert_eq!(cfg["num_hidden_layers"], 2);
    microllm()
        .args(["inspect", "--model", out.to_str().unwrap()])
        .assert()
        .success();

    // Both curves are in the pass record and drawn in the HTML report.
    let curves = passes[2]["curves"].as_array().unwrap();
    assert_eq!(curves.len(), 2);
    assert_eq!(curves[0]["points"].as_array().unwrap().len(), 3);
    let html = std::fs::read_to_string(tmp.path().join("student.report.html")).unwrap();
    assert!(html.contains("Distillation: held-out perplexity of the student"));
    assert!(html.contains("Distillation: training loss (kl:1)"));
    assert!(!html.contains("No pass of this run records curves"));
    let md = std::fs::read_to_string(tmp.path().join("student.report.md")).unwrap();
    assert!(
        md.contains("| 2 | distill | kl:1 against the original"),
        "{md}"
    );
    assert!(md.contains("## Distillation"), "{md}");
    assert!(md.contains("| 12 | 1536 |"), "{md}");
}

#[test]
fn distill_pass_trains_from_a_store_then_quantizes() {
    let tmp = tempfile::tempdir().unwrap();
    let ids = calib_ids(tmp.path(), 16, 32, 384);
    let store = tmp.path().join("store");
    microllm()
        .args(["distill", "logits", "--teacher"])
        .arg(fixture("llama-tiny"))
        .arg("--data")
        .arg(&ids)
        .args(["--seqlen", "32", "--top-k", "16", "--out"])
        .arg(&store)
        .assert()
        .success();
    let out = tmp.path().join("student.gguf");
    let passes = format!(
        "  - structured_prune: {{drop_layers: 1}}\n  - distill:\n      steps: 4\n      batch: 4\n      seqlen: 32\n      logits: {}\n  - quantize: {{bits: 4, method: rtn}}\n  - eval: {{}}\n",
        store.display()
    );
    let text = recipe(
        &fixture("llama-tiny"),
        &ids,
        &passes,
        &format!("  path: {}\n", out.display()),
    );
    let r = write(tmp.path(), "r.yaml", &text);
    microllm().arg("run").arg(&r).assert().success();
    let report = json(&tmp.path().join("student.report.json"));
    assert_eq!(report["method"], "structured+distill+rtn");
    let targets = report["distill"]["targets"].as_str().unwrap();
    assert!(targets.starts_with("teacher-logit store"), "{targets}");
    assert!(targets.ends_with("(top-16)"), "{targets}");
    for l in report["layers"].as_array().unwrap() {
        assert_eq!(l["output_type"], "Q4_0", "{l}");
    }
    assert!(out.exists());

    // A store for other windows is refused before training, naming its manifest key.
    let wrong = text
        .replace("seqlen: 32\n      logits", "seqlen: 16\n      logits")
        .replace("student.gguf", "wrong.gguf");
    let r = write(tmp.path(), "wrong.yaml", &wrong);
    let output = microllm().arg("run").arg(&r).output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(err.contains("seqlen"), "{err}");
    assert!(err.contains("manifest.json"), "{err}");
}

/// SIGKILL while the distill pass trains, then `--resume`: training continues from the
/// trainer's last checkpoint, and the output is byte for byte that of a run never
/// interrupted.
#[test]
fn killed_distill_pass_resumes_to_identical_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("random-llama");
    common::random_llama(&model);
    let ids = calib_ids(tmp.path(), 32, 64, 384);
    let passes = "  - structured_prune: {drop_layers: 1}\n  - distill:\n      steps: 60\n      batch: 2\n      seqlen: 64\n      lr: 0.001\n      checkpoint_every: 4\n  - quantize: {bits: 4, method: rtn}\n";
    let text = |out: &Path| {
        recipe(
            &model,
            &ids,
            passes,
            &format!("  path: {}\n", out.display()),
        )
    };
    let whole = tmp.path().join("whole.gguf");
    let r1 = write(tmp.path(), "whole.yaml", &text(&whole));
    microllm().arg("run").arg(&r1).assert().success();

    let resumed = tmp.path().join("resumed.gguf");
    let r2 = write(tmp.path(), "resumed.yaml", &text(&resumed));
    let checkpoint = tmp
        .path()
        .join("resumed.gguf.microllm-work/distill-checkpoints/checkpoint/state.json");
    common::run_and_kill_when(&r2, &checkpoint);
    assert!(!resumed.exists(), "killed before the output was written");

    microllm()
        .arg("run")
        .arg(&r2)
        .arg("--resume")
        .assert()
        .success();
    assert!(
        std::fs::read(&whole).unwrap() == std::fs::read(&resumed).unwrap(),
        "resumed output differs from the uninterrupted one"
    );
    let report = json(&tmp.path().join("resumed.report.json"));
    let at = report["distill"]["resumed_at_step"].as_u64().unwrap();
    assert!(at > 0 && at < 60, "resumed at step {at}");
}

/// A distill pass whose loss stops being finite fails under `microllm run` as under
/// `microllm distill`: the step and the checkpoint named, and the same hint (the error keeps
/// its kind across the recipe road).
#[test]
fn diverging_distill_pass_keeps_its_error_kind_and_hint() {
    let tmp = tempfile::tempdir().unwrap();
    let ids = calib_ids(tmp.path(), 16, 32, 384);
    let out = tmp.path().join("out");
    let passes = "  - structured_prune: {drop_layers: 1}\n  - distill:\n      steps: 20\n      batch: 4\n      seqlen: 32\n      lr: 1.0e30\n      warmup_steps: 0\n      clip: 1.0e30\n";
    let text = recipe(
        &fixture("llama-tiny"),
        &ids,
        passes,
        &format!("  path: {}\n  format: safetensors\n", out.display()),
    );
    let r = write(tmp.path(), "r.yaml", &text);
    microllm().arg("run").arg(&r).assert().failure().stderr(
        predicates::str::contains("is not finite at step")
            .and(predicates::str::contains("hint: lower the learning rate")),
    );
    assert!(!out.exists(), "no output from a failed run");
}

/// A pass with a teacher of its own (the recipe's model is then the student) and a
/// hidden-state loss: checked at validation (layer map within both models' blocks, hidden
/// losses only from a live teacher), then trained with the pairs the report records.
#[test]
fn distill_pass_with_its_own_teacher_trains_hidden_states() {
    let tmp = tempfile::tempdir().unwrap();
    let ids = calib_ids(tmp.path(), 16, 32, 384);
    let teacher = fixture("mistral-tiny");
    let out = tmp.path().join("student");
    let recipe_with = |extra: &str| {
        let passes = format!(
            "  - distill:\n      teacher: {}\n      loss: {{kl: 1, hidden_cos: 0.5}}\n      steps: 4\n      batch: 4\n      seqlen: 32\n{extra}",
            teacher.display()
        );
        let text = recipe(
            &fixture("llama-tiny"),
            &ids,
            &passes,
            &format!("  path: {}\n  format: safetensors\n", out.display()),
        );
        write(tmp.path(), "r.yaml", &text)
    };
    let validate = |r: &Path| microllm().args(["recipe", "validate"]).arg(r).assert();
    validate(&recipe_with("      layer_map: \"0:0,1:3\"\n"))
        .failure()
        .stderr(
            predicates::str::contains("passes[0].distill.layer_map")
                .and(predicates::str::contains("3")),
        );
    validate(&recipe_with(&format!(
        "      logits: {}\n",
        tmp.path().display()
    )))
    .failure()
    .stderr(predicates::str::contains("live teacher"));

    let r = recipe_with("      layer_map: \"0:0,2:2\"\n");
    microllm().arg("run").arg(&r).assert().success();
    let report = json(&tmp.path().join("student.report.json"));
    let d = &report["distill"];
    assert!(d["teacher"].as_str().unwrap().ends_with("mistral-tiny"));
    assert_eq!(d["loss"], "kl:1,hidden-cos:0.5");
    assert_eq!(d["layer_map"], serde_json::json!([[0, 0], [2, 2]]));
    let curve = d["curve"].as_array().unwrap();
    assert_eq!(curve.len(), 4);
    assert!(
        curve.iter().all(|s| s["hidden"].as_f64().unwrap() > 0.0),
        "the hidden-state term is trained: {curve:?}"
    );
}
