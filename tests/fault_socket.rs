//! Who owns the socket path. A socket another process serves is never replaced: a
//! second proxy on the same path exits 1 naming it, and the first keeps serving;
//! the lock file next to the socket settles concurrent starts. Run against the real
//! binary and the library `Server`.

mod support;

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};

use boundary_log_proxy::codec::Tag;
use boundary_log_proxy::config::IoMode;
use boundary_log_proxy::{Config, Server};
use support::proxy::{free_addr, request, Client, Process, PATIENCE};

/// `serve --socket SOCKET --sink null` with JSON logs, and `/metrics` on `metrics`.
fn serve_args(socket: &Path, metrics: Option<SocketAddr>) -> Vec<String> {
    let mut args: Vec<String> = ["serve", "--socket"]
        .into_iter()
        .map(str::to_owned)
        .collect();
    args.push(socket.to_str().unwrap().to_owned());
    args.extend(
        [
            "--sink",
            "null",
            "--log-format",
            "json",
            "--shutdown-timeout",
            "2s",
        ]
        .map(str::to_owned),
    );
    if let Some(metrics) = metrics {
        args.extend(["--metrics-addr".to_owned(), metrics.to_string()]);
    }
    args
}

fn spawn(args: &[String]) -> Process {
    Process::spawn(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// A proxy serving `socket` with metrics on a free port.
async fn first_proxy(socket: &Path) -> (Process, SocketAddr) {
    let metrics = free_addr();
    let mut process = spawn(&serve_args(socket, Some(metrics)));
    process.wait_for_socket(socket, "listening").await;
    process.scrape(metrics).await;
    (process, metrics)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_proxy_on_a_served_path_exits_1_naming_it_and_the_first_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("proxy.sock");
    let (first, metrics) = first_proxy(&socket).await;

    let second = spawn(&serve_args(&socket, None))
        .wait_within(PATIENCE)
        .await;
    assert_eq!(second.status.code(), Some(1), "{:#?}", second.stderr);
    let said = second.stderr.join("\n");
    assert!(said.contains(socket.to_str().unwrap()), "{said}");
    assert!(said.contains("another process serves it"), "{said}");

    Client::connect(&socket).send_request(Tag::V2, &request("s", "p", 0, 3));
    first
        .scrape_until(metrics, "3 logs received by the first proxy", |s| {
            s.get("logs_received_total", None) == 3
        })
        .await;
    let exited = first.terminate().await;
    assert_eq!(exited.status.code(), Some(0), "{:#?}", exited.stderr);
    assert!(!socket.exists(), "the first proxy removed its socket");
    assert!(!lock_file(&socket).exists(), "and its lock file");
}

/// The lock file next to the socket: its path with `.lock` added.
fn lock_file(socket: &Path) -> PathBuf {
    PathBuf::from(format!("{}.lock", socket.display()))
}

/// An exclusive flock on `path`, held until the file is dropped.
fn hold_lock(path: &Path) -> std::fs::File {
    let file = std::fs::File::create(path).unwrap();
    // SAFETY: plain syscall on a descriptor `file` owns.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    assert_eq!(rc, 0, "flock: {}", std::io::Error::last_os_error());
    file
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_while_another_process_holds_the_lock_file_exits_1_and_touches_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("proxy.sock");
    // A leftover socket that a start would otherwise replace.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    let before = std::fs::symlink_metadata(&socket).unwrap();
    let lock = hold_lock(&lock_file(&socket));

    let exited = spawn(&serve_args(&socket, None))
        .wait_within(PATIENCE)
        .await;
    assert_eq!(exited.status.code(), Some(1), "{:#?}", exited.stderr);
    let said = exited.stderr.join("\n");
    assert!(said.contains(socket.to_str().unwrap()), "{said}");
    assert!(said.contains("another process serves it"), "{said}");
    let after = std::fs::symlink_metadata(&socket).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        (before.dev(), before.ino()),
        (after.dev(), after.ino()),
        "the socket file was left alone"
    );
    drop(lock);
}

/// Starts racing on one path, each with its own `Server`; returns the ones that
/// started.
fn race_starts(socket: &Path, starters: usize) -> Vec<Server> {
    let barrier = Arc::new(Barrier::new(starters));
    let threads: Vec<_> = (0..starters)
        .map(|_| {
            let (socket, barrier): (PathBuf, _) = (socket.to_owned(), barrier.clone());
            std::thread::spawn(move || {
                let config = Config {
                    socket,
                    io: IoMode::Epoll,
                    ..Config::default()
                };
                let server = Server::new(config, &prometheus::Registry::new()).unwrap();
                barrier.wait();
                server.start().ok().map(|_| server)
            })
        })
        .collect();
    threads
        .into_iter()
        .filter_map(|t| t.join().unwrap())
        .collect()
}

#[test]
fn concurrent_starts_on_a_leftover_socket_leave_exactly_one_serving() {
    for round in 0..30 {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("proxy.sock");
        drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
        let started = race_starts(&socket, 4);
        assert_eq!(started.len(), 1, "round {round}: {} started", started.len());
        assert!(
            std::os::unix::net::UnixStream::connect(&socket).is_ok(),
            "round {round}: the one that started serves the path"
        );
        for server in started {
            server.close();
        }
        assert!(!socket.exists(), "round {round}: close removed the socket");
    }
}
