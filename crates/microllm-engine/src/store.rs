//! The work directory of a layerwise run: finished blocks and the hidden states between them.
//!
//! A run that is killed must resume from the last finished block and produce the same bytes
//! as an uninterrupted one. So each finished block is written (atomically) in the canonical
//! quantized form, codes + scales + zeros + `g_idx` + permutation, as
//! `block-NNNNN.safetensors`, with its records in the safetensors metadata (the norms and
//! biases that AWQ or SmoothQuant folded scales into go beside it, first, in
//! `block-NNNNN.replaced.safetensors`); and after each
//! block the calibration hidden states leaving it are written as `hidden.safetensors`, tagged
//! with the block they follow. Resuming reads the hidden states back bit for bit, so the
//! remaining blocks compute exactly what they would have. Output writers (GGUF, safetensors,
//! GPTQ and compressed-tensors) pack from the stored blocks, never from the run's memory.
//!
//! `run.json` holds a fingerprint of everything that determines the result (model, scheme,
//! method, calibration hash); resuming a different run is refused rather than mixing two.

use microllm_core::le::decode_le;
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use microllm_core::{Error, LinearKind, Result};
use microllm_io::write::write_file_atomic;
use microllm_quant::{QuantScheme, QuantizedWeight};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};

use crate::block_quant::{BlockOutput, LinearRecord};

/// A finished block, as stored.
#[derive(Debug, Clone)]
pub struct StoredBlock {
    /// Quantized linears.
    pub weights: BTreeMap<LinearKind, QuantizedWeight>,
    /// Pruned, unquantized linears (f32 `[out, in]`).
    pub dense: BTreeMap<LinearKind, Tensor>,
    pub records: Vec<LinearRecord>,
    /// Wall time the block took.
    pub seconds: f64,
}

/// The work directory of a run writing `out`: `OUT.microllm-work` beside it. The plan looks
/// for it (may a run resume?) and the run keeps its [`BlockStore`] there.
pub fn work_dir(out: &Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".microllm-work");
    out.with_file_name(name)
}

/// A run's work directory.
#[derive(Debug)]
pub struct BlockStore {
    dir: PathBuf,
}

/// Name, dtype, shape and bytes of one tensor of a block file.
type StoredTensor<'a> = (String, Dtype, Vec<usize>, Cow<'a, [u8]>);

const RUN_FILE: &str = "run.json";
const HIDDEN_FILE: &str = "hidden.safetensors";

