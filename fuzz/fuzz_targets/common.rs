//! Shared by the targets: splitting one fuzz input into the files of a directory.

/// Splits `data` into `n` parts: each of the first `n - 1` is prefixed by its length as a
/// little-endian u32 (cut short where the input ends), the last part is the rest. The seed
/// builder (scripts/fuzz.sh) writes real files in this layout.
pub fn split(data: &[u8], n: usize) -> Vec<&[u8]> {
    let mut parts = Vec::with_capacity(n);
    let mut rest = data;
    for _ in 1..n {
        let len = rest.get(..4).map_or(0, |b| {
            u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize
        });
        rest = rest.get(4..).unwrap_or_default();
        let (part, tail) = rest.split_at(len.min(rest.len()));
        parts.push(part);
        rest = tail;
    }
    parts.push(rest);
    parts
}

/// Loads every tensor of a checkpoint that opened: dequantization and the q/k row
/// un-permutation run on whatever the header promised.
pub fn touch_tensors(ckpt: &microllm_io::Checkpoint) {
    for info in ckpt.tensors.infos() {
        let _ = ckpt.tensors.load(&info.name);
        let _ = ckpt.tensors.load_packed(&info.name);
    }
    if let Some(tok) = &ckpt.tokenizer {
        let _ = tok.encode("Hello, world! 123", true);
    }
}
