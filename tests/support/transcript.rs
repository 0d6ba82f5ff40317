//! The DRPC/yamux/websocket recordings in tests/vectors/drpc/transcript.json, loaded for
//! tests: what the upstream Go libraries (storj drpc, hashicorp yamux, coder websocket)
//! exchanged for one `ReportBoundaryLogs` call, variant by variant.

use std::path::Path;

use boundary_log_proxy::proto::agent::boundary_log::{HttpRequest, Resource};
use boundary_log_proxy::proto::agent::{BoundaryLog, ReportBoundaryLogsRequest};
use prost::Message as _;
use serde::Deserialize;
use sha2::{Digest, Sha256};

const TRANSCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/vectors/drpc/transcript.json"
);

/// The whole recording.
#[derive(Debug, Clone, Deserialize)]
pub struct Transcript {
    pub http_upgrade: HttpUpgrade,
    pub variants: Vec<Variant>,
}

/// The first dial's HTTP upgrade, as text (lines end in `\n`).
#[derive(Debug, Clone, Deserialize)]
pub struct HttpUpgrade {
    pub request: String,
    pub response: String,
}

/// One kind of call (calls whose DRPC bytes match both ways).
#[derive(Debug, Clone, Deserialize)]
pub struct Variant {
    pub variant: String,
    pub calls: Vec<u32>,
    pub rpc: String,
    pub ok: bool,
    #[serde(default)]
    pub error: Option<String>,
    pub error_code: u64,
    pub request: Blob,
    pub response: Blob,
    pub client_to_server: Side,
    pub server_to_client: Side,
    pub yamux_frames_in_order: Vec<YamuxFrame>,
}

/// Bytes given whole (`hex`) or, over 8192 bytes, by length and sha256 only.
#[derive(Debug, Clone, Deserialize)]
pub struct Blob {
    pub len: usize,
    #[serde(default)]
    pub hex: Option<String>,
    #[serde(default)]
    pub sha256: Option<String>,
}

/// The DRPC bytes one side wrote on the call's yamux stream.
#[derive(Debug, Clone, Deserialize)]
pub struct Side {
    pub bytes: Blob,
    /// Sizes of the individual writes (or reads).
    pub io_lengths: Vec<usize>,
    pub frames: Vec<DrpcFrame>,
}

/// One DRPC frame as recorded.
#[derive(Debug, Clone, Deserialize)]
pub struct DrpcFrame {
    pub offset: usize,
    pub header_hex: String,
    pub control_byte: u8,
    pub kind: u8,
    pub kind_name: String,
    pub done: bool,
    pub control: bool,
    pub stream_id: u64,
    pub message_id: u64,
    pub length: usize,
    #[serde(default)]
    pub data_hex: Option<String>,
    #[serde(default)]
    pub data_sha256: Option<String>,
}

/// One yamux frame on the websocket, in recorded order.
#[derive(Debug, Clone, Deserialize)]
pub struct YamuxFrame {
    /// `c->s` or `s->c`.
    pub dir: String,
    /// `Data`, `WindowUpdate`, `Ping` or `GoAway`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `SYN`, `ACK`, `FIN`, `RST` joined, or `-`.
    pub flags: String,
    pub stream_id: u32,
    pub length: u32,
    pub header_hex: String,
    /// Up to 256 bytes of body.
    #[serde(default)]
    pub body_hex: Option<String>,
}

impl YamuxFrame {
    /// Sent by the client.
    pub fn sent_by_client(&self) -> bool {
        self.dir == "c->s"
    }
}

/// Reads tests/vectors/drpc/transcript.json.
pub fn load() -> Transcript {
    let path = Path::new(TRANSCRIPT);
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("transcript missing: {}: {e}", path.display()));
    serde_json::from_str(&text).expect("transcript.json has the expected shape")
}

impl Transcript {
    /// The variant named `name` ("A".."E").
    pub fn variant(&self, name: &str) -> &Variant {
        self.variants
            .iter()
            .find(|v| v.variant == name)
            .unwrap_or_else(|| panic!("no variant {name} in the transcript"))
    }
}

