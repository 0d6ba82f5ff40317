//! The one place concurrency primitives come from, so the ring compiles against
//! std normally and against loom under `--cfg boundary_loom` (see `loom-tests/`).

#[cfg(not(boundary_loom))]
pub(crate) use std_impl::*;

#[cfg(boundary_loom)]
pub(crate) use loom_impl::*;

#[cfg(not(boundary_loom))]
mod std_impl {
    pub(crate) use std::sync::atomic;
    pub(crate) use std::sync::{Condvar, Mutex};

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
}

#[cfg(boundary_loom)]
mod loom_impl {
    pub(crate) use loom::cell::UnsafeCell;
    pub(crate) use loom::sync::atomic;
    pub(crate) use loom::sync::{Condvar, Mutex};
}
