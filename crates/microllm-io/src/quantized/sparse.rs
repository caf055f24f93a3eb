//! compressed-tensors' sparse formats: the nonzero values of a pruned weight and a bitmask of
//! where they are, so a 50%-sparse f16 matrix takes a little over half its dense size.
//!
//! Layouts (compressed-tensors' `BitmaskCompressor` / `Sparse24BitMaskCompressor`), for a
//! weight `P.weight` of shape `[rows, cols]`:
//!
//! * `sparse-bitmask`: `P.shape` (int64 `[2]`), `P.compressed` (the nonzero values in row-major
//!   order, 1-D, in the weight's dtype), `P.bitmask` (uint8 `[rows, ceil(cols / 8)]`, bit
//!   `j % 8` of byte `j / 8` set where column `j` is nonzero: numpy's `packbits` with
//!   `bitorder="little"` along each row), `P.row_offsets` (int64 `[rows]`, where each row's
//!   values start in `compressed`).
//! * `sparse-24-bitmask`: `P.shape` (int64 `[2, 1]`), `P.compressed` (`[rows, cols / 2]`:
//!   exactly two values per group of four, zeros included when a group has fewer than two
//!   nonzeros), `P.bitmask` as above, marking the two stored positions of every group.

use microllm_core::{Error, Result};

/// Which sparse layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SparseFormat {
    /// `sparse-bitmask`: any sparsity pattern.
    Bitmask,
    /// `sparse-24-bitmask`: at most 2 nonzeros in every 4 consecutive weights of a row.
    TwoFour,
}

impl SparseFormat {
    /// The `format` name in `sparsity_config`.
    pub fn name(self) -> &'static str {
        match self {
            SparseFormat::Bitmask => "sparse-bitmask",
            SparseFormat::TwoFour => "sparse-24-bitmask",
        }
    }

    /// Parses a `sparsity_config.format`.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "sparse-bitmask" => Some(SparseFormat::Bitmask),
            "sparse-24-bitmask" => Some(SparseFormat::TwoFour),
            _ => None,
        }
    }
}

/// A weight in a sparse layout: which positions are stored (row-major mask) and their values.
#[derive(Debug, Clone, PartialEq)]
pub struct SparseWeight {
    pub shape: [usize; 2],
    /// `true` where a value is stored.
    pub stored: Vec<bool>,
    /// The stored values in row-major order.
    pub values: Vec<f32>,
}

impl SparseWeight {
    /// Encodes a dense row-major weight; `TwoFour` fails, naming `name`, when a group of four
    /// holds more than two nonzeros or the rows are not a multiple of 4 long.
    pub fn encode(
        name: &str,
        dense: &[f32],
        shape: [usize; 2],
        format: SparseFormat,
    ) -> Result<Self> {
        let [rows, cols] = shape;
        if dense.len() != rows * cols {
            return Err(Error::Invalid(format!(
                "`{name}`: {} values for shape [{rows}, {cols}]",
                dense.len()
            )));
        }
        let stored: Vec<bool> = match format {
            SparseFormat::Bitmask => dense.iter().map(|&x| x != 0.0).collect(),
            SparseFormat::TwoFour => {
                if !cols.is_multiple_of(4) {
                    return Err(Error::Invalid(format!(
                        "`{name}` of shape [{rows}, {cols}] cannot be stored as 2:4: its rows \
                         are not a multiple of 4 long"
                    )));
                }
                let mut stored = Vec::with_capacity(dense.len());
                for (g, group) in dense.chunks(4).enumerate() {
                    let nonzero = group.iter().filter(|&&x| x != 0.0).count();
                    if nonzero > 2 {
                        return Err(Error::Invalid(format!(
                            "`{name}` is not 2:4 sparse: row {}, columns {}..{} hold {nonzero} \
                             nonzero weights",
                            4 * g / cols,
                            4 * g % cols,
                            4 * g % cols + 4
                        )));
                    }
                    // The nonzeros, then the earliest zeros, up to two per group.
                    let mut extra = 2 - nonzero;
                    for &x in group {
                        let keep = x != 0.0
                            || (extra > 0 && {
                                extra -= 1;
                                true
                            });
                        stored.push(keep);
                    }
                }
                stored
            }
        };
        let values = dense
            .iter()
            .zip(&stored)
            .filter(|(_, s)| **s)
            .map(|(&x, _)| x)
            .collect();
        Ok(Self {
            shape,
            stored,
            values,
        })
    }

