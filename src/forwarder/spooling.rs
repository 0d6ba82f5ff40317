//! The forwarder's side of the disk spool: writes requests it cannot deliver now,
//! reads back the oldest for replay, acknowledges what the destination took, and
//! keeps the spool's metrics current. Every spool outcome is counted here.

use std::time::Instant;

use crate::events::{
    ForwardDropReason, ForwardDropped, InternalEvent, SpoolOccupancy, SpoolReplayed, Spooled,
};
use crate::metrics::Metrics;
use crate::reporter::EncodedRequest;
use crate::spool::{AppendError, Spool};

use super::batch::Limits;

/// A request read back from the spool, and the record to acknowledge once the
/// destination took it.
#[derive(Debug, Clone)]
pub struct Replay {
    pub seq: u64,
    pub request: EncodedRequest,
}

/// The spool as the forwarder uses it.
#[derive(Debug)]
pub struct Spooler {
    spool: Spool,
    /// How frames still in the ring at shutdown are merged before they are written.
    pub(super) limits: Limits,
}

impl Spooler {
    /// Wraps an open spool; sets the spool gauges.
    pub fn new(spool: Spool, limits: Limits, metrics: &Metrics) -> Self {
        let spooler = Self { spool, limits };
        spooler.occupancy(metrics);
        spooler
    }

    /// True while records wait for replay.
    pub fn is_empty(&self) -> bool {
        self.spool.is_empty()
    }

    /// Writes `request`, or counts it as `spool_full` when there is no room (or the
    /// write failed). Returns whether it was written.
    pub fn append(&mut self, request: &EncodedRequest, metrics: &Metrics) -> bool {
        let written = match self
            .spool
            .append(request.frames, request.logs, &request.bytes)
        {
            Ok(()) => true,
            Err(AppendError::Full) => false,
            Err(AppendError::Io(error)) => {
                tracing::error!(dir = %self.spool.dir().display(), %error, "writing to the disk spool");
                false
            }
        };
        let (frames, logs) = (u64::from(request.frames), u64::from(request.logs));
        if written {
            Spooled { frames, logs }.emit(metrics);
        } else {
            ForwardDropped {
                frames,
                logs,
                reason: ForwardDropReason::SpoolFull,
            }
            .emit(metrics);
        }
        self.occupancy(metrics);
        written
    }

    /// The oldest record, for replay. Records found damaged are counted as
    /// `spool_corrupt` and skipped; a read error leaves the record for later.
    pub fn peek(&mut self, metrics: &Metrics) -> Option<Replay> {
        let read = self.spool.peek();
        let corrupt = self.spool.take_corrupt();
        if corrupt.frames > 0 || corrupt.logs > 0 {
            ForwardDropped {
                frames: corrupt.frames,
                logs: corrupt.logs,
                reason: ForwardDropReason::SpoolCorrupt,
            }
            .emit(metrics);
            self.occupancy(metrics);
        }
        match read {
            Ok(record) => record.map(|r| Replay {
                seq: r.seq,
                request: EncodedRequest {
                    bytes: r.payload,
                    logs: r.logs,
                    frames: r.frames,
                },
            }),
            Err(error) => {
                tracing::error!(dir = %self.spool.dir().display(), %error, "reading the disk spool");
                None
            }
        }
    }

    /// The destination took `replay` (`delivered`) or refused it for good (already
    /// counted as `forward_failed`): it leaves the spool.
    pub fn ack(&mut self, replay: &Replay, delivered: bool, metrics: &Metrics) {
        match self.spool.ack(replay.seq) {
            Ok(true) => {
                if delivered {
                    SpoolReplayed {
                        logs: u64::from(replay.request.logs),
                    }
                    .emit(metrics);
                }
            }
            Ok(false) => tracing::error!(
                seq = replay.seq,
                "acknowledged a record that is not the spool's oldest"
            ),
            Err(error) => {
                tracing::error!(dir = %self.spool.dir().display(), %error, "updating the disk spool")
            }
        }
        self.occupancy(metrics);
    }

    /// Syncs what is due (see [`Spool::tick`]).
    pub fn tick(&mut self) {
        if let Err(error) = self.spool.tick(Instant::now()) {
            tracing::error!(dir = %self.spool.dir().display(), %error, "syncing the disk spool");
        }
    }

    /// Makes everything durable (at shutdown).
    pub fn sync(&mut self) {
        if let Err(error) = self.spool.flush() {
            tracing::error!(dir = %self.spool.dir().display(), %error, "syncing the disk spool");
        }
    }

    fn occupancy(&self, metrics: &Metrics) {
        let held = self.spool.held();
        SpoolOccupancy {
            bytes: self.spool.disk_bytes(),
            frames: held.frames,
            logs: held.logs,
        }
        .emit(metrics);
    }
}
