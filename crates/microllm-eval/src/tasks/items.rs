//! Reading task items from the files users have: the Hugging Face datasets' own fields as
//! JSON Lines (or one JSON array) or as the hub's parquet files, llama.cpp's HellaSwag text
//! file, and llama.cpp's binary
//! multiple-choice files (`--multiple-choice`: ARC, MMLU, TruthfulQA, HellaSwag), whose
//! questions are whole prompts.
//!
//! Field names are the datasets' (`Rowan/hellaswag`, `allenai/ai2_arc`, `ybisk/piqa`,
//! `allenai/winogrande`, `cais/mmlu`), so a split saved with `datasets`' `to_json`, or a
//! parquet file of the dataset's repository, reads as it is (parquet rows are turned into the
//! same JSON objects, nested lists and structs included). HellaSwag is preprocessed here as the harness does (its `preprocess`: `[title]` becomes
//! `. `, other bracketed WikiHow artefacts go, double spaces are collapsed), so its items hold
//! the same text as llama.cpp's file, which was made with the same rules.

use std::path::Path;

use microllm_core::{Error, Result};
use serde_json::Value;

use super::Task;

/// One multiple-choice item, in the fields the task's prompt is built from.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// HellaSwag: the preprocessed query (`activity_label: context`); ARC: the question;
    /// PIQA: the goal; WinoGrande: the sentence with its `_`; MMLU: the question.
    pub question: String,
    /// The answers (WinoGrande: the two options that fill the `_`).
    pub choices: Vec<String>,
    /// Index of the right answer.
    pub gold: usize,
    /// MMLU's subject: its prompt names it, and few-shot examples come from the same one.
    pub subject: Option<String>,
    /// The question is the whole prompt, as in llama.cpp's multiple-choice files: the task's
    /// template is not applied.
    pub verbatim: bool,
}

/// Reads `task`'s items from `path`.
pub fn read_items(task: Task, path: &Path) -> Result<Vec<Item>> {
    let format_error = |msg: String| Error::Format {
        path: path.to_path_buf(),
        msg,
    };
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if looks_like_parquet(&bytes) {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let items = read_parquet(task, file).map_err(format_error)?;
        return match items.is_empty() {
            true => Err(format_error(format!("no {task} items in the file"))),
            false => Ok(items),
        };
    }
    if looks_like_llama_multiple_choice(&bytes) {
        let items = read_llama_multiple_choice(&bytes).map_err(format_error)?;
        return match items.is_empty() {
            true => Err(format_error("no items in the file".into())),
            false => Ok(items),
        };
    }
    let text =
        String::from_utf8(bytes).map_err(|e| format_error(format!("not UTF-8 text ({e})")))?;
    let items = match text.trim_start().chars().next() {
        Some('{') => read_json_lines(task, &text),
        Some('[') => read_json_array(task, &text),
        Some(_) if task == Task::Hellaswag => read_llama_hellaswag(&text),
        Some(_) if task == Task::Winogrande => read_llama_winogrande(&text),
        Some(_) => Err(format!(
            "expected JSON Lines with the {task} dataset's fields (one object per line)"
        )),
        None => Err("the file is empty".into()),
    }
    .map_err(format_error)?;
    if items.is_empty() {
        return Err(format_error(format!("no {task} items in the file")));
    }
    Ok(items)
}

/// Parquet files start and end with the magic `PAR1`.
fn looks_like_parquet(bytes: &[u8]) -> bool {
    bytes.len() >= 12 && bytes.starts_with(b"PAR1") && bytes.ends_with(b"PAR1")
}

/// Each row of a parquet file as the JSON object `datasets` would write for it.
fn read_parquet(task: Task, file: std::fs::File) -> std::result::Result<Vec<Item>, String> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let reader = SerializedFileReader::new(file).map_err(|e| format!("parquet: {e}"))?;
    let rows = reader
        .get_row_iter(None)
        .map_err(|e| format!("parquet: {e}"))?;
    rows.enumerate()
        .map(|(i, row)| {
            let row = row.map_err(|e| format!("row {}: {e}", i + 1))?;
            item_from_json(task, &row.to_json_value()).map_err(|e| format!("row {}: {e}", i + 1))
        })
        .collect()
}

fn read_json_lines(task: Task, text: &str) -> std::result::Result<Vec<Item>, String> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| {
            let doc: Value =
                serde_json::from_str(line).map_err(|e| format!("line {}: {e}", i + 1))?;
            item_from_json(task, &doc).map_err(|e| format!("line {}: {e}", i + 1))
        })
        .collect()
}

