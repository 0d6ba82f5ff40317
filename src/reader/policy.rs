//! The accept policy both backends share: peer uid check (SO_PEERCRED), the
//! connection limit, connection ids, and the open/rejected calls to the handler.

use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use super::sys;
use super::{ConnInfo, ConnectionHandler, Peer, RejectReason};

/// Decides which accepted connections stay open; one per reader, shared by its threads.
#[derive(Debug)]
pub(crate) struct Admission {
    max_connections: usize,
    allow_uids: Vec<u32>,
    open: AtomicUsize,
    next_id: AtomicU64,
}

impl Admission {
    pub(crate) fn new(max_connections: usize, allow_uids: Vec<u32>) -> Self {
        Admission {
            max_connections,
            allow_uids,
            open: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
        }
    }

    /// Admits `conn` and calls `handler.open`, or closes `conn` and calls
    /// `handler.rejected`. An admitted connection holds a place under the limit
    /// until [`Admission::release`].
    pub(crate) fn admit<H: ConnectionHandler, C: AsFd>(
        &self,
        handler: &H,
        conn: C,
    ) -> Option<(C, H::State)> {
        let cred = sys::peer_cred(conn.as_fd());
        match self.check(cred) {
            Ok(info) => {
                let state = handler.open(&info);
                tracing::debug!(
                    conn = info.id,
                    peer_uid = ?info.peer_uid,
                    peer_pid = ?info.peer_pid,
                    "connection opened"
                );
                Some((conn, state))
            }
            Err(reason) => {
                drop(conn);
                tracing::debug!(reason = reason.as_label(), peer_uid = ?cred.map(|c| c.uid), "connection rejected");
                let peer = Peer {
                    uid: cred.map(|c| c.uid),
                    pid: cred.map(|c| c.pid),
                };
                handler.rejected(reason, peer);
                None
            }
        }
    }

    fn check(&self, cred: Option<libc::ucred>) -> Result<ConnInfo, RejectReason> {
        if !self.allow_uids.is_empty() {
            let allowed = cred.is_some_and(|c| self.allow_uids.contains(&c.uid));
            if !allowed {
                return Err(RejectReason::PeerUid);
            }
        }
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_connections).then_some(n + 1)
            })
            .map_err(|_| RejectReason::Limit)?;
        Ok(ConnInfo {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            peer_uid: cred.map(|c| c.uid),
            peer_pid: cred.map(|c| c.pid),
        })
    }

    /// Gives back the place of an admitted connection that has been closed.
    pub(crate) fn release(&self) {
        let before = self.open.fetch_sub(1, Ordering::AcqRel);
        debug_assert!(before > 0, "released more connections than admitted");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cred(uid: u32) -> Option<libc::ucred> {
        Some(libc::ucred {
            pid: 42,
            uid,
            gid: uid,
        })
    }

    #[test]
    fn limit_counts_open_connections_and_frees_on_release() {
        let policy = Admission::new(2, Vec::new());
        assert!(policy.check(cred(0)).is_ok());
        assert!(policy.check(cred(0)).is_ok());
        assert_eq!(policy.check(cred(0)), Err(RejectReason::Limit));
        policy.release();
        assert!(policy.check(cred(0)).is_ok());
    }

    #[test]
    fn uid_outside_allow_list_is_refused_before_taking_a_place() {
        let policy = Admission::new(1, vec![1000]);
        assert_eq!(policy.check(cred(0)), Err(RejectReason::PeerUid));
        assert_eq!(policy.check(None), Err(RejectReason::PeerUid));
        let info = policy.check(cred(1000)).expect("listed uid admitted");
        assert_eq!(info.peer_uid, Some(1000));
        assert_eq!(info.peer_pid, Some(42));
    }

    #[test]
    fn ids_are_distinct() {
        let policy = Admission::new(10, Vec::new());
        let a = policy.check(None).unwrap().id;
        let b = policy.check(None).unwrap().id;
        assert_ne!(a, b);
    }

    #[test]
    fn zero_limit_refuses_everyone() {
        let policy = Admission::new(0, Vec::new());
        assert_eq!(policy.check(cred(0)), Err(RejectReason::Limit));
    }
}
