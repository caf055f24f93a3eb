//! The teacher-logit store on a fixture teacher: with k = vocabulary the stored KL equals the
//! live teacher's exactly; a store written as two shards (separately, then merged) holds
//! the same values as one written whole; mismatched stores and parts are refused by name.

mod common;

use candle_core::{DType, Device, Tensor};
use common::open;
use microllm_core::NoProgress;
use microllm_distill::loss::{LogitMix, LogitTargets, Teacher, head_loss};
use microllm_distill::store::{
    DataRecord, LogitsJob, TeacherRecord, TeacherStore, merge_stores, write_store,
};
use microllm_distill::student::{Freeze, Student};
use microllm_models::Decoder;

const SEQLEN: usize = 12;
const WINDOWS: usize = 10;

fn tokens(vocab: usize) -> Vec<u32> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    (0..SEQLEN * WINDOWS + 5)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % vocab as u64) as u32
        })
        .collect()
}

fn job<'a>(
    teacher: &'a Decoder,
    tokens: &'a [u32],
    k: usize,
    shard: (usize, usize),
) -> LogitsJob<'a> {
    LogitsJob {
        teacher: teacher.into(),
        teacher_record: TeacherRecord {
            spec: "llama-tiny".into(),
            sha256: "teacher-hash".into(),
            family: "llama".into(),
            vocab_size: teacher.config().vocab_size,
        },
        tokenizer_sha256: "tokenizer-hash".into(),
        data: DataRecord {
            path: "ids".into(),
            sha256: "data-hash".into(),
            tokens: tokens.len(),
        },
        tokens,
        seqlen: SEQLEN,
        top_k: k,
        temperature: 2.0,
        max_windows: None,
        shard,
    }
}

/// k = vocabulary: the store's top-k has an empty rest bucket and the bucketed KL is the
/// exact one, so loss and gradients from the store equal those from the live teacher.
#[test]
fn full_vocabulary_store_gives_the_live_teacher_kl() {
    let ckpt = open("llama-tiny");
    let vocab = ckpt.config.vocab_size;
    let teacher = Decoder::load(&ckpt.config, ckpt.tensors.as_ref()).unwrap();
    let ids = tokens(vocab);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    write_store(
        &job(&teacher, &ids, vocab, (0, 1)),
        &dir,
        false,
        &NoProgress,
    )
    .unwrap();
    let store = TeacherStore::open(&dir).unwrap();

    // The student: the mistral fixture shares the vocabulary but not the weights.
    let st = open("mistral-tiny");
    let student = Student::load(
        &st.config,
        st.tensors.as_ref(),
        DType::F32,
        Freeze::default(),
        SEQLEN,
    )
    .unwrap();
    let windows = [3usize, 7];
    let mut batch = Vec::new();
    let (mut k_ids, mut k_logp, mut k_rest) = (Vec::new(), Vec::new(), Vec::new());
    for &w in &windows {
        let win = store.window(w).unwrap();
        assert_eq!(win.input_ids, ids[w * SEQLEN..(w + 1) * SEQLEN]);
        batch.extend(win.input_ids);
        k_ids.extend(win.ids);
        k_logp.extend(win.logp);
        k_rest.extend(win.log_rest);
    }
    assert!(
        k_rest.iter().all(|r| *r == f32::NEG_INFINITY),
        "nothing outside a full top-k"
    );
    let input = Tensor::from_slice(&batch, (2, SEQLEN), &Device::Cpu).unwrap();
    let live = teacher
        .forward(&input)
        .unwrap()
        .reshape((2 * SEQLEN, vocab))
        .unwrap();
    let labels = vec![None; 2 * SEQLEN];
    let mix = LogitMix {
        kl: 1.0,
        reverse_kl: 0.5,
        jsd: 0.25,
        ce: 0.0,
        temperature: 2.0,
    };
    let run = |teacher: Teacher<'_>| {
        let out = student.forward(&input, &[]).unwrap();
        let loss = head_loss(
            &student,
            &out.hidden,
            &LogitTargets {
                labels: &labels,
                teacher,
            },
            &mix,
        )
        .unwrap();
        let grads = loss.loss.backward().unwrap();
        let (name, var) = student.trainable().nth(3).unwrap();
        let g: Vec<f32> = grads
            .get(var.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        (loss.terms, g, name.to_string())
    };
    let (stored, g_stored, name) = run(Teacher::TopK {
        k: vocab,
        ids: &k_ids,
        logp: &k_logp,
        log_rest: &k_rest,
    });
    let (exact, g_exact, _) = run(Teacher::Dense(&live));
    assert!(exact.kl > 1e-3, "the models differ: {exact:?}");
    for (a, b) in [
        (stored.kl, exact.kl),
        (stored.reverse_kl, exact.reverse_kl),
        (stored.jsd, exact.jsd),
    ] {
        assert!(
            (a - b).abs() <= 1e-6 * b.abs().max(1.0),
            "stored {stored:?} vs live {exact:?}"
        );
    }
    let diff = g_stored
        .iter()
        .zip(&g_exact)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(diff < 1e-6, "gradient of {name} differs by {diff}");
}

