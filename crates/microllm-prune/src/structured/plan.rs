//! From the user's fractions to kept counts, and from scores to kept indices per layer.
//!
//! Counts are decided before any calibration runs (so `--dry-run` and bad input fail fast,
//! naming the flag and the model's numbers); indices are decided from measured scores.

use microllm_core::{Error, ModelConfig, Result};
use serde::{Deserialize, Serialize};

use super::select::{blocks_to_drop, select_heads, top_k};

/// How attention heads are removed under grouped-query attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HeadMode {
    /// Remove whole KV groups: a key/value head with every query head that reads it.
    KvGroups,
    /// Keep every key/value head and the same number of query heads in each group.
    PerGroup,
}

/// What the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StructuredSpec {
    /// Fraction of MLP channels kept, in (0, 1].
    pub mlp_keep: f64,
    /// Kept channel counts are rounded to a multiple of this (1 = no rounding).
    pub mlp_multiple: usize,
    /// Fraction of query heads kept, in (0, 1].
    pub heads_keep: f64,
    pub head_mode: HeadMode,
    /// Decoder blocks removed.
    pub drop_layers: usize,
}

/// Kept counts, the same in every remaining layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Targets {
    pub channels: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub layers: usize,
}

impl Targets {
    /// Whether anything is removed.
    pub fn removes_anything(&self, cfg: &ModelConfig) -> bool {
        self.channels < cfg.intermediate_size
            || self.heads < cfg.num_heads
            || self.layers < cfg.num_layers
    }

    /// The configuration of the pruned model (`head_dim` unchanged) keeping the blocks
    /// `kept` of the original, in order: per-block properties (Gemma 3's sliding-window
    /// blocks) follow the blocks that remain.
    pub fn config(&self, cfg: &ModelConfig, kept: &[usize]) -> ModelConfig {
        debug_assert_eq!(kept.len(), self.layers);
        let sliding_layers = cfg.sliding_layers.as_ref().map(|flags| {
            kept.iter()
                .map(|&l| flags.get(l).copied().unwrap_or(false))
                .collect()
        });
        ModelConfig {
            intermediate_size: self.channels,
            num_heads: self.heads,
            num_kv_heads: self.kv_heads,
            num_layers: self.layers,
            sliding_layers,
            ..cfg.clone()
        }
    }
}

/// `keep * total` rounded to the nearest multiple of `multiple` (at least one multiple, at
/// most `total`); `keep == 1` keeps `total` whatever the multiple.
pub fn round_channels(keep: f64, total: usize, multiple: usize) -> usize {
    if keep >= 1.0 {
        return total;
    }
    let m = multiple.max(1);
    let wanted = keep * total as f64;
    let rounded = ((wanted / m as f64).round() as usize) * m;
    if rounded == 0 && wanted >= 0.5 {
        // At least one multiple when the fraction asks for something real.
        m.min(total)
    } else {
        rounded.min(total)
    }
}

fn check_fraction(flag: &str, value: f64) -> Result<()> {
    if !(value > 0.0 && value <= 1.0) {
        return Err(Error::Invalid(format!(
            "{flag} {value} is outside (0, 1]: it is the fraction kept (1 keeps everything)"
        )));
    }
    Ok(())
}

/// Kept counts for `spec` on `cfg`, or an error naming the flag and the model's numbers.
pub fn targets(spec: &StructuredSpec, cfg: &ModelConfig) -> Result<Targets> {
    check_fraction("--mlp-keep", spec.mlp_keep)?;
    check_fraction("--heads-keep", spec.heads_keep)?;
    if spec.mlp_multiple == 0 {
        return Err(Error::Invalid("--mlp-multiple must be at least 1".into()));
    }
    let i = cfg.intermediate_size;
    let channels = round_channels(spec.mlp_keep, i, spec.mlp_multiple);
    if channels == 0 {
        return Err(Error::Invalid(format!(
            "--mlp-keep {} keeps zero of the model's {i} MLP channels (rounded to multiples of \
             {}); keep at least {:.4}",
            spec.mlp_keep,
            spec.mlp_multiple,
            spec.mlp_multiple.min(i) as f64 / i as f64
        )));
    }
    let (h, kv) = (cfg.num_heads, cfg.num_kv_heads);
    let group = h / kv;
    let heads = (spec.heads_keep * h as f64).round() as usize;
    if heads == 0 {
        return Err(Error::Invalid(format!(
            "--heads-keep {} keeps zero of the model's {h} attention heads; keep at least {:.4}",
            spec.heads_keep,
            1.0 / h as f64
        )));
    }
    let (unit, what) = match spec.head_mode {
        HeadMode::KvGroups => (group, format!("whole KV groups of {group} query heads")),
        HeadMode::PerGroup => (
            kv,
            format!("the same number of query heads in each of the {kv} KV groups"),
        ),
    };
    if !heads.is_multiple_of(unit) {
        let valid: Vec<String> = (1..=h / unit)
            .map(|n| format!("{:.4} ({} heads)", (n * unit) as f64 / h as f64, n * unit))
            .collect();
        return Err(Error::Invalid(format!(
            "--heads-keep {} keeps {heads} of the model's {h} query heads ({kv} KV heads), which \
             cannot be spread as {what} (--head-mode {}); valid fractions: {}",
            spec.heads_keep,
            match spec.head_mode {
                HeadMode::KvGroups => "kv-groups",
                HeadMode::PerGroup => "per-group",
            },
            valid.join(", ")
        )));
    }
    let kv_heads = match spec.head_mode {
        HeadMode::KvGroups => heads / group,
        HeadMode::PerGroup => kv,
    };
    if spec.drop_layers >= cfg.num_layers {
        return Err(Error::Invalid(format!(
            "--drop-layers {} would remove all of the model's {} decoder blocks; at most {} can go",
            spec.drop_layers,
            cfg.num_layers,
            cfg.num_layers - 1
        )));
    }
    Ok(Targets {
        channels,
        heads,
        kv_heads,
        layers: cfg.num_layers - spec.drop_layers,
    })
}

