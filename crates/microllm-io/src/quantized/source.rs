//! A quantized Hugging Face directory as an ordinary [`TensorSource`]: every packed linear
//! `P.qweight/...` (GPTQ, AWQ), `P.weight_packed/...` (compressed-tensors' pack-quantized) or int8
//! `P.weight` + `P.weight_scale` (its int-quantized, float-quantized and naive-quantized, int8
//! or FP8) appears as `P.weight`,
//! f32 `[out, in]`, dequantized on load; every other tensor passes through. So `eval`,
//! `inspect`, `logits`, `convert` and `quantize` take such a checkpoint like any other.
//!
//! A compressed-tensors checkpoint may quantize different linears differently (several config
//! groups, `mixed-precision`): each linear is read with the scheme of the group whose targets
//! match its module name.
//!
//! Shapes are checked at open from the headers (and the tiny `weight_shape` tensors), so an
//! inconsistent checkpoint fails at once with the tensor named, before any long work.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use microllm_core::{Error, Result, TensorInfo, TensorSource};
use serde_json::Value;

use super::awq::{self, AwqConfig};
use super::compressed::{self, CtConfig, CtGroup, CtTensors};
use super::gptq::{self, GptqConfig};
use super::{QuantMethod, QuantizedWeight};
use crate::hf::SafetensorsSource;

/// The scheme of the checkpoint, as its config declares it.
#[derive(Debug, Clone)]
enum Scheme {
    Gptq(GptqConfig),
    Ct(Vec<CtGroup>),
    Awq(AwqConfig),
}

/// One packed linear.
struct Linear {
    prefix: String,
    shape: [usize; 2],
    stored_bytes: u64,
    /// Its config group (compressed-tensors; 0 for GPTQ).
    group: usize,
}

/// See the module docs.
pub struct QuantizedDirSource {
    origin: String,
    inner: SafetensorsSource,
    scheme: Scheme,
    /// By weight name (`P.weight`).
    linears: HashMap<String, Linear>,
    /// Names as presented, in file order.
    order: Vec<String>,
}

