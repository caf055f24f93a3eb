//! A base model's next-token distributions stored once, and another model measured against
//! them later: llama-perplexity's `--kl-divergence-base` / `--kl-divergence`, so the base
//! (an f32 model of several GB, say) need not be loaded beside the model under test.
//!
//! The file holds, for every scored position of every window, the base model's log-softmax
//! over the whole vocabulary, quantized to 16 bits per value over the row's own range (as
//! llama.cpp stores it): `log p ~ min + code * scale`, an absolute error below
//! `range / 131070` (3e-4 nats for a 40-nat range); SmolLM2 measured against its own stored
//! base shows a mean divergence below 1e-5 (`tests/smollm2.rs`). With it
//! the window's tokens as the base model saw them, so a comparison on other tokens (another
//! text, context, protocol or tokenizer) is refused instead of measured.
//!
//! Layout, little-endian: the magic `MLKLBASE`, then u32 version (1), vocab, ctx, first
//! scored row, windows; then per window its `ctx` token ids (u32) followed by
//! `ctx - 1 - first` rows of f32 min, f32 scale and `vocab` u16 codes.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use microllm_core::{Error, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::perplexity::ScoredRows;

const MAGIC: &[u8; 8] = b"MLKLBASE";
const VERSION: u32 = 1;

/// What a stored base describes: the run's shape, checked when the base is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KlBaseShape {
    pub vocab: usize,
    pub ctx: usize,
    /// First scored row of each window.
    pub first: usize,
    pub windows: usize,
}

impl KlBaseShape {
    fn rows(&self) -> usize {
        self.ctx - 1 - self.first
    }

    fn fields(&self) -> [usize; 4] {
        [self.vocab, self.ctx, self.first, self.windows]
    }
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::io(path, e)
}

fn to_u32(path: &Path, what: &str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::format(path, format!("{what} {v} does not fit 32 bits")))
}

/// Log-softmax of `row` in f64 (subtracting the maximum first).
fn log_softmax(row: &[f32]) -> Vec<f64> {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
    let lse = max + sum.ln();
    row.iter().map(|&x| x as f64 - lse).collect()
}

/// One quantized row: its range and codes.
fn quantize_row(logp: &[f64], codes: &mut [u16]) -> (f32, f32) {
    let lo = logp.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = logp.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let scale = ((hi - lo) / 65535.0) as f32;
    let inv = if scale > 0.0 { 1.0 / scale as f64 } else { 0.0 };
    for (c, &l) in codes.iter_mut().zip(logp) {
        *c = ((l - lo) * inv).round().clamp(0.0, 65535.0) as u16;
    }
    (lo as f32, scale)
}

/// Writes a base, window by window, to a temporary file renamed into place by
/// [`finish`](Self::finish); dropped unfinished, the temporary is removed.
pub struct KlBaseWriter {
    path: PathBuf,
    tmp: PathBuf,
    out: Option<BufWriter<File>>,
    shape: KlBaseShape,
    written: usize,
}

