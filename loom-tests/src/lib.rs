//! The real `src/sync.rs` and `src/ring/` compiled against loom, for the models in `tests/`.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

#[path = "../../src/sync.rs"]
mod sync;

#[path = "../../src/ring/mod.rs"]
pub mod ring;

/// Runs `model` under loom (bounds from `LOOM_MAX_PREEMPTIONS` and friends) and
/// prints how many executions it explored, so a run shows the models really branch.
pub fn explore(name: &str, model: impl Fn() + Sync + Send + 'static) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    let executions = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&executions);
    let started = std::time::Instant::now();
    loom::model(move || {
        counter.fetch_add(1, Ordering::Relaxed);
        model();
    });
    eprintln!(
        "loom model {name}: {} executions in {:.1?}",
        executions.load(Ordering::Relaxed),
        started.elapsed()
    );
}