fn read_json_array(task: Task, text: &str) -> std::result::Result<Vec<Item>, String> {
    let docs: Vec<Value> = serde_json::from_str(text).map_err(|e| e.to_string())?;
    docs.iter()
        .enumerate()
        .map(|(i, doc)| item_from_json(task, doc).map_err(|e| format!("item {i}: {e}")))
        .collect()
}

/// llama.cpp's HellaSwag file: six lines per item (context, gold index, four endings).
fn read_llama_hellaswag(text: &str) -> std::result::Result<Vec<Item>, String> {
    let lines: Vec<&str> = text.lines().collect();
    if !lines.len().is_multiple_of(6) {
        return Err(format!(
            "{} lines: llama.cpp's HellaSwag format has 6 per item (context, gold index, 4 \
             endings), and JSON Lines start with `{{`",
            lines.len()
        ));
    }
    lines
        .chunks_exact(6)
        .enumerate()
        .map(|(i, task)| {
            let line = 6 * i + 2;
            let gold = task[1]
                .trim()
                .parse::<usize>()
                .map_err(|_| format!("line {line}: `{}` is not an ending index", task[1]))?;
            checked(Item {
                question: task[0].to_string(),
                choices: task[2..].iter().map(|s| s.to_string()).collect(),
                gold,
                subject: None,
                verbatim: false,
            })
            .map_err(|e| format!("item at line {}: {e}", line - 1))
        })
        .collect()
}

/// llama.cpp's WinoGrande CSV (`llama-perplexity --winogrande`; e.g. the
/// `ikawrakow/winogrande-eval-for-llama.cpp` files): per line `index,sentence,option1,option2,
/// answer`, the sentence in double quotes when it holds a comma, the answer 1 or 2. Split as
/// llama.cpp splits it: the first four commas outside double quotes end the fields, a quoted
/// sentence loses its first and last character and nothing else is unquoted, the answer is
/// the number it starts with. A first line whose answer is not a number is a header and is
/// skipped; llama.cpp skips every line it cannot read, microllm refuses them, naming the line.
fn read_llama_winogrande(text: &str) -> std::result::Result<Vec<Item>, String> {
    let mut items = Vec::new();
    for (i, line) in text.split('\n').enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let mut commas = Vec::with_capacity(4);
        let mut quoted = false;
        for (at, byte) in line.bytes().enumerate() {
            match byte {
                b'"' => quoted = !quoted,
                b',' if !quoted => {
                    commas.push(at);
                    if commas.len() == 4 {
                        break;
                    }
                }
                _ => {}
            }
        }
        let [c0, c1, c2, c3] = commas[..] else {
            return Err(format!(
                "line {}: {} commas outside quotes; llama.cpp's WinoGrande CSV has \
                 index,sentence,option1,option2,answer (JSON Lines start with `{{`)",
                i + 1,
                commas.len()
            ));
        };
        let field = &line[c0 + 1..c1];
        let sentence = match field.strip_prefix('"') {
            Some(inner) => {
                let mut chars = inner.chars();
                chars.next_back();
                chars.as_str()
            }
            None => field,
        };
        let answer = line[c3 + 1..].trim_start();
        let digits = answer.len()
            - answer
                .trim_start_matches(|c: char| c.is_ascii_digit())
                .len();
        let answer = match answer[..digits].parse::<usize>() {
            Ok(a) => a,
            Err(_) if items.is_empty() && i == 0 => continue,
            Err(_) => return Err(format!("line {}: answer {answer:?} is not 1 or 2", i + 1)),
        };
        if !(1..=2).contains(&answer) {
            return Err(format!("line {}: answer {answer} is not 1 or 2", i + 1));
        }
        if !sentence.contains('_') {
            return Err(format!("line {}: the sentence has no `_` to fill", i + 1));
        }
        items.push(
            checked(Item {
                question: sentence.to_string(),
                choices: vec![line[c1 + 1..c2].to_string(), line[c2 + 1..c3].to_string()],
                gold: answer - 1,
                subject: None,
                verbatim: false,
            })
            .map_err(|e| format!("line {}: {e}", i + 1))?,
        );
    }
    Ok(items)
}

