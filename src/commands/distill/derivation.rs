//! `--student-from-teacher "drop-layers=6,mlp-keep=0.75"`: the structured pass that cuts the
//! student out of the teacher (Minitron, Sheared-LLaMA: prune, then distill to heal).
//!
//! The pass is the one `microllm prune --structured` runs: importance measured on calibration
//! windows through the teacher's blocks (ShortGPT block influence for dropped blocks,
//! activation norms for channels and heads), so with the same windows it removes exactly
//! what `prune --structured` removes.

use anyhow::{Result, anyhow};
use microllm_pipeline::recipe::{HeadModeName, Pass, StructuredStage};

/// The keys `--student-from-teacher` accepts.
const DERIVATION_KEYS: &str = "drop-layers=N, mlp-keep=F, heads-keep=F, mlp-multiple=N, \
     head-mode=per-group|kv-groups";

/// Parses `key=value,...` into a structured pass (unset keys keep everything).
pub(super) fn structured_pass(text: &str) -> Result<Pass> {
    // Unset keys keep everything; importance from calibration activations.
    let mut stage = StructuredStage::default();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = |what: &str| {
            anyhow!("--student-from-teacher: `{part}` {what}; known keys: {DERIVATION_KEYS}")
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
            "drop-layers" => stage.drop_layers = count()?,
            "mlp-keep" => stage.mlp_keep = number()?,
            "heads-keep" => stage.heads_keep = number()?,
            "mlp-multiple" => stage.mlp_multiple = count()?,
            "head-mode" => {
                stage.head_mode = match value {
                    "per-group" => HeadModeName::PerGroup,
                    "kv-groups" => HeadModeName::KvGroups,
                    _ => return Err(bad("names no head mode")),
                }
            }
            _ => return Err(bad("has an unknown key")),
        }
    }
    if stage.drop_layers == 0 && stage.mlp_keep >= 1.0 && stage.heads_keep >= 1.0 {
        return Err(anyhow!(
            "--student-from-teacher `{text}` removes nothing: the student would be the teacher \
             (give drop-layers, mlp-keep or heads-keep)"
        ));
    }
    Ok(Pass::StructuredPrune(stage))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_derivation_keys() {
        let Pass::StructuredPrune(s) =
            structured_pass("drop-layers=6, mlp-keep=0.75,head-mode=kv-groups").unwrap()
        else {
            panic!("not a structured pass");
        };
        assert_eq!((s.drop_layers, s.mlp_keep, s.heads_keep), (6, 0.75, 1.0));
        assert_eq!(s.head_mode, HeadModeName::KvGroups);
        for (text, needle) in [
            ("drop=6", "unknown key"),
            ("drop-layers", "KEY=VALUE"),
            ("mlp-keep=x", "no number"),
            ("drop-layers=0", "removes nothing"),
        ] {
            let err = structured_pass(text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }
}
