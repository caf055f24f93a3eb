//! AWQ's block pass: activation-aware input scales searched on the unquantized block and folded
//! into whatever produces each input, before the block is quantized (by RTN or GPTQ).
//!
//! The search ([`microllm_quant::search_scales`]) needs, for each input that a group of linears
//! shares, the Hessian of its calibration values and their mean magnitudes. All of them come
//! from one staged forward pass of the block as loaded (the reference searches every group on
//! full-precision inputs before quantizing anything); then every group's scales are searched on
//! the original weights, all are folded, and with clipping each linear's range is searched on
//! the Hessian of its scaled input.
//!
//! Where the scales fold (the mappings AutoAWQ and llm-compressor use):
//!
//! | linears                                   | producer of their input, divided by `s`      |
//! |-------------------------------------------|----------------------------------------------|
//! | q, k, v (and gate/up in parallel blocks)  | the attention norm (weight, LayerNorm bias)  |
//! | o                                         | v's rows and bias, when v and o have the same width (with grouped-query attention one v channel feeds several o columns, which could not all keep their own scale) |
//! | gate, up                                  | the MLP norm                                 |
//! | down                                      | up's rows and bias, in gated MLPs (a plain MLP's activation sits between up and down) |
//!
//! Folding changes tensors other than the linear weights (norms, biases): they are returned by
//! name, stored with the block, and written in place of the source's.

use std::collections::BTreeMap;

use candle_core::{Device, Tensor};
use microllm_core::{LinearKind, Result, names};
use microllm_models::{Block, Positions};
use microllm_quant::{
    AwqOptions, ChannelMagnitude, GroupWeight, HessianAccumulator, QuantScheme, scale_hessian,
    search_clip, search_scales,
};
use serde::{Deserialize, Serialize};

use crate::block_quant::BlockPhases;

/// What AWQ did to one linear.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AwqRecord {
    /// The scale exponent chosen for the linear's input (`None`: left unscaled, or an input
    /// AWQ cannot fold).
    pub ratio: Option<f32>,
    /// The output error of the linears sharing the input with the chosen scales, relative to
    /// the same rounding unscaled (1 = no gain), on the calibration inputs.
    pub relative_error: f64,
    /// Mean fraction of each row-group's range kept by the clipping search (`None`: not
    /// searched).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clip: Option<f32>,
}

/// The outcome of AWQ on one block.
#[derive(Debug, Default)]
pub(crate) struct AwqBlock {
    /// Tensors besides the linear weights that folding changed, by checkpoint name.
    pub replaced: BTreeMap<String, Tensor>,
    pub records: BTreeMap<LinearKind, AwqRecord>,
}

/// Which producer an input's scales fold into (named also when it cannot take them: see
/// [`ScaleGroup::foldable`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Producer {
    AttnNorm,
    ValueRows,
    MlpNorm,
    UpRows,
}

/// Linears sharing one input, and where that input comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScaleGroup {
    pub producer: Producer,
    pub kinds: Vec<LinearKind>,
    /// Whether scales can fold into the producer; if not, the group is only clipped.
    pub foldable: bool,
}

/// The groups of linears sharing an input in `block`, and whether their scales can fold (see
/// the module docs).
pub fn scale_groups(block: &Block) -> Vec<ScaleGroup> {
    let present = |kinds: &[LinearKind]| -> Vec<LinearKind> {
        kinds
            .iter()
            .copied()
            .filter(|&k| block.linear(k).is_some())
            .collect()
    };
    let parallel = block.mlp_norm.is_none();
    let mlp = [LinearKind::Gate, LinearKind::Up];
    let mut attn_input = vec![LinearKind::Q, LinearKind::K, LinearKind::V];
    if parallel {
        attn_input.extend(mlp);
    }
    let mut groups = vec![
        ScaleGroup {
            producer: Producer::AttnNorm,
            kinds: present(&attn_input),
            foldable: true,
        },
        ScaleGroup {
            producer: Producer::ValueRows,
            kinds: vec![LinearKind::O],
            foldable: block.v.out_features() == block.o.in_features(),
        },
    ];
    if !parallel {
        groups.push(ScaleGroup {
            producer: Producer::MlpNorm,
            kinds: present(&mlp),
            foldable: true,
        });
    }
    groups.push(ScaleGroup {
        producer: Producer::UpRows,
        kinds: vec![LinearKind::Down],
        foldable: block.mlp.gate.is_some(),
    });
    groups
}

