//! Gates: conditions a run's result must meet (`ppl_increase_pct <= 5`, `size_mb < 80`).
//!
//! A gate is one metric of the report, a comparison and a number. The metric names are the
//! keys of the report's `metrics` object (docs/recipes.md lists them); a name that is not one
//! is refused when the recipe is validated, not after an hour of work.

use serde::{Deserialize, Serialize};

/// The metrics a gate may name, and what each needs measured.
pub const METRICS: [(&str, &str); 15] = [
    ("ppl", "perplexity of the output (needs an eval pass)"),
    (
        "ppl_base",
        "perplexity of the original model (needs an eval pass)",
    ),
    (
        "ppl_increase",
        "perplexity of the output minus the original's",
    ),
    (
        "ppl_increase_pct",
        "that increase in percent of the original's",
    ),
    (
        "kl",
        "mean KL divergence original || output, nats per token",
    ),
    (
        "top1_agreement",
        "fraction of positions where both models rank the same token first",
    ),
    (
        "eval_tokens_per_s",
        "tokens per second of the output model in the eval",
    ),
    ("size_mb", "size of the output on disk, in MB (10^6 bytes)"),
    ("bits_per_weight", "output bits on disk per parameter"),
    ("parameters", "parameters of the output model"),
    ("sparsity", "fraction of the linear weights that are zero"),
    ("wall_s", "wall time of the run, seconds"),
    (
        "peak_rss_mb",
        "peak resident memory of the process (VmHWM), MB",
    ),
    (
        "distill_ppl",
        "held-out perplexity of the student after the distill pass (needs evaluation data)",
    ),
    (
        "distill_tokens_per_s",
        "training tokens per second of the distill pass",
    ),
];

/// Metrics that only a distill pass measures.
pub const DISTILL_METRICS: [&str; 2] = ["distill_ppl", "distill_tokens_per_s"];

/// Metrics that only an eval pass of the final output measures.
pub const EVAL_METRICS: [&str; 7] = [
    "ppl",
    "ppl_base",
    "ppl_increase",
    "ppl_increase_pct",
    "kl",
    "top1_agreement",
    "eval_tokens_per_s",
];

/// Task-accuracy metrics, measured by an eval pass on `evaluation.tasks`: alone, the mean
/// over the tasks (those that have `acc_norm`, for the `acc_norm` ones); after a task's name
/// (`hellaswag.acc_norm_drop`), that task's.
pub const TASK_METRICS: [(&str, &str); 6] = [
    ("acc", "task accuracy of the output (0 to 1)"),
    ("acc_base", "task accuracy of the original model"),
    (
        "acc_drop",
        "accuracy lost, in points: 100 x (acc_base - acc)",
    ),
    (
        "acc_norm",
        "length-normalized task accuracy of the output (lm-eval's acc_norm)",
    ),
    ("acc_norm_base", "acc_norm of the original model"),
    ("acc_norm_drop", "acc_norm lost, in points"),
];

/// A comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum GateOp {
    #[serde(rename = "<=")]
    Le,
    #[serde(rename = "<")]
    Lt,
    #[serde(rename = ">=")]
    Ge,
    #[serde(rename = ">")]
    Gt,
    #[serde(rename = "==")]
    Eq,
}

impl GateOp {
    pub fn symbol(self) -> &'static str {
        match self {
            GateOp::Le => "<=",
            GateOp::Lt => "<",
            GateOp::Ge => ">=",
            GateOp::Gt => ">",
            GateOp::Eq => "==",
        }
    }

    fn holds(self, value: f64, threshold: f64) -> bool {
        match self {
            GateOp::Le => value <= threshold,
            GateOp::Lt => value < threshold,
            GateOp::Ge => value >= threshold,
            GateOp::Gt => value > threshold,
            GateOp::Eq => value == threshold,
        }
    }
}

/// `METRIC OP NUMBER`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gate {
    pub metric: String,
    pub op: GateOp,
    pub threshold: f64,
}

