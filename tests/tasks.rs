//! Task accuracy (`eval --task`, recipe `evaluation.tasks`): the cached, shared-context scorer
//! against plain full forwards on the fixture families, the item layouts through the CLI on
//! SmolLM2, recipe gates, and bad item files. Items are made from the text assets (no
//! benchmark data is downloaded).

mod common;

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use common::{fixture, microllm, smollm2_gguf, text, write};
use microllm_core::{NoProgress, Result};
use microllm_eval::tasks::{Item, Task, TaskOptions, TaskProtocol, score_task};
use microllm_models::Decoder;
use predicates::str::contains;
use serde_json::{Value, json};

/// Passages of the wiki text: `n` items of `choices` answers each, the true continuation of
/// a passage among continuations of other passages.
fn wiki_items(n: usize, choices: usize) -> Vec<(String, Vec<String>, usize)> {
    let text = std::fs::read_to_string(text("wiki.eval.txt")).unwrap();
    let paras: Vec<Vec<&str>> = text
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|w| w.len() >= 40 && !w[0].starts_with('='))
        .collect();
    (0..n)
        .map(|i| {
            let words = &paras[i];
            let (k, m) = (12 + i % 9, 5 + i % 4);
            let gold = i % choices;
            let answers = (0..choices)
                .map(|c| {
                    let src = if c == gold { i } else { n + i * choices + c };
                    let start = if c == gold { k } else { 3 + c };
                    paras[src % paras.len()][start..start + m].join(" ")
                })
                .collect();
            (words[..k].join(" "), answers, gold)
        })
        .collect()
}

/// One token per word with its leading space (as byte-level BPE splits), hashed into the
/// vocabulary; BOS 1 when asked.
fn word_encoder(vocab: u32) -> impl Fn(&str, bool) -> Result<Vec<u32>> + Sync {
    move |text: &str, bos: bool| {
        let mut ids: Vec<u32> = bos.then_some(1).into_iter().collect();
        let mut hash = None::<u32>;
        for c in text.chars() {
            if c.is_whitespace()
                && let Some(h) = hash.take()
            {
                ids.push(2 + h % (vocab - 2));
            }
            let h = hash.unwrap_or(2_166_136_261);
            hash = Some((h ^ c as u32).wrapping_mul(16_777_619));
        }
        ids.extend(hash.map(|h| 2 + h % (vocab - 2)));
        Ok(ids)
    }
}

/// Log-likelihood of `tokens[first..]` by one plain forward of the whole sequence.
fn plain_loglik(model: &Decoder, tokens: &[u32], first: usize) -> f64 {
    let rows = plain_log_probs(model, tokens);
    (first..tokens.len())
        .map(|t| rows[t - 1][tokens[t] as usize])
        .sum()
}

/// The scorer runs each item's shared context once and continues every choice from a
/// cache; its log-likelihoods must equal plain forwards of each whole sequence, for every
/// block layout (GQA, sliding windows, Gemma's BOS and embedding scale, Phi's partial rotary).
#[test]
fn cached_scores_equal_plain_forwards_on_every_family() {
    let raw = wiki_items(6, 4);
    let items: Vec<Item> = raw
        .iter()
        .map(|(q, c, g)| Item {
            question: q.clone(),
            choices: c.clone(),
            gold: *g,
            subject: None,
            verbatim: false,
        })
        .collect();
    for name in [
        "llama-tiny",
        "mistral-tiny",
        "gemma3-tiny",
        "phi-tiny",
        "qwen2-tiny",
    ] {
        let ckpt = microllm_io::open(&fixture(name).to_string_lossy()).unwrap();
        let model = Decoder::load(&ckpt.config, ckpt.tensors.as_ref()).unwrap();
        let vocab = ckpt.config.vocab_size as u32;
        let encode = word_encoder(vocab);
        let opts = TaskOptions {
            task: Task::ArcEasy,
            protocol: TaskProtocol::LmEval,
            limit: None,
            fewshot: 1,
        };
        let result = score_task(&model, &encode, &items, &[], opts, &NoProgress).unwrap();
        let gemma = name == "gemma3-tiny";
        for (i, (item, scored)) in items.iter().zip(&result.per_item).enumerate() {
            // The one-shot example is the first other item.
            let shot = &items[if i == 0 { 1 } else { 0 }];
            let context = format!(
                "Question: {}\nAnswer: {}\n\nQuestion: {}\nAnswer:",
                shot.question, shot.choices[shot.gold], item.question
            );
            for (c, choice) in item.choices.iter().enumerate() {
                let ctx = encode(&context, gemma).unwrap();
                let mut seq = ctx.clone();
                seq.extend(encode(&format!(" {choice}"), false).unwrap());
                let want = plain_loglik(&model, &seq, ctx.len());
                let got = scored.logliks[c];
                assert!(
                    (want - got).abs() < 2e-3 * want.abs().max(1.0),
                    "{name} item {i} choice {c}: cached {got} vs plain {want}"
                );
            }
        }
        assert!(result.acc_norm.is_some(), "arc_easy has acc_norm");
    }
}

