//! The ggml tensor types a GGUF file can hold, as microllm knows them.
//!
//! candle's `GgmlDType` covers the legacy and k-quant types it computes with, but not the
//! i-quants (IQ4_NL, IQ4_XS: the most used GGUF types under 5 bits), and its reader refuses a
//! file that holds one. microllm reads, writes and runs those itself, so every type a file or
//! a plan names is a [`GgufType`]; candle's type appears only where candle's quantizers or
//! kernels are called ([`GgufType::candle`]).

use candle_core::quantized::GgmlDType;
use microllm_core::BlockType;

/// A ggml tensor type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgufType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    Q8K,
    /// 4-bit indices into a fixed non-linear table of 16 values, one f16 scale per 32.
    Iq4Nl,
    /// IQ4_NL's table in super-blocks of 256: an f16 scale and a 6-bit scale per 32.
    Iq4Xs,
}

/// Every type, with ggml's numeric id, its name as llama.cpp spells it, values per block and
/// bytes per block.
const TYPES: [(GgufType, u32, &str, usize, usize); 17] = [
    (GgufType::F32, 0, "F32", 1, 4),
    (GgufType::F16, 1, "F16", 1, 2),
    (GgufType::Q4_0, 2, "Q4_0", 32, 18),
    (GgufType::Q4_1, 3, "Q4_1", 32, 20),
    (GgufType::Q5_0, 6, "Q5_0", 32, 22),
    (GgufType::Q5_1, 7, "Q5_1", 32, 24),
    (GgufType::Q8_0, 8, "Q8_0", 32, 34),
    (GgufType::Q8_1, 9, "Q8_1", 32, 36),
    (GgufType::Q2K, 10, "Q2_K", 256, 84),
    (GgufType::Q3K, 11, "Q3_K", 256, 110),
    (GgufType::Q4K, 12, "Q4_K", 256, 144),
    (GgufType::Q5K, 13, "Q5_K", 256, 176),
    (GgufType::Q6K, 14, "Q6_K", 256, 210),
    (GgufType::Q8K, 15, "Q8_K", 256, 292),
    (GgufType::Iq4Nl, 20, "IQ4_NL", 32, 18),
    (GgufType::Iq4Xs, 23, "IQ4_XS", 256, 136),
    (GgufType::BF16, 30, "BF16", 1, 2),
];

impl GgufType {
    fn row(self) -> &'static (GgufType, u32, &'static str, usize, usize) {
        TYPES
            .iter()
            .find(|r| r.0 == self)
            .expect("every type is in the table")
    }

    /// ggml's numeric type id, as a GGUF header stores it.
    pub fn id(self) -> u32 {
        self.row().1
    }

    /// The type of a numeric ggml id, if microllm knows it.
    pub fn from_id(id: u32) -> Option<Self> {
        TYPES.iter().find(|r| r.1 == id).map(|r| r.0)
    }

    /// The name as llama.cpp spells it (`Q4_K`, `IQ4_XS`).
    pub fn name(self) -> &'static str {
        self.row().2
    }

    /// Values per block.
    pub fn block_size(self) -> usize {
        self.row().3
    }

    /// Bytes per block.
    pub fn type_size(self) -> usize {
        self.row().4
    }

    /// candle's name for the type, where candle implements it (every type but the i-quants).
    pub fn candle(self) -> Option<GgmlDType> {
        Some(match self {
            Self::F32 => GgmlDType::F32,
            Self::F16 => GgmlDType::F16,
            Self::BF16 => GgmlDType::BF16,
            Self::Q4_0 => GgmlDType::Q4_0,
            Self::Q4_1 => GgmlDType::Q4_1,
            Self::Q5_0 => GgmlDType::Q5_0,
            Self::Q5_1 => GgmlDType::Q5_1,
            Self::Q8_0 => GgmlDType::Q8_0,
            Self::Q8_1 => GgmlDType::Q8_1,
            Self::Q2K => GgmlDType::Q2K,
            Self::Q3K => GgmlDType::Q3K,
            Self::Q4K => GgmlDType::Q4K,
            Self::Q5K => GgmlDType::Q5K,
            Self::Q6K => GgmlDType::Q6K,
            Self::Q8K => GgmlDType::Q8K,
            Self::Iq4Nl | Self::Iq4Xs => return None,
        })
    }

    /// The type of one of candle's.
    pub fn from_candle(dtype: GgmlDType) -> Self {
        match dtype {
            GgmlDType::F32 => Self::F32,
            GgmlDType::F16 => Self::F16,
            GgmlDType::BF16 => Self::BF16,
            GgmlDType::Q4_0 => Self::Q4_0,
            GgmlDType::Q4_1 => Self::Q4_1,
            GgmlDType::Q5_0 => Self::Q5_0,
            GgmlDType::Q5_1 => Self::Q5_1,
            GgmlDType::Q8_0 => Self::Q8_0,
            GgmlDType::Q8_1 => Self::Q8_1,
            GgmlDType::Q2K => Self::Q2K,
            GgmlDType::Q3K => Self::Q3K,
            GgmlDType::Q4K => Self::Q4K,
            GgmlDType::Q5K => Self::Q5K,
            GgmlDType::Q6K => Self::Q6K,
            GgmlDType::Q8K => Self::Q8K,
        }
    }

    /// The packed type the forward pass runs this type as, if it has one (f32 is read
    /// densely; Q8_1 and Q8_K are activation types no model file uses for weights).
    pub fn block_type(self) -> Option<BlockType> {
        Some(match self {
            Self::F16 => BlockType::F16,
            Self::BF16 => BlockType::BF16,
            Self::Q4_0 => BlockType::Q4_0,
            Self::Q4_1 => BlockType::Q4_1,
            Self::Q5_0 => BlockType::Q5_0,
            Self::Q5_1 => BlockType::Q5_1,
            Self::Q8_0 => BlockType::Q8_0,
            Self::Q2K => BlockType::Q2K,
            Self::Q3K => BlockType::Q3K,
            Self::Q4K => BlockType::Q4K,
            Self::Q5K => BlockType::Q5K,
            Self::Q6K => BlockType::Q6K,
            Self::Iq4Nl => BlockType::Iq4Nl,
            Self::Iq4Xs => BlockType::Iq4Xs,
            Self::F32 | Self::Q8_1 | Self::Q8K => return None,
        })
    }
}

impl std::fmt::Display for GgufType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_names_and_sizes_agree_with_candle_where_it_knows_the_type() {
        for &(t, id, _, block, bytes) in &TYPES {
            assert_eq!(GgufType::from_id(id), Some(t));
            if let Some(c) = t.candle() {
                assert_eq!(GgufType::from_candle(c), t);
                assert_eq!((c.block_size(), c.type_size()), (block, bytes), "{t}");
            }
            if let Some(b) = t.block_type() {
                assert_eq!((b.block_len(), b.block_bytes()), (block, bytes), "{t}");
                assert_eq!(b.name(), t.name());
            }
        }
        assert_eq!(GgufType::from_id(19), None, "IQ1_S is not read");
    }
}
