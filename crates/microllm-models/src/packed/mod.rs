//! Linear layers on the weights as the file stores them.
//!
//! A 4-bit GGUF model dequantized to f32 takes eight times its file's memory and runs at f32
//! GEMM speed. [`PackedWeight`] keeps the file's blocks (re-laid where that helps) and computes
//! `x W^T` on them. Which path a product takes depends on the type and on [`Activations`]:
//!
//! | stored type | `Activations::Int8` (default) | `Activations::F32` |
//! |---|---|---|
//! | Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 | 8-bit activations, VNNI integer dots ([`int8`]) | f32 panels |
//! | IQ4_NL, IQ4_XS | the same, nibbles looked up in the 16 levels in registers | f32 panels |
//! | Q2_K, Q3_K, Q4_K, Q6_K | candle's quantized matmul (8-bit activations, ggml's Q8_K) | f32 panels |
//! | Q5_K, F16, BF16 | f32 panels ([`panel`]) | f32 panels |
//!
//! "f32 panels" decode a few rows at a time just before an f32 GEMM: the dense model's
//! arithmetic at the file's memory. Q5_K goes that way because candle's kernel for it measured
//! slower than the f32 GEMM (docs/benchmarks.md); on a CPU without AVX-512 VNNI the legacy
//! types do too. Q2_K and Q3_K take candle's kernel because it computes what llama.cpp does
//! (SmolLM2 in pure Q2_K, 8 windows: 122.93 against llama-perplexity's 123.28, where the Q2_K
//! matrices on f32 panels gave 120.74, 2.1% off) and ran faster here (9.3 s, against 12.3 s
//! with every product in f32).

mod acts;
mod int8;
mod legacy;
mod panel;

use std::sync::Arc;

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use microllm_core::{BlockType, PackedMatrix, Result};

pub(crate) use acts::QuantActs;
use legacy::BlockRows;
use panel::{DecodeRows, HalfRows, KQuantRows};

/// An output buffer's pointer shared by the tasks of one product, each of which writes a part
/// (a tile, a panel's columns) that no other task touches.
#[derive(Clone, Copy)]
struct Out(*mut f32);
// SAFETY: tasks write disjoint parts of the buffer, which outlives the parallel loop that
// uses it; every use says which part it writes.
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Out {
    /// The pointer; a method, so that closures capture the whole (`Send`) wrapper.
    fn ptr(self) -> *mut f32 {
        self.0
    }
}

/// How products on packed weights treat their activations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Activations {
    /// Quantized to 8 bits per block of 32 where the weight type has an integer kernel, as
    /// llama.cpp does: the fastest, and what the model computes when deployed there.
    #[default]
    Int8,
    /// Kept in f32: every product equals the dense model's (the reference implementation's
    /// numbers on dequantized weights).
    F32,
}

enum Repr {
    Blocks(BlockRows),
    Half(HalfRows),
    KQuant(KQuantRows),
}

/// A weight matrix `[rows, cols]` kept in its stored type.
pub struct PackedWeight {
    kind: BlockType,
    repr: Repr,
    activations: Activations,
    vnni: bool,
}

impl std::fmt::Debug for PackedWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedWeight")
            .field("kind", &self.kind)
            .field("rows", &self.rows())
            .field("cols", &self.cols())
            .field("path", &self.path())
            .finish()
    }
}

impl PackedWeight {
    /// Takes a file's packed matrix for products with `activations`.
    pub fn new(m: &PackedMatrix, activations: Activations) -> Result<Self> {
        let repr = match m.block_type {
            k if BlockRows::handles(k) => Repr::Blocks(BlockRows::new(m)?),
            BlockType::F16 | BlockType::BF16 => Repr::Half(HalfRows::new(
                m.block_type == BlockType::BF16,
                m.rows,
                m.cols,
                &m.data,
            )),
            k => Repr::KQuant(KQuantRows::new(k, m.rows, m.cols, &m.data)?),
        };
        Ok(Self {
            kind: m.block_type,
            repr,
            activations,
            vnni: int8::has_vnni(),
        })
    }

