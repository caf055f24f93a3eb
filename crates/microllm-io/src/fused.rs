//! Fused projections: split on the way in, fused again on the way out.
//!
//! Some families store several linears of a block as one matrix whose rows stack them:
//! Phi-3's `qkv_proj` (q, k, v) and `gate_up_proj` (gate, up). Every algorithm in microllm
//! works per linear (GPTQ's Hessians are shared by q/k/v anyway, pruning and the reports name
//! q, k and v), so inside microllm such a model has the parts under the usual names
//! (`self_attn.q_proj`, ..., `mlp.up_proj`). [`SplitFused`] presents a checkpoint that way and
//! [`JoinFused`] presents microllm's tensors in the family's fused layout to a writer, so every
//! writer produces what the family's loaders expect. Rows are independent in every format
//! microllm writes (GGUF blocks, GPTQ groups and packing along the input dimension), so
//! stacking the parts' quantized rows gives exactly the quantized fused matrix.

use std::sync::Mutex;

use candle_core::Tensor;
use microllm_core::{
    Error, FusedLinear, LinearKind, ModelConfig, Result, TensorInfo, TensorSource, names,
};

/// Rows of linear `kind`'s output in a model of `cfg`.
pub fn part_rows(cfg: &ModelConfig, kind: LinearKind) -> usize {
    match kind {
        LinearKind::Q => cfg.q_dim(),
        LinearKind::K | LinearKind::V => cfg.kv_dim(),
        LinearKind::O | LinearKind::Down => cfg.hidden_size,
        LinearKind::Gate | LinearKind::Up => cfg.intermediate_size,
    }
}

/// A tensor of a fused module: which block, which module, weight or bias.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FusedName {
    layer: usize,
    fused: FusedLinear,
    suffix: &'static str,
}

impl FusedName {
    /// Parses `model.layers.{layer}.{module}.{weight|bias}` for the family's fused modules.
    fn parse(cfg: &ModelConfig, name: &str) -> Option<Self> {
        let rest = name.strip_prefix("model.layers.")?;
        let (layer, module) = rest.split_once('.')?;
        let layer: usize = layer
            .parse()
            .ok()
            .filter(|l: &usize| l.to_string() == layer)?;
        let (module, suffix) = if let Some(m) = module.strip_suffix(".weight") {
            (m, "weight")
        } else {
            (module.strip_suffix(".bias")?, "bias")
        };
        let fused = *cfg
            .family
            .fused_linears()
            .iter()
            .find(|f| f.module == module)?;
        Some(Self {
            layer,
            fused,
            suffix,
        })
    }

    /// The fused tensor's name.
    fn name(&self) -> String {
        format!(
            "{}.{}.{}",
            names::block_prefix(self.layer),
            self.fused.module,
            self.suffix
        )
    }

    /// The parts' names and first rows inside the fused tensor.
    fn parts(&self, cfg: &ModelConfig) -> Vec<(String, usize, usize)> {
        let mut first = 0;
        self.fused
            .parts
            .iter()
            .map(|&kind| {
                let rows = part_rows(cfg, kind);
                let name = match self.suffix {
                    "bias" => names::linear_bias(cfg.family, self.layer, kind),
                    _ => names::linear_weight(cfg.family, self.layer, kind),
                };
                let part = (name, first, rows);
                first += rows;
                part
            })
            .collect()
    }
}

/// The fused tensor holding linear part `name`, if `name` is one, with the part's first row
/// and row count.
pub fn fused_of(cfg: &ModelConfig, name: &str) -> Option<(String, usize, usize)> {
    let (layer, kind) =
        names::parse_linear_weight(cfg.family, name).or_else(|| parse_linear_bias(cfg, name))?;
    let suffix = if name.ends_with(".bias") {
        "bias"
    } else {
        "weight"
    };
    let fused = *cfg
        .family
        .fused_linears()
        .iter()
        .find(|f| f.parts.contains(&kind))?;
    let f = FusedName {
        layer,
        fused,
        suffix,
    };
    let (_, first, rows) = f.parts(cfg).into_iter().find(|(n, _, _)| n == name)?;
    Some((f.name(), first, rows))
}

