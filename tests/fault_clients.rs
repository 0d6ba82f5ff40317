//! Hostile and broken clients on the real socket, on both reader backends: a storm
//! of connects, slowloris connections, frames cut off mid-way, peers with the wrong
//! uid and connections over the limit. The proxy keeps serving everyone else, counts
//! what it refuses, and each test ends with the accounting invariant checked exactly.
//!
//! Tests here count this process's file descriptors and open hundreds of sockets,
//! so they run one at a time.

mod support;

use std::io::Write as _;
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use boundary_log_proxy::codec::HEADER_LEN;
use boundary_log_proxy::config::{Config, IoMode};
use boundary_log_proxy::metrics::{ConnectionRejectReason, FrameRejectReason};
use support::as_uid::{connect_as_uid, skip_without_root, NOBODY};
use support::coderd::FakeCoderd;
use support::faults::{
    close_abortively, delivered, eventually, frames, open_fds, soak, write_frames, Proxy, PATIENCE,
};
use support::proxy::{assert_accounting_totals, closed_by_proxy};
use tokio::sync::{Mutex, MutexGuard};

/// Each test has its own runtime; tokio's mutex works across them.
static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

async fn serial() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().await
}

on_both_backends!(
    storm_of_ten_thousand_connects_leaves_no_connection_or_fd_behind,
    slowloris_connections_do_not_hold_up_a_live_connection,
    frames_cut_off_mid_way_are_counted_truncated_and_others_unaffected,
);

fn truncated(proxy: &Proxy) -> u64 {
    proxy
        .metrics()
        .frames_rejected_for(FrameRejectReason::Truncated)
}

fn open_connections(proxy: &Proxy) -> i64 {
    proxy.metrics().connections.get()
}

async fn storm_of_ten_thousand_connects_leaves_no_connection_or_fd_behind(io: IoMode) {
    const THREADS: usize = 4;
    let each = soak("STORM_CONNECTS", 10_000) as usize / THREADS;
    let _serial = serial().await;
    let coderd = FakeCoderd::start().await;
    let (dir, config) = Proxy::config(io);
    let proxy = Proxy::start_grpc(dir, config, &coderd.addr()).await;

    // Warm up: the gRPC connection to coderd exists before the fds are counted.
    let mut warm = proxy.connect();
    assert_eq!(write_frames(&mut warm, &frames("warm", 0, 1, 1)), 1);
    drop(warm);
    assert!(proxy.wait_settled_at(1, PATIENCE).await);
    assert!(eventually(PATIENCE, || open_connections(&proxy) == 0).await);
    let fds_before = open_fds();

    // Every tenth connection sends a whole frame, every tenth (offset by five) half a
    // frame; the rest connect and leave at once.
    let socket = proxy.socket_path();
    let clients: Vec<_> = (0..THREADS)
        .map(|t| {
            let socket = socket.clone();
            std::thread::spawn(move || {
                let whole = frames(&format!("storm-{t}"), 0, each.div_ceil(10), 1);
                for i in 0..each {
                    let mut client = UnixStream::connect(&socket).expect("the proxy accepts");
                    match i % 10 {
                        0 => client.write_all(&whole[i / 10]).unwrap(),
                        5 => {
                            let frame = &whole[i / 10];
                            client.write_all(&frame[..frame.len() / 2]).unwrap()
                        }
                        _ => {}
                    }
                }
            })
        })
        .collect();
    for client in clients {
        client.join().expect("storm client");
    }

    let frames_sent = (THREADS * each.div_ceil(10)) as u64;
    assert!(
        proxy.wait_settled_at(1 + frames_sent, PATIENCE).await,
        "{:?}, truncated {}, rejected for the limit {}",
        proxy.accounting(),
        truncated(&proxy),
        proxy
            .metrics()
            .connections_rejected_for(ConnectionRejectReason::Limit),
    );
    assert!(
        eventually(PATIENCE, || truncated(&proxy) == frames_sent
            && open_connections(&proxy) == 0)
        .await,
        "truncated {} (want {frames_sent}), connections {}",
        truncated(&proxy),
        open_connections(&proxy)
    );
    assert_eq!(open_fds(), fds_before, "no fd leaked");
    assert_eq!(
        proxy
            .metrics()
            .connections_rejected_for(ConnectionRejectReason::Limit),
        0,
        "never more than {THREADS} clients were connected at once: far below the limit"
    );
    let got = delivered(&coderd.requests());
    for t in 0..THREADS {
        assert_eq!(
            got[&format!("storm-{t}")],
            (0..each.div_ceil(10) as i32).collect::<Vec<_>>()
        );
    }

    // Still serving.
    let mut live = proxy.connect();
    assert_eq!(write_frames(&mut live, &frames("after", 0, 3, 2)), 3);
    assert!(proxy.wait_settled_at(1 + frames_sent + 6, PATIENCE).await);
    drop(live);
    let totals = proxy.close().await;
    assert_eq!(totals.forwarded, 1 + frames_sent + 6);
    assert_accounting_totals(totals, 0);
}