impl Blob {
    /// The bytes, when recorded whole.
    pub fn bytes(&self) -> Option<Vec<u8>> {
        self.hex.as_deref().map(unhex)
    }

    /// Panics unless `bytes` are these bytes (by content, or by length and sha256).
    pub fn assert_matches(&self, bytes: &[u8], what: &str) {
        assert_eq!(bytes.len(), self.len, "{what}: length");
        match (&self.hex, &self.sha256) {
            (Some(hex), _) => assert_eq!(bytes, unhex(hex), "{what}: bytes"),
            (None, Some(sum)) => assert_eq!(&sha256_hex(bytes), sum, "{what}: sha256"),
            (None, None) => panic!("{what}: recorded with neither bytes nor sha256"),
        }
    }
}

impl Variant {
    /// The request's protobuf bytes; the 73201-byte one of variant C is regenerated (see
    /// [`many_logs_request`]) and checked against its recorded sha256.
    pub fn request_bytes(&self) -> Vec<u8> {
        let bytes = match self.request.bytes() {
            Some(bytes) => bytes,
            None => many_logs_request(1200).encode_to_vec(),
        };
        self.request.assert_matches(&bytes, "request");
        bytes
    }

    /// Every DRPC byte the client wrote, rebuilt from the frames (data of large frames from
    /// the regenerated request) and checked against the recorded bytes or sha256.
    pub fn client_bytes(&self) -> Vec<u8> {
        self.side_bytes(&self.client_to_server, &self.request_bytes())
    }

    /// Every DRPC byte the server wrote.
    pub fn server_bytes(&self) -> Vec<u8> {
        self.side_bytes(&self.server_to_client, &[])
    }

    fn side_bytes(&self, side: &Side, message: &[u8]) -> Vec<u8> {
        if let Some(bytes) = side.bytes.bytes() {
            return bytes;
        }
        // Large: Message frames' data are consecutive slices of the message.
        let mut out = Vec::new();
        let mut message_at = 0;
        for frame in &side.frames {
            assert_eq!(out.len(), frame.offset, "frame offsets are contiguous");
            out.extend(unhex(&frame.header_hex));
            let data = match &frame.data_hex {
                Some(hex) => unhex(hex),
                None => message[message_at..message_at + frame.length].to_vec(),
            };
            if let Some(sum) = &frame.data_sha256 {
                assert_eq!(&sha256_hex(&data), sum, "frame at {}", frame.offset);
            }
            if frame.kind == 2 {
                message_at += data.len();
            }
            out.extend(data);
        }
        side.bytes.assert_matches(&out, "client bytes");
        out
    }
}

/// The request variant C carried: `logs` logs, log i allowed when i is even (and then with
/// the matched rule), at 1700000000 + i seconds and 123456789 ns, `GET
/// https://example.com/{i}`, sequence number i + 1, one UUID session.
pub fn many_logs_request(logs: u32) -> ReportBoundaryLogsRequest {
    ReportBoundaryLogsRequest {
        logs: (0..logs)
            .map(|i| {
                let allowed = i % 2 == 0;
                BoundaryLog {
                    allowed,
                    time: Some(prost_types::Timestamp {
                        seconds: 1_700_000_000 + i64::from(i),
                        nanos: 123_456_789,
                    }),
                    resource: Some(Resource::HttpRequest(HttpRequest {
                        method: "GET".into(),
                        url: format!("https://example.com/{i}"),
                        matched_rule: if allowed {
                            "domain=example.com".into()
                        } else {
                            String::new()
                        },
                    })),
                    sequence_number: i as i32 + 1,
                }
            })
            .collect(),
        session_id: "6f1c2b9a-2d4e-4c1b-9b8e-0a1b2c3d4e5f".into(),
        confined_process_name: String::new(),
    }
}

/// Lowercase hex to bytes.
pub fn unhex(hex: &str) -> Vec<u8> {
    assert!(hex.len().is_multiple_of(2), "odd hex length");
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex digit"))
        .collect()
}

/// Bytes to lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The sha256 of `bytes`, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}