fn write_jsonl(dir: &Path, name: &str, docs: &[Value]) -> PathBuf {
    let body: String = docs.iter().map(|d| format!("{d}\n")).collect();
    write(dir, name, &body)
}

fn eval_task(args: &[&str], data: &Path, out: &Path) -> Value {
    microllm()
        .args(["eval", "--model"])
        .arg(smollm2_gguf())
        .args(args)
        .arg("--data")
        .arg(data)
        .arg("--json")
        .arg(out)
        .assert()
        .success()
        .stdout(contains("acc "));
    common::json(out)["result"].clone()
}

/// Every layout reads, and the reported choices follow from the reported log-likelihoods.
#[test]
fn every_task_layout_scores_on_smollm2() {
    let dir = tempfile::tempdir().unwrap();
    let items = wiki_items(8, 4);
    let hellaswag: Vec<Value> = items
        .iter()
        .map(|(q, c, g)| {
            json!({"activity_label": "Wikipedia", "ctx_a": q, "ctx_b": "", "endings": c,
                   "label": g.to_string()})
        })
        .collect();
    let arc: Vec<Value> = items
        .iter()
        .map(|(q, c, g)| {
            json!({"question": q, "choices": {"text": c, "label": ["1", "2", "3", "4"]},
                   "answerKey": (g + 1).to_string()})
        })
        .collect();
    let piqa: Vec<Value> = items
        .iter()
        .map(|(q, c, g)| json!({"goal": q, "sol1": c[0], "sol2": c[1], "label": g % 2}))
        .collect();
    let wino: Vec<Value> = items
        .iter()
        .map(|(q, c, g)| {
            json!({"sentence": format!("{q} _ {}", c[*g]), "option1": "the", "option2": "a",
                   "answer": "1"})
        })
        .collect();
    let mmlu: Vec<Value> = items
        .iter()
        .map(|(q, c, g)| json!({"question": q, "choices": c, "answer": g, "subject": "world_history"}))
        .collect();
    let cases = [
        (
            "hellaswag",
            write_jsonl(dir.path(), "hs.jsonl", &hellaswag),
            true,
        ),
        (
            "arc_challenge",
            write_jsonl(dir.path(), "arc.jsonl", &arc),
            true,
        ),
        ("piqa", write_jsonl(dir.path(), "piqa.jsonl", &piqa), true),
        (
            "winogrande",
            write_jsonl(dir.path(), "wg.jsonl", &wino),
            false,
        ),
        ("mmlu", write_jsonl(dir.path(), "mmlu.jsonl", &mmlu), false),
    ];
    for (task, data, norm) in &cases {
        let out = dir.path().join(format!("{task}.json"));
        let r = eval_task(&["--task", task, "--limit", "6"], data, &out);
        assert_eq!(r["task"], *task);
        assert_eq!(r["items"], 6);
        assert_eq!(r["per_item"].as_array().unwrap().len(), 6);
        assert_eq!(r["acc_norm"].is_number(), *norm, "{task}: {r}");
        let mut hits = 0;
        for item in r["per_item"].as_array().unwrap() {
            let lls: Vec<f64> = serde_json::from_value(item["logliks"].clone()).unwrap();
            assert!(
                lls.iter().all(|l| l.is_finite() && *l < 0.0),
                "{task}: {lls:?}"
            );
            let best = (0..lls.len()).fold(0, |b, i| if lls[i] > lls[b] { i } else { b });
            assert_eq!(item["pred"], best, "{task}");
            hits += usize::from(item["pred"] == item["gold"]);
        }
        let acc = r["acc"].as_f64().unwrap();
        assert!((acc - hits as f64 / 6.0).abs() < 1e-12, "{task}: {acc}");
    }
    // The true continuation of real text beats spans from elsewhere for most items.
    let r = common::json(&dir.path().join("hellaswag.json"))["result"].clone();
    assert!(r["acc"].as_f64().unwrap() >= 0.5, "{r}");

    // llama.cpp's HellaSwag file, scored by its rules (mean per token, BOS, shared prefix
    // skipped), and MMLU with its dev split as few-shot examples.
    let lines: String = items
        .iter()
        .map(|(q, c, g)| format!("Wikipedia: {q}\n{g}\n{}\n", c.join("\n")))
        .collect();
    let txt = write(dir.path(), "hellaswag.txt", &lines);
    let out = dir.path().join("llama.json");
    let r = eval_task(
        &["--task", "hellaswag", "--protocol", "llama-perplexity"],
        &txt,
        &out,
    );
    assert_eq!(r["protocol"], "llama-cpp");
    assert_eq!(r["items"], 8);
    let out = dir.path().join("fewshot.json");
    let dev = write_jsonl(dir.path(), "dev.jsonl", &mmlu[6..]);
    let dev = dev.to_str().unwrap();
    let args = [
        "--task",
        "mmlu",
        "--limit",
        "2",
        "--fewshot",
        "2",
        "--fewshot-data",
        dev,
    ];
    let r = eval_task(&args, &cases[4].1, &out);
    assert_eq!(r["fewshot"], 2);
}

