//! The pruned model as a lazy tensor source.
//!
//! Writers (Hugging Face directories, GGUF) take any [`TensorSource`] and stream it one tensor
//! at a time; [`PrunedSource`] sits between them and the original checkpoint, renaming the
//! remaining blocks to their new indices and cutting rows or columns out of each tensor as it
//! is loaded. The pruned model is therefore never held whole, and the writers' atomicity and
//! formats apply unchanged.

use std::sync::Arc;

use candle_core::{Device, Tensor};
use microllm_core::{Error, Family, LinearKind, Result, TensorInfo, TensorSource, names};

use super::StructuredPlan;

/// Which indices of which axis a tensor keeps.
#[derive(Debug, Clone)]
struct Cut {
    axis: usize,
    keep: Arc<Vec<u32>>,
}

#[derive(Debug, Clone)]
struct Entry {
    original: String,
    info: TensorInfo,
    cut: Option<Cut>,
}

/// The pruned model, served lazily from the original.
pub struct PrunedSource<'a> {
    inner: &'a dyn TensorSource,
    entries: Vec<Entry>,
}

impl<'a> PrunedSource<'a> {
    /// The tensors of `plan` applied to `inner` (the original model's tensors).
    pub fn new(inner: &'a dyn TensorSource, plan: &StructuredPlan) -> Result<Self> {
        let cfg = &plan.original;
        let hd = cfg.head_dim;
        let rows_of = |heads: &[usize]| -> Arc<Vec<u32>> {
            Arc::new(
                heads
                    .iter()
                    .flat_map(|&h| (h * hd..(h + 1) * hd).map(|r| r as u32))
                    .collect(),
            )
        };
        let mut entries = Vec::new();
        for info in inner.infos() {
            if !info.name.starts_with("model.layers.") {
                entries.push(Entry {
                    original: info.name.clone(),
                    info,
                    cut: None,
                });
            }
        }
        for (new, layer) in plan.layers.iter().enumerate() {
            let old_prefix = format!("{}.", names::block_prefix(layer.source));
            let new_prefix = format!("{}.", names::block_prefix(new));
            let q_rows = rows_of(&layer.heads);
            let kv_rows = rows_of(&layer.kv_heads);
            let channels = Arc::new(layer.channels.iter().map(|&c| c as u32).collect::<Vec<_>>());
            for info in inner.infos() {
                let Some(rest) = info.name.strip_prefix(&old_prefix) else {
                    continue;
                };
                let cut = cut_for(cfg.family, rest, &q_rows, &kv_rows, &channels);
                let mut new_info = info.clone();
                new_info.name = format!("{new_prefix}{rest}");
                if let Some(c) = &cut {
                    if c.axis >= info.shape.len() {
                        return Err(Error::Invalid(format!(
                            "{}: cannot cut axis {} of a tensor of shape {:?}",
                            info.name, c.axis, info.shape
                        )));
                    }
                    new_info.shape[c.axis] = c.keep.len();
                    let before = info.numel().max(1) as u64;
                    new_info.stored_bytes = info.stored_bytes * new_info.numel() as u64 / before;
                }
                entries.push(Entry {
                    original: info.name.clone(),
                    info: new_info,
                    cut,
                });
            }
        }
        Ok(Self { inner, entries })
    }

    fn entry(&self, name: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.info.name == name)
    }
}

/// The cut of a block tensor named `rest` (the part after `model.layers.N.`), if any.
fn cut_for(
    family: Family,
    rest: &str,
    q_rows: &Arc<Vec<u32>>,
    kv_rows: &Arc<Vec<u32>>,
    channels: &Arc<Vec<u32>>,
) -> Option<Cut> {
    let (module, _param) = rest.rsplit_once('.')?;
    let kind = LinearKind::ALL
        .into_iter()
        .find(|k| k.module(family) == module)?;
    let is_weight = rest.ends_with(".weight");
    let (axis, keep) = match kind {
        // Output rows (and the bias of those rows).
        LinearKind::Q => (0, q_rows),
        LinearKind::K | LinearKind::V => (0, kv_rows),
        LinearKind::Gate | LinearKind::Up => (0, channels),
        // Input columns; the bias (one per output row) is untouched.
        LinearKind::O if is_weight => (1, q_rows),
        LinearKind::Down if is_weight => (1, channels),
        LinearKind::O | LinearKind::Down => return None,
    };
    Some(Cut {
        axis,
        keep: Arc::clone(keep),
    })
}

