//! The fuzz targets' oracles (fuzz/src/lib.rs) driven by proptest in the normal
//! test run: random byte streams built from valid frames, the shared test vectors,
//! junk and cut-offs, fed in random chunkings, must frame exactly as a reference
//! framer does; random payloads must decode exactly as prost decodes them.

#[allow(dead_code)]
#[path = "../fuzz/src/lib.rs"]
mod oracle;

use boundary_log_proxy::codec::{encode_frame, Tag, MAX_PAYLOAD_LEN};
use boundary_log_proxy::workload;
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors");

/// Every `.bin` test vector (whole frames or streams of them).
fn vectors() -> Vec<Vec<u8>> {
    let dir = std::fs::read_dir(VECTORS)
        .unwrap_or_else(|e| panic!("test vectors missing: {VECTORS}: {e}"));
    let mut files: Vec<_> = dir
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "bin"))
        .collect();
    files.sort();
    assert!(files.len() >= 10, "test vectors missing in {VECTORS}");
    files.iter().map(|f| std::fs::read(f).unwrap()).collect()
}

/// One piece of a stream.
#[derive(Debug, Clone)]
enum Piece {
    /// A valid frame of `logs` workload logs.
    Logs { tag: Tag, first: i32, logs: usize },
    /// One of the shared test vectors, whole.
    Vector(usize),
    /// A well-framed payload of random bytes.
    RandomPayload { tag: Tag, payload: Vec<u8> },
    /// A header announcing `len` bytes (maybe over the limit) and nothing more.
    BareHeader { tag: u8, len: u32 },
    /// Raw random bytes.
    Junk(Vec<u8>),
}

fn arb_tag() -> impl Strategy<Value = Tag> {
    prop_oneof![Just(Tag::V1), Just(Tag::V2)]
}

fn arb_piece(vectors: usize) -> impl Strategy<Value = Piece> {
    prop_oneof![
        4 => (arb_tag(), -5..1000i32, 0..40usize)
            .prop_map(|(tag, first, logs)| Piece::Logs { tag, first, logs }),
        3 => (0..vectors).prop_map(Piece::Vector),
        2 => (arb_tag(), proptest::collection::vec(any::<u8>(), 0..200))
            .prop_map(|(tag, payload)| Piece::RandomPayload { tag, payload }),
        1 => (0..4u8, (MAX_PAYLOAD_LEN as u32 - 2)..(MAX_PAYLOAD_LEN as u32 + 2))
            .prop_map(|(tag, len)| Piece::BareHeader { tag, len }),
        1 => proptest::collection::vec(any::<u8>(), 1..8).prop_map(Piece::Junk),
    ]
}

fn build(pieces: &[Piece], vectors: &[Vec<u8>]) -> Vec<u8> {
    let mut stream = Vec::new();
    for piece in pieces {
        match piece {
            Piece::Logs { tag, first, logs } => {
                let request = workload::request("fuzz-session", "codex", *first, *logs);
                workload::append_frame(*tag, &request, &mut stream).unwrap();
            }
            Piece::Vector(i) => stream.extend_from_slice(&vectors[*i]),
            Piece::RandomPayload { tag, payload } => {
                encode_frame(*tag, payload, &mut stream).unwrap()
            }
            Piece::BareHeader { tag, len } => {
                stream.extend_from_slice(&(u32::from(*tag) << 24 | len).to_be_bytes())
            }
            Piece::Junk(bytes) => stream.extend_from_slice(bytes),
        }
    }
    stream
}

/// Chunk sizes as the readers produce them, and some tiny ones.
fn arb_chunking() -> impl Strategy<Value = Vec<usize>> {
    proptest::collection::vec(
        prop_oneof![1..8usize, 1..400usize, Just(16 * 1024), Just(64 * 1024)],
        1..64,
    )
}

proptest! {
    // A failing case is printed, and replayed first on this machine's next run from
    // target/ (ignored by git), instead of a tests/*.proptest-regressions file that asks
    // to be committed: a real bug found here becomes a named test of its own.
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "target/proptest-regressions/fuzz_like.txt"
        ))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_streams_in_random_chunks_frame_as_the_reference_does(
        pieces in proptest::collection::vec(arb_piece(14), 0..24),
        cut in any::<prop::sample::Index>(),
        cut_it in any::<bool>(),
        flip in proptest::option::of((any::<prop::sample::Index>(), any::<u8>())),
        chunks in arb_chunking(),
    ) {
        let vectors = vectors();
        let pieces: Vec<Piece> = pieces
            .into_iter()
            .map(|p| match p {
                Piece::Vector(i) => Piece::Vector(i % vectors.len()),
                other => other,
            })
            .collect();
        let mut stream = build(&pieces, &vectors);
        if let Some((at, byte)) = flip {
            if !stream.is_empty() {
                let at = at.index(stream.len());
                stream[at] ^= byte;
            }
        }
        if cut_it && !stream.is_empty() {
            stream.truncate(cut.index(stream.len()));
        }
        oracle::check_stream_chunked(&stream, chunks.into_iter().cycle());
    }

    #[test]
    fn random_bytes_decode_as_prost_decodes_them(
        data in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        oracle::check_message(&data);
    }

    #[test]
    fn mutated_vectors_decode_as_prost_decodes_them(
        which in any::<prop::sample::Index>(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let vectors = vectors();
        let mut data = vectors[which.index(vectors.len())].clone();
        for (at, byte) in flips {
            let at = at.index(data.len());
            data[at] ^= byte;
        }
        oracle::check_message(&data);
        oracle::check_stream(&data);
    }
}

#[test]
fn every_vector_passes_both_oracles() {
    for vector in vectors() {
        oracle::check_stream(&vector);
        oracle::check_message(&vector);
    }
}