fn parse_linear_bias(cfg: &ModelConfig, name: &str) -> Option<(usize, LinearKind)> {
    let weight = format!("{}.weight", name.strip_suffix(".bias")?);
    names::parse_linear_weight(cfg.family, &weight)
}

/// Whether `name` is a block linear's weight, or a fused matrix of them (Phi-3's `qkv_proj`,
/// `gate_up_proj`, as writers name them).
pub fn is_linear_weight(cfg: &ModelConfig, name: &str) -> bool {
    microllm_core::names::parse_linear_weight(cfg.family, name).is_some()
        || parts_of(cfg, name).is_some()
}

/// The parts (names, in row order) of fused tensor `name`, if `name` is a fused tensor.
pub fn parts_of(cfg: &ModelConfig, name: &str) -> Option<Vec<String>> {
    FusedName::parse(cfg, name).map(|f| f.parts(cfg).into_iter().map(|p| p.0).collect())
}

/// A checkpoint whose fused projections appear as their parts.
pub struct SplitFused {
    inner: Box<dyn TensorSource>,
    cfg: ModelConfig,
    /// The last fused tensor loaded: q, k and v are usually asked for one after the other.
    last: Mutex<Option<(String, Tensor)>>,
}

impl SplitFused {
    /// Wraps `inner`, checking that every fused tensor has the rows its parts need.
    pub fn new(inner: Box<dyn TensorSource>, cfg: &ModelConfig) -> Result<Self> {
        for info in inner.infos() {
            if let Some(f) = FusedName::parse(cfg, &info.name) {
                let rows: usize = f.fused.parts.iter().map(|&k| part_rows(cfg, k)).sum();
                if info.shape.first() != Some(&rows) {
                    let mut expected = info.shape.clone();
                    if let Some(first) = expected.first_mut() {
                        *first = rows;
                    }
                    return Err(Error::Shape {
                        name: info.name,
                        origin: inner.origin(),
                        expected,
                        actual: info.shape,
                    });
                }
            }
        }
        Ok(Self {
            inner,
            cfg: cfg.clone(),
            last: Mutex::new(None),
        })
    }

    fn load_fused(&self, name: &str) -> Result<Tensor> {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((n, t)) = last.as_ref()
            && n == name
        {
            return Ok(t.clone());
        }
        let t = self.inner.load(name)?;
        *last = Some((name.to_string(), t.clone()));
        Ok(t)
    }
}

impl TensorSource for SplitFused {
    fn origin(&self) -> String {
        self.inner.origin()
    }

    fn infos(&self) -> Vec<TensorInfo> {
        self.inner
            .infos()
            .into_iter()
            .flat_map(|info| match FusedName::parse(&self.cfg, &info.name) {
                None => vec![info],
                Some(f) => {
                    let total = info.shape.first().copied().unwrap_or(1).max(1) as u64;
                    f.parts(&self.cfg)
                        .into_iter()
                        .map(|(name, _, rows)| {
                            let mut shape = info.shape.clone();
                            shape[0] = rows;
                            TensorInfo {
                                name,
                                dtype: info.dtype.clone(),
                                shape,
                                stored_bytes: info.stored_bytes * rows as u64 / total,
                            }
                        })
                        .collect()
                }
            })
            .collect()
    }

    fn info(&self, name: &str) -> Option<TensorInfo> {
        match fused_of(&self.cfg, name) {
            Some(_) => self.infos().into_iter().find(|i| i.name == name),
            None => self.inner.info(name),
        }
    }

    fn load(&self, name: &str) -> Result<Tensor> {
        match fused_of(&self.cfg, name) {
            Some((fused, first, rows)) if self.inner.contains(&fused) => Ok(self
                .load_fused(&fused)?
                .narrow(0, first, rows)?
                .contiguous()?),
            _ => self.inner.load(name),
        }
    }
}

/// microllm's tensors with the family's fused projections assembled from their parts, for
/// writers. A family without fused projections passes through unchanged.
pub struct JoinFused<'a> {
    inner: &'a dyn TensorSource,
    cfg: &'a ModelConfig,
}

impl<'a> JoinFused<'a> {
    pub fn new(inner: &'a dyn TensorSource, cfg: &'a ModelConfig) -> Self {
        Self { inner, cfg }
    }
}