impl TensorSource for PrunedSource<'_> {
    fn origin(&self) -> String {
        format!("{} (structurally pruned)", self.inner.origin())
    }

    fn infos(&self) -> Vec<TensorInfo> {
        self.entries.iter().map(|e| e.info.clone()).collect()
    }

    fn info(&self, name: &str) -> Option<TensorInfo> {
        self.entry(name).map(|e| e.info.clone())
    }

    fn load(&self, name: &str) -> Result<Tensor> {
        let entry = self.entry(name).ok_or_else(|| Error::MissingTensor {
            name: name.to_string(),
            origin: self.origin(),
        })?;
        let t = self.inner.load(&entry.original)?;
        let Some(cut) = &entry.cut else {
            return Ok(t);
        };
        if cut.keep.len() == t.dim(cut.axis)? {
            // Everything kept: the tensor as it is (no copy, bit-exact by construction).
            return Ok(t);
        }
        let ids = Tensor::from_slice(cut.keep.as_slice(), cut.keep.len(), &Device::Cpu)?;
        Ok(t.index_select(&ids, cut.axis)?.contiguous()?)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};
    use microllm_core::{MemorySource, TensorSource};

    use super::*;
    use crate::structured::plan::tests::tiny_config;
    use crate::structured::{HeadMode, Scores, StructuredPlan, StructuredSpec, targets};

    fn numbered(shape: &[usize]) -> Tensor {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|i| i as f32).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn slices_rows_columns_and_renames_blocks() {
        let cfg = tiny_config(); // 2 layers, hidden 4, 4 heads of 2 over 2 kv, mlp 6, qkv bias
        let mut src = MemorySource::new("mem");
        src.insert(names::EMBED_TOKENS, numbered(&[10, 4]));
        for l in 0..2 {
            let p = |m: &str| format!("model.layers.{l}.{m}");
            src.insert(p("self_attn.q_proj.weight"), numbered(&[8, 4]));
            src.insert(p("self_attn.q_proj.bias"), numbered(&[8]));
            src.insert(p("self_attn.k_proj.weight"), numbered(&[4, 4]));
            src.insert(p("self_attn.o_proj.weight"), numbered(&[4, 8]));
            src.insert(p("mlp.up_proj.weight"), numbered(&[6, 4]));
            src.insert(p("mlp.down_proj.weight"), numbered(&[4, 6]));
            src.insert(p("input_layernorm.weight"), numbered(&[4]));
        }
        let spec = StructuredSpec {
            mlp_keep: 0.5,
            mlp_multiple: 1,
            heads_keep: 0.5,
            head_mode: HeadMode::KvGroups,
            drop_layers: 1,
        };
        let t = targets(&spec, &cfg).unwrap();
        let scores = Scores {
            channels: vec![vec![0., 9., 0., 8., 7., 0.]; 2],
            heads: vec![vec![0., 0., 1., 1.]; 2],
            block_influence: Some(vec![0.9, 0.1]),
        };
        let plan = StructuredPlan::from_scores(&cfg, &t, HeadMode::KvGroups, &scores).unwrap();
        assert_eq!(plan.dropped, vec![1]);
        let pruned = PrunedSource::new(&src, &plan).unwrap();
        assert!(pruned.info("model.layers.1.mlp.up_proj.weight").is_none());
        let up = pruned.load("model.layers.0.mlp.up_proj.weight").unwrap();
        assert_eq!(up.dims(), &[3, 4]);
        assert_eq!(
            up.get(0).unwrap().to_vec1::<f32>().unwrap(),
            vec![4., 5., 6., 7.]
        );
        let down = pruned.load("model.layers.0.mlp.down_proj.weight").unwrap();
        assert_eq!(
            down.get(0).unwrap().to_vec1::<f32>().unwrap(),
            vec![1., 3., 4.]
        );
        // kv group 1 = query heads 2 and 3 = q rows 4..8, k rows 2..4, o columns 4..8.
        let qb = pruned.load("model.layers.0.self_attn.q_proj.bias").unwrap();
        assert_eq!(qb.to_vec1::<f32>().unwrap(), vec![4., 5., 6., 7.]);
        let k = pruned
            .load("model.layers.0.self_attn.k_proj.weight")
            .unwrap();
        assert_eq!(k.dims(), &[2, 4]);
        assert_eq!(
            k.get(0).unwrap().to_vec1::<f32>().unwrap(),
            vec![8., 9., 10., 11.]
        );
        let o = pruned
            .info("model.layers.0.self_attn.o_proj.weight")
            .unwrap();
        assert_eq!(o.shape, vec![4, 4]);
        assert_eq!(pruned.infos().len(), 1 + 7);
    }
}
