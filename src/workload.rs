//! Synthetic, deterministic boundary traffic (requests and encoded frames) for tests,
//! benchmarks and the load generator: GitHub-style URLs, ~20% denied requests,
//! UUID-shaped session ids, agent process names and per-session sequence numbers.

use std::fmt::Write as _;

use prost::Message as _;

use crate::codec::{encode_frame, CodecError, Tag};
use crate::proto::agent::boundary_log::{HttpRequest, Resource};
use crate::proto::agent::{BoundaryLog, ReportBoundaryLogsRequest};
use crate::proto::envelope::{boundary_message::Msg, BoundaryMessage};

/// Process names boundary confines.
pub const PROCESS_NAMES: [&str; 3] = ["claude-code", "codex", "copilot"];

/// Unix time of the first synthetic log (2025-11-26T00:00:00Z); log `n` is `n` seconds later.
pub const EPOCH_SECONDS: i64 = 1_764_115_200;

/// Shortest and longest synthetic URL, in bytes.
pub const URL_LEN: std::ops::RangeInclusive<usize> = 60..=120;

/// Share of denied logs, in percent.
const DENIED_PERCENT: u8 = 20;

const OWNERS: [&str; 6] = [
    "coder",
    "rust-lang",
    "tokio-rs",
    "golang",
    "microsoft",
    "hyperium",
];
const REPOS: [&str; 6] = ["coder", "rust", "tokio", "go", "vscode", "tonic"];
const API_PATHS: [&str; 8] = [
    "pulls",
    "issues",
    "commits",
    "actions/runs",
    "git/refs/heads/main",
    "releases/latest",
    "contents/src/main.rs",
    "check-runs",
];
const RULES: [&str; 4] = [
    "domain=*.github.com",
    "domain=api.github.com path=/repos/*",
    "method=GET domain=*.githubusercontent.com",
    "domain=github.com",
];

/// A seeded generator of logs, requests and frames.
#[derive(Debug, Clone)]
pub struct Workload {
    rng: fastrand::Rng,
}

impl Workload {
    /// The same seed gives the same sequence of everything.
    pub fn new(seed: u64) -> Self {
        Self {
            rng: fastrand::Rng::with_seed(seed),
        }
    }

    /// A random version-4 UUID in its usual text form.
    pub fn session_id(&mut self) -> String {
        let hi = self.rng.u64(..);
        let lo = self.rng.u64(..);
        let time_hi = 0x4000 | (hi & 0x0FFF);
        let clock = 0x8000 | (lo >> 48 & 0x3FFF);
        format!(
            "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            hi >> 32,
            hi >> 16 & 0xFFFF,
            time_hi,
            clock,
            lo & 0xFFFF_FFFF_FFFF
        )
    }

    /// One of [`PROCESS_NAMES`].
    pub fn process_name(&mut self) -> &'static str {
        PROCESS_NAMES[self.rng.usize(..PROCESS_NAMES.len())]
    }

    /// A GitHub-style URL of [`URL_LEN`] bytes.
    pub fn url(&mut self) -> String {
        let target = self.rng.usize(URL_LEN);
        let owner = OWNERS[self.rng.usize(..OWNERS.len())];
        let repo = REPOS[self.rng.usize(..REPOS.len())];
        let mut url = String::with_capacity(*URL_LEN.end());
        match self.rng.u8(..4) {
            0 => {
                let _ = write!(
                    url,
                    "https://raw.githubusercontent.com/{owner}/{repo}/{:07x}/README.md?token=",
                    self.rng.u32(..1 << 28)
                );
            }
            1 => {
                let _ = write!(
                    url,
                    "https://codeload.github.com/{owner}/{repo}/tar.gz/refs/tags/v{}.{}.{}?archive=",
                    self.rng.u8(..3),
                    self.rng.u8(..30),
                    self.rng.u8(..10)
                );
            }
            _ => {
                let path = API_PATHS[self.rng.usize(..API_PATHS.len())];
                let _ = write!(
                    url,
                    "https://api.github.com/repos/{owner}/{repo}/{path}?page={}&per_page=100&cursor=",
                    self.rng.u8(..50)
                );
            }
        }
        while url.len() < target {
            url.push(char::from(b"0123456789abcdef"[self.rng.usize(..16)]));
        }
        url.truncate(target);
        url
    }

    /// An HTTP method, mostly GET.
    pub fn method(&mut self) -> &'static str {
        match self.rng.u8(..100) {
            0..70 => "GET",
            70..85 => "POST",
            85..90 => "PUT",
            90..95 => "PATCH",
            95..98 => "DELETE",
            _ => "HEAD",
        }
    }

    /// One log numbered `seq`: allowed ones carry the rule that allowed them.
    pub fn log(&mut self, seq: i32) -> BoundaryLog {
        let allowed = self.rng.u8(..100) >= DENIED_PERCENT;
        let matched_rule = if allowed {
            RULES[self.rng.usize(..RULES.len())].to_owned()
        } else {
            String::new()
        };
        BoundaryLog {
            allowed,
            time: Some(prost_types::Timestamp {
                seconds: EPOCH_SECONDS + i64::from(seq),
                nanos: self.rng.i32(0..1_000_000_000),
            }),
            sequence_number: seq,
            resource: Some(Resource::HttpRequest(HttpRequest {
                method: self.method().to_owned(),
                url: self.url(),
                matched_rule,
            })),
        }
    }

    /// A request of `logs` logs numbered from `first_seq`.
    pub fn request(
        &mut self,
        session_id: &str,
        process: &str,
        first_seq: i32,
        logs: usize,
    ) -> ReportBoundaryLogsRequest {
        ReportBoundaryLogsRequest {
            logs: (0..logs)
                .map(|i| self.log(first_seq.wrapping_add(i as i32)))
                .collect(),
            session_id: session_id.to_owned(),
            confined_process_name: process.to_owned(),
        }
    }
}

