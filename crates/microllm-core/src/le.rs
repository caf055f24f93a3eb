//! Little-endian numbers from raw bytes: safetensors data, GGUF arrays, block stores, teacher
//! logit shards and KL bases all store them so, and each reader needs the same loop.

/// A number stored little-endian in `SIZE` bytes.
pub trait LeNumber: Copy {
    const SIZE: usize;
    /// The number in the first `SIZE` bytes of `bytes`.
    fn from_le_slice(bytes: &[u8]) -> Self;
}

macro_rules! le_number {
    ($($t:ty),*) => {$(
        impl LeNumber for $t {
            const SIZE: usize = std::mem::size_of::<$t>();
            fn from_le_slice(bytes: &[u8]) -> Self {
                <$t>::from_le_bytes(bytes[..Self::SIZE].try_into().expect("SIZE bytes"))
            }
        }
    )*};
}

le_number!(u16, u32, u64, i32, i64, f32, f64);

/// `bytes` read as consecutive little-endian `T`s; a trailing partial value is ignored, so
/// callers check lengths where a short read means a damaged file.
pub fn decode_le<T: LeNumber>(bytes: &[u8]) -> Vec<T> {
    bytes.chunks_exact(T::SIZE).map(T::from_le_slice).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_each_width() {
        let bytes: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(decode_le::<f32>(&bytes), [1.5, -2.0]);
        assert_eq!(
            decode_le::<u16>(&[1, 0, 0, 1, 7]),
            [1, 256],
            "the odd byte is ignored"
        );
        assert_eq!(decode_le::<i64>(&(-3i64).to_le_bytes()), [-3]);
    }
}
