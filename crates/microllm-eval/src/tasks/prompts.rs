//! Prompts as the harness's task configs build them: `doc_to_text`, `doc_to_choice`, the
//! target delimiter `" "`, few-shot examples joined by `"\n\n"`, MMLU's description line.

use microllm_core::{Error, Result};

use super::{Item, Task};

/// One choice as the harness asks for its log-likelihood: the continuation's probability
/// given the context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub context: String,
    pub continuation: String,
    /// Characters of the choice as `doc_to_choice` gives it, the divisor of `acc_norm`.
    pub norm_chars: usize,
}

const TARGET_DELIMITER: &str = " ";
const FEWSHOT_DELIMITER: &str = "\n\n";
const LETTERS: [&str; 4] = ["A", "B", "C", "D"];

/// The first `k` of `examples` usable before `item`: of the same subject when the item has
/// one, never the item itself (`exclude`, when the examples are the scored items).
pub(crate) fn fewshot_examples<'a>(
    item: &Item,
    examples: &'a [Item],
    k: usize,
    exclude: Option<usize>,
) -> Result<Vec<&'a Item>> {
    if k == 0 {
        return Ok(Vec::new());
    }
    let shots: Vec<&Item> = examples
        .iter()
        .enumerate()
        .filter(|(i, ex)| Some(*i) != exclude && ex.subject == item.subject)
        .map(|(_, ex)| ex)
        .take(k)
        .collect();
    if shots.len() < k {
        let of = item
            .subject
            .as_deref()
            .map_or(String::new(), |s| format!(" of subject `{s}`"));
        return Err(Error::Invalid(format!(
            "{k} few-shot examples were asked for, but only {} items{of} are available",
            shots.len()
        )));
    }
    Ok(shots)
}

/// The item's requests, one per choice, after the few-shot `shots`.
pub(crate) fn requests(task: Task, item: &Item, shots: &[&Item]) -> Result<Vec<Request>> {
    let mut prefix = match (&item.subject, task) {
        (Some(subject), Task::Mmlu) => format!(
            "The following are multiple choice questions (with answers) about {}.{FEWSHOT_DELIMITER}",
            subject.replace('_', " ")
        ),
        _ => String::new(),
    };
    for shot in shots {
        let (text, target) = solved(task, shot)?;
        prefix.push_str(&text);
        prefix.push_str(TARGET_DELIMITER);
        prefix.push_str(&target);
        prefix.push_str(FEWSHOT_DELIMITER);
    }
    if task == Task::Winogrande && !item.verbatim {
        // Partial scoring: each option completes the sentence up to `_` in the context; the
        // rest of the sentence, the same for both, is the continuation scored.
        let (before, after) = winogrande_split(item)?;
        return Ok(item
            .choices
            .iter()
            .map(|option| Request {
                context: format!("{prefix}{before}{option}"),
                continuation: format!("{TARGET_DELIMITER}{after}"),
                norm_chars: after.chars().count(),
            })
            .collect());
    }
    let context = format!("{prefix}{}", doc_to_text(task, item));
    Ok((0..item.choices.len())
        .map(|i| {
            let choice = choice_text(task, item, i);
            Request {
                context: context.clone(),
                continuation: format!("{TARGET_DELIMITER}{choice}"),
                norm_chars: choice.chars().count(),
            }
        })
        .collect())
}

/// A few-shot example as the harness writes it: its prompt, and its right answer.
fn solved(task: Task, shot: &Item) -> Result<(String, String)> {
    Ok(match task {
        Task::Winogrande if !shot.verbatim => {
            let (before, after) = winogrande_split(shot)?;
            (format!("{before}{}", shot.choices[shot.gold]), after.into())
        }
        _ => (
            doc_to_text(task, shot),
            choice_text(task, shot, shot.gold).into(),
        ),
    })
}

