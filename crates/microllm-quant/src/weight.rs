//! The canonical quantized weight, from which every output format is packed.
//!
//! One form, many packers (DESIGN.md, "How data flows", step 4): GGUF blocks, GPTQ
//! `qweight/qzeros/scales/g_idx` and compressed-tensors `weight_packed` all hold the same
//! information: an integer code per weight, and a scale and zero point per (row, group). So the
//! quantizers produce exactly that, unpacked, and writers only re-arrange bits.
//!
//! Conventions (writers rely on them):
//!
//! * `shape = [out, in]`, the layout of a `nn.Linear` weight; `codes` is row-major over it, one
//!   `u8` per weight, in `0..2^bits`, in the **original** column order (act-order never
//!   reorders the stored codes).
//! * `scales` and `zeros` are row-major `[out, n_groups]`; the zero point is an integer
//!   (`2^(bits-1)` for symmetric schemes). GPTQ v1 checkpoints store `zero - 1`; that is the
//!   writer's business.
//! * dequantization: `w[r, j] = scales[r, g] * (codes[r, j] - zeros[r, g])` with
//!   `g = group_of(j)`; for FP8 schemes the code is an E4M3 byte, `w[r, j] = scales[r, g] *
//!   e4m3(codes[r, j])`, and the zeros are 0.
//! * `g_idx` is GPTQ's per-input-column group index. `None` means contiguous groups,
//!   `group_of(j) = j / group_len`. With act-order (GPTQ paper, section 4 / the reference's
//!   `desc_act`) groups are formed in the *processing* order, so `g_idx[j] = position of column
//!   j in `perm` / group_len`, which is non-monotonic; with static groups they stay contiguous.
//! * `perm` records the act-order processing order (`perm[k]` = the original column quantized
//!   k-th). It is informational: dequantization needs only `g_idx`.
//! * The quantizers make groups that divide the row ([`QuantScheme::check_shape`]); a weight
//!   read from another tool's checkpoint may end in a shorter group, so `n_groups` rounds up.
//!
//! The readers and writers of quantized checkpoints (`microllm-io`) use this type too: a
//! linear read from a GPTQ or compressed-tensors file is a `QuantizedWeight` with
//! [`QuantScheme::stored`]'s scheme, and one written is packed from it.

use candle_core::{Device, Tensor};
use microllm_core::{Error, Result};

use crate::QuantScheme;

/// Integer codes plus per-group scales and zero points; see the module docs for conventions.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedWeight {
    /// `[out, in]`.
    pub shape: [usize; 2],
    pub scheme: QuantScheme,
    /// One code per weight, row-major `[out, in]`, original column order.
    pub codes: Vec<u8>,
    /// Row-major `[out, n_groups]`.
    pub scales: Vec<f32>,
    /// Integer zero points, row-major `[out, n_groups]`.
    pub zeros: Vec<u8>,
    /// Group of each input column (length `in`); `None` means `j / group_len`.
    pub g_idx: Option<Vec<u32>>,
    /// Act-order processing order (length `in`), if act-order was used.
    pub perm: Option<Vec<u32>>,
}

impl QuantizedWeight {
    /// Output features (rows).
    pub fn out_features(&self) -> usize {
        self.shape[0]
    }

    /// Input features (columns).
    pub fn in_features(&self) -> usize {
        self.shape[1]
    }

    /// Columns per group (the row length for one group per row).
    pub fn group_len(&self) -> usize {
        self.scheme.group_len(self.in_features())
    }

    /// Groups per row (a ragged last group counts).
    pub fn n_groups(&self) -> usize {
        self.scheme.groups(self.in_features())
    }

    /// Group of input column `j`.
    pub fn group_of(&self, j: usize) -> usize {
        match &self.g_idx {
            Some(g) => g[j] as usize,
            None => j / self.group_len(),
        }
    }

    /// Whether groups are contiguous runs of `group_len` columns (no act-order scatter),
    /// whether or not `g_idx` is stored.
    pub fn contiguous(&self) -> bool {
        match &self.g_idx {
            None => true,
            Some(g) => {
                let len = self.group_len().max(1);
                g.iter().enumerate().all(|(j, &x)| x as usize == j / len)
            }
        }
    }

    /// The explicit group index of every input column (GPTQ's `g_idx`), whether or not it is
    /// stored.
    pub fn g_idx(&self) -> Vec<u32> {
        (0..self.in_features())
            .map(|j| self.group_of(j) as u32)
            .collect()
    }