impl KlBaseWriter {
    pub fn create(path: &Path, shape: KlBaseShape) -> Result<Self> {
        let name = path
            .file_name()
            .ok_or_else(|| Error::Invalid(format!("{}: not a file path", path.display())))?;
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".partial-{}", std::process::id()));
        let tmp = path.with_file_name(tmp_name);
        let mut out = BufWriter::new(File::create(&tmp).map_err(io_err(&tmp))?);
        let mut header = MAGIC.to_vec();
        header.extend_from_slice(&VERSION.to_le_bytes());
        for (what, v) in ["vocab", "ctx", "first row", "windows"]
            .iter()
            .zip(shape.fields())
        {
            header.extend_from_slice(&to_u32(path, what, v)?.to_le_bytes());
        }
        out.write_all(&header).map_err(io_err(&tmp))?;
        Ok(Self {
            path: path.to_path_buf(),
            tmp,
            out: Some(out),
            shape,
            written: 0,
        })
    }

    /// Appends rows of a window's distributions (the window's tokens before its first rows).
    pub fn write(&mut self, chunk: &ScoredRows<'_>) -> Result<()> {
        let (rows, vocab) = chunk.logits.dims2()?;
        if vocab != self.shape.vocab || chunk.offset + rows > self.shape.rows() {
            return Err(Error::Invalid(format!(
                "window {}: logits [{rows}, {vocab}] at row {}, the base holds [{}, {}]",
                chunk.window,
                chunk.offset,
                self.shape.rows(),
                self.shape.vocab
            )));
        }
        let logits = chunk.logits.flatten_all()?.to_vec1::<f32>()?;
        let out = self.out.as_mut().expect("open until finished");
        if chunk.offset == 0 {
            let ids: Vec<u8> = chunk.tokens.iter().flat_map(|t| t.to_le_bytes()).collect();
            out.write_all(&ids).map_err(io_err(&self.tmp))?;
            self.written += 1;
        }
        let encoded: Vec<Vec<u8>> = logits
            .par_chunks_exact(vocab)
            .map(|row| {
                let mut codes = vec![0u16; vocab];
                let (lo, scale) = quantize_row(&log_softmax(row), &mut codes);
                let mut b = Vec::with_capacity(8 + 2 * vocab);
                b.extend_from_slice(&lo.to_le_bytes());
                b.extend_from_slice(&scale.to_le_bytes());
                b.extend(codes.iter().flat_map(|c| c.to_le_bytes()));
                b
            })
            .collect();
        for row in &encoded {
            out.write_all(row).map_err(io_err(&self.tmp))?;
        }
        Ok(())
    }

    /// Flushes, checks every window was written, and renames the file into place.
    pub fn finish(mut self) -> Result<PathBuf> {
        if self.written != self.shape.windows {
            return Err(Error::Invalid(format!(
                "{} of {} windows written to {}",
                self.written,
                self.shape.windows,
                self.path.display()
            )));
        }
        let out = self.out.take().expect("open until finished");
        let file = out
            .into_inner()
            .map_err(|e| Error::io(&self.tmp, e.into_error()))?;
        file.sync_all().map_err(io_err(&self.tmp))?;
        drop(file);
        std::fs::rename(&self.tmp, &self.path).map_err(io_err(&self.path))?;
        Ok(self.path.clone())
    }
}

