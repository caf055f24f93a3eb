//! The order of a recipe's passes: one of each kind, structured pruning first, distillation
//! before the sweep, pruning before quantization, no eval splitting a joint sweep.

use super::pass_path;
use super::steps::err;
use crate::recipe::{Pass, RecipeResult};

/// Where each kind of pass is.
pub(super) struct Order {
    pub structured: Option<usize>,
    pub distill: Option<usize>,
    pub prune: Option<usize>,
    pub quantize: Option<usize>,
    /// The last compression pass.
    pub last_compression: Option<usize>,
}

pub(super) fn check_order(passes: &[Pass]) -> RecipeResult<Order> {
    let mut o = Order {
        structured: None,
        distill: None,
        prune: None,
        quantize: None,
        last_compression: None,
    };
    for (i, p) in passes.iter().enumerate() {
        let path = pass_path(i, p);
        let again = |first: usize| {
            err(
                &path,
                format!(
                    "a second {} pass (the first is passes[{first}]); one of each kind per recipe",
                    p.key()
                ),
            )
        };
        match p {
            Pass::StructuredPrune(_) => {
                if let Some(first) = o.structured {
                    return Err(again(first));
                }
                if let Some(j) = o.prune.or(o.quantize).or(o.distill) {
                    return Err(err(
                        &path,
                        format!(
                            "structured pruning must come before passes[{j}]: it slices the \
                             original weights, which a {} pass has already changed",
                            passes[j].key()
                        ),
                    ));
                }
                o.structured = Some(i);
            }
            Pass::Distill(_) => {
                if let Some(first) = o.distill {
                    return Err(again(first));
                }
                if let Some(j) = o.prune.or(o.quantize) {
                    return Err(err(
                        &path,
                        format!(
                            "distillation after passes[{j}] ({}) would move pruned weights off \
                             zero and quantized ones off their grids; distill first (after \
                             structured_prune), then prune or quantize",
                            passes[j].key()
                        ),
                    ));
                }
                o.distill = Some(i);
            }
            Pass::Prune(_) => {
                if let Some(first) = o.prune {
                    return Err(again(first));
                }
                if let Some(j) = o.quantize {
                    return Err(err(
                        &path,
                        format!(
                            "pruning after quantization (passes[{j}]) would move weights off \
                             their grids; put prune before quantize (both then run in one sweep)"
                        ),
                    ));
                }
                o.prune = Some(i);
            }
            Pass::Quantize(_) => {
                if let Some(first) = o.quantize {
                    return Err(again(first));
                }
                if let Some(j) = o.prune
                    && let Some(e) = (j + 1..i).find(|&k| matches!(passes[k], Pass::Eval(_)))
                {
                    return Err(err(
                        pass_path(e, &passes[e]),
                        format!(
                            "an eval between passes[{j}] (prune) and passes[{i}] (quantize) \
                             would split their joint sweep; move it after the quantize pass"
                        ),
                    ));
                }
                o.quantize = Some(i);
            }
            Pass::Eval(_) => {}
        }
        if !matches!(p, Pass::Eval(_)) {
            o.last_compression = Some(i);
        }
    }
    Ok(o)
}