/// Two shards computed separately and merged hold exactly what one run writes, and the
/// merged store opens like the whole one; a store missing a shard does not open.
#[test]
fn two_shards_merged_equal_one_store() {
    let ckpt = open("llama-tiny");
    let teacher = Decoder::load(&ckpt.config, ckpt.tensors.as_ref()).unwrap();
    let ids = tokens(ckpt.config.vocab_size);
    let tmp = tempfile::tempdir().unwrap();
    let whole = tmp.path().join("whole");
    let parts = [tmp.path().join("part1"), tmp.path().join("part2")];
    write_store(&job(&teacher, &ids, 16, (0, 1)), &whole, false, &NoProgress).unwrap();
    for (i, p) in parts.iter().enumerate() {
        let s = write_store(&job(&teacher, &ids, 16, (i, 2)), p, false, &NoProgress).unwrap();
        assert_eq!(s.windows, WINDOWS / 2);
    }
    let err = TeacherStore::open(&parts[0]).unwrap_err().to_string();
    assert!(err.contains("missing: [2]"), "{err}");
    let merged = tmp.path().join("merged");
    merge_stores(&[&parts[1], &parts[0]], &merged, false).unwrap();
    let (a, b) = (
        TeacherStore::open(&whole).unwrap(),
        TeacherStore::open(&merged).unwrap(),
    );
    assert_eq!(a.windows(), WINDOWS);
    assert_eq!(b.manifest().shards.len(), 2);
    for w in 0..WINDOWS {
        assert_eq!(a.window(w).unwrap(), b.window(w).unwrap(), "window {w}");
    }
    // Per token: 16 u16 ids, 16 f32 log-probabilities, the rest mass and the token id; plus
    // the safetensors header spread over the tokens.
    let per_token = a.manifest().bytes_per_token();
    let data = (2 * 16 + 4 * 16 + 4 + 4) as f64;
    assert!(
        per_token >= data && per_token < data + 1024.0 / (WINDOWS * SEQLEN) as f64,
        "{per_token}"
    );
}

/// A streamed teacher (block by block, windows batched) writes the store a loaded one
/// writes: the same ids, and log-probabilities equal to float rounding.
#[test]
fn streamed_teacher_writes_the_loaded_teachers_store() {
    let ckpt = open("llama-tiny");
    let teacher = Decoder::load(&ckpt.config, ckpt.tensors.as_ref()).unwrap();
    let streamed =
        microllm_models::StreamedDecoder::new(&ckpt.config, ckpt.tensors.as_ref(), SEQLEN).unwrap();
    let ids = tokens(ckpt.config.vocab_size);
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("loaded"), tmp.path().join("streamed"));
    write_store(&job(&teacher, &ids, 16, (0, 1)), &a, false, &NoProgress).unwrap();
    let mut streamed_job = job(&teacher, &ids, 16, (0, 1));
    streamed_job.teacher = microllm_distill::store::TeacherModel::Streamed(&streamed);
    write_store(&streamed_job, &b, false, &NoProgress).unwrap();
    let (a, b) = (
        TeacherStore::open(&a).unwrap(),
        TeacherStore::open(&b).unwrap(),
    );
    for w in 0..WINDOWS {
        let (x, y) = (a.window(w).unwrap(), b.window(w).unwrap());
        assert_eq!(x.input_ids, y.input_ids);
        assert_eq!(x.ids, y.ids, "window {w}: top-k ids");
        let worst = x
            .logp
            .iter()
            .zip(&y.logp)
            .map(|(p, q)| (p - q).abs())
            .fold(0f32, f32::max);
        assert!(
            worst < 1e-4,
            "window {w}: log-probabilities differ by {worst}"
        );
    }
}

