//! Hidden-state losses: student block outputs against the teacher's, through a learned
//! projection when the widths differ.
//!
//! A layer map pairs student blocks with teacher blocks (`student:teacher`). Each pair
//! contributes the mean squared error, or the mean `1 − cos`, between the student's block
//! output (projected to the teacher's width by a learned matrix when the widths differ) and
//! the teacher's; the loss is the mean over pairs. Everything is built from candle's
//! differentiable ops (the tensors are `[tokens, hidden]`, small next to the logits).

use candle_core::{D, DType, Device, Tensor, Var};
use microllm_core::{Error, Result};

use super::spec::HiddenKind;
use microllm_core::rng::SplitMix64;

/// The hidden-state term of a run.
#[derive(Debug)]
pub struct HiddenLoss {
    pub kind: HiddenKind,
    /// `(student block, teacher block)` pairs.
    pub pairs: Vec<(usize, usize)>,
    /// One `[teacher_width, student_width]` projection per pair, when the widths differ.
    pub projections: Vec<Option<Var>>,
}

impl HiddenLoss {
    /// The loss for `pairs`; widths that differ need `project` (a learned projection each,
    /// initialised from `seed`, in `dtype`), otherwise it is an error naming both widths.
    pub fn new(
        kind: HiddenKind,
        pairs: Vec<(usize, usize)>,
        widths: (usize, usize),
        project: bool,
        seed: u64,
        dtype: DType,
    ) -> Result<Self> {
        let (student, teacher) = widths;
        if student != teacher && !project {
            return Err(Error::Invalid(format!(
                "the student's hidden states are {student} wide and the teacher's {teacher}: a \
                 hidden-state loss needs a learned projection between them (pass \
                 --hidden-projection)"
            )));
        }
        let mut rng = SplitMix64::new(seed ^ 0x005e_ed0f_1a7e_u64);
        let projections = pairs
            .iter()
            .map(|_| {
                if student == teacher && !project {
                    return Ok(None);
                }
                // Scaled so that a random projection preserves norms on average.
                let scale = (1.0 / student as f64).sqrt();
                let values: Vec<f32> = (0..teacher * student)
                    .map(|_| {
                        let (u, v) = (rng.next_f64().max(1e-300), rng.next_f64());
                        ((-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos() * scale)
                            as f32
                    })
                    .collect();
                let t = Tensor::from_vec(values, (teacher, student), &Device::Cpu)?;
                Ok(Some(Var::from_tensor(&t.to_dtype(dtype)?)?))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            kind,
            pairs,
            projections,
        })
    }

    /// The student blocks whose outputs the loss needs, in pair order.
    pub fn student_blocks(&self) -> Vec<usize> {
        self.pairs.iter().map(|p| p.0).collect()
    }

    /// The teacher blocks, in pair order.
    pub fn teacher_blocks(&self) -> Vec<usize> {
        self.pairs.iter().map(|p| p.1).collect()
    }

    /// Named projections (trained with the student, checkpointed, not part of the output).
    pub fn named_projections(&self) -> Vec<(String, &Var)> {
        self.projections
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.as_ref().map(|v| (format!("hidden_projection.{i}"), v)))
            .collect()
    }

    /// The mean loss over pairs, for student outputs and teacher states `[tokens, width]`.
    pub fn loss(&self, student: &[Tensor], teacher: &[Tensor]) -> Result<Tensor> {
        let mut total: Option<Tensor> = None;
        for ((s, t), proj) in student.iter().zip(teacher).zip(&self.projections) {
            let s = match proj {
                Some(p) => s.matmul(&p.as_tensor().t()?)?,
                None => s.clone(),
            };
            let t = t.to_dtype(s.dtype())?;
            let term = match self.kind {
                HiddenKind::Mse => (s - t)?.sqr()?.mean_all()?,
                HiddenKind::Cosine => {
                    let dot = (&s * &t)?.sum(D::Minus1)?;
                    let norms =
                        (s.sqr()?.sum(D::Minus1)?.sqrt()? * t.sqr()?.sum(D::Minus1)?.sqrt()?)?;
                    let cos = dot.div(&(norms + 1e-12)?)?;
                    cos.mean_all()?.affine(-1.0, 1.0)?
                }
            };
            total = Some(match total {
                Some(acc) => (acc + term)?,
                None => term,
            });
        }
        let total = total
            .ok_or_else(|| Error::Invalid("a hidden-state loss without layer pairs".into()))?;
        Ok((total / self.pairs.len() as f64)?)
    }
}

/// Pairs student block `i` with teacher block `round((i + 1) · T / S) − 1`: the last blocks
/// meet, the rest spread evenly.
pub fn uniform_layer_map(student_layers: usize, teacher_layers: usize) -> Vec<(usize, usize)> {
    (0..student_layers)
        .map(|i| {
            let t =
                ((i + 1) as f64 * teacher_layers as f64 / student_layers as f64).round() as usize;
            (i, t.max(1) - 1)
        })
        .collect()
}

/// Parses `--layer-map 0:0,5:11` (`student:teacher`), checking both ranges.
pub fn parse_layer_map(
    text: &str,
    student_layers: usize,
    teacher_layers: usize,
) -> Result<Vec<(usize, usize)>> {
    text.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let bad = || {
                Error::Invalid(format!(
                    "--layer-map: `{pair}` is not STUDENT:TEACHER block indices"
                ))
            };
            let (s, t) = pair.split_once(':').ok_or_else(bad)?;
            let (s, t): (usize, usize) = (
                s.trim().parse().map_err(|_| bad())?,
                t.trim().parse().map_err(|_| bad())?,
            );
            if s >= student_layers || t >= teacher_layers {
                return Err(Error::Invalid(format!(
                    "--layer-map: `{pair}` is outside the student's {student_layers} or the \
                     teacher's {teacher_layers} blocks"
                )));
            }
            Ok((s, t))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_map_meets_at_the_last_block() {
        assert_eq!(uniform_layer_map(3, 6), vec![(0, 1), (1, 3), (2, 5)]);
        assert_eq!(uniform_layer_map(2, 2), vec![(0, 0), (1, 1)]);
        assert!(
            parse_layer_map("0:1,1:9", 2, 6)
                .unwrap_err()
                .to_string()
                .contains("outside")
        );
        assert_eq!(
            parse_layer_map("0:1, 1:5", 2, 6).unwrap(),
            vec![(0, 1), (1, 5)]
        );
    }

    #[test]
    fn widths_that_differ_need_a_projection() {
        let err = HiddenLoss::new(
            HiddenKind::Mse,
            vec![(0, 0)],
            (96, 64),
            false,
            0,
            DType::F32,
        )
        .unwrap_err();
        assert!(err.to_string().contains("--hidden-projection"), "{err}");
        let loss =
            HiddenLoss::new(HiddenKind::Mse, vec![(0, 0)], (96, 64), true, 0, DType::F32).unwrap();
        assert_eq!(loss.projections[0].as_ref().unwrap().dims(), &[64, 96]);
    }
}