/// Whether `bytes` start as llama.cpp's binary multiple-choice file does: a task count, then
/// that many offsets, the first pointing just past them.
fn looks_like_llama_multiple_choice(bytes: &[u8]) -> bool {
    let word = |i: usize| {
        bytes
            .get(4 * i..4 * i + 4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize)
    };
    match (word(0), word(1)) {
        (Some(n), Some(first)) => n > 0 && n < bytes.len() / 4 && first == 4 + 4 * n,
        _ => false,
    }
}

/// llama.cpp's binary multiple-choice file (`llama-perplexity --multiple-choice`): a u32
/// task count and offsets, then per task the question, the single-answer choices with their
/// labels (1 marks the right one), and the multiple-answer ones (unused), strings as a u32
/// length and UTF-8 bytes, all little-endian.
fn read_llama_multiple_choice(bytes: &[u8]) -> std::result::Result<Vec<Item>, String> {
    struct Reader<'a>(&'a [u8], usize);
    impl Reader<'_> {
        fn u32(&mut self) -> std::result::Result<u32, String> {
            let b = self
                .0
                .get(self.1..self.1 + 4)
                .ok_or_else(|| format!("truncated at byte {}", self.1))?;
            self.1 += 4;
            Ok(u32::from_le_bytes(b.try_into().expect("4 bytes")))
        }
        fn string(&mut self) -> std::result::Result<String, String> {
            let n = self.u32()? as usize;
            let b = self
                .0
                .get(self.1..self.1.saturating_add(n))
                .ok_or_else(|| format!("truncated string of {n} bytes at byte {}", self.1))?;
            self.1 += n;
            String::from_utf8(b.to_vec())
                .map_err(|_| format!("a string at byte {} is not UTF-8", self.1 - n))
        }
        fn answers(&mut self) -> std::result::Result<(Vec<String>, Vec<u32>), String> {
            let n = self.u32()?;
            if n > 100 {
                return Err(format!("{n} answers (llama.cpp reads at most 100)"));
            }
            let answers = (0..n)
                .map(|_| self.string())
                .collect::<std::result::Result<_, _>>()?;
            let labels = (0..n)
                .map(|_| self.u32())
                .collect::<std::result::Result<_, _>>()?;
            Ok((answers, labels))
        }
    }
    let mut r = Reader(bytes, 0);
    let n = r.u32()? as usize;
    let offsets: Vec<u32> = (0..n)
        .map(|_| r.u32())
        .collect::<std::result::Result<_, _>>()?;
    offsets
        .iter()
        .enumerate()
        .map(|(i, &at)| {
            r.1 = at as usize;
            let question = r.string().map_err(|e| format!("task {i}: {e}"))?;
            let (choices, labels) = r.answers().map_err(|e| format!("task {i}: {e}"))?;
            r.answers().map_err(|e| format!("task {i}: {e}"))?;
            let right: Vec<usize> = (0..labels.len()).filter(|&j| labels[j] == 1).collect();
            let [gold] = right[..] else {
                return Err(format!(
                    "task {i}: {} answers are marked right; one is needed",
                    right.len()
                ));
            };
            checked(Item {
                question,
                choices,
                gold,
                subject: None,
                verbatim: true,
            })
            .map_err(|e| format!("task {i}: {e}"))
        })
        .collect()
}