    /// Checks the scheme, lengths, code range and group indices; `name` is the tensor named
    /// in errors.
    pub fn validate(&self, name: &str) -> Result<()> {
        let [out, inp] = self.shape;
        let bad = |msg: String| {
            Err(Error::TensorData {
                name: name.to_string(),
                origin: "quantized weight".into(),
                msg: format!("[{out}, {inp}]: {msg}"),
            })
        };
        if let Err(e) = self.scheme.validate() {
            return bad(e.to_string());
        }
        if out == 0 || inp == 0 {
            return bad("empty weight".into());
        }
        let ng = self.n_groups();
        if self.codes.len() != out * inp {
            return bad(format!(
                "{} codes for {} weights",
                self.codes.len(),
                out * inp
            ));
        }
        if self.scales.len() != out * ng || self.zeros.len() != out * ng {
            return bad(format!(
                "scales / zero points do not fit {ng} groups per row"
            ));
        }
        let maxq = self.scheme.maxq();
        if self
            .codes
            .iter()
            .chain(&self.zeros)
            .any(|&c| c as u32 > maxq)
        {
            return bad(format!("a code or zero point exceeds {maxq}"));
        }
        let code_type = self.scheme.code_type;
        if let Some(j) = self.codes.iter().position(|&c| !code_type.is_value(c)) {
            return bad(format!("FP8 NaN at [{}, {}]", j / inp, j % inp));
        }
        if let Some(g) = &self.g_idx
            && (g.len() != inp || g.iter().any(|&x| x as usize >= ng))
        {
            return bad(format!(
                "group index does not fit {ng} groups of {inp} columns"
            ));
        }
        if let Some(p) = &self.perm {
            let mut seen = vec![false; inp];
            let permutes = p.len() == inp
                && p.iter().all(|&c| {
                    let c = c as usize;
                    c < inp && !std::mem::replace(&mut seen[c], true)
                });
            if !permutes {
                return bad("perm is not a permutation of the columns".into());
            }
        }
        Ok(())
    }

    /// Dequantized weights, row-major `[out, in]`.
    pub fn dequantize_vec(&self) -> Vec<f32> {
        let [out, inp] = self.shape;
        let ng = self.n_groups();
        let groups = self.g_idx();
        let code_type = self.scheme.code_type;
        let mut w = vec![0.0f32; out * inp];
        for (r, row) in w.chunks_exact_mut(inp.max(1)).enumerate().take(out) {
            let codes = &self.codes[r * inp..(r + 1) * inp];
            for ((x, &c), &g) in row.iter_mut().zip(codes).zip(&groups) {
                let k = r * ng + g as usize;
                *x = self.scales[k] * code_type.unscaled(c, self.zeros[k]);
            }
        }
        w
    }

    /// Dequantized weights as an f32 tensor of shape `[out, in]`.
    pub fn dequantize(&self, device: &Device) -> Result<Tensor> {
        Ok(Tensor::from_vec(
            self.dequantize_vec(),
            (self.shape[0], self.shape[1]),
            device,
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 2 x 4, 2-bit weight with two groups of two columns.
    fn small() -> QuantizedWeight {
        QuantizedWeight {
            shape: [2, 4],
            scheme: QuantScheme::new(2, Some(2), false).unwrap(),
            codes: vec![0, 1, 2, 3, 3, 2, 1, 0],
            scales: vec![1.0, 0.5, 2.0, 0.25],
            zeros: vec![1, 2, 0, 3],
            g_idx: None,
            perm: None,
        }
    }

    #[test]
    fn hand_checked_dequantization() {
        let q = small();
        q.validate("w").unwrap();
        // Row 0: group 0 = 1*(c-1), group 1 = 0.5*(c-2); row 1: 2*(c-0), 0.25*(c-3).
        assert_eq!(
            q.dequantize_vec(),
            vec![-1.0, 0.0, 0.0, 0.5, 6.0, 4.0, -0.5, -0.75]
        );
        assert_eq!(q.g_idx(), vec![0, 0, 1, 1]);
    }

    #[test]
    fn explicit_g_idx_selects_groups() {
        let mut q = small();
        q.g_idx = Some(vec![1, 0, 0, 1]);
        q.perm = Some(vec![1, 2, 0, 3]);
        q.validate("w").unwrap();
        assert_eq!(q.group_of(0), 1);
        assert_eq!(q.dequantize_vec()[..4], [-1.0, 0.0, 1.0, 0.5]);
    }

    #[test]
    fn inconsistent_weights_are_rejected() {
        let mut q = small();
        q.codes[3] = 4;
        assert!(q.validate("w").is_err());
        let mut q = small();
        q.scales.pop();
        assert!(q.validate("w").is_err());
        let mut q = small();
        q.g_idx = Some(vec![0, 0, 2, 1]);
        assert!(q.validate("w").is_err());
        let mut q = small();
        q.perm = Some(vec![0, 0, 1, 2]);
        assert!(q.validate("w").is_err());
    }
}