/// Runs AWQ on `block` (see the module docs). With `propagate`, `hidden` is replaced by the
/// block's outputs as loaded (the next block's inputs when nothing else quantizes this one on
/// calibration data: the reference feeds full-precision outputs forward).
pub(crate) fn awq_block(
    block: &mut Block,
    hidden: &mut [Tensor],
    at: Positions<'_>,
    scheme: QuantScheme,
    opts: &AwqOptions,
    propagate: bool,
    phases: &mut BlockPhases,
) -> Result<AwqBlock> {
    // A group whose scales cannot fold is only clipped: without clipping it needs nothing.
    let groups: Vec<ScaleGroup> = scale_groups(block)
        .into_iter()
        .filter(|g| g.foldable || opts.clip)
        .collect();
    let mut stats = collect_statistics(block, &groups, hidden, at, propagate, phases)?;
    let started = std::time::Instant::now();
    let mut out = AwqBlock::default();
    let mut searched = Vec::with_capacity(groups.len());
    for (group, (h, magnitude)) in groups.iter().zip(&mut stats) {
        if !group.foldable {
            searched.push(None);
            continue;
        }
        let weights: Vec<Vec<f32>> = group
            .kinds
            .iter()
            .map(|&k| weight_values(block, k))
            .collect::<Result<_>>()?;
        let views: Vec<GroupWeight<'_>> = weights
            .iter()
            .zip(&group.kinds)
            .map(|(w, &k)| GroupWeight {
                weight: w,
                out: block.linear(k).expect("present").out_features(),
            })
            .collect();
        searched.push(Some(search_scales(
            &views,
            h.hessian(),
            &magnitude.mean(),
            scheme,
            opts,
        )?));
    }
    for (group, found) in groups.iter().zip(&searched) {
        let chosen = found.as_ref().filter(|f| f.ratio.is_some());
        if let Some(found) = chosen {
            fold_scales(block, group, &found.scales)?;
        }
        let relative_error = match found {
            Some(f) if f.unscaled_error > 0.0 => f.error / f.unscaled_error,
            _ => 1.0,
        };
        for &kind in &group.kinds {
            out.records.insert(
                kind,
                AwqRecord {
                    ratio: found.as_ref().and_then(|f| f.ratio),
                    relative_error,
                    clip: None,
                },
            );
        }
    }
    if opts.clip {
        for ((group, found), (h, _)) in groups.iter().zip(&searched).zip(stats) {
            let mut h = h.into_hessian();
            if let Some(found) = found.as_ref().filter(|f| f.ratio.is_some()) {
                scale_hessian(&mut h, &found.scales);
            }
            for &kind in group
                .kinds
                .iter()
                .filter(|k| !matches!(k, LinearKind::Q | LinearKind::K))
            {
                let linear = block.linear(kind).expect("present");
                let shape = [linear.out_features(), linear.in_features()];
                let mut w = weight_values(block, kind)?;
                let clip = search_clip(&mut w, shape, &h, scheme)?;
                let device = Device::Cpu;
                block
                    .linear_mut(kind)
                    .expect("present")
                    .set_weight(Tensor::from_vec(w, (shape[0], shape[1]), &device)?);
                if let Some(r) = out.records.get_mut(&kind) {
                    r.clip = Some(clip.mean_fraction);
                }
            }
        }
    }
    let folded = groups
        .iter()
        .zip(&searched)
        .filter(|(_, found)| found.as_ref().is_some_and(|f| f.ratio.is_some()))
        .map(|(g, _)| g);
    out.replaced = folded_tensors(block, folded);
    phases.awq += started.elapsed().as_secs_f64();
    Ok(out)
}

/// Hessians and mean magnitudes of every group's input over the calibration samples, from one
/// staged forward pass of the block.
fn collect_statistics(
    block: &Block,
    groups: &[ScaleGroup],
    hidden: &mut [Tensor],
    at: Positions<'_>,
    propagate: bool,
    phases: &mut BlockPhases,
) -> Result<Vec<(HessianAccumulator, ChannelMagnitude)>> {
    let mut stats: Vec<(HessianAccumulator, ChannelMagnitude)> = groups
        .iter()
        .map(|g| {
            let width = block.linear(g.kinds[0]).expect("present").in_features();
            (HessianAccumulator::new(width), ChannelMagnitude::new(width))
        })
        .collect();
    let slot = |p: Producer| groups.iter().position(|g| g.producer == p);
    let mut add = |p: Producer, x: &Tensor, seconds: &mut f64| -> Result<()> {
        if let Some(i) = slot(p) {
            let started = std::time::Instant::now();
            stats[i].0.add_batch(x)?;
            stats[i].1.add_batch(x)?;
            *seconds += started.elapsed().as_secs_f64();
        }
        Ok(())
    };
    for x in hidden.iter_mut() {
        let inputs = group_inputs(block, x, at, propagate, phases)?;
        for (producer, input) in &inputs {
            add(*producer, input, &mut phases.statistics)?;
        }
    }
    Ok(stats)
}

