//! The one place concurrency primitives come from, so the ring compiles against
//! std normally and against loom under `--cfg boundary_loom` (see `loom-tests/`).
//!
//! Besides re-exports it owns the two things loom cannot share with std:
//! spinning ([`spin_hint`]) and timed waiting ([`Deadline`]). Loom has no clock,
//! so under loom a non-zero timeout never fires (the wait is untimed and only a
//! notification ends it) while a zero timeout has always passed. Loom models can
//! therefore only reach the "timed out" paths through `Duration::ZERO` or through
//! `RingHandle::wake`, which takes the same exit as a timeout.

#[cfg(not(boundary_loom))]
pub(crate) use std_impl::*;

#[cfg(boundary_loom)]
pub(crate) use loom_impl::*;

#[cfg(not(boundary_loom))]
mod std_impl {
    use std::time::{Duration, Instant};

    pub(crate) use std::sync::atomic;
    pub(crate) use std::sync::{Arc, Condvar, Mutex, MutexGuard};

    /// `UnsafeCell` with loom's closure API, so both builds share one call shape.
    #[derive(Debug)]
    pub(crate) struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

    impl<T> UnsafeCell<T> {
        pub(crate) const fn new(value: T) -> Self {
            Self(std::cell::UnsafeCell::new(value))
        }

        #[inline(always)]
        pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
            f(self.0.get())
        }

        #[inline(always)]
        pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
            f(self.0.get())
        }
    }

    /// One step of a short busy wait on another thread's progress.
    #[inline(always)]
    pub(crate) fn spin_hint() {
        std::hint::spin_loop();
    }

    /// Gives the CPU away while waiting on another thread's progress.
    #[inline]
    pub(crate) fn yield_now() {
        std::thread::yield_now();
    }

    /// When a timed wait gives up.
    #[derive(Debug, Clone, Copy)]
    pub(crate) struct Deadline(Option<Instant>);

    impl Deadline {
        /// `timeout` from now; a timeout too large for the clock never passes.
        pub(crate) fn after(timeout: Duration) -> Self {
            Self(Instant::now().checked_add(timeout))
        }

        pub(crate) fn has_passed(&self) -> bool {
            self.0.is_some_and(|at| Instant::now() >= at)
        }

        /// Waits on `condvar` until notified (or spuriously woken) or until the
        /// deadline; the caller re-checks its condition either way.
        pub(crate) fn wait<'a, T>(
            &self,
            condvar: &Condvar,
            guard: MutexGuard<'a, T>,
        ) -> MutexGuard<'a, T> {
            match self.0 {
                None => condvar
                    .wait(guard)
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
                Some(at) => {
                    let left = at.saturating_duration_since(Instant::now());
                    condvar
                        .wait_timeout(guard, left)
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .0
                }
            }
        }
    }
}

#[cfg(boundary_loom)]
mod loom_impl {
    use std::time::Duration;

    pub(crate) use loom::cell::UnsafeCell;
    pub(crate) use loom::sync::atomic;
    pub(crate) use loom::sync::{Arc, Condvar, Mutex, MutexGuard};

    /// Loom only switches threads at its own operations, so a busy wait must yield.
    pub(crate) fn spin_hint() {
        loom::thread::yield_now();
    }

    pub(crate) fn yield_now() {
        loom::thread::yield_now();
    }

    /// Loom has no clock: a zero timeout has always passed, any other never does.
    #[derive(Debug, Clone, Copy)]
    pub(crate) struct Deadline {
        passed: bool,
    }

    impl Deadline {
        pub(crate) fn after(timeout: Duration) -> Self {
            Self {
                passed: timeout.is_zero(),
            }
        }

        pub(crate) fn has_passed(&self) -> bool {
            self.passed
        }

        /// An untimed wait: only a notification ends it, so a lost wake-up
        /// shows up in a model as a deadlock.
        pub(crate) fn wait<'a, T>(
            &self,
            condvar: &Condvar,
            guard: MutexGuard<'a, T>,
        ) -> MutexGuard<'a, T> {
            condvar
                .wait(guard)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        }
    }
}
