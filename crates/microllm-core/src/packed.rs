//! Weight matrices as their files store them: rows of ggml blocks.
//!
//! A quantized GGUF file is already the compact model a user wants to run. Dequantizing it to
//! f32 on load multiplies its memory by four to eight and makes every product an f32 one, so a
//! [`TensorSource`](crate::TensorSource) that holds packed rows hands them out as they are
//! ([`PackedMatrix`]), already in Hugging Face row order, and the forward pass runs on them.

use crate::{Error, Result};

/// The 16 levels IQ4_NL and IQ4_XS codes index (ggml's `kvalues_iq4nl`): denser near zero,
/// where most weights are.
pub const IQ4_LEVELS: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// The signed 6-bit scale of sub-block `ib` (0..8) of an IQ4_XS super-block's bytes (f16 `d`,
/// u16 high bits, 4 bytes of low nibbles, 128 bytes of indices): the sub-block's values are
/// `d * scale * IQ4_LEVELS[index]`.
pub fn iq4_xs_sub_scale(block: &[u8], ib: usize) -> i32 {
    let high = u16::from_le_bytes([block[2], block[3]]);
    let low = (block[4 + ib / 2] >> (4 * (ib % 2))) & 0xf;
    i32::from(low | (((high >> (2 * ib)) & 3) as u8) << 4) - 32
}

/// A ggml block type that the forward pass can run on without dequantizing the whole matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BlockType {
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    /// IQ4_NL: 4-bit indices into a fixed table of 16 values, an f16 scale per 32.
    Iq4Nl,
    /// IQ4_XS: IQ4_NL's table in super-blocks of 256 with a 6-bit scale per 32.
    Iq4Xs,
}

impl BlockType {
    /// Values per block.
    pub const fn block_len(self) -> usize {
        match self {
            Self::F16 | Self::BF16 => 1,
            Self::Q4_0 | Self::Q4_1 | Self::Q5_0 | Self::Q5_1 | Self::Q8_0 | Self::Iq4Nl => 32,
            Self::Q2K | Self::Q3K | Self::Q4K | Self::Q5K | Self::Q6K | Self::Iq4Xs => 256,
        }
    }

    /// Bytes per block, as ggml lays it out.
    pub const fn block_bytes(self) -> usize {
        match self {
            Self::F16 | Self::BF16 => 2,
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q5_0 => 22,
            Self::Q5_1 => 24,
            Self::Q8_0 => 34,
            Self::Q2K => 84,
            Self::Q3K => 110,
            Self::Q4K => 144,
            Self::Q5K => 176,
            Self::Q6K => 210,
            Self::Iq4Nl => 18,
            Self::Iq4Xs => 136,
        }
    }

    /// The name llama.cpp gives the type.
    pub fn name(self) -> &'static str {
        match self {
            Self::F16 => "F16",
            Self::BF16 => "BF16",
            Self::Q4_0 => "Q4_0",
            Self::Q4_1 => "Q4_1",
            Self::Q5_0 => "Q5_0",
            Self::Q5_1 => "Q5_1",
            Self::Q8_0 => "Q8_0",
            Self::Q2K => "Q2_K",
            Self::Q3K => "Q3_K",
            Self::Q4K => "Q4_K",
            Self::Q5K => "Q5_K",
            Self::Q6K => "Q6_K",
            Self::Iq4Nl => "IQ4_NL",
            Self::Iq4Xs => "IQ4_XS",
        }
    }

    /// Bytes one row of `cols` values occupies, if `cols` is made of whole blocks.
    pub fn row_bytes(self, cols: usize) -> Option<usize> {
        cols.is_multiple_of(self.block_len())
            .then(|| cols / self.block_len() * self.block_bytes())
    }
}

/// A `[rows, cols]` matrix stored as rows of ggml blocks, row-major, rows in Hugging Face order.
#[derive(Clone)]
pub struct PackedMatrix {
    pub block_type: BlockType,
    pub rows: usize,
    pub cols: usize,
    /// `rows * block_type.row_bytes(cols)` bytes.
    pub data: Vec<u8>,
}

impl std::fmt::Debug for PackedMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedMatrix")
            .field("block_type", &self.block_type)
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .field("bytes", &self.data.len())
            .finish()
    }
}

impl PackedMatrix {
    /// Checks that `data` holds exactly `rows` rows of `cols` values of `block_type`; `name`
    /// names the tensor in the error.
    pub fn new(
        name: &str,
        block_type: BlockType,
        rows: usize,
        cols: usize,
        data: Vec<u8>,
    ) -> Result<Self> {
        let row = block_type.row_bytes(cols).ok_or_else(|| {
            Error::Invalid(format!(
                "tensor `{name}`: {cols} columns are not whole {} blocks of {}",
                block_type.name(),
                block_type.block_len()
            ))
        })?;
        if rows.checked_mul(row) != Some(data.len()) {
            return Err(Error::Invalid(format!(
                "tensor `{name}`: {} bytes do not hold {rows} rows of {cols} {} values",
                data.len(),
                block_type.name()
            )));
        }
        Ok(Self {
            block_type,
            rows,
            cols,
            data,
        })
    }

    /// Bytes of one row.
    pub fn row_bytes(&self) -> usize {
        self.data.len() / self.rows.max(1)
    }

    /// The stored bytes of row `r`.
    pub fn row(&self, r: usize) -> &[u8] {
        let n = self.row_bytes();
        &self.data[r * n..(r + 1) * n]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_checked_against_the_type() {
        assert_eq!(BlockType::Q4_0.row_bytes(64), Some(36));
        assert_eq!(BlockType::Q4K.row_bytes(576), None);
        assert!(PackedMatrix::new("w", BlockType::Q8_0, 2, 64, vec![0; 136]).is_ok());
        let err = PackedMatrix::new("w", BlockType::Q8_0, 2, 64, vec![0; 135]).unwrap_err();
        assert!(err.to_string().contains("`w`"), "{err}");
        assert!(PackedMatrix::new("w", BlockType::Q4_0, 1, 48, vec![0; 27]).is_err());
    }
}
