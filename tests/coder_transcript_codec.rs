//! The DRPC codec against the bytes storj drpc v0.0.34 wrote (tests/vectors/drpc/): every
//! recorded frame parses to its recorded header, every recorded side reassembles into its
//! packets, and re-encoding those packets gives the recorded bytes back. The 73201-byte
//! request of variant C, recorded by length and sha256 only, is regenerated from its pattern
//! and checked against that sha256, so its bytes are compared in full too.

mod support;

use boundary_log_proxy::reporter::coder::drpc::{
    parse_error, parse_frame_header, put_packet, Id, Kind, Packet, PacketReader,
};
use support::transcript::{self, unhex, Side, Variant};

/// Reads every packet in `bytes`, fed in the recorded write sizes.
fn packets(bytes: &[u8], io_lengths: &[usize]) -> Vec<Packet> {
    assert_eq!(
        io_lengths.iter().sum::<usize>(),
        bytes.len(),
        "io lengths add up"
    );
    let mut reader = PacketReader::new();
    let mut out = Vec::new();
    let mut at = 0;
    for &n in io_lengths {
        reader.push(&bytes[at..at + n]);
        at += n;
        while let Some(p) = reader.next_packet().expect("recorded bytes are valid DRPC") {
            out.push(p);
        }
    }
    assert_eq!(reader.pending(), 0, "nothing left after the last packet");
    out
}

fn check_frames(side: &Side, bytes: &[u8], what: &str) {
    for frame in &side.frames {
        let (header, len) = parse_frame_header(&bytes[frame.offset..])
            .expect("valid header")
            .expect("whole header");
        let what = format!("{what} frame at {}", frame.offset);
        assert_eq!(
            hex(&bytes[frame.offset..frame.offset + len]),
            frame.header_hex,
            "{what}"
        );
        assert_eq!(bytes[frame.offset], frame.control_byte, "{what}");
        assert_eq!(header.kind, Kind::from_wire(frame.kind), "{what}");
        assert_eq!(format!("{:?}", header.kind), frame.kind_name, "{what}");
        assert_eq!(header.done, frame.done, "{what}");
        assert_eq!(header.control, frame.control, "{what}");
        assert_eq!(
            header.id,
            Id::new(frame.stream_id, frame.message_id),
            "{what}"
        );
        assert_eq!(header.len, frame.length as u64, "{what}");
        if let Some(data) = &frame.data_hex {
            assert_eq!(
                &bytes[frame.offset + len..][..frame.length],
                unhex(data),
                "{what}"
            );
        }
    }
}

fn reencode(packets: &[Packet]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in packets {
        put_packet(&mut out, p.id, p.kind, p.control, &p.data);
    }
    out
}

fn check_variant(v: &Variant) {
    let client = v.client_bytes();
    let server = v.server_bytes();
    check_frames(&v.client_to_server, &client, "client");
    check_frames(&v.server_to_client, &server, "server");

    let sent = packets(&client, &v.client_to_server.io_lengths);
    let answered = packets(&server, &v.server_to_client.io_lengths);
    assert_eq!(
        reencode(&sent),
        client,
        "variant {}: client bytes re-encode",
        v.variant
    );
    assert_eq!(
        reencode(&answered),
        server,
        "variant {}: server bytes re-encode",
        v.variant
    );

    // The client's call: Invoke(rpc) + Message(request) + CloseSend [+ Close], stream 1.
    let kinds: Vec<Kind> = sent.iter().map(|p| p.kind).collect();
    assert_eq!(&kinds[..3], [Kind::Invoke, Kind::Message, Kind::CloseSend]);
    assert!(kinds[3..].iter().all(|k| *k == Kind::Close), "{kinds:?}");
    assert_eq!(sent[0].data, v.rpc.as_bytes());
    assert_eq!(sent[1].data, v.request_bytes());
    for (i, p) in sent.iter().chain(&answered).enumerate() {
        assert_eq!(p.id.stream, 1, "packet {i}");
        assert!(!p.control, "packet {i}");
    }
    let ids: Vec<u64> = sent.iter().map(|p| p.id.message).collect();
    assert_eq!(ids, (1..=sent.len() as u64).collect::<Vec<_>>());

    // The server's answer: Error(code, text), or Message [+ CloseSend].
    if v.ok {
        assert_eq!(answered[0].kind, Kind::Message);
        assert_eq!(answered[0].data.len(), v.response.len);
        assert!(answered[1..].iter().all(|p| p.kind == Kind::CloseSend));
    } else {
        assert_eq!(answered.len(), 1);
        assert_eq!(answered[0].kind, Kind::Error);
        let (code, text) = parse_error(&answered[0].data);
        assert_eq!(code, v.error_code);
        assert_eq!(Some(text), v.error.clone());
    }
}

fn hex(bytes: &[u8]) -> String {
    transcript::hex(bytes)
}

#[test]
fn every_recorded_variant_decodes_and_re_encodes_byte_for_byte() {
    let t = transcript::load();
    let names: Vec<&str> = t.variants.iter().map(|v| v.variant.as_str()).collect();
    assert_eq!(names, ["A", "B", "C", "D", "E"]);
    for v in &t.variants {
        check_variant(v);
    }
}

#[test]
fn the_73201_byte_request_is_regenerated_exactly_and_split_at_64_kib() {
    let t = transcript::load();
    let c = t.variant("C");
    assert!(c.request.hex.is_none(), "recorded by sha256 only");
    let request = c.request_bytes(); // asserts length and sha256
    assert_eq!(request.len(), 73201);
    let client = c.client_bytes(); // asserts the 73264 bytes' sha256
    let sent = packets(&client, &c.client_to_server.io_lengths);
    assert_eq!(sent[1].data, request);
    let message_frames: Vec<_> = c
        .client_to_server
        .frames
        .iter()
        .filter(|f| f.kind == 2)
        .map(|f| (f.length, f.done))
        .collect();
    assert_eq!(message_frames, [(65536, false), (7665, true)]);
}

#[test]
fn the_recorded_bytes_reassemble_whatever_the_read_sizes() {
    let t = transcript::load();
    for v in &t.variants {
        let client = v.client_bytes();
        let whole = packets(&client, &[client.len()]);
        for step in [1, 3, 4096] {
            let sizes: Vec<usize> = client.chunks(step).map(<[u8]>::len).collect();
            assert_eq!(
                packets(&client, &sizes),
                whole,
                "variant {}, step {step}",
                v.variant
            );
        }
    }
}