impl Drop for KlBaseWriter {
    fn drop(&mut self) {
        if self.out.is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Reads a base written by [`KlBaseWriter`], window by window.
pub struct KlBaseReader {
    path: PathBuf,
    input: BufReader<File>,
    shape: KlBaseShape,
}

impl KlBaseReader {
    /// Opens `path` and checks that it describes a run of `expected` shape.
    pub fn open(path: &Path, expected: KlBaseShape) -> Result<Self> {
        let file = File::open(path).map_err(io_err(path))?;
        let len = file.metadata().map_err(io_err(path))?.len();
        let mut input = BufReader::new(file);
        let mut header = [0u8; 28];
        input
            .read_exact(&mut header)
            .map_err(|_| Error::format(path, "too short for a KL base header"))?;
        if &header[..8] != MAGIC {
            return Err(Error::format(
                path,
                "not a KL base (written by `microllm eval --save-kl-base`)",
            ));
        }
        let field = |i: usize| {
            u32::from_le_bytes(header[8 + 4 * i..12 + 4 * i].try_into().expect("4 bytes"))
        };
        if field(0) != VERSION {
            return Err(Error::format(
                path,
                format!(
                    "KL base version {}, this microllm reads {VERSION}",
                    field(0)
                ),
            ));
        }
        let stored = KlBaseShape {
            vocab: field(1) as usize,
            ctx: field(2) as usize,
            first: field(3) as usize,
            windows: field(4) as usize,
        };
        let names = ["vocabulary", "context", "first scored row", "window count"];
        for ((name, s), e) in names.iter().zip(stored.fields()).zip(expected.fields()) {
            if s != e {
                return Err(Error::Invalid(format!(
                    "{}: the base was computed with {name} {s}, this run has {e}: use the same \
                     --ctx, --max-windows, --protocol and a model of the same vocabulary",
                    path.display()
                )));
            }
        }
        if stored.first + 1 >= stored.ctx {
            return Err(Error::format(path, "no scored rows in a window"));
        }
        let per_window = (stored.ctx * 4 + stored.rows() * (8 + 2 * stored.vocab)) as u64;
        let want = 28 + per_window * stored.windows as u64;
        if len != want {
            return Err(Error::format(
                path,
                format!("{len} bytes, the header describes {want}: truncated or damaged"),
            ));
        }
        Ok(Self {
            path: path.to_path_buf(),
            input,
            shape: stored,
        })
    }

    /// The stored rows for `chunk`'s logits, after checking (at a window's first rows) that
    /// the window's tokens are the run's.
    pub fn rows_for(&mut self, chunk: &ScoredRows<'_>) -> Result<Vec<BaseRow>> {
        if chunk.offset == 0 {
            let mut ids = vec![0u8; self.shape.ctx * 4];
            self.input
                .read_exact(&mut ids)
                .map_err(io_err(&self.path))?;
            let same = ids
                .chunks_exact(4)
                .zip(chunk.tokens)
                .all(|(b, &t)| u32::from_le_bytes(b.try_into().expect("4 bytes")) == t);
            if !same || chunk.tokens.len() != self.shape.ctx {
                return Err(Error::Invalid(format!(
                    "{}: window {} holds other tokens than this run's: the base was computed \
                     on another text or with another tokenizer",
                    self.path.display(),
                    chunk.window
                )));
            }
        }
        let vocab = self.shape.vocab;
        let n = chunk.targets.len();
        let mut rows = Vec::with_capacity(n);
        let mut buf = vec![0u8; 8 + 2 * vocab];
        for _ in 0..n {
            self.input
                .read_exact(&mut buf)
                .map_err(io_err(&self.path))?;
            let f = |i: usize| f32::from_le_bytes(buf[i..i + 4].try_into().expect("4 bytes"));
            let (min, scale) = (f(0), f(4));
            if !min.is_finite() || !scale.is_finite() || scale < 0.0 {
                return Err(Error::format(
                    &self.path,
                    format!("window {}: a row's range is not finite", chunk.window),
                ));
            }
            let codes = microllm_core::le::decode_le(&buf[8..]);
            rows.push(BaseRow { min, scale, codes });
        }
        Ok(rows)
    }
}

/// One stored distribution.
pub struct BaseRow {
    min: f32,
    scale: f32,
    codes: Vec<u16>,
}

impl BaseRow {
    fn log_p(&self, i: usize) -> f64 {
        self.min as f64 + self.codes[i] as f64 * self.scale as f64
    }

    fn argmax(&self) -> usize {
        let mut best = 0;
        for (i, &c) in self.codes.iter().enumerate() {
            if c > self.codes[best] {
                best = i;
            }
        }
        best
    }
}

/// Per scored position: the measures [`KlStats`] summarises.
#[derive(Debug, Clone, Copy)]
struct Position {
    kl: f64,
    same_top: bool,
    /// p_model(target) - p_base(target).
    delta_p: f64,
    base_nll: f64,
}

fn measure(base: &BaseRow, row: &[f32], target: u32) -> Position {
    let logq = log_softmax(row);
    let kl = logq
        .iter()
        .enumerate()
        .map(|(i, &lq)| {
            let lp = base.log_p(i);
            lp.exp() * (lp - lq)
        })
        .sum();
    let t = target as usize;
    let model_top = logq
        .iter()
        .enumerate()
        .fold(
            (0, f64::NEG_INFINITY),
            |b, (i, &v)| if v > b.1 { (i, v) } else { b },
        )
        .0;
    Position {
        kl,
        same_top: model_top == base.argmax(),
        delta_p: logq[t].exp() - base.log_p(t).exp(),
        base_nll: -base.log_p(t),
    }
}

/// Accumulates the positions of a comparison with a stored base.
#[derive(Default)]
pub struct KlAccumulator {
    positions: Vec<Position>,
}

impl KlAccumulator {
    /// Measures rows of the model under test against the base's rows for them.
    pub fn add(&mut self, base: &[BaseRow], chunk: &ScoredRows<'_>) -> Result<()> {
        let (rows, vocab) = chunk.logits.dims2()?;
        if rows != base.len() || base.iter().any(|b| b.codes.len() != vocab) {
            return Err(Error::Invalid(format!(
                "window {}: {rows} rows of {vocab} logits against {} stored rows",
                chunk.window,
                base.len()
            )));
        }
        let logits = chunk.logits.flatten_all()?.to_vec1::<f32>()?;
        let measured: Vec<Position> = logits
            .par_chunks_exact(vocab)
            .zip(base)
            .zip(chunk.targets)
            .map(|((row, b), &t)| measure(b, row, t))
            .collect();
        self.positions.extend(measured);
        Ok(())
    }

    /// The summary, with `model_mean_nll` (the model's own mean NLL on the same positions).
    pub fn finish(self, model_mean_nll: f64) -> Result<KlStats> {
        let n = self.positions.len();
        if n == 0 {
            return Err(Error::Invalid("no positions compared".into()));
        }
        let nf = n as f64;
        let mut kls: Vec<f64> = self.positions.iter().map(|p| p.kl).collect();
        let mean = kls.iter().sum::<f64>() / nf;
        let var = kls.iter().map(|k| (k - mean).powi(2)).sum::<f64>() / (nf - 1.0).max(1.0);
        kls.sort_by(f64::total_cmp);
        let pct = |q: f64| kls[((q * (nf - 1.0)).round() as usize).min(n - 1)];
        let base_mean_nll = self.positions.iter().map(|p| p.base_nll).sum::<f64>() / nf;
        let dp: Vec<f64> = self.positions.iter().map(|p| p.delta_p).collect();
        Ok(KlStats {
            positions: n,
            base_perplexity: base_mean_nll.exp(),
            perplexity_ratio: (model_mean_nll - base_mean_nll).exp(),
            mean_kld: mean,
            mean_kld_stderr: (var / nf).sqrt(),
            median_kld: pct(0.5),
            p99_kld: pct(0.99),
            p99_9_kld: pct(0.999),
            max_kld: kls[n - 1],
            same_top_p: self.positions.iter().filter(|p| p.same_top).count() as f64 / nf,
            mean_delta_p: dp.iter().sum::<f64>() / nf,
            rms_delta_p: (dp.iter().map(|d| d * d).sum::<f64>() / nf).sqrt(),
        })
    }
}

/// A model's next-token distributions against a stored base's, over the scored positions.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KlStats {
    pub positions: usize,
    /// The base model's perplexity on these positions (from the stored distributions).
    pub base_perplexity: f64,
    /// This model's perplexity divided by the base's.
    pub perplexity_ratio: f64,
    /// Mean KL(base || model) in nats, and its standard error.
    pub mean_kld: f64,
    pub mean_kld_stderr: f64,
    pub median_kld: f64,
    pub p99_kld: f64,
    pub p99_9_kld: f64,
    pub max_kld: f64,
    /// Fraction of positions where both put the same token first.
    pub same_top_p: f64,
    /// Mean and root mean square of p_model(next token) - p_base(next token).
    pub mean_delta_p: f64,
    pub rms_delta_p: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantized_rows_keep_the_log_probabilities() {
        let row: Vec<f32> = (0..1000)
            .map(|i| ((i * 37) % 101) as f32 * 0.3 - 12.0)
            .collect();
        let logp = log_softmax(&row);
        let mut codes = vec![0u16; row.len()];
        let (min, scale) = quantize_row(&logp, &mut codes);
        let base = BaseRow { min, scale, codes };
        let range = logp.iter().fold(0f64, |a, &l| a.max(-l));
        for (i, &l) in logp.iter().enumerate() {
            assert!((base.log_p(i) - l).abs() <= range / 131070.0 + 1e-6, "{i}");
        }
        // Against itself only the storage's rounding remains: here a 30-nat range in steps
        // of 4.6e-4, which leaves a divergence of order 1e-5.
        let same = measure(&base, &row, 3);
        assert!(same.kl.abs() < 1e-4, "{}", same.kl);
        assert!(same.same_top);
        assert!(same.delta_p.abs() < 1e-6);
        assert!((same.base_nll + logp[3]).abs() < 1e-3);
        // A different distribution: KL agrees with a direct f64 computation, to the same 1e-4.
        let other: Vec<f32> = row.iter().map(|&x| x * 0.7 + 1.0).collect();
        let logq = log_softmax(&other);
        let direct: f64 = logp
            .iter()
            .zip(&logq)
            .map(|(&p, &q)| p.exp() * (p - q))
            .sum();
        let got = measure(&base, &other, 3).kl;
        assert!((got - direct).abs() < 1e-4, "{got} vs {direct}");
    }

    #[test]
    fn statistics_summarise_the_positions() {
        let mut acc = KlAccumulator::default();
        for (i, kl) in [0.0, 0.1, 0.2, 0.3].into_iter().enumerate() {
            acc.positions.push(Position {
                kl,
                same_top: i % 2 == 0,
                delta_p: if i % 2 == 0 { 0.1 } else { -0.1 },
                base_nll: 1.0,
            });
        }
        let s = acc.finish(1.5).unwrap();
        assert_eq!(s.positions, 4);
        assert!((s.mean_kld - 0.15).abs() < 1e-12);
        assert_eq!(s.max_kld, 0.3);
        assert_eq!(s.same_top_p, 0.5);
        assert!(s.mean_delta_p.abs() < 1e-12);
        assert!((s.rms_delta_p - 0.1).abs() < 1e-12);
        assert!((s.base_perplexity - 1f64.exp()).abs() < 1e-12);
        assert!((s.perplexity_ratio - 0.5f64.exp()).abs() < 1e-12);
    }
}