impl BlockStore {
    /// Opens `dir` for a run identified by `fingerprint`. With `resume`, an existing directory
    /// must belong to the same run (its finished blocks are kept); without, it is cleared.
    pub fn open(dir: &Path, fingerprint: &serde_json::Value, resume: bool) -> Result<Self> {
        let run_file = dir.join(RUN_FILE);
        if dir.exists() {
            if resume && run_file.exists() {
                let text =
                    std::fs::read_to_string(&run_file).map_err(|e| Error::io(&run_file, e))?;
                let stored: serde_json::Value =
                    serde_json::from_str(&text).map_err(|e| Error::Format {
                        path: run_file.clone(),
                        msg: e.to_string(),
                    })?;
                if &stored != fingerprint {
                    return Err(Error::Invalid(format!(
                        "cannot resume: the work directory {} belongs to a different run \
                         (model, settings or calibration data changed); rerun without --resume",
                        dir.display()
                    )));
                }
                check_stored_files(dir)?;
                return Ok(Self { dir: dir.into() });
            }
            std::fs::remove_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let text = serde_json::to_string_pretty(fingerprint).expect("JSON values serialize");
        write_file_atomic(&run_file, |tmp| {
            std::fs::write(tmp, text).map_err(|e| Error::io(tmp, e))
        })?;
        Ok(Self { dir: dir.into() })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn block_path(&self, layer: usize) -> PathBuf {
        self.dir.join(format!("block-{layer:05}.safetensors"))
    }

    /// Tensors besides the linears that block `layer`'s pass changed (AWQ's and SmoothQuant's
    /// folded norms and biases), under their checkpoint names: a small file of its own, so a
    /// writer reading a norm does not read the block's codes.
    fn replaced_path(&self, layer: usize) -> PathBuf {
        self.dir
            .join(format!("block-{layer:05}.replaced.safetensors"))
    }

    /// Whether block `layer` is finished.
    pub fn has_block(&self, layer: usize) -> bool {
        self.block_path(layer).exists()
    }

    /// Writes a finished block.
    pub fn save_block(&self, layer: usize, block: &BlockOutput, seconds: f64) -> Result<()> {
        let (weights, records) = (&block.quantized, &block.records);
        // Codes and zeros are bytes already and are borrowed; only the wider values are encoded.
        let u32_bytes =
            |v: &[u32]| Cow::Owned(v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>());
        let f32_bytes =
            |v: &[f32]| Cow::Owned(v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>());
        let mut data: Vec<StoredTensor<'_>> = Vec::new();
        let mut schemes = serde_json::Map::new();
        for (kind, q) in weights {
            let k = kind_name(*kind);
            let [out, inp] = q.shape;
            let ng = q.n_groups();
            data.push((
                format!("{k}.codes"),
                Dtype::U8,
                vec![out, inp],
                Cow::Borrowed(&q.codes[..]),
            ));
            data.push((
                format!("{k}.scales"),
                Dtype::F32,
                vec![out, ng],
                f32_bytes(&q.scales),
            ));
            data.push((
                format!("{k}.zeros"),
                Dtype::U8,
                vec![out, ng],
                Cow::Borrowed(&q.zeros[..]),
            ));
            if let Some(g) = &q.g_idx {
                data.push((format!("{k}.g_idx"), Dtype::U32, vec![inp], u32_bytes(g)));
            }
            if let Some(p) = &q.perm {
                data.push((format!("{k}.perm"), Dtype::U32, vec![inp], u32_bytes(p)));
            }
            schemes.insert(k, scheme_json(&q.scheme));
        }
        for (kind, w) in &block.dense {
            let values = w.flatten_all()?.to_vec1::<f32>()?;
            data.push((
                format!("{}.dense", kind_name(*kind)),
                Dtype::F32,
                w.dims().to_vec(),
                f32_bytes(&values),
            ));
        }
        // Written before the block file, whose presence marks the block finished.
        self.save_replaced(layer, &block.replaced)?;
        let views = data
            .iter()
            .map(|(name, dtype, shape, bytes)| {
                TensorView::new(*dtype, shape.clone(), bytes)
                    .map(|v| (name.clone(), v))
                    .map_err(|e| Error::Invalid(format!("block {layer}: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        let metadata = HashMap::from([
            (
                "schemes".to_string(),
                serde_json::Value::Object(schemes).to_string(),
            ),
            (
                "records".to_string(),
                serde_json::to_string(records).expect("records serialize"),
            ),
            ("seconds".to_string(), seconds.to_string()),
        ]);
        let dest = self.block_path(layer);
        write_file_atomic(&dest, |tmp| {
            microllm_io::write::serialize_safetensors_file(views, Some(metadata), tmp)
        })
    }

    /// Reads a finished block back.
    pub fn load_block(&self, layer: usize) -> Result<StoredBlock> {
        let path = self.block_path(layer);
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let bad = |msg: String| Error::Format {
            path: path.clone(),
            msg,
        };
        let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
        let meta = meta.metadata().clone().unwrap_or_default();
        let field = |key: &str| {
            meta.get(key)
                .ok_or_else(|| bad(format!("no `{key}` metadata")))
        };
        let schemes: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(field("schemes")?).map_err(|e| bad(e.to_string()))?;
        let records: Vec<LinearRecord> =
            serde_json::from_str(field("records")?).map_err(|e| bad(e.to_string()))?;
        let seconds = field("seconds")?
            .parse()
            .map_err(|_| bad("bad `seconds`".into()))?;
        let st = SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
        let raw = |name: &str| -> Result<Option<(Vec<usize>, &[u8])>> {
            match st.tensor(name) {
                Ok(t) => Ok(Some((t.shape().to_vec(), t.data()))),
                Err(safetensors::SafeTensorError::TensorNotFound(_)) => Ok(None),
                Err(e) => Err(bad(e.to_string())),
            }
        };
        let need = |name: &str| raw(name)?.ok_or_else(|| bad(format!("no tensor `{name}`")));
        let u32s = decode_le::<u32>;
        let mut weights = BTreeMap::new();
        for kind in LinearKind::ALL {
            let k = kind_name(kind);
            let Some(scheme) = schemes.get(&k) else {
                continue;
            };
            let scheme =
                scheme_from_json(scheme).ok_or_else(|| bad(format!("bad scheme of {k}")))?;
            let (shape, codes) = need(&format!("{k}.codes"))?;
            let (_, scales) = need(&format!("{k}.scales"))?;
            let (_, zeros) = need(&format!("{k}.zeros"))?;
            let q = QuantizedWeight {
                shape: [shape[0], shape[1]],
                scheme,
                codes: codes.to_vec(),
                scales: u32s(scales).into_iter().map(f32::from_bits).collect(),
                zeros: zeros.to_vec(),
                g_idx: raw(&format!("{k}.g_idx"))?.map(|(_, b)| u32s(b)),
                perm: raw(&format!("{k}.perm"))?.map(|(_, b)| u32s(b)),
            };
            q.validate(&k).map_err(|e| bad(e.to_string()))?;
            weights.insert(kind, q);
        }
        let mut dense = BTreeMap::new();
        for kind in LinearKind::ALL {
            if let Some((shape, b)) = raw(&format!("{}.dense", kind_name(kind)))? {
                let values: Vec<f32> = u32s(b).into_iter().map(f32::from_bits).collect();
                dense.insert(kind, Tensor::from_vec(values, shape, &Device::Cpu)?);
            }
        }
        Ok(StoredBlock {
            weights,
            dense,
            records,
            seconds,
        })
    }

    fn save_replaced(&self, layer: usize, replaced: &BTreeMap<String, Tensor>) -> Result<()> {
        let path = self.replaced_path(layer);
        if replaced.is_empty() {
            return match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(&path, e)),
                _ => Ok(()),
            };
        }
        let data = replaced
            .iter()
            .map(|(name, t)| {
                let values = t
                    .to_dtype(candle_core::DType::F32)?
                    .flatten_all()?
                    .to_vec1::<f32>()?;
                let bytes: Vec<u8> = values.iter().flat_map(|x| x.to_le_bytes()).collect();
                Ok((name.clone(), t.dims().to_vec(), bytes))
            })
            .collect::<Result<Vec<_>>>()?;
        let views = data
            .iter()
            .map(|(name, shape, bytes)| {
                TensorView::new(Dtype::F32, shape.clone(), bytes)
                    .map(|v| (name.clone(), v))
                    .map_err(|e| Error::Invalid(format!("block {layer}: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        write_file_atomic(&path, |tmp| {
            microllm_io::write::serialize_safetensors_file(views, None, tmp)
        })
    }

    /// The tensors besides the linears that block `layer`'s pass changed, by checkpoint name
    /// (empty when it changed none).
    pub fn load_replaced(&self, layer: usize) -> Result<BTreeMap<String, Tensor>> {
        let path = self.replaced_path(layer);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
            Err(e) => return Err(Error::io(&path, e)),
        };
        let st = SafeTensors::deserialize(&bytes).map_err(|e| Error::Format {
            path: path.clone(),
            msg: e.to_string(),
        })?;
        st.tensors()
            .into_iter()
            .map(|(name, view)| {
                let values: Vec<f32> = decode_le::<u32>(view.data())
                    .into_iter()
                    .map(f32::from_bits)
                    .collect();
                Ok((name, Tensor::from_vec(values, view.shape(), &Device::Cpu)?))
            })
            .collect()
    }

    /// Writes the hidden states leaving block `after_block`.
    pub fn save_hidden(&self, after_block: usize, hidden: &[Tensor]) -> Result<()> {
        let data = hidden
            .iter()
            .map(|t| {
                let bytes: Vec<u8> = t
                    .flatten_all()?
                    .to_vec1::<f32>()?
                    .iter()
                    .flat_map(|x| x.to_le_bytes())
                    .collect();
                Ok((t.dims().to_vec(), bytes))
            })
            .collect::<Result<Vec<_>>>()?;
        let views = data
            .iter()
            .enumerate()
            .map(|(i, (shape, bytes))| {
                TensorView::new(Dtype::F32, shape.clone(), bytes)
                    .map(|v| (format!("h{i:06}"), v))
                    .map_err(|e| Error::Invalid(format!("hidden state {i}: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        let metadata = HashMap::from([("after_block".to_string(), after_block.to_string())]);
        let dest = self.dir.join(HIDDEN_FILE);
        write_file_atomic(&dest, |tmp| {
            microllm_io::write::serialize_safetensors_file(views, Some(metadata), tmp)
        })
    }

    /// The last saved hidden states and the block they follow, if any.
    pub fn load_hidden(&self) -> Result<Option<(usize, Vec<Tensor>)>> {
        let path = self.dir.join(HIDDEN_FILE);
        if !path.exists() {
            return Ok(None);
        }
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let bad = |msg: String| Error::Format {
            path: path.clone(),
            msg,
        };
        let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
        let after: usize = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get("after_block"))
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| bad("no `after_block` metadata".into()))?;
        let st = SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
        let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
        names.sort();
        let tensors = names
            .iter()
            .map(|name| {
                let t = st.tensor(name).map_err(|e| bad(e.to_string()))?;
                let values: Vec<f32> = decode_le(t.data());
                Ok(Tensor::from_vec(values, t.shape(), &Device::Cpu)?)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Some((after, tensors)))
    }

    /// Stores a record of a finished step other than a block (a pass's result), atomically.
    pub fn save_json(&self, name: &str, value: &serde_json::Value) -> Result<()> {
        let text = serde_json::to_string_pretty(value).expect("JSON values serialize");
        write_file_atomic(&self.dir.join(name), |tmp| {
            std::fs::write(tmp, &text).map_err(|e| Error::io(tmp, e))
        })
    }

    /// A record stored by [`save_json`](Self::save_json), if there is one.
    pub fn load_json(&self, name: &str) -> Result<Option<serde_json::Value>> {
        let path = self.dir.join(name);
        if !path.exists() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| Error::format(&path, e.to_string()))
    }

    /// Deletes the work directory (after the output is written).
    pub fn remove(self) -> Result<()> {
        std::fs::remove_dir_all(&self.dir).map_err(|e| Error::io(&self.dir, e))
    }
}

/// Checks, before a resumed run relies on them, that the work directory's safetensors files
/// are whole: each header parses and the file is as long as the header says. A file cut short
/// (a full disk, a copy interrupted) is reported at once, not when the run reaches it.
fn check_stored_files(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        if path.extension().is_none_or(|x| x != "safetensors") {
            continue;
        }
        if let Err(why) = whole_safetensors(&path) {
            return Err(Error::Invalid(format!(
                "cannot resume: {} in the work directory is damaged ({why}); rerun without \
                 --resume to start over",
                path.display()
            )));
        }
    }
    Ok(())
}

/// Whether a safetensors file's header parses and its length is the one the header implies.
fn whole_safetensors(path: &Path) -> std::result::Result<(), String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let len = f.metadata().map_err(|e| e.to_string())?.len();
    let mut n = [0u8; 8];
    f.read_exact(&mut n)
        .map_err(|_| "shorter than a header".to_string())?;
    let n = u64::from_le_bytes(n);
    if n > len.saturating_sub(8) {
        return Err(format!("a header of {n} bytes in a file of {len}"));
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header).map_err(|e| e.to_string())?;
    let header: serde_json::Value =
        serde_json::from_slice(&header).map_err(|e| format!("unreadable header: {e}"))?;
    let end = header
        .as_object()
        .ok_or("the header is not a JSON object")?
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .filter_map(|(_, t)| t["data_offsets"][1].as_u64())
        .max()
        .unwrap_or(0);
    let want = 8 + n + end;
    if len != want {
        return Err(format!("{len} bytes where its header needs {want}"));
    }
    Ok(())
}

fn kind_name(kind: LinearKind) -> String {
    serde_json::to_value(kind)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .expect("kinds serialize to strings")
}

fn scheme_json(s: &QuantScheme) -> serde_json::Value {
    serde_json::to_value(s).expect("a scheme serializes")
}

/// The scheme stored beside a block, checked as it is read back.
fn scheme_from_json(v: &serde_json::Value) -> Option<QuantScheme> {
    let s: QuantScheme = serde_json::from_value(v.clone()).ok()?;
    s.validate().ok().map(|_| s)
}