fn item_from_json(task: Task, doc: &Value) -> std::result::Result<Item, String> {
    let item = match task {
        Task::Hellaswag => {
            // The harness: ctx_a + " " + ctx_b.capitalize(), after the activity label.
            let ctx = match (doc.get("ctx_a"), doc.get("ctx_b")) {
                (Some(_), Some(_)) => {
                    format!(
                        "{} {}",
                        string(doc, "ctx_a")?,
                        capitalize(string(doc, "ctx_b")?)
                    )
                }
                _ => string(doc, "ctx")?.to_string(),
            };
            Item {
                question: hellaswag_preprocess(&format!(
                    "{}: {ctx}",
                    string(doc, "activity_label")?
                )),
                choices: strings(doc, "endings")?
                    .iter()
                    .map(|e| hellaswag_preprocess(e))
                    .collect(),
                gold: label(doc, "label")?,
                subject: None,
                verbatim: false,
            }
        }
        Task::ArcEasy | Task::ArcChallenge => {
            let choices = doc.get("choices").ok_or("missing key `choices`")?;
            let labels = strings(choices, "label").map_err(|e| format!("`choices`: {e}"))?;
            let key = match doc.get("answerKey") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Number(n)) => n.to_string(),
                _ => return Err("missing key `answerKey`".into()),
            };
            let gold = labels.iter().position(|l| *l == key).ok_or_else(|| {
                format!("`answerKey` {key:?} is not one of the choice labels {labels:?}")
            })?;
            Item {
                question: string(doc, "question")?.to_string(),
                choices: strings(choices, "text").map_err(|e| format!("`choices`: {e}"))?,
                gold,
                subject: None,
                verbatim: false,
            }
        }
        Task::Piqa => Item {
            question: string(doc, "goal")?.to_string(),
            choices: vec![
                string(doc, "sol1")?.to_string(),
                string(doc, "sol2")?.to_string(),
            ],
            gold: label(doc, "label")?,
            subject: None,
            verbatim: false,
        },
        Task::Winogrande => {
            let sentence = string(doc, "sentence")?;
            if !sentence.contains('_') {
                return Err("`sentence` has no `_` to fill".into());
            }
            let answer = label(doc, "answer")?;
            if !(1..=2).contains(&answer) {
                return Err(format!("`answer` {answer} is not 1 or 2"));
            }
            Item {
                question: sentence.to_string(),
                choices: vec![
                    string(doc, "option1")?.to_string(),
                    string(doc, "option2")?.to_string(),
                ],
                gold: answer - 1,
                subject: None,
                verbatim: false,
            }
        }
        Task::Mmlu => {
            let choices = strings(doc, "choices")?;
            if choices.len() != 4 {
                return Err(format!(
                    "`choices` has {} answers, MMLU has 4",
                    choices.len()
                ));
            }
            Item {
                question: string(doc, "question")?.to_string(),
                choices,
                gold: label(doc, "answer")?,
                subject: Some(string(doc, "subject")?.to_string()),
                verbatim: false,
            }
        }
    };
    checked(item)
}

/// The checks every item passes, whatever its file: a question, two or more non-empty
/// choices, a gold index among them.
fn checked(item: Item) -> std::result::Result<Item, String> {
    if item.question.trim().is_empty() {
        return Err("the question is empty".into());
    }
    if item.choices.len() < 2 {
        return Err(format!(
            "{} choice(s); at least 2 are needed",
            item.choices.len()
        ));
    }
    if let Some(i) = item.choices.iter().position(|c| c.trim().is_empty()) {
        return Err(format!("choice {i} is empty"));
    }
    if item.gold >= item.choices.len() {
        return Err(format!(
            "the gold answer {} is not one of the {} choices",
            item.gold,
            item.choices.len()
        ));
    }
    Ok(item)
}

fn string<'a>(doc: &'a Value, key: &str) -> std::result::Result<&'a str, String> {
    match doc.get(key) {
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(format!("key `{key}` is {other}, not a string")),
        None => Err(format!("missing key `{key}`")),
    }
}

fn strings(doc: &Value, key: &str) -> std::result::Result<Vec<String>, String> {
    match doc.get(key) {
        Some(Value::Array(values)) => values
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.clone()),
                other => Err(format!("key `{key}` holds {other}, not a string")),
            })
            .collect(),
        Some(other) => Err(format!("key `{key}` is {other}, not a list of strings")),
        None => Err(format!("missing key `{key}`")),
    }
}

/// An index written as a number or as a string of digits (HellaSwag's `"2"`).
fn label(doc: &Value, key: &str) -> std::result::Result<usize, String> {
    let bad = |v: &Value| format!("key `{key}` is {v}, not an answer index");
    match doc.get(key) {
        Some(v @ Value::Number(n)) => n.as_u64().map(|n| n as usize).ok_or_else(|| bad(v)),
        Some(v @ Value::String(s)) => s.trim().parse().map_err(|_| bad(v)),
        Some(v) => Err(bad(v)),
        None => Err(format!("missing key `{key}`")),
    }
}

/// Python's `str.capitalize`: the first character upper case, the rest lower case.
fn capitalize(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => first
            .to_uppercase()
            .chain(chars.flat_map(char::to_lowercase))
            .collect(),
        None => String::new(),
    }
}