/// Parts of different stores, a part given twice, and a store for another run are refused,
/// each naming what differs.
#[test]
fn mismatched_parts_and_stores_are_refused() {
    let ckpt = open("llama-tiny");
    let teacher = Decoder::load(&ckpt.config, ckpt.tensors.as_ref()).unwrap();
    let ids = tokens(ckpt.config.vocab_size);
    let tmp = tempfile::tempdir().unwrap();
    let p1 = tmp.path().join("p1");
    let p2 = tmp.path().join("p2");
    write_store(&job(&teacher, &ids, 16, (0, 2)), &p1, false, &NoProgress).unwrap();
    write_store(&job(&teacher, &ids, 8, (1, 2)), &p2, false, &NoProgress).unwrap();
    let out = tmp.path().join("out");
    let err = merge_stores(&[&p1, &p2], &out, false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("top_k") && err.contains("p2"), "{err}");
    let err = merge_stores(&[&p1, &p1], &out, false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("more than one part"), "{err}");
    assert!(!out.exists(), "nothing half-written");

    let whole = tmp.path().join("whole");
    write_store(&job(&teacher, &ids, 16, (0, 1)), &whole, false, &NoProgress).unwrap();
    let store = TeacherStore::open(&whole).unwrap();
    store
        .check_student(384, "tokenizer-hash", SEQLEN, 2.0)
        .unwrap();
    for (vocab, tok, seqlen, t, key) in [
        (383, "tokenizer-hash", SEQLEN, 2.0, "teacher.vocab_size"),
        (384, "other-tokenizer", SEQLEN, 2.0, "tokenizer_sha256"),
        (384, "tokenizer-hash", 24, 2.0, "seqlen"),
        (384, "tokenizer-hash", SEQLEN, 1.0, "temperature"),
    ] {
        let err = store
            .check_student(vocab, tok, seqlen, t)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(key) && err.contains("manifest.json"),
            "{key}: {err}"
        );
    }
}

/// A store damaged after it was written is refused: a flipped byte by the manifest's digest
/// when the store is opened, a shard name that leaves the store's directory by the manifest
/// check, and a row naming a token twice (digest updated, so only the row check can see it)
/// when its window is read.
#[test]
fn damaged_stores_are_refused() {
    let ckpt = open("llama-tiny");
    let teacher = Decoder::load(&ckpt.config, ckpt.tensors.as_ref()).unwrap();
    let ids = tokens(ckpt.config.vocab_size);
    let tmp = tempfile::tempdir().unwrap();
    let whole = tmp.path().join("whole");
    write_store(&job(&teacher, &ids, 16, (0, 1)), &whole, false, &NoProgress).unwrap();
    let manifest_of = |dir: &std::path::Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap()
    };
    let shard_file = manifest_of(&whole)["shards"][0]["file"]
        .as_str()
        .unwrap()
        .to_string();
    let copy = |name: &str| {
        let dir = tmp.path().join(name);
        std::fs::create_dir(&dir).unwrap();
        for entry in std::fs::read_dir(&whole).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
        }
        dir
    };
    let open_err = |dir: &std::path::Path| TeacherStore::open(dir).unwrap_err().to_string();

    let flipped = copy("flipped");
    let shard = flipped.join(&shard_file);
    let mut bytes = std::fs::read(&shard).unwrap();
    let at = bytes.len() - 7;
    bytes[at] ^= 0x10;
    std::fs::write(&shard, &bytes).unwrap();
    let err = open_err(&flipped);
    assert!(
        err.contains("SHA-256") && err.contains(&shard_file),
        "{err}"
    );

    let escaping = copy("escaping");
    let mut manifest = manifest_of(&escaping);
    manifest["shards"][0]["file"] = format!("../whole/{shard_file}").into();
    std::fs::write(escaping.join("manifest.json"), manifest.to_string()).unwrap();
    let err = open_err(&escaping);
    assert!(err.contains("not a file name inside the store"), "{err}");

    let doubled = copy("doubled");
    let shard = doubled.join(&shard_file);
    let mut bytes = std::fs::read(&shard).unwrap();
    let offset = {
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let view = st.tensor("topk_ids").unwrap();
        assert_eq!(view.dtype(), safetensors::Dtype::U16);
        view.data().as_ptr() as usize - bytes.as_ptr() as usize
    };
    // Position 0 of window 0 names its first id again in its second slot.
    bytes.copy_within(offset..offset + 2, offset + 2);
    std::fs::write(&shard, &bytes).unwrap();
    let mut manifest = manifest_of(&doubled);
    manifest["shards"][0]["sha256"] = microllm_distill::fingerprint::sha256_bytes(&bytes).into();
    std::fs::write(doubled.join("manifest.json"), manifest.to_string()).unwrap();
    let store = TeacherStore::open(&doubled).unwrap();
    let err = store.window(0).unwrap_err().to_string();
    assert!(err.contains("twice") && err.contains("window 0"), "{err}");
    store.window(1).unwrap();
}