impl QuantizedDirSource {
    /// Opens the safetensors `files` of `dir`, whose `config.json` (parsed: `config`, at
    /// `config_path`) declares `method`.
    pub fn open(
        dir: &Path,
        files: &[PathBuf],
        method: QuantMethod,
        config: &Value,
        config_path: &Path,
    ) -> Result<Self> {
        let qc = &config["quantization_config"];
        let scheme = match method {
            QuantMethod::Gptq => Scheme::Gptq(GptqConfig::parse(qc, config_path)?),
            QuantMethod::CompressedTensors => Scheme::Ct(CtConfig::parse_groups(qc, config_path)?),
            QuantMethod::Awq => Scheme::Awq(AwqConfig::parse(qc, config_path)?),
        };
        let inner = SafetensorsSource::open(dir, files)?;
        // Every quantized linear has a scale (compressed-tensors) or a qweight (GPTQ).
        let marker = match scheme {
            Scheme::Gptq(_) | Scheme::Awq(_) => "qweight",
            Scheme::Ct(_) => "weight_scale",
        };
        let infos = inner.infos();
        let prefixes: HashSet<String> = infos
            .iter()
            .filter_map(|i| i.name.strip_suffix(&format!(".{marker}")))
            .map(str::to_string)
            .collect();
        // Each prefix's group, and with it which tensors belong to it.
        let mut groups: HashMap<String, usize> = HashMap::new();
        for prefix in &prefixes {
            let group = match &scheme {
                Scheme::Gptq(_) | Scheme::Awq(_) => 0,
                Scheme::Ct(g) => g
                    .iter()
                    .position(|g| g.targets.matches(prefix))
                    .ok_or_else(|| {
                        Error::format(
                            dir,
                            format!(
                                "`{prefix}` is quantized but no config group of config.json \
                                 targets it"
                            ),
                        )
                    })?,
            };
            groups.insert(prefix.clone(), group);
        }
        let suffixes: Vec<&'static [&'static str]> = match &scheme {
            Scheme::Gptq(_) => vec![&gptq::SUFFIXES],
            Scheme::Awq(_) => vec![&awq::SUFFIXES],
            Scheme::Ct(g) => g
                .iter()
                .map(|g| -> &'static [&'static str] {
                    if g.config.format.one_byte_per_weight() {
                        &compressed::INT_SUFFIXES
                    } else {
                        &compressed::SUFFIXES
                    }
                })
                .collect(),
        };
        let suffixes_of = |group: usize| suffixes[group];
        if prefixes.is_empty() {
            return Err(Error::format(
                dir,
                format!(
                    "config.json declares quant_method `{method}` but no tensor is named \
                     `*.{marker}`"
                ),
            ));
        }
        let mut source = Self {
            origin: dir.display().to_string(),
            inner,
            scheme,
            linears: HashMap::new(),
            order: Vec::new(),
        };
        let component_of = |name: &str| -> Option<(String, usize)> {
            let (prefix, suffix) = name.rsplit_once('.')?;
            let group = *groups.get(prefix)?;
            suffixes_of(group)
                .contains(&suffix)
                .then(|| (prefix.to_string(), group))
        };
        let one_byte = |group: usize| suffixes_of(group) == compressed::INT_SUFFIXES;
        for info in &infos {
            let Some((prefix, group)) = component_of(&info.name) else {
                source.order.push(info.name.clone());
                continue;
            };
            let weight = format!("{prefix}.weight");
            if source.linears.contains_key(&weight) {
                continue;
            }
            if !one_byte(group) && source.inner.info(&weight).is_some() {
                return Err(Error::format(
                    dir,
                    format!("tensor `{weight}` is stored both dense and packed"),
                ));
            }
            let shape = source.shape_of(&prefix, group)?;
            let stored_bytes = suffixes_of(group)
                .iter()
                .filter_map(|s| source.inner.info(&format!("{prefix}.{s}")))
                .map(|i| i.stored_bytes)
                .sum();
            source.order.push(weight.clone());
            source.linears.insert(
                weight,
                Linear {
                    prefix,
                    shape,
                    stored_bytes,
                    group,
                },
            );
        }
        Ok(source)
    }

    fn need(&self, prefix: &str, suffix: &str) -> Result<super::RawTensor<'_>> {
        let name = format!("{prefix}.{suffix}");
        self.inner.raw(&name).ok_or_else(|| Error::MissingTensor {
            name,
            origin: self.origin.clone(),
        })
    }

    fn with_tensors<T>(
        &self,
        prefix: &str,
        group: usize,
        gptq_f: impl FnOnce(
            &GptqConfig,
            [&super::RawTensor<'_>; 3],
            Option<&super::RawTensor<'_>>,
        ) -> Result<T>,
        ct_f: impl FnOnce(&CtConfig, &CtTensors<'_, '_>) -> Result<T>,
        awq_f: impl FnOnce(&AwqConfig, [&super::RawTensor<'_>; 3]) -> Result<T>,
    ) -> Result<T> {
        match &self.scheme {
            Scheme::Awq(cfg) => {
                let qweight = self.need(prefix, "qweight")?;
                let qzeros = self.need(prefix, "qzeros")?;
                let scales = self.need(prefix, "scales")?;
                awq_f(cfg, [&qweight, &qzeros, &scales])
            }
            Scheme::Gptq(cfg) => {
                let qweight = self.need(prefix, "qweight")?;
                let qzeros = self.need(prefix, "qzeros")?;
                let scales = self.need(prefix, "scales")?;
                let g_idx = self.inner.raw(&format!("{prefix}.g_idx"));
                gptq_f(cfg, [&qweight, &qzeros, &scales], g_idx.as_ref())
            }
            Scheme::Ct(groups) => {
                let cfg = &groups[group].config;
                let one_byte = cfg.format.one_byte_per_weight();
                let packed =
                    self.need(prefix, if one_byte { "weight" } else { "weight_packed" })?;
                let scale = self.need(prefix, "weight_scale")?;
                let shape = match one_byte {
                    true => None,
                    false => Some(self.need(prefix, "weight_shape")?),
                };
                let zero_point = self.inner.raw(&format!("{prefix}.weight_zero_point"));
                let g_idx = self.inner.raw(&format!("{prefix}.weight_g_idx"));
                let t = CtTensors {
                    packed: &packed,
                    scale: &scale,
                    shape: shape.as_ref(),
                    zero_point: zero_point.as_ref(),
                    g_idx: g_idx.as_ref(),
                };
                ct_f(cfg, &t)
            }
        }
    }

    fn shape_of(&self, prefix: &str, group: usize) -> Result<[usize; 2]> {
        self.with_tensors(
            prefix,
            group,
            |cfg, [w, z, s], g| gptq::shape_of(cfg, w, z, s, g),
            compressed::shape_of,
            |cfg, [w, z, s]| awq::shape_of(cfg, w, z, s),
        )
    }

    /// The codes of the linear whose weight is `weight_name` (`P.weight`), or `None` if that
    /// tensor is not packed.
    pub fn codes(&self, weight_name: &str) -> Option<Result<QuantizedWeight>> {
        let linear = self.linears.get(weight_name)?;
        Some(self.with_tensors(
            &linear.prefix,
            linear.group,
            |cfg, [w, z, s], g| gptq::decode(cfg, w, z, s, g),
            compressed::decode,
            |cfg, [w, z, s]| awq::decode(cfg, w, z, s),
        ))
    }

    /// How the checkpoint's linears quantize their inputs when it runs (W8A8), if they do.
    pub fn activation_quant(&self) -> Option<microllm_core::ActivationQuant> {
        match &self.scheme {
            // The groups agree (`CtConfig::parse_groups` checks it).
            Scheme::Ct(groups) => groups[0].config.activations,
            Scheme::Gptq(_) | Scheme::Awq(_) => None,
        }
    }

    /// The format and bits of a packed linear, e.g. `Q4-gptq`.
    fn label(&self, linear: &Linear) -> String {
        match &self.scheme {
            Scheme::Gptq(c) => format!("Q{}-gptq", c.bits),
            Scheme::Awq(_) => "Q4-awq".into(),
            Scheme::Ct(groups) => {
                let c = &groups[linear.group].config;
                match c.code_type {
                    microllm_core::CodeType::Fp8E4M3 => "FP8-ct".into(),
                    microllm_core::CodeType::Int => format!("Q{}-ct", c.bits),
                }
            }
        }
    }
}

impl TensorSource for QuantizedDirSource {
    fn origin(&self) -> String {
        self.origin.clone()
    }

    fn infos(&self) -> Vec<TensorInfo> {
        self.order.iter().filter_map(|n| self.info(n)).collect()
    }

    fn info(&self, name: &str) -> Option<TensorInfo> {
        match self.linears.get(name) {
            Some(l) => Some(TensorInfo {
                name: name.to_string(),
                dtype: self.label(l),
                shape: l.shape.to_vec(),
                stored_bytes: l.stored_bytes,
            }),
            None => self.inner.info(name),
        }
    }

    fn load(&self, name: &str) -> Result<Tensor> {
        match self.codes(name) {
            Some(codes) => {
                let q = codes?;
                Ok(Tensor::from_vec(
                    q.dequantize_vec(),
                    (q.shape[0], q.shape[1]),
                    &Device::Cpu,
                )?)
            }
            None => self.inner.load(name),
        }
    }
}