impl Gate {
    /// Reads `ppl_increase_pct<=5` (spaces optional).
    pub fn parse(text: &str) -> Result<Self, String> {
        let ops = [
            ("<=", GateOp::Le),
            (">=", GateOp::Ge),
            ("==", GateOp::Eq),
            ("<", GateOp::Lt),
            (">", GateOp::Gt),
        ];
        let (at, sym, op) = ops
            .iter()
            .filter_map(|(s, op)| text.find(s).map(|i| (i, *s, *op)))
            .min_by_key(|(i, s, _)| (*i, usize::MAX - s.len()))
            .ok_or_else(|| {
                format!(
                    "`{text}` is not a gate: write METRIC OP NUMBER, e.g. ppl_increase_pct <= 5"
                )
            })?;
        let metric = text[..at].trim();
        let number = text[at + sym.len()..].trim();
        if !METRICS.iter().any(|(m, _)| *m == metric) && task_metric(metric).is_none() {
            return Err(format!(
                "`{metric}` is not a metric; gates take {}, and TASK.{{{}}} for a task of \
                 `evaluation.tasks`",
                METRICS
                    .iter()
                    .chain(&TASK_METRICS)
                    .map(|(m, _)| *m)
                    .collect::<Vec<_>>()
                    .join(", "),
                TASK_METRICS
                    .iter()
                    .map(|(m, _)| *m)
                    .collect::<Vec<_>>()
                    .join(",")
            ));
        }
        let threshold: f64 = number
            .parse()
            .ok()
            .filter(|x: &f64| x.is_finite())
            .ok_or_else(|| format!("`{number}` is not a number (in gate `{text}`)"))?;
        Ok(Self {
            metric: metric.to_string(),
            op,
            threshold,
        })
    }

    /// `ppl_increase_pct <= 5`.
    pub fn expression(&self) -> String {
        format!("{} {} {}", self.metric, self.op.symbol(), self.threshold)
    }

    /// Whether a measured value passes (a metric not measured fails).
    pub fn check(&self, value: Option<f64>) -> bool {
        value.is_some_and(|v| self.op.holds(v, self.threshold))
    }

    /// Whether the metric comes from an eval pass.
    pub fn needs_eval(&self) -> bool {
        EVAL_METRICS.contains(&self.metric.as_str()) || self.task_metric().is_some()
    }

    /// For a task-accuracy metric, the task it names (`None` inside: the mean over tasks).
    pub fn task_metric(&self) -> Option<Option<&str>> {
        task_metric(&self.metric)
    }
}

/// `Some(None)` for `acc`..., `Some(Some("hellaswag"))` for `hellaswag.acc`..., `None` for
/// every other name.
fn task_metric(metric: &str) -> Option<Option<&str>> {
    let known = |m: &str| TASK_METRICS.iter().any(|(k, _)| *k == m);
    match metric.split_once('.') {
        None => known(metric).then_some(None),
        Some((task, m)) => (known(m)
            && task
                .parse::<microllm_eval::tasks::Task>()
                .is_ok_and(|t| t.name() == task))
        .then_some(Some(task)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gates_parse_and_check() {
        let g = Gate::parse("ppl_increase_pct<=5").unwrap();
        assert_eq!(
            (g.metric.as_str(), g.op, g.threshold),
            ("ppl_increase_pct", GateOp::Le, 5.0)
        );
        assert!(g.check(Some(5.0)) && !g.check(Some(5.01)) && !g.check(None));
        let g = Gate::parse(" size_mb < 80 ").unwrap();
        assert_eq!(g.op, GateOp::Lt);
        assert_eq!(g.expression(), "size_mb < 80");
        assert!(
            Gate::parse("top1_agreement >= 0.9")
                .unwrap()
                .check(Some(0.95))
        );
        assert!(
            Gate::parse("speed <= 3")
                .unwrap_err()
                .contains("not a metric")
        );
        assert!(
            Gate::parse("ppl <= lots")
                .unwrap_err()
                .contains("not a number")
        );
        assert!(Gate::parse("ppl").unwrap_err().contains("METRIC OP NUMBER"));
    }

    #[test]
    fn task_metrics_name_a_task_or_all() {
        let g = Gate::parse("acc_norm_drop <= 1.0").unwrap();
        assert_eq!(g.task_metric(), Some(None));
        assert!(g.needs_eval());
        let g = Gate::parse("arc_easy.acc >= 0.5").unwrap();
        assert_eq!(g.task_metric(), Some(Some("arc_easy")));
        assert_eq!(Gate::parse("ppl <= 5").unwrap().task_metric(), None);
        for bad in ["boolq.acc <= 1", "hellaswag.ppl <= 1", "ARC-Easy.acc <= 1"] {
            assert!(
                Gate::parse(bad).unwrap_err().contains("not a metric"),
                "{bad}"
            );
        }
    }
}
