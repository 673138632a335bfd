//! The golden vectors of `docs/wire-format.md`, checked in both directions, plus every prefix and
//! many bit flips of each: decoding must give a value or an error, never a panic, and any value
//! decoded from a mutant must be canonical (it re-encodes to the same bytes, apart from the
//! over-long varints postcard accepts).

use crdt_core::{
    codec, CausalContext, Dot, GCounter, HlcTimestamp, LwwRegister, MvRegister, OrMap, OrSet,
    PNCounter, ReplicaId, Reset, VersionVector,
};
use serde::{de::DeserializeOwned, Serialize};

type Check = Box<dyn Fn(&[u8]) -> Result<Option<Vec<u8>>, codec::DecodeError>>;

/// A golden value: its encoding, and a decoder that reports whether bytes decode to it.
struct Case {
    name: &'static str,
    bytes: Vec<u8>,
    /// Decodes as the case's type; `Some(re-encoding)` if the result differs from the value.
    decode: Check,
}

fn case<T>(name: &'static str, value: T) -> Case
where
    T: Serialize + DeserializeOwned + PartialEq + 'static,
{
    let bytes = codec::encode(&value);
    let decode: Check =
        Box::new(move |b| codec::decode::<T>(b).map(|v| (v != value).then(|| codec::encode(&v))));
    Case {
        name,
        bytes,
        decode,
    }
}

fn r(n: u64) -> ReplicaId {
    ReplicaId::new(n)
}

fn cases() -> Vec<Case> {
    let mut gc = GCounter::new();
    gc.inc(r(1), 3);
    gc.inc(r(2), 5);

    let mut pn = PNCounter::new();
    pn.inc(r(1), 10);
    pn.dec(r(2), 4);

    let mut vv = VersionVector::new();
    vv.raise(r(1), 2);
    vv.raise(r(300), 1);

    let ctx: CausalContext = [Dot::new(r(1), 1), Dot::new(r(1), 2), Dot::new(r(2), 4)]
        .into_iter()
        .collect();

    let mut set = OrSet::new();
    set.add(r(1), "x".to_string());
    set.add(r(2), "y".to_string());
    set.remove(&"x".to_string());

    let mut lww = LwwRegister::new();
    lww.set(
        HlcTimestamp::new(1_700_000_000_000, 1),
        r(7),
        "on".to_string(),
    );

    let mut mv = MvRegister::new();
    let mut other = MvRegister::new();
    mv.write(r(1), 1u8);
    other.write(r(2), 2u8);
    crdt_core::Crdt::merge(&mut mv, &other);

    let mut map: OrMap<String, GCounter> = OrMap::new();
    map.update(r(1), "a".to_string(), |c| c.inc(r(1), 2));

    let mut reset_counter = GCounter::new();
    reset_counter.inc(r(1), 3);
    reset_counter.reset();
    reset_counter.inc(r(1), 1);

    let mut reset_lww = lww.clone();
    reset_lww.reset();

    // A single add whose dot lies beyond a gap: the dot is written once, with its element.
    let mut source = OrSet::new();
    source.add(r(1), "a".to_string());
    let add_delta = source.add(r(1), "b".to_string());

    let mut removed = map.clone();
    removed.remove(&"a".to_string());

    vec![
        case("gcounter", gc),
        case("pncounter", pn),
        case("version-vector", vv),
        case("causal-context", ctx),
        case(
            "causal-context-runs",
            [5, 6, 9]
                .into_iter()
                .map(|c| Dot::new(r(3), c))
                .collect::<CausalContext>(),
        ),
        case("orset", set),
        case("lww-register", lww),
        case("mv-register", mv),
        case("ormap", map),
        case("gcounter-reset", reset_counter),
        case("lww-register-reset", reset_lww),
        case("ormap-removed", removed),
        case("empty-orset", OrSet::<String>::new()),
        case("orset-add-delta", add_delta),
    ]
}

fn documented() -> Vec<(String, Vec<u8>)> {
    crdt_core::laws::hex_blocks(include_str!("../../docs/wire-format.md"), "golden")
}

#[test]
fn golden_vectors_match_the_document_both_ways() {
    let doc = documented();
    let cases = cases();
    for case in &cases {
        let Some((_, bytes)) = doc.iter().find(|(name, _)| name == case.name) else {
            panic!(
                "docs/wire-format.md lacks golden vector {}: {}",
                case.name,
                hex(&case.bytes)
            );
        };
        assert_eq!(
            hex(bytes),
            hex(&case.bytes),
            "encoding of {} differs from the document",
            case.name
        );
        assert_eq!((case.decode)(bytes), Ok(None), "decoding {}", case.name);
    }
    for (name, _) in &doc {
        assert!(
            cases.iter().any(|c| c.name == name),
            "the document has a vector {name} no test checks"
        );
    }
}

#[test]
fn prefixes_and_bit_flips_decode_or_fail_cleanly() {
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    for case in cases() {
        let b = &case.bytes;
        for len in 0..b.len() {
            assert!(
                (case.decode)(&b[..len]).is_err(),
                "{}: prefix {len} decoded",
                case.name
            );
        }
        let mut mutants: Vec<Vec<u8>> = (0..b.len() * 8)
            .map(|bit| {
                let mut m = b.clone();
                m[bit / 8] ^= 1 << (bit % 8);
                m
            })
            .collect();
        for _ in 0..2_000 {
            let mut m = b.clone();
            for _ in 0..rng.usize(1..4) {
                let i = rng.usize(..m.len());
                m[i] ^= rng.u8(1..);
            }
            mutants.push(m);
        }
        for m in mutants {
            if let Ok(Some(reencoded)) = (case.decode)(&m) {
                assert!(
                    reencoded == m || has_overlong_varint(&m),
                    "{}: mutant {} decoded to a value encoded as {}",
                    case.name,
                    hex(&m),
                    hex(&reencoded)
                );
            }
        }
    }
}

#[test]
fn decode_errors_are_typed() {
    use codec::DecodeError;
    assert_eq!(codec::decode::<GCounter>(&[]), Err(DecodeError::Empty));
    assert_eq!(
        codec::decode::<GCounter>(&[9, 0]),
        Err(DecodeError::UnsupportedVersion(9))
    );
    assert_eq!(
        codec::decode::<GCounter>(&[4, 1, 1]),
        Err(DecodeError::Truncated)
    );
    assert_eq!(
        codec::decode::<GCounter>(&[4, 0, 0, 0]),
        Err(DecodeError::TrailingBytes(1))
    );
    // Replicas out of order, a zero count, a dot counter of 0.
    assert_eq!(
        codec::decode::<GCounter>(&[4, 2, 2, 1, 1, 1, 0]),
        Err(DecodeError::Malformed)
    );
    assert_eq!(
        codec::decode::<GCounter>(&[4, 1, 1, 0, 0]),
        Err(DecodeError::Malformed)
    );
    assert_eq!(
        codec::decode::<CausalContext>(&[4, 0, 1, 1, 0]),
        Err(DecodeError::Malformed)
    );
    // One element, 7, with the dot 1.2 beyond a gap: the shape (one entry, no context, one dot
    // each), the element, the dot. The context's cloud holds 1.2 once decoded.
    let carried = [4, 4, 7, 1, 2];
    let set = codec::decode::<OrSet<u8>>(&carried).unwrap();
    assert!(set.contains(&7) && set.context().contains(Dot::new(r(1), 2)));
    assert_eq!(set.context().cloud_len(), 1);
    assert_eq!(codec::encode(&set), carried);
    // Not canonical: the carried dot also written in the cloud (format 3's form); a dot next to
    // its replica's vector entry (it belongs in the vector); a context written though empty;
    // dot lists where every element has one dot; an element with an empty list; a repeated
    // element.
    for bytes in [
        &[4, 6, 0, 1, 1, 1, 2, 7, 1, 2][..],
        &[4, 4, 7, 1, 1],
        &[4, 6, 0, 0, 7, 1, 2],
        &[4, 5, 7, 1, 1, 2],
        &[4, 5, 7, 0],
        &[4, 8, 7, 1, 2, 7, 1, 3],
    ] {
        assert_eq!(
            codec::decode::<OrSet<u8>>(bytes),
            Err(DecodeError::Malformed),
            "{bytes:?}"
        );
    }
    // An entry count far beyond the input ends the input, having allocated nothing for it.
    assert_eq!(
        codec::decode::<OrSet<u8>>(&[
            4, 0xfc, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1, 7, 1, 2
        ]),
        Err(DecodeError::Truncated)
    );
    // A map key present with one dot, written as a list: not canonical. The same key written
    // as the shape says (one dot each) decodes, and so does a key that is not present.
    assert_eq!(
        codec::decode::<OrMap<u8, GCounter>>(&[4, 5, 1, 1, 1, 2, 0, 0]),
        Err(DecodeError::Malformed)
    );
    let present = codec::decode::<OrMap<u8, GCounter>>(&[4, 4, 1, 1, 2, 0, 0]).unwrap();
    assert!(present.contains_key(&1));
    let hidden = codec::decode::<OrMap<u8, GCounter>>(&[4, 5, 1, 0, 0, 0]).unwrap();
    assert!(!hidden.contains_key(&1) && hidden.value_kept(&1).is_some());
    // A register value stamped at its own floor.
    assert_eq!(
        codec::decode::<LwwRegister<u8>>(&[4, 1, 5, 0, 1, 7, 1, 5, 0, 1]),
        Err(DecodeError::Malformed)
    );
}

/// Whether some byte run looks like a varint padded with a trailing `00` continuation byte, the
/// one kind of non-canonical input postcard accepts.
fn has_overlong_varint(b: &[u8]) -> bool {
    b.windows(2).any(|w| w[0] & 0x80 != 0 && w[1] == 0)
}

fn hex(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
#[ignore = "prints the golden vectors for docs/wire-format.md"]
fn print_golden_vectors() {
    for case in cases() {
        println!("```golden {}\n{}\n```", case.name, hex(&case.bytes));
    }
}