async fn slowloris_connections_do_not_hold_up_a_live_connection(io: IoMode) {
    const SLOW: usize = 1000;
    const ROUNDS: usize = 4;
    let _serial = serial().await;
    let coderd = FakeCoderd::start().await;
    let (dir, config) = Proxy::config(io);
    let config = Config {
        max_connections: 2 * SLOW,
        ..config
    };
    let proxy = Proxy::start_grpc(dir, config, &coderd.addr()).await;

    let mut slow: Vec<UnixStream> = (0..SLOW).map(|_| proxy.connect()).collect();
    assert!(eventually(PATIENCE, || open_connections(&proxy) == SLOW as i64).await);
    let frame = frames("slow", 0, 1, 1).remove(0);
    assert!(frame.len() > ROUNDS, "the dribble never completes a frame");
    let dribbler = std::thread::spawn(move || {
        for round in 0..ROUNDS {
            let started = Instant::now();
            for client in &mut slow {
                client.write_all(&frame[round..=round]).unwrap();
            }
            std::thread::sleep(Duration::from_secs(1).saturating_sub(started.elapsed()));
        }
        slow
    });

    // Meanwhile a live connection's frames each get through well within a second's
    // dribble... with room for a loaded machine.
    let mut live = proxy.connect();
    let dribble_started = Instant::now();
    let mut sent = 0;
    for (i, frame) in frames("live", 0, 10, 2).into_iter().enumerate() {
        live.write_all(&frame).unwrap();
        sent += 2;
        assert!(
            coderd.wait_for_logs(sent, Duration::from_secs(2)).await,
            "live frame {i} not delivered within 2s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        dribble_started.elapsed() < Duration::from_secs(ROUNDS as u64),
        "the live frames went through while the dribble lasted"
    );
    let slow = dribbler.join().expect("dribbler");
    assert_eq!(open_connections(&proxy), SLOW as i64 + 1);
    assert_eq!(truncated(&proxy), 0);
    drop(slow);
    assert!(
        eventually(PATIENCE, || truncated(&proxy) == SLOW as u64
            && open_connections(&proxy) == 1)
        .await,
        "truncated {}",
        truncated(&proxy)
    );
    drop(live);
    assert!(eventually(PATIENCE, || open_connections(&proxy) == 0).await);
    assert!(proxy.wait_settled_at(20, PATIENCE).await);
    assert_eq!(
        delivered(&coderd.requests())["live"],
        (0..20).collect::<Vec<_>>()
    );
    let totals = proxy.close().await;
    assert_eq!(totals.forwarded, 20);
    assert_accounting_totals(totals, 0);
}

async fn frames_cut_off_mid_way_are_counted_truncated_and_others_unaffected(io: IoMode) {
    let _serial = serial().await;
    let coderd = FakeCoderd::start().await;
    let (dir, config) = Proxy::config(io);
    let proxy = Proxy::start_grpc(dir, config, &coderd.addr()).await;

    let good = frames("good", 0, 20, 2);
    let mut good_client = proxy.connect();
    write_frames(&mut good_client, &good[..5]);

    // Two bytes of a header, then a half-close (the socket stays open on this side).
    let mut half_header = proxy.connect();
    let sent = frames("half-header", 0, 6, 2);
    assert_eq!(write_frames(&mut half_header, &sent[..5]), 5);
    half_header.write_all(&sent[5][..2]).unwrap();
    half_header.shutdown(Shutdown::Write).unwrap();
    write_frames(&mut good_client, &good[5..10]);

    // Header and half the payload, then an abortive close (SO_LINGER 0).
    let mut half_payload = proxy.connect();
    let sent = frames("half-payload", 0, 6, 2);
    assert_eq!(write_frames(&mut half_payload, &sent[..5]), 5);
    let cut = HEADER_LEN + (sent[5].len() - HEADER_LEN) / 2;
    half_payload.write_all(&sent[5][..cut]).unwrap();
    close_abortively(half_payload);
    write_frames(&mut good_client, &good[10..15]);

    // A whole header and nothing of its payload.
    let mut header_only = proxy.connect();
    let sent = frames("header-only", 0, 4, 2);
    assert_eq!(write_frames(&mut header_only, &sent[..3]), 3);
    header_only.write_all(&sent[3][..HEADER_LEN]).unwrap();
    drop(header_only);

    // An abortive close at a frame boundary truncates nothing.
    let mut at_boundary = proxy.connect();
    assert_eq!(
        write_frames(&mut at_boundary, &frames("boundary", 0, 4, 2)),
        4
    );
    close_abortively(at_boundary);
    write_frames(&mut good_client, &good[15..]);

    assert!(
        closed_by_proxy(&mut half_header, PATIENCE),
        "half-closed peer is closed"
    );
    let received = 2 * (20 + 5 + 5 + 3 + 4);
    assert!(
        proxy.wait_settled_at(received, PATIENCE).await,
        "{:?}",
        proxy.accounting()
    );
    assert!(
        eventually(PATIENCE, || truncated(&proxy) == 3).await,
        "{}",
        truncated(&proxy)
    );
    drop(good_client);
    assert!(eventually(PATIENCE, || open_connections(&proxy) == 0).await);
    let rejected = |reason| proxy.metrics().frames_rejected_for(reason);
    assert_eq!(rejected(FrameRejectReason::DecodeError), 0);
    assert_eq!(rejected(FrameRejectReason::UnsupportedTag), 0);
    assert_eq!(rejected(FrameRejectReason::TooLarge), 0);
    assert_eq!(
        truncated(&proxy),
        3,
        "one per cut connection, none for the clean close"
    );

    let got = delivered(&coderd.requests());
    assert_eq!(got["good"], (0..40).collect::<Vec<_>>());
    assert_eq!(got["half-header"], (0..10).collect::<Vec<_>>());
    assert_eq!(got["half-payload"], (0..10).collect::<Vec<_>>());
    assert_eq!(got["header-only"], (0..6).collect::<Vec<_>>());
    assert_eq!(got["boundary"], (0..8).collect::<Vec<_>>());
    let totals = proxy.close().await;
    assert_eq!(totals.forwarded, received);
    assert_accounting_totals(totals, 0);
}

/// Connects as uid 65534 in a forked child, sends `frame`, and reports how the
/// connection ended: the child's exit status (0: closed by the proxy within 10 s).
fn connect_as_nobody(socket: &std::path::Path, frame: &[u8]) -> i32 {
    let timeout = libc::timeval {
        tv_sec: 10,
        tv_usec: 0,
    };
    connect_as_uid(NOBODY, socket, |fd| {
        // SAFETY: raw syscalls on the child's connected `fd` and on locals prepared
        // before the fork.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            );
            // The write may fail if the proxy already closed: that is fine.
            libc::write(fd, frame.as_ptr().cast(), frame.len());
            let mut byte = 0u8;
            let n = libc::read(fd, (&mut byte as *mut u8).cast(), 1);
            let reset = n < 0 && *libc::__errno_location() == libc::ECONNRESET;
            if n == 0 || reset {
                0
            } else {
                13
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_with_a_uid_not_allowed_is_refused_and_counted() {
    if skip_without_root("peer_with_a_uid_not_allowed_is_refused_and_counted") {
        return;
    }
    let _serial = serial().await;
    let coderd = FakeCoderd::start().await;
    let (dir, config) = Proxy::config(IoMode::Auto);
    let config = Config {
        allow_uids: vec![0],
        socket_mode: 0o666,
        ..config
    };
    let proxy = Proxy::start_grpc(dir, config, &coderd.addr()).await;
    proxy.open_dir_to_everyone();

    let socket = proxy.socket_path();
    let frame = frames("nobody", 0, 1, 3).remove(0);
    let status = tokio::task::spawn_blocking(move || connect_as_nobody(&socket, &frame))
        .await
        .unwrap();
    assert_eq!(status, 0, "uid 65534 connected and was closed by the proxy");
    let peer_uid = ConnectionRejectReason::PeerUid;
    assert!(
        eventually(PATIENCE, || proxy
            .metrics()
            .connections_rejected_for(peer_uid)
            == 1)
        .await
    );
    assert_eq!(
        proxy
            .metrics()
            .connections_rejected_for(ConnectionRejectReason::Limit),
        0
    );

    // root (the test's uid) is allowed.
    let mut root = proxy.connect();
    assert_eq!(write_frames(&mut root, &frames("root", 0, 2, 2)), 2);
    assert!(proxy.wait_settled_at(4, PATIENCE).await);
    let got = delivered(&coderd.requests());
    assert!(!got.contains_key("nobody"), "nothing of the refused peer");
    assert_eq!(got["root"], vec![0, 1, 2, 3]);
    drop(root);
    let totals = proxy.close().await;
    assert_eq!(
        totals.received, 4,
        "the refused peer's frame was never read"
    );
    assert_accounting_totals(totals, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_are_closed_and_counted() {
    let _serial = serial().await;
    let coderd = FakeCoderd::start().await;
    let (dir, config) = Proxy::config(IoMode::Auto);
    let config = Config {
        max_connections: 2,
        ..config
    };
    let proxy = Proxy::start_grpc(dir, config, &coderd.addr()).await;

    let a = proxy.connect();
    let mut b = proxy.connect();
    assert!(eventually(PATIENCE, || open_connections(&proxy) == 2).await);
    let mut over = proxy.connect();
    let _ = over.write_all(&frames("over", 0, 1, 1)[0]);
    assert!(
        closed_by_proxy(&mut over, PATIENCE),
        "the third is closed at once"
    );
    let limit = ConnectionRejectReason::Limit;
    assert!(
        eventually(PATIENCE, || proxy.metrics().connections_rejected_for(limit)
            == 1)
        .await
    );

    // A place freed is a place taken.
    drop(a);
    assert!(eventually(PATIENCE, || open_connections(&proxy) == 1).await);
    let mut next = proxy.connect();
    assert_eq!(write_frames(&mut next, &frames("next", 0, 2, 1)), 2);
    assert_eq!(write_frames(&mut b, &frames("b", 0, 1, 1)), 1);
    assert!(proxy.wait_settled_at(3, PATIENCE).await);
    assert_eq!(proxy.metrics().connections_rejected_for(limit), 1);
    assert_eq!(
        proxy
            .metrics()
            .connections_rejected_for(ConnectionRejectReason::PeerUid),
        0
    );
    let got = delivered(&coderd.requests());
    assert!(!got.contains_key("over"));
    assert_eq!(got["next"], vec![0, 1]);
    drop((b, next));
    let totals = proxy.close().await;
    assert_eq!(totals.forwarded, 3);
    assert_accounting_totals(totals, 0);
}