    fn rows_view(&self) -> &dyn DecodeRows {
        match &self.repr {
            Repr::Blocks(b) => b,
            Repr::Half(h) => h,
            Repr::KQuant(k) => k,
        }
    }

    /// Output features.
    pub fn rows(&self) -> usize {
        self.rows_view().rows()
    }

    /// Input features.
    pub fn cols(&self) -> usize {
        self.rows_view().cols()
    }

    /// The stored type.
    pub fn block_type(&self) -> BlockType {
        self.kind
    }

    /// Bytes held in memory.
    pub fn bytes(&self) -> usize {
        match &self.repr {
            Repr::Blocks(b) => b.bytes(),
            Repr::Half(h) => h.bits.len() * 2,
            Repr::KQuant(k) => k.tensor.storage_size_in_bytes(),
        }
    }

    /// Which kernel products take (the table in the module docs).
    pub fn path(&self) -> &'static str {
        match (&self.repr, self.activations) {
            (Repr::Blocks(_), Activations::Int8) if self.vnni => "int8 (VNNI)",
            (Repr::KQuant(_), Activations::Int8) if self.uses_qmatmul() => "int8 (candle)",
            _ => "f32 panels",
        }
    }

    fn uses_qmatmul(&self) -> bool {
        matches!(
            self.kind,
            BlockType::Q2K | BlockType::Q3K | BlockType::Q4K | BlockType::Q6K
        )
    }

    /// Whether products run on 8-bit activations of the [`QuantActs`] layout (so a caller
    /// with one input for several weights quantizes it once: [`matmul_with`](Self::matmul_with)).
    pub(crate) fn takes_quantized_acts(&self) -> bool {
        matches!(self.repr, Repr::Blocks(_)) && self.activations == Activations::Int8 && self.vnni
    }

    /// `x W^T` for `x` `[rows, cols]` f32 (contiguous): `[rows, self.rows()]`.
    pub fn matmul(&self, x: &Tensor) -> Result<Tensor> {
        self.matmul_with(x, None)
    }

    /// [`matmul`](Self::matmul), with `x` already quantized where
    /// [`takes_quantized_acts`](Self::takes_quantized_acts).
    pub(crate) fn matmul_with(&self, x: &Tensor, quantized: Option<&QuantActs>) -> Result<Tensor> {
        let (t, k) = x.dims2()?;
        let n = self.rows();
        let y = match (&self.repr, self.activations) {
            (Repr::Blocks(b), Activations::Int8) if self.vnni => match quantized {
                Some(q) => int8::matmul(b, q, true),
                None => {
                    let x = x.flatten_all()?.to_vec1::<f32>()?;
                    int8::matmul(b, &QuantActs::new(&x, k), true)
                }
            },
            (Repr::KQuant(q), Activations::Int8) if self.uses_qmatmul() => {
                return Ok(QMatMul::QTensor(q.tensor.clone()).forward(x)?);
            }
            _ => {
                let x = x.flatten_all()?.to_vec1::<f32>()?;
                panel::matmul(&x, self.rows_view())
            }
        };
        Ok(Tensor::from_vec(y, (t, n), &Device::Cpu)?)
    }

    /// Rows `ids` as f32 `[ids.len(), cols]` (an embedding lookup).
    pub fn gather_rows(&self, ids: &[u32]) -> Result<Tensor> {
        let k = self.cols();
        let mut out = vec![0f32; ids.len() * k];
        for (row, &id) in out.chunks_exact_mut(k).zip(ids) {
            self.rows_view().decode_rows(id as usize, 1, row);
        }
        Ok(Tensor::from_vec(out, (ids.len(), k), &Device::Cpu)?)
    }

    /// The whole matrix as f32 `[rows, cols]`.
    pub fn dequantize(&self) -> Result<Tensor> {
        panel::dequantize(self.rows_view())
    }

    /// The candle tensor behind a k-quant weight, for tests and tools.
    pub fn qtensor(&self) -> Option<Arc<QTensor>> {
        match &self.repr {
            Repr::KQuant(k) => Some(k.tensor.clone()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests;
