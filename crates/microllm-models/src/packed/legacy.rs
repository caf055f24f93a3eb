//! ggml's 32-value block types (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0), and the i-quants IQ4_NL /
//! IQ4_XS, re-laid for integer dot products.
//!
//! Every one of them is `w = d * (q - z) + m` per block of 32, with unsigned codes `q` (Q8_0's
//! signed bytes shifted by 128), a per-type zero `z` for the symmetric types and a per-block
//! minimum `m` for the asymmetric ones. The i-quants' 4-bit indices are laid like Q4_0's
//! nibbles and looked up in their table of 16 levels (shifted by 128 like Q8_0's bytes) just
//! before the dot products; IQ4_XS's per-32 scale is its super-block scale times the 6-bit
//! sub-scale, formed in f32 as ggml's own decoder forms it. The file's rows are regrouped sixteen at a time so that
//! one 64-byte vector holds four consecutive codes of sixteen rows: one `vpdpbusd` then adds
//! four products into each row's sum, and an activation's four bytes are a single broadcast.
//!
//! Per group of 16 rows and block of 32 columns:
//! * 4-bit codes: four 64-byte vectors; vector `j` holds, for row `r`, the file's bytes
//!   `qs[4j..4j + 4]`, whose low nibbles are columns `4j..4j + 4` and high nibbles columns
//!   `16 + 4j..`. The re-layout moves whole bytes, never nibbles.
//! * Q5's fifth bits: eight 64-bit masks, one per vector half (low nibbles of vectors 0..4,
//!   then high nibbles), bit `4r + c` for byte `c` of row `r`.
//! * 8-bit codes: eight 64-byte vectors of four columns each.
//! * `d` (and `m`) as sixteen f32, one per row.
//!
//! Memory is the file's within a few percent (the scales widen from f16 to f32; rows are padded
//! to a multiple of 32).

use microllm_core::{BlockType, Error, PackedMatrix, Result};

use super::panel::DecodeRows;

/// Rows per group: one 512-bit vector of i32 sums.
pub(crate) const GROUP: usize = 16;
/// Values per block.
pub(crate) const BLOCK: usize = 32;

/// How a type's codes are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Codes {
    /// One byte per code (Q8_0).
    Byte,
    /// Two codes per byte (Q4_0, Q4_1).
    Nibble,
    /// Two codes per byte and a bit plane (Q5_0, Q5_1).
    Nibble5,
    /// Two indices per byte into [`LEVEL_CODES`] (IQ4_NL, IQ4_XS).
    Levels,
}

/// The i-quants' 16 levels as unsigned codes (level + 128, the zero being 128).
pub(crate) const LEVEL_CODES: [u8; 16] = {
    let mut codes = [0u8; 16];
    let mut i = 0;
    while i < 16 {
        codes[i] = (microllm_core::IQ4_LEVELS[i] as i16 + 128) as u8;
        i += 1;
    }
    codes
};

/// A legacy block type's matrix in the grouped layout above.
pub(crate) struct BlockRows {
    pub(crate) codes_kind: Codes,
    /// Subtracted from every code (0 for the types with a minimum).
    pub(crate) zero: i32,
    pub(crate) asymmetric: bool,
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    /// Groups of 16 rows, always even (rows are padded to 32).
    pub(crate) groups: usize,
    /// Blocks per row.
    pub(crate) blocks: usize,
    pub(crate) codes: Vec<u8>,
    pub(crate) high: Vec<u64>,
    pub(crate) d: Vec<f32>,
    pub(crate) m: Vec<f32>,
}