fn doc_to_text(task: Task, item: &Item) -> String {
    if item.verbatim {
        return item.question.clone();
    }
    match task {
        Task::Hellaswag => item.question.clone(),
        Task::ArcEasy | Task::ArcChallenge | Task::Piqa => {
            format!("Question: {}\nAnswer:", item.question)
        }
        Task::Mmlu => {
            let mut text = item.question.trim().to_string();
            for (letter, choice) in LETTERS.iter().zip(&item.choices) {
                text.push_str(&format!("\n{letter}. {choice}"));
            }
            text + "\nAnswer:"
        }
        Task::Winogrande => unreachable!("WinoGrande prompts are built per option unless verbatim"),
    }
}

fn choice_text(task: Task, item: &Item, i: usize) -> &str {
    match task {
        Task::Mmlu if !item.verbatim => LETTERS[i],
        _ => &item.choices[i],
    }
}

/// The sentence before its `_`, and the stripped rest after it.
fn winogrande_split(item: &Item) -> Result<(&str, &str)> {
    let blank = item.question.find('_').ok_or_else(|| {
        Error::Invalid(format!("sentence {:?} has no `_` to fill", item.question))
    })?;
    Ok((&item.question[..blank], item.question[blank + 1..].trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(question: &str, choices: &[&str], gold: usize, subject: Option<&str>) -> Item {
        Item {
            question: question.into(),
            choices: choices.iter().map(|c| c.to_string()).collect(),
            gold,
            subject: subject.map(str::to_string),
            verbatim: false,
        }
    }

    #[test]
    fn arc_prompt_and_continuations() {
        let q = item("Which is a gas?", &["ice", "steam"], 1, None);
        let r = requests(Task::ArcEasy, &q, &[]).unwrap();
        assert_eq!(r[0].context, "Question: Which is a gas?\nAnswer:");
        assert_eq!(r[1].continuation, " steam");
        assert_eq!(r[1].norm_chars, 5);
    }

    #[test]
    fn mmlu_prompt_has_description_letters_and_shots() {
        let q = item(" 2+2? ", &["1", "2", "3", "4"], 3, Some("high_school_math"));
        let shot = item("1+1?", &["2", "3", "4", "5"], 0, Some("high_school_math"));
        let r = requests(Task::Mmlu, &q, &[&shot]).unwrap();
        assert_eq!(
            r[0].context,
            "The following are multiple choice questions (with answers) about high school \
             math.\n\n1+1?\nA. 2\nB. 3\nC. 4\nD. 5\nAnswer: A\n\n2+2?\nA. 1\nB. 2\nC. 3\nD. \
             4\nAnswer:"
        );
        assert_eq!(r[3].continuation, " D");
    }

    #[test]
    fn winogrande_scores_the_shared_suffix() {
        let q = item(
            "The cup fell off the table because _ was slippery .",
            &["the cup", "the table"],
            0,
            None,
        );
        let r = requests(Task::Winogrande, &q, &[]).unwrap();
        assert_eq!(r[0].context, "The cup fell off the table because the cup");
        assert_eq!(r[1].context, "The cup fell off the table because the table");
        assert_eq!(r[0].continuation, " was slippery .");
        assert_eq!(r[0].continuation, r[1].continuation);
        let r = requests(Task::Winogrande, &q, &[&q]).unwrap();
        assert!(
            r[1].context
                .starts_with("The cup fell off the table because the cup was slippery .\n\n")
        );
    }

    #[test]
    fn fewshot_examples_skip_the_item_and_other_subjects() {
        let items = [
            item("a", &["x", "y"], 0, Some("s")),
            item("b", &["x", "y"], 0, Some("t")),
            item("c", &["x", "y"], 0, Some("s")),
        ];
        let shots = fewshot_examples(&items[0], &items, 1, Some(0)).unwrap();
        assert_eq!(shots[0].question, "c");
        let err = fewshot_examples(&items[0], &items, 2, Some(0))
            .unwrap_err()
            .to_string();
        assert!(err.contains("only 1 items of subject `s`"), "{err}");
    }
}
