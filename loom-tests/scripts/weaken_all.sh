#!/bin/bash
# The weakened-ordering experiments reported for the ring; each is restored after its run.
W="$(dirname "$0")/weaken.sh"
S=src/ring/shared.rs
M=src/ring/mod.rs
$W "1 push: publish stamp Release->Relaxed" $S "slot.stamp.store(next, Ordering::Release);" "slot.stamp.store(next, Ordering::Relaxed);"
$W "2 take: stamp load Acquire->Relaxed" $S "if slot.stamp.load(Ordering::Acquire) != next {" "if slot.stamp.load(Ordering::Relaxed) != next {"
$W "3 take: hand-over stamp Release->Relaxed" $S ".store(position.wrapping_add(self.lap), Ordering::Release);" ".store(position.wrapping_add(self.lap), Ordering::Relaxed);"
$W "4 push: stamp load Acquire->Relaxed" $S "let stamp = slot.stamp.load(Ordering::Acquire);" "let stamp = slot.stamp.load(Ordering::Relaxed);"
$W "5 announce sleep by fetch_or instead of CAS on the seen tail" $S "            .compare_exchange(seen, seen | SLEEPING, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()" "            .fetch_or(SLEEPING, Ordering::Relaxed);
        let _ = seen;
        true"
$W "6 push: no token for a sleeping consumer" $S "                        if tail & SLEEPING != 0 {" "                        if false {"
$W "7 close: no token for a sleeping consumer" $S "        if before & SLEEPING != 0 {" "        if false {"
$W "8 wake: notify without taking the lock" $M "        drop(
            shared
                .token
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        shared.token_ready.notify_one();" "        shared.token_ready.notify_one();"
$W "9 wait: sleep while a claimed item is unpublished" $M "            if seen & !FLAGS != self.head {" "            if false {"