/// The harness's HellaSwag `preprocess`: strip, ` [title]` to `. `, drop every `[...]`
/// (shortest match), then `"  "` to `" "` (one pass, left to right, as Python's `replace`).
fn hellaswag_preprocess(text: &str) -> String {
    let text = text.trim().replace(" [title]", ". ");
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(open) = rest.find('[') {
        match rest[open..].find(']') {
            Some(close) => {
                out.push_str(&rest[..open]);
                rest = &rest[open + close + 1..];
            }
            None => break,
        }
    }
    out.push_str(rest);
    out.replace("  ", " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("testdata/tasks")
            .join(name)
    }

    /// The same items written by pyarrow as parquet and as JSON Lines
    /// (scripts/make_task_parquet_fixtures.py: nested lists, ARC's struct of lists, string and
    /// integer labels) read to the same items.
    #[test]
    fn parquet_files_read_as_their_json_lines() {
        for task in [
            Task::Hellaswag,
            Task::ArcEasy,
            Task::Piqa,
            Task::Winogrande,
            Task::Mmlu,
        ] {
            let parquet = read_items(task, &fixture(&format!("{task}.parquet"))).unwrap();
            let json = read_items(task, &fixture(&format!("{task}.jsonl"))).unwrap();
            assert!(!parquet.is_empty());
            assert_eq!(parquet, json, "{task}");
        }
        let arc = read_items(Task::ArcEasy, &fixture("arc_easy.parquet")).unwrap();
        assert_eq!(arc[0].choices, ["iron", "water", "salt", "wood"]);
        assert_eq!((arc[0].gold, arc[1].gold), (1, 0));
    }

    /// A parquet file damaged between its magic numbers is refused with the file's name.
    #[test]
    fn a_damaged_parquet_file_is_refused() {
        let mut bytes = std::fs::read(fixture("hellaswag.parquet")).unwrap();
        let n = bytes.len();
        bytes[n / 2..n - 8].fill(0xff);
        let path =
            std::env::temp_dir().join(format!("microllm-damaged-{}.parquet", std::process::id()));
        std::fs::write(&path, &bytes).unwrap();
        let err = read_items(Task::Hellaswag, &path).unwrap_err().to_string();
        std::fs::remove_file(&path).unwrap();
        assert!(err.contains("microllm-damaged"), "{err}");
        assert!(err.contains("parquet"), "{err}");
    }

    #[test]
    fn hellaswag_text_is_preprocessed_as_the_harness_does() {
        assert_eq!(
            hellaswag_preprocess(" Fold the shirt. [title] Iron it [step] first.  Done "),
            "Fold the shirt.. Iron it first. Done"
        );
        // An unclosed bracket stays, three spaces become two (one left-to-right pass).
        assert_eq!(hellaswag_preprocess("a [b   c"), "a [b  c");
        assert_eq!(capitalize("the MAN walks"), "The man walks");
        assert_eq!(capitalize(""), "");
    }

    #[test]
    fn dataset_fields_make_items() {
        let doc: Value = serde_json::from_str(
            r#"{"activity_label": "Cooking", "ctx_a": "She cuts onions.", "ctx_b": "then SHE",
                "endings": ["fries them [title] well.", "sings.", "x", "y"], "label": "0"}"#,
        )
        .unwrap();
        let item = item_from_json(Task::Hellaswag, &doc).unwrap();
        assert_eq!(item.question, "Cooking: She cuts onions. Then she");
        assert_eq!(item.choices[0], "fries them. well.");
        assert_eq!(item.gold, 0);

        let doc: Value = serde_json::from_str(
            r#"{"question": "Q?", "choices": {"text": ["a", "b", "c"], "label": ["1", "2", "3"]},
                "answerKey": "3"}"#,
        )
        .unwrap();
        assert_eq!(item_from_json(Task::ArcEasy, &doc).unwrap().gold, 2);

        let doc: Value = serde_json::from_str(
            r#"{"sentence": "The cup fell because _ was slippery.", "option1": "the cup",
                "option2": "the table", "answer": "1"}"#,
        )
        .unwrap();
        assert_eq!(item_from_json(Task::Winogrande, &doc).unwrap().gold, 0);

        let doc: Value = serde_json::from_str(
            r#"{"question": "2+2?", "subject": "elementary_mathematics",
                "choices": ["1", "2", "3", "4"], "answer": 3}"#,
        )
        .unwrap();
        let item = item_from_json(Task::Mmlu, &doc).unwrap();
        assert_eq!(
            (item.gold, item.subject.as_deref()),
            (3, Some("elementary_mathematics"))
        );
    }

    /// Writes llama.cpp's binary multiple-choice layout (as its converters do).
    fn llama_binary(tasks: &[(&str, &[&str], usize)]) -> Vec<u8> {
        let string = |out: &mut Vec<u8>, s: &str| {
            out.extend((s.len() as u32).to_le_bytes());
            out.extend(s.as_bytes());
        };
        let mut bodies = Vec::new();
        for (q, answers, gold) in tasks {
            let mut b = Vec::new();
            string(&mut b, q);
            b.extend((answers.len() as u32).to_le_bytes());
            answers.iter().for_each(|a| string(&mut b, a));
            (0..answers.len()).for_each(|j| b.extend(u32::from(j == *gold).to_le_bytes()));
            b.extend(0u32.to_le_bytes());
            bodies.push(b);
        }
        let mut out = (tasks.len() as u32).to_le_bytes().to_vec();
        let mut at = 4 + 4 * tasks.len();
        for b in &bodies {
            out.extend((at as u32).to_le_bytes());
            at += b.len();
        }
        bodies.iter().for_each(|b| out.extend(b));
        out
    }

    #[test]
    fn llama_multiple_choice_files_read() {
        let bytes = llama_binary(&[
            ("Q: 1+1?\nA:", &["2", "3"], 0),
            ("Sky is", &["green", "blue", "red"], 1),
        ]);
        assert!(looks_like_llama_multiple_choice(&bytes));
        let items = read_llama_multiple_choice(&bytes).unwrap();
        assert_eq!(items[1].choices, ["green", "blue", "red"]);
        assert_eq!((items[1].gold, items[1].verbatim), (1, true));
        assert_eq!(items[0].question, "Q: 1+1?\nA:");
        assert!(!looks_like_llama_multiple_choice(b"{\"goal\": 1}"));
        let err = read_llama_multiple_choice(&bytes[..bytes.len() - 6]).unwrap_err();
        assert!(err.contains("task 1") && err.contains("truncated"), "{err}");
        let none_right = llama_binary(&[("q", &["a", "b"], 5)]);
        assert!(
            read_llama_multiple_choice(&none_right)
                .unwrap_err()
                .contains("0 answers are marked")
        );
    }

    #[test]
    fn bad_items_are_named() {
        let doc: Value =
            serde_json::from_str(r#"{"goal": "g", "sol1": "a", "sol2": "b"}"#).unwrap();
        assert_eq!(
            item_from_json(Task::Piqa, &doc).unwrap_err(),
            "missing key `label`"
        );
        let doc: Value =
            serde_json::from_str(r#"{"goal": "g", "sol1": "a", "sol2": "b", "label": 2}"#).unwrap();
        assert!(
            item_from_json(Task::Piqa, &doc)
                .unwrap_err()
                .contains("gold answer 2")
        );
        let doc: Value =
            serde_json::from_str(r#"{"goal": "g", "sol1": " ", "sol2": "b", "label": 0}"#).unwrap();
        assert_eq!(
            item_from_json(Task::Piqa, &doc).unwrap_err(),
            "choice 0 is empty"
        );
        assert!(
            read_llama_hellaswag("a\n0\nb\nc\nd\n")
                .unwrap_err()
                .contains("6 per item")
        );
        assert!(
            read_llama_hellaswag("ctx\nx\na\nb\nc\nd\n")
                .unwrap_err()
                .contains("line 2")
        );
    }

    #[test]
    fn llama_winogrande_csv_is_split_as_llama_cpp_splits_it() {
        let csv = "index,sentence,option1,option2,answer\n\
                   0,Sarah was a better surgeon than Maria so _ got the easy cases.,Sarah,Maria,2\n\
                   1,\"Tom, not Ann, said _ would go.\",Tom,Ann,1\r\n";
        let items = read_llama_winogrande(csv).unwrap();
        assert_eq!(items.len(), 2, "the header line is skipped");
        assert_eq!(items[0].choices, ["Sarah", "Maria"]);
        assert_eq!(items[0].gold, 1);
        assert_eq!(items[1].question, "Tom, not Ann, said _ would go.");
        assert_eq!(items[1].gold, 0);
        let err = read_llama_winogrande("0,a _ b,x,y,1\n1,a _ b,x,y,3\n").unwrap_err();
        assert!(
            err.contains("line 2") && err.contains("not 1 or 2"),
            "{err}"
        );
        let err = read_llama_winogrande("0,no blank,x,y,1\n").unwrap_err();
        assert!(err.contains("no `_`"), "{err}");
        let err = read_llama_winogrande("0,a _ b,x\n").unwrap_err();
        assert!(err.contains("line 1") && err.contains("2 commas"), "{err}");
    }
}
