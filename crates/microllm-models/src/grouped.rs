//! The attention kernel: grouped-query causal attention on f32 buffers, one task per
//! (sequence, key/value head, query chunk).
//!
//! Why not tensor ops: at prompt shapes every product is small (a chunk of 64 tokens times a
//! group of 3 heads against at most 512 keys of 64 values is 6 M multiply-adds per product),
//! and batched tensor products split each one across the threads, so synchronisation and
//! packing dominate: on SmolLM2 at 512 tokens attention took 173 ms of a 458 ms forward pass
//! through them (docs/benchmarks.md, "Attention as one task per head and chunk"). Here each
//! task runs its two products single-threaded ([`crate::sgemm`]) and its
//! softmax, with its scores in a scratch buffer the thread reuses, and the tasks run in
//! parallel: no synchronisation inside a task, one barrier per attention call.

use std::cell::RefCell;

use candle_core::{DType, Device, Storage, Tensor};
use microllm_core::{Error, Result};
use rayon::prelude::*;

use crate::sgemm::{View, sgemm};
use crate::softmax::CausalSoftmax;

thread_local! {
    /// Each thread's score buffer, grown to the largest chunk it has seen.
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Heads of a `[b, heads, rows, d]` f32 tensor whose last two axes are contiguous: the data
/// (kept alive), the offset of its first element and the strides of the first two axes.
struct Heads {
    data: Tensor,
    offset: usize,
    batch_stride: usize,
    head_stride: usize,
    d: usize,
}

impl Heads {
    fn of(t: &Tensor) -> Result<Self> {
        let t = t.to_dtype(DType::F32)?;
        let (_, _, rows, d) = t.dims4()?;
        let fits = |t: &Tensor| {
            let s = t.stride();
            s[3] == 1 && (rows <= 1 || s[2] == d)
        };
        let t = if fits(&t) { t } else { t.contiguous()? };
        let (offset, stride) = {
            let layout = t.layout();
            (layout.start_offset(), layout.stride().to_vec())
        };
        Ok(Self {
            data: t,
            offset,
            batch_stride: stride[0],
            head_stride: stride[1],
            d,
        })
    }

    /// Runs `f` on the underlying values.
    fn with_values<R>(&self, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
        let (storage, _) = self.data.storage_and_layout();
        match &*storage {
            Storage::Cpu(cpu) => f(cpu.as_slice::<f32>()?),
            _ => Err(Error::Invalid("attention runs on the CPU".into())),
        }
    }

    /// Rows `first..first + n` of head `h` of sequence `b`, from `values`.
    fn rows<'a>(&self, values: &'a [f32], b: usize, h: usize, first: usize, n: usize) -> &'a [f32] {
        let start = self.offset + b * self.batch_stride + h * self.head_stride + first * self.d;
        &values[start..start + n * self.d]
    }
}

/// Attention of grouped queries `q` `[b, kv_heads, seq * group, d]` over keys and values
/// `[b, kv_heads, t, d]` (see [`crate::attention::grouped_attention`] for the positions and
/// the window), queries in chunks of `chunk` tokens, each against the keys it can see.
pub(crate) fn chunked_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    (group, offset): (usize, usize),
    window: Option<usize>,
    scale: f32,
    chunk: usize,
) -> Result<Tensor> {
    let (b, kv, rows, d) = q.dims4()?;
    let seq = rows / group.max(1);
    let t = k.dim(2)?;
    let key_base = (offset + seq).checked_sub(t).ok_or_else(|| {
        Error::Invalid(format!(
            "{t} keys cannot end at position {} (offset {offset}, {seq} queries)",
            offset + seq
        ))
    })?;
    let mut out = vec![0f32; b * kv * rows * d];
    if out.is_empty() {
        return Ok(Tensor::from_vec(out, (b, kv, rows, d), &Device::Cpu)?);
    }
    let (q, k, v) = (Heads::of(q)?, Heads::of(k)?, Heads::of(v)?);
    let chunk = chunk.max(1);
    q.with_values(|qs| {
        k.with_values(|ks| {
            v.with_values(|vs| {
                out.par_chunks_mut(rows * d)
                    .enumerate()
                    .for_each(|(bh, head_out)| {
                        let (bi, h) = (bh / kv, bh % kv);
                        head_out
                            .par_chunks_mut(chunk * group * d)
                            .enumerate()
                            .for_each(|(c, o)| {
                                let first = c * chunk;
                                let n = o.len() / (group * d);
                                let first_pos = offset + first;
                                // Keys the chunk can see, as positions `lo..hi`.
                                let lo = window
                                    .map_or(0, |w| (first_pos + 1).saturating_sub(w))
                                    .max(key_base);
                                let hi = first_pos + n;
                                let task = Task {
                                    q: q.rows(qs, bi, h, first * group, n * group),
                                    k: k.rows(ks, bi, h, lo - key_base, hi - lo),
                                    v: v.rows(vs, bi, h, lo - key_base, hi - lo),
                                    d,
                                    softmax: CausalSoftmax {
                                        scale,
                                        group,
                                        first_query: first_pos,
                                        first_key: lo,
                                        window,
                                    },
                                };
                                task.run(o);
                            });
                    });
                Ok(())
            })
        })
    })?;
    Ok(Tensor::from_vec(out, (b, kv, rows, d), &Device::Cpu)?)
}

/// One chunk of queries of one key/value head against the keys it sees.
struct Task<'a> {
    /// `[queries * group, d]`.
    q: &'a [f32],
    /// `[keys, d]`.
    k: &'a [f32],
    v: &'a [f32],
    d: usize,
    softmax: CausalSoftmax,
}

impl Task<'_> {
    /// Writes the context rows `[queries * group, d]` into `out`.
    fn run(&self, out: &mut [f32]) {
        let d = self.d;
        let m = self.q.len() / d;
        let keys = self.k.len() / d;
        SCORES.with_borrow_mut(|scores| {
            if scores.len() < m * keys {
                scores.resize(m * keys, 0.0);
            }
            let scores = &mut scores[..m * keys];
            // SAFETY: every view covers the extent its strides describe: `scores` is
            // `[m, keys]`; `q` is `[m, d]`; `k` read as `[d, keys]` (column `j` is key row `j`);
            // `v` is `[keys, d]`; `out` is `[m, d]`. No buffer aliases another, and the
            // products run on this thread only.
            unsafe {
                sgemm(
                    (m, keys, d),
                    View::row_major(scores.as_mut_ptr(), keys),
                    View::row_major(self.q.as_ptr(), d),
                    View::col_major(self.k.as_ptr(), d),
                );
            }
            for (row, x) in scores.chunks_exact_mut(keys).enumerate() {
                self.softmax.softmax_row(row, x);
            }
            // SAFETY: as above.
            unsafe {
                sgemm(
                    (m, d, keys),
                    View::row_major(out.as_mut_ptr(), d),
                    View::row_major(scores.as_ptr(), keys),
                    View::row_major(self.v.as_ptr(), d),
                );
            }
        });
    }
}