/// A request of `logs` logs numbered from `first_seq`; the content depends only on
/// the arguments.
pub fn request(
    session_id: &str,
    process: &str,
    first_seq: i32,
    logs: usize,
) -> ReportBoundaryLogsRequest {
    let seed = (u64::from(first_seq as u32) << 32) ^ logs as u64 ^ 0x9E37_79B9_7F4A_7C15;
    Workload::new(seed).request(session_id, process, first_seq, logs)
}

/// The payload of `request` under `tag`: the bare request (V1) or the envelope (V2).
pub fn payload(tag: Tag, request: &ReportBoundaryLogsRequest) -> Vec<u8> {
    match tag {
        Tag::V1 => request.encode_to_vec(),
        Tag::V2 => BoundaryMessage {
            msg: Some(Msg::Logs(request.clone())),
        }
        .encode_to_vec(),
    }
}

/// Appends header and payload of `request` to `out`; `TooLarge` when the payload
/// exceeds the frame limit (nothing appended then).
pub fn append_frame(
    tag: Tag,
    request: &ReportBoundaryLogsRequest,
    out: &mut Vec<u8>,
) -> Result<(), CodecError> {
    encode_frame(tag, &payload(tag, request), out)
}

/// One whole frame (header and payload) carrying `request`.
///
/// # Panics
/// When the payload exceeds the 32768-byte frame limit; use [`append_frame`] to
/// handle that.
pub fn frame(tag: Tag, request: &ReportBoundaryLogsRequest) -> Vec<u8> {
    let mut out = Vec::new();
    append_frame(tag, request, &mut out).expect("workload request fits in one frame");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_deterministic_and_numbered_from_first_seq() {
        let a = request("s", "codex", 40, 25);
        assert_eq!(a, request("s", "codex", 40, 25));
        let seqs: Vec<i32> = a.logs.iter().map(|l| l.sequence_number).collect();
        assert_eq!(seqs, (40..65).collect::<Vec<_>>());
        assert_ne!(a.logs, request("s", "codex", 41, 25).logs);
    }

    #[test]
    fn logs_look_like_boundary_traffic() {
        let mut w = Workload::new(7);
        let logs: Vec<BoundaryLog> = (0..2000).map(|i| w.log(i)).collect();
        let denied = logs.iter().filter(|l| !l.allowed).count();
        assert!((300..500).contains(&denied), "~20% denied, got {denied}");
        for log in &logs {
            let Some(Resource::HttpRequest(http)) = &log.resource else {
                panic!("log without http_request");
            };
            assert!(URL_LEN.contains(&http.url.len()), "{}", http.url);
            assert!(http.url.starts_with("https://"));
            assert_eq!(log.allowed, !http.matched_rule.is_empty());
            let time = log.time.unwrap();
            assert!((0..1_000_000_000).contains(&time.nanos));
        }
    }

    #[test]
    fn session_ids_are_version_4_uuids() {
        let mut w = Workload::new(1);
        for _ in 0..100 {
            let id = w.session_id();
            let groups: Vec<&str> = id.split('-').collect();
            let lens: Vec<usize> = groups.iter().map(|g| g.len()).collect();
            assert_eq!(lens, [8, 4, 4, 4, 12], "{id}");
            assert!(id.chars().all(|c| c == '-' || c.is_ascii_hexdigit()));
            assert!(groups[2].starts_with('4'));
            assert!(matches!(groups[3].as_bytes()[0], b'8' | b'9' | b'a' | b'b'));
        }
    }

    #[test]
    fn frames_carry_the_tag_and_payload_length() {
        let req = request("7d1f5a7e-3c2b-4f7e-9a51-0c6e2d9b8a41", "claude-code", 0, 10);
        for tag in [Tag::V1, Tag::V2] {
            let bytes = frame(tag, &req);
            assert_eq!(bytes[0], tag as u8);
            let len = u32::from_be_bytes([0, bytes[1], bytes[2], bytes[3]]) as usize;
            assert_eq!(len, bytes.len() - 4);
            assert_eq!(&bytes[4..], payload(tag, &req));
        }
        let huge = request("s", "codex", 0, 400);
        let mut out = Vec::new();
        assert!(matches!(
            append_frame(Tag::V1, &huge, &mut out),
            Err(CodecError::TooLarge(_))
        ));
        assert!(out.is_empty());
    }
}