fn f16_at(bytes: &[u8], at: usize) -> f32 {
    half::f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

impl BlockRows {
    /// Whether `kind` is one of the types laid out here.
    pub(crate) fn handles(kind: BlockType) -> bool {
        matches!(
            kind,
            BlockType::Q4_0
                | BlockType::Q4_1
                | BlockType::Q5_0
                | BlockType::Q5_1
                | BlockType::Q8_0
                | BlockType::Iq4Nl
                | BlockType::Iq4Xs
        )
    }

    /// Bytes of codes per group and block.
    pub(crate) fn tile_bytes(&self) -> usize {
        match self.codes_kind {
            Codes::Byte => GROUP * BLOCK,
            Codes::Nibble | Codes::Nibble5 | Codes::Levels => GROUP * BLOCK / 2,
        }
    }

    /// Re-lays the file's blocks of `m`.
    pub(crate) fn new(m: &PackedMatrix) -> Result<Self> {
        let (codes_kind, zero, asymmetric) = match m.block_type {
            BlockType::Q4_0 => (Codes::Nibble, 8, false),
            BlockType::Q4_1 => (Codes::Nibble, 0, true),
            BlockType::Q5_0 => (Codes::Nibble5, 16, false),
            BlockType::Q5_1 => (Codes::Nibble5, 0, true),
            BlockType::Q8_0 => (Codes::Byte, 128, false),
            BlockType::Iq4Nl | BlockType::Iq4Xs => (Codes::Levels, 128, false),
            other => {
                return Err(Error::Invalid(format!(
                    "{} is not a 32-value block type",
                    other.name()
                )));
            }
        };
        let blocks = m.cols / BLOCK;
        let groups = m.rows.div_ceil(2 * GROUP) * 2;
        let mut out = Self {
            codes_kind,
            zero,
            asymmetric,
            rows: m.rows,
            cols: m.cols,
            groups,
            blocks,
            codes: Vec::new(),
            high: Vec::new(),
            d: vec![0.0; groups * blocks * GROUP],
            m: if asymmetric {
                vec![0.0; groups * blocks * GROUP]
            } else {
                Vec::new()
            },
        };
        out.codes = vec![0; groups * blocks * out.tile_bytes()];
        if codes_kind == Codes::Nibble5 {
            out.high = vec![0; groups * blocks * 8];
        }
        // Padding rows keep d = 0 and their codes at the type's zero, so they contribute 0.
        let pad_code = match codes_kind {
            Codes::Byte => 128,
            _ => 0,
        };
        out.codes.fill(pad_code);
        let bb = m.block_type.block_bytes();
        for r in 0..m.rows {
            let row = m.row(r);
            let (g, lane) = (r / GROUP, r % GROUP);
            if matches!(m.block_type, BlockType::Iq4Nl | BlockType::Iq4Xs) {
                out.lay_iq4_row(m.block_type, row, g, lane);
                continue;
            }
            for b in 0..blocks {
                let blk = &row[b * bb..(b + 1) * bb];
                let tile = g * blocks + b;
                out.d[tile * GROUP + lane] = f16_at(blk, 0);
                let qs = match m.block_type {
                    BlockType::Q4_0 => &blk[2..18],
                    BlockType::Q4_1 => {
                        out.m[tile * GROUP + lane] = f16_at(blk, 2);
                        &blk[4..20]
                    }
                    BlockType::Q5_0 => &blk[6..22],
                    BlockType::Q5_1 => {
                        out.m[tile * GROUP + lane] = f16_at(blk, 2);
                        &blk[8..24]
                    }
                    _ => &blk[2..34],
                };
                let base = tile * out.tile_bytes();
                match codes_kind {
                    Codes::Byte => {
                        for (k, &q) in qs.iter().enumerate() {
                            let at = base + (k / 4) * 64 + lane * 4 + k % 4;
                            out.codes[at] = (q as i8 as i32 + 128) as u8;
                        }
                    }
                    Codes::Nibble | Codes::Nibble5 | Codes::Levels => {
                        for (i, &q) in qs.iter().enumerate() {
                            out.codes[base + (i / 4) * 64 + lane * 4 + i % 4] = q;
                        }
                    }
                }
                if codes_kind == Codes::Nibble5 {
                    let qh_at = if asymmetric { 4 } else { 2 };
                    let qh = u32::from_le_bytes(blk[qh_at..qh_at + 4].try_into().expect("4"));
                    for k in 0..BLOCK {
                        if qh >> k & 1 == 1 {
                            let (half, within) = (k / 16, k % 16);
                            let mask = tile * 8 + half * 4 + within / 4;
                            out.high[mask] |= 1 << (lane * 4 + within % 4);
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    /// Lays one IQ4_NL / IQ4_XS row (row `g * 16 + lane`): the file's bytes of indices as
    /// Q4_0's are laid, and each block of 32 its f32 scale.
    fn lay_iq4_row(&mut self, kind: BlockType, row: &[u8], g: usize, lane: usize) {
        // (per-32 scale, the block's 16 bytes of packed indices) for block b.
        let (nl_bytes, xs_bytes) = (
            BlockType::Iq4Nl.block_bytes(),
            BlockType::Iq4Xs.block_bytes(),
        );
        let block = |b: usize| -> (f32, &[u8]) {
            if kind == BlockType::Iq4Nl {
                let blk = &row[b * nl_bytes..(b + 1) * nl_bytes];
                (f16_at(blk, 0), &blk[2..18])
            } else {
                let (s, ib) = (b / 8, b % 8);
                let blk = &row[s * xs_bytes..(s + 1) * xs_bytes];
                let scale = f16_at(blk, 0) * microllm_core::iq4_xs_sub_scale(blk, ib) as f32;
                (scale, &blk[8 + 16 * ib..8 + 16 * (ib + 1)])
            }
        };
        for b in 0..self.blocks {
            let tile = g * self.blocks + b;
            let (d, qs) = block(b);
            self.d[tile * GROUP + lane] = d;
            let base = tile * self.tile_bytes();
            for (i, &q) in qs.iter().take(16).enumerate() {
                self.codes[base + (i / 4) * 64 + lane * 4 + i % 4] = q;
            }
        }
    }

    /// The unsigned code of row `g * 16 + lane`, column `b * 32 + kk` (before the zero is
    /// subtracted).
    pub(crate) fn code_at(&self, g: usize, lane: usize, b: usize, kk: usize) -> i32 {
        let tile = g * self.blocks + b;
        let base = tile * self.tile_bytes();
        match self.codes_kind {
            Codes::Byte => self.codes[base + (kk / 4) * 64 + lane * 4 + kk % 4] as i32,
            Codes::Nibble | Codes::Nibble5 | Codes::Levels => {
                let within = kk % 16;
                let byte = self.codes[base + (within / 4) * 64 + lane * 4 + within % 4];
                let mut q = if kk < 16 { byte & 15 } else { byte >> 4 } as i32;
                if self.codes_kind == Codes::Nibble5 {
                    let mask = self.high[tile * 8 + (kk / 16) * 4 + within / 4];
                    q |= ((mask >> (lane * 4 + within % 4) & 1) as i32) << 4;
                }
                if self.codes_kind == Codes::Levels {
                    q = i32::from(LEVEL_CODES[q as usize]);
                }
                q
            }
        }
    }

    /// Bytes held.
    pub(crate) fn bytes(&self) -> usize {
        self.codes.len() + self.high.len() * 8 + (self.d.len() + self.m.len()) * 4
    }
}

impl DecodeRows for BlockRows {
    fn rows(&self) -> usize {
        self.rows
    }
    fn cols(&self) -> usize {
        self.cols
    }
    fn decode_rows(&self, first: usize, n: usize, out: &mut [f32]) {
        for (i, row) in out.chunks_exact_mut(self.cols).take(n).enumerate() {
            let r = first + i;
            let (g, lane) = (r / GROUP, r % GROUP);
            for (k, w) in row.iter_mut().enumerate() {
                let s = (g * self.blocks + k / BLOCK) * GROUP + lane;
                let m = if self.asymmetric { self.m[s] } else { 0.0 };
                *w = self.d[s] * (self.code_at(g, lane, k / BLOCK, k % BLOCK) - self.zero) as f32
                    + m;
            }
        }
    }
}