#[test]
fn bad_item_files_are_refused_by_line() {
    let dir = tempfile::tempdir().unwrap();
    let data = write(
        dir.path(),
        "arc.jsonl",
        "{\"question\": \"q\", \"choices\": {\"text\": [\"a\", \"b\"], \"label\": [\"A\", \"B\"]}, \"answerKey\": \"A\"}\n\
         {\"question\": \"q\", \"choices\": {\"text\": [\"a\", \"b\"], \"label\": [\"A\", \"B\"]}, \"answerKey\": \"E\"}\n",
    );
    microllm()
        .args(["eval", "--model"])
        .arg(smollm2_gguf())
        .args(["--task", "arc_easy", "--data"])
        .arg(&data)
        .assert()
        .failure()
        .stderr(contains("arc.jsonl"))
        .stderr(contains("line 2"))
        .stderr(contains("\"E\""));
    microllm()
        .args(["eval", "--model"])
        .arg(smollm2_gguf())
        .args(["--task", "boolq", "--data"])
        .arg(&data)
        .assert()
        .failure()
        .stderr(contains("unknown task `boolq`"));
    // Perplexity flags do not mix with a task.
    microllm()
        .args(["eval", "--model"])
        .arg(smollm2_gguf())
        .args(["--task", "arc_easy", "--max-windows", "2", "--data"])
        .arg(&data)
        .assert()
        .failure()
        .stderr(contains("cannot be used with"));
}

