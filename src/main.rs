//! The `boundary-log-proxy` binary: parses the command line and hands over to the library.

fn main() {
    println!("boundary-log-proxy");
}