impl TensorSource for JoinFused<'_> {
    fn origin(&self) -> String {
        self.inner.origin()
    }

    fn infos(&self) -> Vec<TensorInfo> {
        let infos = self.inner.infos();
        let mut out = Vec::with_capacity(infos.len());
        for info in &infos {
            let Some((fused, first, _)) = fused_of(self.cfg, &info.name) else {
                out.push(info.clone());
                continue;
            };
            // The fused tensor takes the place of its first part; the others fold into it.
            if first != 0 {
                continue;
            }
            let parts = parts_of(self.cfg, &fused).unwrap_or_default();
            let found: Vec<&TensorInfo> = parts
                .iter()
                .filter_map(|p| infos.iter().find(|i| &i.name == p))
                .collect();
            let mut shape = info.shape.clone();
            shape[0] = found.iter().map(|i| i.shape[0]).sum();
            out.push(TensorInfo {
                name: fused,
                dtype: info.dtype.clone(),
                shape,
                stored_bytes: found.iter().map(|i| i.stored_bytes).sum(),
            });
        }
        out
    }

    fn info(&self, name: &str) -> Option<TensorInfo> {
        match parts_of(self.cfg, name) {
            Some(_) => self.infos().into_iter().find(|i| i.name == name),
            None => self.inner.info(name),
        }
    }

    fn load(&self, name: &str) -> Result<Tensor> {
        match parts_of(self.cfg, name) {
            Some(parts) => {
                let loaded = parts
                    .iter()
                    .map(|p| self.inner.load(p))
                    .collect::<Result<Vec<_>>>()?;
                Ok(Tensor::cat(&loaded, 0)?)
            }
            None => self.inner.load(name),
        }
    }
}

/// Packed linears with the family's fused projections assembled from their parts' codes, for
/// the GPTQ and compressed-tensors writers. Parts share their input, hence (with act-order)
/// their column order; a fused tensor whose parts disagree on the scheme or the column order
/// cannot be stored as one and is an error.
pub struct JoinFusedPacked<'a> {
    inner: &'a dyn crate::write::PackedLinears,
    cfg: &'a ModelConfig,
}

impl<'a> JoinFusedPacked<'a> {
    pub fn new(inner: &'a dyn crate::write::PackedLinears, cfg: &'a ModelConfig) -> Self {
        Self { inner, cfg }
    }
}

impl crate::write::PackedLinears for JoinFusedPacked<'_> {
    fn layout(&self, weight_name: &str) -> Option<crate::write::LinearLayout> {
        let Some(parts) = parts_of(self.cfg, weight_name) else {
            return self.inner.layout(weight_name);
        };
        let layouts: Vec<_> = parts.iter().map(|p| self.inner.layout(p)).collect();
        let first = (*layouts.first()?)?;
        let same = |l: &crate::write::LinearLayout| {
            (l.shape[1], l.scheme, l.g_idx) == (first.shape[1], first.scheme, first.g_idx)
        };
        if !layouts.iter().all(|l| l.as_ref().is_some_and(same)) {
            return None;
        }
        let rows = layouts.iter().flatten().map(|l| l.shape[0]).sum();
        Some(crate::write::LinearLayout {
            shape: [rows, first.shape[1]],
            ..first
        })
    }

    fn codes(&self, weight_name: &str) -> Result<crate::quantized::QuantizedWeight> {
        let Some(parts) = parts_of(self.cfg, weight_name) else {
            return self.inner.codes(weight_name);
        };
        let mut joined: Option<crate::quantized::QuantizedWeight> = None;
        for p in &parts {
            let c = self.inner.codes(p)?;
            let Some(j) = joined.as_mut() else {
                joined = Some(c);
                continue;
            };
            if (c.shape[1], c.scheme, &c.g_idx) != (j.shape[1], j.scheme, &j.g_idx) {
                return Err(Error::Invalid(format!(
                    "`{p}` is quantized differently from the other parts of `{weight_name}`, \
                     which the checkpoint stores as one matrix"
                )));
            }
            j.shape[0] += c.shape[0];
            j.codes.extend_from_slice(&c.codes);
            j.scales.extend_from_slice(&c.scales);
            j.zeros.extend_from_slice(&c.zeros);
        }
        joined.ok_or_else(|| Error::MissingTensor {
            name: weight_name.to_string(),
            origin: "packed linears".into(),
        })
    }
}