/// A recipe's evaluation tasks are scored on the original and the output, reported, and
/// gated; a gate on a task the recipe does not score is refused before any work.
#[test]
fn recipe_tasks_are_reported_and_gated() {
    let dir = tempfile::tempdir().unwrap();
    let items = wiki_items(4, 2);
    let piqa: Vec<Value> = items
        .iter()
        .map(|(q, c, g)| json!({"goal": q, "sol1": c[0], "sol2": c[1], "label": g}))
        .collect();
    write_jsonl(dir.path(), "piqa.jsonl", &piqa);
    let recipe = format!(
        "model: {}\nevaluation:\n  data: {}\n  ctx: 64\n  windows: 2\n  tasks:\n    - task: piqa\n      data: piqa.jsonl\n\
         passes:\n  - quantize: {{method: rtn, bits: 4, group_size: 32}}\n  - eval: {{}}\n\
         output: {{path: out.gguf}}\ngates:\n  - acc_drop <= 100\n  - piqa.acc >= 0\n",
        smollm2_gguf().display(),
        text("wiki.eval.txt").display()
    );
    let path = write(dir.path(), "recipe.yaml", &recipe);
    microllm().arg("run").arg(&path).assert().success();
    let report = common::json(&dir.path().join("out.report.json"));
    let task = &report["eval"]["tasks"][0];
    assert_eq!(task["task"], "piqa");
    assert_eq!(task["items"], 4);
    assert!(
        task["acc_base"].is_number() && task["acc_norm_drop"].is_number(),
        "{task}"
    );
    assert_eq!(report["metrics"]["piqa.acc"], task["acc"]);
    assert_eq!(report["metrics"]["acc_drop"], task["acc_drop"]);
    assert_eq!(report["gates_passed"], true);
    let md = std::fs::read_to_string(dir.path().join("out.report.md")).unwrap();
    assert!(md.contains("| piqa | acc "), "{md}");

    let bad = recipe.replace("piqa.acc >= 0", "hellaswag.acc >= 0");
    let path = write(dir.path(), "bad.yaml", &bad);
    microllm()
        .args(["recipe", "validate"])
        .arg(&path)
        .assert()
        .failure()
        .stderr(contains("hellaswag.acc"))
        .stderr(contains("evaluation.tasks"));
}

/// Log-softmax of every row of one plain forward of `tokens`.
fn plain_log_probs(model: &Decoder, tokens: &[u32]) -> Vec<Vec<f64>> {
    let ids = Tensor::from_slice(tokens, (1, tokens.len()), &Device::Cpu).unwrap();
    let logits = model.forward(&ids).unwrap().squeeze(0).unwrap();
    let rows: Vec<Vec<f32>> = logits.to_vec2().unwrap();
    rows.iter()
        .map(|row| {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let lse = max
                + row
                    .iter()
                    .map(|&x| (x as f64 - max).exp())
                    .sum::<f64>()
                    .ln();
            row.iter().map(|&x| x as f64 - lse).collect()
        })
        .collect()
}

