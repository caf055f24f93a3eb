//! Students derived from the teacher: `--student-from-teacher "drop-layers=6,mlp-keep=0.75"`.
//!
//! The usual student of a distillation is a structurally pruned teacher (Minitron,
//! Sheared-LLaMA: prune, then distill to heal). This reuses the structured-pruning code as
//! `microllm prune --structured` does: importance measured on calibration windows through
//! the teacher's blocks (`microllm_engine::structured`, ShortGPT block influence for
//! dropped blocks, activation norms for channels and heads), kept indices chosen per block
//! (`microllm_prune::structured`), and the student's weights served lazily by
//! [`PrunedSource`] from the teacher's. With the same calibration windows it removes exactly
//! what `prune --structured` removes.

use microllm_core::{Error, ModelConfig, Progress, Result, TensorSource};
use microllm_engine::structured::{ImportanceJob, ImportanceMetric, measure_importance};
use microllm_prune::structured::{HeadMode, PrunedSource, StructuredPlan, StructuredSpec, targets};

/// The keys `--student-from-teacher` accepts.
pub const DERIVATION_KEYS: &str = "drop-layers=N, mlp-keep=F, heads-keep=F, mlp-multiple=N, \
     head-mode=per-group|kv-groups";

/// Parses `key=value,...` into a structured-pruning request (unset keys keep everything).
pub fn parse_derivation(text: &str) -> Result<StructuredSpec> {
    let mut spec = StructuredSpec {
        mlp_keep: 1.0,
        mlp_multiple: 32,
        heads_keep: 1.0,
        head_mode: HeadMode::PerGroup,
        drop_layers: 0,
    };
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = |what: &str| {
            Error::Invalid(format!(
                "--student-from-teacher: `{part}` {what}; known keys: {DERIVATION_KEYS}"
            ))
        };
        let (key, value) = part
            .split_once('=')
            .ok_or_else(|| bad("is not KEY=VALUE"))?;
        let (key, value) = (key.trim(), value.trim());
        let number = || value.parse::<f64>().map_err(|_| bad("has no number"));
        let count = || {
            value
                .parse::<usize>()
                .map_err(|_| bad("has no whole number"))
        };
        match key {
            "drop-layers" => spec.drop_layers = count()?,
            "mlp-keep" => spec.mlp_keep = number()?,
            "heads-keep" => spec.heads_keep = number()?,
            "mlp-multiple" => spec.mlp_multiple = count()?,
            "head-mode" => {
                spec.head_mode = match value {
                    "per-group" => HeadMode::PerGroup,
                    "kv-groups" => HeadMode::KvGroups,
                    _ => return Err(bad("names no head mode")),
                }
            }
            _ => return Err(bad("has an unknown key")),
        }
    }
    Ok(spec)
}

/// A student cut out of the teacher.
pub struct DerivedStudent<'a> {
    pub plan: StructuredPlan,
    pub source: PrunedSource<'a>,
}

/// Measures importance on `calibration` windows and cuts the student out of `teacher`.
pub fn derive_student<'a>(
    cfg: &ModelConfig,
    teacher: &'a dyn TensorSource,
    spec: &StructuredSpec,
    calibration: &[Vec<u32>],
    progress: &dyn Progress,
) -> Result<DerivedStudent<'a>> {
    let t = targets(spec, cfg)?;
    if !t.removes_anything(cfg) {
        return Err(Error::Invalid(
            "--student-from-teacher removes nothing: the student would be the teacher (give \
             drop-layers, mlp-keep or heads-keep)"
                .into(),
        ));
    }
    let job = ImportanceJob {
        config: cfg,
        source: teacher,
        calibration,
        metric: ImportanceMetric::Activation,
        block_influence: t.layers < cfg.num_layers,
    };
    let scores = measure_importance(&job, progress)?;
    let plan = StructuredPlan::from_scores(cfg, &t, spec.head_mode, &scores)?;
    let source = PrunedSource::new(teacher, &plan)?;
    Ok(DerivedStudent { plan, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_derivation_keys() {
        let s = parse_derivation("drop-layers=6, mlp-keep=0.75,head-mode=kv-groups").unwrap();
        assert_eq!((s.drop_layers, s.mlp_keep, s.heads_keep), (6, 0.75, 1.0));
        assert_eq!(s.head_mode, HeadMode::KvGroups);
        for (text, needle) in [
            ("drop=6", "unknown key"),
            ("drop-layers", "KEY=VALUE"),
            ("mlp-keep=x", "no number"),
        ] {
            let err = parse_derivation(text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }
}
