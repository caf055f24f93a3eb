//! `--loss kl:1.0,ce:0.1`: which losses, with which weights.

use microllm_core::{Error, Result};
use serde::{Deserialize, Serialize};

/// How hidden states are compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HiddenKind {
    /// Mean squared error of (projected) student and teacher states.
    Mse,
    /// Mean of `1 − cos` between them, per position.
    Cosine,
}

/// The weighted terms of the training loss.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct LossSpec {
    pub kl: f64,
    pub reverse_kl: f64,
    pub jsd: f64,
    pub ce: f64,
    pub hidden: Option<(HiddenKind, f64)>,
}

/// The names `--loss` accepts, for help and errors.
pub const LOSS_NAMES: &str = "kl (forward KL, teacher||student), reverse-kl, jsd, ce (cross-entropy \
     on the next token), hidden-mse, hidden-cos";

impl LossSpec {
    /// Parses `name:weight,...`.
    pub fn parse(text: &str) -> Result<Self> {
        let mut spec = LossSpec::default();
        let mut seen = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, weight) = part.split_once(':').unwrap_or((part, "1"));
            let weight: f64 = weight.trim().parse().map_err(|_| {
                Error::Invalid(format!(
                    "--loss: weight `{weight}` of `{name}` is not a number"
                ))
            })?;
            if !(weight.is_finite() && weight >= 0.0) {
                return Err(Error::Invalid(format!(
                    "--loss: weight {weight} of `{name}` must be a non-negative number"
                )));
            }
            let name = name.trim();
            if seen.contains(&name) {
                return Err(Error::Invalid(format!("--loss: `{name}` is given twice")));
            }
            seen.push(name);
            match name {
                "kl" | "forward-kl" => spec.kl = weight,
                "reverse-kl" | "rkl" => spec.reverse_kl = weight,
                "jsd" => spec.jsd = weight,
                "ce" => spec.ce = weight,
                "hidden-mse" => spec.set_hidden(HiddenKind::Mse, weight)?,
                "hidden-cos" | "hidden-cosine" => spec.set_hidden(HiddenKind::Cosine, weight)?,
                other => {
                    return Err(Error::Invalid(format!(
                        "--loss: unknown loss `{other}`; known: {LOSS_NAMES}"
                    )));
                }
            }
        }
        let hidden = spec.hidden.map_or(0.0, |(_, w)| w);
        if spec.kl + spec.reverse_kl + spec.jsd + spec.ce + hidden == 0.0 {
            return Err(Error::Invalid(format!(
                "--loss `{text}` weights nothing; give at least one of: {LOSS_NAMES}"
            )));
        }
        Ok(spec)
    }

    fn set_hidden(&mut self, kind: HiddenKind, weight: f64) -> Result<()> {
        if self.hidden.is_some() {
            return Err(Error::Invalid(
                "--loss: give one hidden-state loss (hidden-mse or hidden-cos)".into(),
            ));
        }
        self.hidden = Some((kind, weight));
        Ok(())
    }

    /// Whether any term needs the teacher's logits.
    pub fn uses_teacher_logits(&self) -> bool {
        self.kl != 0.0 || self.reverse_kl != 0.0 || self.jsd != 0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_weights_and_defaults() {
        let s = LossSpec::parse("kl:1.0, ce:0.1,hidden-cos:0.5").unwrap();
        assert_eq!((s.kl, s.ce, s.reverse_kl), (1.0, 0.1, 0.0));
        assert_eq!(s.hidden, Some((HiddenKind::Cosine, 0.5)));
        assert_eq!(LossSpec::parse("jsd").unwrap().jsd, 1.0);
    }

    #[test]
    fn bad_specs_name_the_problem() {
        for (text, needle) in [
            ("kl:1,entropy:2", "unknown loss `entropy`"),
            ("kl:x", "not a number"),
            ("kl:-1", "non-negative"),
            ("kl:1,kl:2", "twice"),
            ("kl:0", "weights nothing"),
            ("hidden-mse:1,hidden-cos:1", "one hidden-state loss"),
        ] {
            let err = LossSpec::parse(text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }
}