/// llama-perplexity's WinoGrande rules, written out from its source as plain forwards of
/// each whole sentence: long tails score the tokens after `first + option` but the last;
/// short ones score from the first differing token, the second option's first token read
/// from the first sentence's last row (llama.cpp's offset).
#[test]
fn llama_winogrande_scores_follow_llama_perplexity_rules() {
    let ckpt = microllm_io::open(&fixture("llama-tiny").to_string_lossy()).unwrap();
    let model = Decoder::load(&ckpt.config, ckpt.tensors.as_ref()).unwrap();
    let encode = word_encoder(ckpt.config.vocab_size as u32);
    let raw = wiki_items(6, 2);
    let items: Vec<Item> = raw
        .iter()
        .enumerate()
        .map(|(i, (q, c, _))| {
            // Even items: a tail of 6 words (options skipped); odd: 2 (scored from the option).
            let tail: Vec<&str> = c[0].split_whitespace().take(2 + 4 * (1 - i % 2)).collect();
            let words: Vec<&str> = c[1].split_whitespace().collect();
            Item {
                question: format!("{q} _ {}", tail.join(" ")),
                choices: vec![words[0].to_string(), words[1].to_string()],
                gold: i % 2,
                subject: None,
                verbatim: false,
            }
        })
        .collect();
    let opts = TaskOptions {
        task: Task::Winogrande,
        protocol: TaskProtocol::LlamaCpp,
        limit: None,
        fewshot: 0,
    };
    let result = score_task(&model, &encode, &items, &[], opts, &NoProgress).unwrap();
    assert_eq!(
        result.items, 5,
        "llama-perplexity never reads the file's last line"
    );
    for (i, (item, scored)) in items.iter().zip(&result.per_item).enumerate() {
        let (first, second) = item.question.split_once('_').unwrap();
        let seqs: Vec<Vec<u32>> = item
            .choices
            .iter()
            .map(|c| encode(&format!("{first}{c}{second}"), true).unwrap())
            .collect();
        let lp: Vec<_> = seqs.iter().map(|s| plain_log_probs(&model, s)).collect();
        let cp = seqs[0]
            .iter()
            .zip(&seqs[1])
            .take_while(|(a, b)| a == b)
            .count();
        let mean = |v: Vec<f64>| v.iter().sum::<f64>() / v.len() as f64;
        let want: Vec<f64> = if i % 2 == 0 {
            (0..2)
                .map(|s| {
                    let base = encode(&format!("{first}{}", item.choices[s]), true)
                        .unwrap()
                        .len();
                    let seq = &seqs[s];
                    mean(
                        (base - 1..seq.len() - 2)
                            .map(|j| lp[s][j][seq[j + 1] as usize])
                            .collect(),
                    )
                })
                .collect()
        } else {
            let (a, b) = (&seqs[0], &seqs[1]);
            let first_choice = (cp - 1..a.len() - 2).map(|j| lp[0][j][a[j + 1] as usize]);
            let misread = lp[0][a.len() - 1][b[cp] as usize];
            let rest = (cp..b.len() - 2).map(|j| lp[1][j][b[j + 1] as usize]);
            vec![
                mean(first_choice.collect()),
                mean(std::iter::once(misread).chain(rest).collect()),
            ]
        };
        for (s, (got, want)) in scored.logliks.iter().zip(&want).enumerate() {
            assert!(
                (got - want).abs() < 1e-3 * want.abs().max(1.0),
                "item {i} option {s}: {got} vs {want}"
            );
        }
        let pred = if want[0] > want[1] { 0 } else { 1 };
        assert_eq!(scored.pred, pred, "item {i}");
    }
}

/// llama.cpp's WinoGrande CSV reads under both protocols; `--limit` draws as
/// `--winogrande-tasks` does.
#[test]
fn llama_winogrande_csv_scores_under_both_protocols() {
    let dir = tempfile::tempdir().unwrap();
    let mut csv = String::from("index,sentence,option1,option2,answer\n");
    for (i, (q, c, _)) in wiki_items(7, 2).iter().enumerate() {
        let words: Vec<&str> = c[1]
            .split(|ch: char| !ch.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .collect();
        csv += &format!(
            "{i},\"{q}, _ {}\",{},{},{}\n",
            c[0],
            words[0],
            words[1],
            1 + i % 2
        );
    }
    let data = write(dir.path(), "winogrande.csv", &csv);
    let out = dir.path().join("out.json");
    let r = eval_task(&["--task", "winogrande"], &data, &out);
    assert_eq!(r["items"], 7);
    let r = eval_task(
        &["--task", "winogrande", "--protocol", "llama-cpp"],
        &data,
        &out,
    );
    assert_eq!(
        r["items"], 6,
        "the last line is left out, as llama-perplexity does"
    );
    let r = eval_task(
        &[
            "--task",
            "winogrande",
            "--protocol",
            "llama-cpp",
            "--limit",
            "3",
        ],
        &data,
        &out,
    );
    assert_eq!(r["items"], 3);
    microllm()
        .args(["eval", "--model"])
        .arg(smollm2_gguf())
        .args([
            "--task",
            "winogrande",
            "--protocol",
            "llama-cpp",
            "--fewshot",
            "1",
        ])
        .arg("--data")
        .arg(&data)
        .assert()
        .failure()
        .stderr(contains("no few-shot"));
}