/// What one remaining block keeps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LayerPlan {
    /// The block's index in the original model.
    pub source: usize,
    /// Kept MLP channels (ascending).
    pub channels: Vec<usize>,
    /// Kept query heads (ascending).
    pub heads: Vec<usize>,
    /// Kept key/value heads (ascending).
    pub kv_heads: Vec<usize>,
}

/// Importance measured on the original model, one entry per original block.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Scores {
    /// Per block, one score per MLP channel (higher = more important).
    pub channels: Vec<Vec<f64>>,
    /// Per block, one score per query head.
    pub heads: Vec<Vec<f64>>,
    /// Per block, ShortGPT's block influence (absent when no blocks are dropped and nothing
    /// was measured).
    pub block_influence: Option<Vec<f64>>,
}

/// The kept structures of every remaining block and the resulting configuration.
#[derive(Debug, Clone, Serialize)]
pub struct StructuredPlan {
    #[serde(skip)]
    pub original: ModelConfig,
    #[serde(skip)]
    pub config: ModelConfig,
    /// Remaining blocks, in their new order.
    pub layers: Vec<LayerPlan>,
    /// Original indices of the removed blocks.
    pub dropped: Vec<usize>,
}

impl StructuredPlan {
    /// Keeps the first of everything: the shapes of the result without any scores (for
    /// `--dry-run` and size estimates before calibration).
    pub fn shapes_only(cfg: &ModelConfig, t: &Targets) -> Self {
        let group = cfg.num_heads / cfg.num_kv_heads;
        let kv_heads: Vec<usize> = (0..t.kv_heads).collect();
        let per = t.heads / t.kv_heads;
        let heads = kv_heads
            .iter()
            .flat_map(|&g| g * group..g * group + per)
            .collect::<Vec<_>>();
        let kept: Vec<usize> = (0..t.layers).collect();
        Self {
            original: cfg.clone(),
            config: t.config(cfg, &kept),
            layers: (0..t.layers)
                .map(|l| LayerPlan {
                    source: l,
                    channels: (0..t.channels).collect(),
                    heads: heads.clone(),
                    kv_heads: kv_heads.clone(),
                })
                .collect(),
            dropped: (t.layers..cfg.num_layers).collect(),
        }
    }

    /// Chooses, per block, the highest-scoring channels and heads, and drops the blocks of
    /// least influence.
    pub fn from_scores(
        cfg: &ModelConfig,
        t: &Targets,
        mode: HeadMode,
        scores: &Scores,
    ) -> Result<Self> {
        let n = cfg.num_layers;
        let dropped = if t.layers < n {
            let influence = scores.block_influence.as_ref().ok_or_else(|| {
                Error::Invalid("dropping blocks needs block influence scores".into())
            })?;
            check_len("block influence", influence.len(), n)?;
            blocks_to_drop(influence, n - t.layers)
        } else {
            Vec::new()
        };
        let mut layers = Vec::with_capacity(t.layers);
        for source in (0..n).filter(|l| !dropped.contains(l)) {
            let channels = if t.channels < cfg.intermediate_size {
                let s = scores
                    .channels
                    .get(source)
                    .ok_or_else(|| missing("channel", source))?;
                check_len("channel scores", s.len(), cfg.intermediate_size)?;
                top_k(s, t.channels)
            } else {
                (0..cfg.intermediate_size).collect()
            };
            let (heads, kv_heads) = if t.heads < cfg.num_heads {
                let s = scores
                    .heads
                    .get(source)
                    .ok_or_else(|| missing("head", source))?;
                check_len("head scores", s.len(), cfg.num_heads)?;
                select_heads(s, cfg.num_kv_heads, t.heads, mode)
            } else {
                (
                    (0..cfg.num_heads).collect(),
                    (0..cfg.num_kv_heads).collect(),
                )
            };
            layers.push(LayerPlan {
                source,
                channels,
                heads,
                kv_heads,
            });
        }
        let kept: Vec<usize> = layers.iter().map(|l| l.source).collect();
        Ok(Self {
            original: cfg.clone(),
            config: t.config(cfg, &kept),
            layers,
            dropped,
        })
    }

    /// Whether the plan keeps everything.
    pub fn is_identity(&self) -> bool {
        self.config == self.original
    }
}

fn missing(what: &str, layer: usize) -> Error {
    Error::Invalid(format!("no {what} scores for block {layer}"))
}

fn check_len(what: &str, got: usize, want: usize) -> Result<()> {
    if got != want {
        return Err(Error::Invalid(format!(
            "{what}: {got} values, the model has {want}"
        )));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests;