/// The input of every group of linears for calibration sample `x`, by producer, from one
/// staged forward pass of the block as it is (timed into `phases.forward`); with `propagate`,
/// `x` is replaced by the block's output.
pub(crate) fn group_inputs(
    block: &Block,
    x: &mut Tensor,
    at: Positions<'_>,
    propagate: bool,
    phases: &mut BlockPhases,
) -> Result<[(Producer, Tensor); 4]> {
    let started = std::time::Instant::now();
    let normed = block.attn_input(x)?;
    let context = block.attn_context(&normed, at)?;
    let residual = block.attn_residual(x, &context)?;
    let mlp_input = block.mlp_input(x, &residual)?;
    let state = block.mlp_hidden(&mlp_input)?;
    if propagate {
        *x = block.mlp_output(&residual, &state)?;
    }
    phases.forward += started.elapsed().as_secs_f64();
    Ok([
        (Producer::AttnNorm, normed),
        (Producer::ValueRows, context),
        (Producer::MlpNorm, mlp_input),
        (Producer::UpRows, state),
    ])
}

/// Multiplies the columns of `group`'s linears by `scales` and divides the producer of their
/// input by them: in exact arithmetic the block computes what it did.
pub fn fold_scales(block: &mut Block, group: &ScaleGroup, scales: &[f32]) -> Result<()> {
    let device = Device::Cpu;
    let s = Tensor::from_slice(scales, scales.len(), &device)?;
    for &kind in &group.kinds {
        let linear = block.linear_mut(kind).expect("present");
        let w = linear.weight()?;
        let scaled = w.broadcast_mul(&s.to_dtype(w.dtype())?.unsqueeze(0)?)?;
        linear.set_weight(scaled);
    }
    let divide_rows = |linear: &mut microllm_models::Linear| -> Result<()> {
        let w = linear.weight()?;
        let col = s.to_dtype(w.dtype())?.unsqueeze(1)?;
        linear.set_weight(w.broadcast_div(&col)?);
        if let Some(b) = &linear.bias {
            linear.bias = Some(b.div(&s.to_dtype(b.dtype())?)?);
        }
        Ok(())
    };
    match group.producer {
        Producer::AttnNorm => block.attn_norm.divide_channels(&s)?,
        Producer::MlpNorm => block
            .mlp_norm
            .as_mut()
            .expect("sequential blocks have an MLP norm")
            .divide_channels(&s)?,
        Producer::ValueRows => divide_rows(&mut block.v)?,
        Producer::UpRows => divide_rows(&mut block.mlp.up)?,
    }
    Ok(())
}

/// The norms and biases that folding scales into `folded` groups changed, by checkpoint name.
pub(crate) fn folded_tensors<'g>(
    block: &Block,
    folded: impl IntoIterator<Item = &'g ScaleGroup>,
) -> BTreeMap<String, Tensor> {
    let family = block.config().family;
    let layer = block.layer;
    let mut out = BTreeMap::new();
    for group in folded {
        let (norm, prefix, linear) = match group.producer {
            Producer::AttnNorm => (Some(&block.attn_norm), names::attn_norm(layer), None),
            Producer::MlpNorm => (
                block.mlp_norm.as_ref(),
                names::mlp_norm(family, layer),
                None,
            ),
            Producer::ValueRows => (None, String::new(), Some(LinearKind::V)),
            Producer::UpRows => (None, String::new(), Some(LinearKind::Up)),
        };
        if let Some(norm) = norm {
            out.insert(format!("{prefix}.weight"), norm.weight.clone());
            if let Some(b) = &norm.bias {
                out.insert(format!("{prefix}.bias"), b.clone());
            }
        }
        if let Some(kind) = linear
            && let Some(b) = &block.linear(kind).expect("present").bias
        {
            out.insert(names::linear_bias(family, layer, kind), b.clone());
        }
    }
    out
}

fn weight_values(block: &Block, kind: LinearKind) -> Result<Vec<f32>> {
    let w = block.linear(kind).expect("present").weight()?;
    Ok(w.to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?)
}