    /// The dense weight.
    pub fn decode(&self) -> Vec<f32> {
        let mut values = self.values.iter();
        self.stored
            .iter()
            .map(|&s| {
                if s {
                    *values.next().expect("one value per stored position")
                } else {
                    0.0
                }
            })
            .collect()
    }

    /// The bitmask, `[rows, ceil(cols / 8)]` bytes, little bit order within each row.
    pub fn bitmask(&self) -> Vec<u8> {
        let [_, cols] = self.shape;
        let per_row = cols.div_ceil(8);
        let mut out = Vec::with_capacity(self.shape[0] * per_row);
        for row in self.stored.chunks(cols.max(1)) {
            for byte in row.chunks(8) {
                out.push(
                    byte.iter()
                        .enumerate()
                        .fold(0u8, |b, (i, &s)| b | (u8::from(s) << i)),
                );
            }
        }
        out
    }

    /// Where each row's values start in `values`.
    pub fn row_offsets(&self) -> Vec<i64> {
        let cols = self.shape[1].max(1);
        let mut offset = 0i64;
        self.stored
            .chunks(cols)
            .map(|row| {
                let start = offset;
                offset += row.iter().filter(|&&s| s).count() as i64;
                start
            })
            .collect()
    }

    /// Rebuilds a weight from its stored bitmask and values, checking that they agree.
    pub fn from_parts(
        name: &str,
        shape: [usize; 2],
        bitmask: &[u8],
        values: Vec<f32>,
    ) -> Result<Self> {
        let [rows, cols] = shape;
        let per_row = cols.div_ceil(8);
        if bitmask.len() != rows * per_row {
            return Err(Error::Invalid(format!(
                "`{name}.bitmask` has {} bytes, expected {rows} x {per_row} for shape [{rows}, {cols}]",
                bitmask.len()
            )));
        }
        let stored: Vec<bool> = bitmask
            .chunks(per_row.max(1))
            .flat_map(|row| (0..cols).map(move |j| row[j / 8] >> (j % 8) & 1 == 1))
            .collect();
        let count = stored.iter().filter(|&&s| s).count();
        if count != values.len() {
            return Err(Error::Invalid(format!(
                "`{name}`: the bitmask marks {count} positions but `{name}.compressed` holds {} values",
                values.len()
            )));
        }
        Ok(Self {
            shape,
            stored,
            values,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitmask_layout_is_little_endian_per_row() {
        // Row 0: nonzeros at 0, 3, 8; row 1: at 9.
        let mut dense = vec![0.0f32; 2 * 10];
        dense[0] = 1.0;
        dense[3] = -2.0;
        dense[8] = 3.0;
        dense[10 + 9] = 4.0;
        let s = SparseWeight::encode("w", &dense, [2, 10], SparseFormat::Bitmask).unwrap();
        assert_eq!(s.bitmask(), [0b0000_1001, 0b01, 0, 0b10]);
        assert_eq!(s.values, [1.0, -2.0, 3.0, 4.0]);
        assert_eq!(s.row_offsets(), [0, 3]);
        assert_eq!(s.decode(), dense);
        let back = SparseWeight::from_parts("w", [2, 10], &s.bitmask(), s.values.clone()).unwrap();
        assert_eq!(back, s);
        assert!(SparseWeight::from_parts("w", [2, 10], &s.bitmask(), vec![1.0]).is_err());
    }

    #[test]
    fn two_four_stores_exactly_half_and_refuses_denser_groups() {
        let dense = [0.0, 5.0, 0.0, 0.0, 1.0, 0.0, 2.0, 0.0];
        let s = SparseWeight::encode("w", &dense, [1, 8], SparseFormat::TwoFour).unwrap();
        assert_eq!(s.values, [0.0, 5.0, 1.0, 2.0]);
        assert_eq!(s.bitmask(), [0b0101_0011]);
        assert_eq!(s.decode(), dense);
        let err = SparseWeight::encode("w", &[1.0, 1.0, 1.0, 0.0], [1, 4], SparseFormat::TwoFour)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("not 2:4") && err.contains("columns 0..4"),
            "{err}"
        );
        assert!(SparseWeight::encode("w", &[0.0; 6], [1, 6], SparseFormat::TwoFour).is_err());
    }
}
