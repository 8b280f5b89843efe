//! The compute threads of one model: a persistent pool whose workers spin briefly between
//! the ~150 parallel regions of a forward pass, then sleep.
//!
//! A decode step of a small model is a long chain of short operations (a few tens of
//! microseconds each); waking a sleeping thread for each costs about as much as the work.
//! So each worker, once a region ends, spins for [`SPIN_BEFORE_SLEEP_US`] waiting for the
//! next one and only then sleeps on a condition variable. The calling thread always takes
//! part, so `threads = 1` spawns nothing.
//!
//! Work is handed out in chunks through an atomic counter: a thread that was descheduled
//! (the machine is shared) does not hold the others back. Which thread computes a chunk never
//! changes its result: every chunk's arithmetic is fixed by its index alone.
//!
//! This module must never run a job after its caller returned: `run` withdraws the job once
//! its own share is done and waits for the workers that joined the region (not for those
//! that never got the CPU to join), which is what makes lending it borrowed closures sound.
#![allow(unsafe_code)]

use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long an idle worker spins for the next region before it sleeps, in microseconds.
pub const SPIN_BEFORE_SLEEP_US: u64 = 2_000;

/// A job as the workers see it: a closure run with chunk indices.
type Job<'a> = &'a (dyn Fn(usize) + Sync);

struct Shared {
    /// Bumped once per region; workers wait for it to change.
    generation: AtomicUsize,
    /// Points at the caller's `Job` (on its stack) while a region runs.
    job: AtomicPtr<Job<'static>>,
    /// Chunks in the current region, and the next one to hand out.
    chunks: AtomicUsize,
    next: AtomicUsize,
    /// Workers that joined the current region and have not left it.
    in_region: AtomicUsize,
    sleepers: AtomicUsize,
    shutdown: AtomicBool,
    lock: Mutex<()>,
    wake: Condvar,
}

/// A fixed set of compute threads; see the module documentation.
pub struct ComputePool {
    shared: Arc<Shared>,
    /// One region at a time: callers from several threads take turns.
    caller: Mutex<()>,
    workers: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for ComputePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ComputePool")
            .field("threads", &self.threads())
            .finish()
    }
}

impl ComputePool {
    /// A pool of `threads` compute threads in all (the caller counts as one).
    pub fn new(threads: usize) -> std::io::Result<ComputePool> {
        let shared = Arc::new(Shared {
            generation: AtomicUsize::new(0),
            job: AtomicPtr::new(std::ptr::null_mut()),
            chunks: AtomicUsize::new(0),
            next: AtomicUsize::new(0),
            in_region: AtomicUsize::new(0),
            sleepers: AtomicUsize::new(0),
            shutdown: AtomicBool::new(false),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        let mut workers = Vec::new();
        for i in 1..threads.max(1) {
            let s = shared.clone();
            workers.push(
                std::thread::Builder::new()
                    .name(format!("compute-{i}"))
                    .spawn(move || worker(&s))?,
            );
        }
        Ok(ComputePool {
            shared,
            caller: Mutex::new(()),
            workers,
        })
    }

    /// Threads computing, the caller included.
    pub fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Runs `f(i)` for every `i` in `0..chunks`, spread over the pool; returns when all are
    /// done.
    pub fn run(&self, chunks: usize, f: &(dyn Fn(usize) + Sync)) {
        if chunks == 0 {
            return;
        }
        if self.workers.is_empty() || chunks == 1 {
            (0..chunks).for_each(f);
            return;
        }
        let _turn = self.caller.lock().unwrap_or_else(|e| e.into_inner());
        let s = &*self.shared;
        let job: Job = f;
        // SAFETY: the pointer is withdrawn below, and this function then waits until no
        // worker that could have read it is left in the region, so `job` (and the closure it
        // borrows) outlives every use. The lifetime is erased only to fit the atomic.
        let job_ptr = unsafe {
            std::mem::transmute::<*const Job<'_>, *mut Job<'static>>(&job as *const Job<'_>)
        };
        s.job.store(job_ptr, Ordering::SeqCst);
        s.chunks.store(chunks, Ordering::SeqCst);
        s.next.store(0, Ordering::SeqCst);
        s.generation.fetch_add(1, Ordering::SeqCst);
        if s.sleepers.load(Ordering::SeqCst) > 0 {
            let _g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        take_chunks(s, f);
        // Close the region: a worker that has not joined yet (descheduled, on a busy
        // machine) finds no job and skips it; only those already in are waited for.
        s.job.store(std::ptr::null_mut(), Ordering::SeqCst);
        while s.in_region.load(Ordering::SeqCst) != 0 {
            std::hint::spin_loop();
        }
    }

    /// Splits `data` into pieces of `chunk_len` (the last may be shorter) and runs
    /// `f(i, piece)` on each, spread over the pool.
    pub fn for_each_chunk_mut<T: Send>(
        &self,
        data: &mut [T],
        chunk_len: usize,
        f: impl Fn(usize, &mut [T]) + Sync,
    ) {
        let chunk_len = chunk_len.max(1);
        let len = data.len();
        let base = SendPtr(data.as_mut_ptr());
        self.run(len.div_ceil(chunk_len), &|i| {
            let start = i * chunk_len;
            let n = chunk_len.min(len - start);
            let p = &base;
            // SAFETY: `run` hands out each index once, so the pieces are disjoint; each lies
            // inside `data`, which is borrowed mutably for the whole call.
            let piece = unsafe { std::slice::from_raw_parts_mut(p.0.add(start), n) };
            f(i, piece);
        });
    }
}

struct SendPtr<T>(*mut T);
// SAFETY: used only to hand disjoint pieces of a `&mut [T]` (T: Send) to other threads
// within one `run`.
unsafe impl<T: Send> Sync for SendPtr<T> {}

fn take_chunks(s: &Shared, f: Job) {
    let chunks = s.chunks.load(Ordering::Acquire);
    loop {
        let i = s.next.fetch_add(1, Ordering::AcqRel);
        if i >= chunks {
            break;
        }
        f(i);
    }
}

fn worker(s: &Shared) {
    // Generations start at 0 when the pool is made, before any worker runs.
    let mut seen = 0;
    loop {
        let spin_until = Instant::now() + Duration::from_micros(SPIN_BEFORE_SLEEP_US);
        let mut spins = 0u32;
        loop {
            if s.shutdown.load(Ordering::Acquire) {
                return;
            }
            let now = s.generation.load(Ordering::SeqCst);
            if now != seen {
                seen = now;
                break;
            }
            spins += 1;
            if spins.is_multiple_of(256) && Instant::now() > spin_until {
                let mut g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
                s.sleepers.fetch_add(1, Ordering::SeqCst);
                while s.generation.load(Ordering::SeqCst) == seen
                    && !s.shutdown.load(Ordering::SeqCst)
                {
                    g = s.wake.wait(g).unwrap_or_else(|e| e.into_inner());
                }
                s.sleepers.fetch_sub(1, Ordering::SeqCst);
            }
            std::hint::spin_loop();
        }
        // Join first, then look for the job: the caller withdraws the job before it waits
        // for `in_region` to empty, so a job seen here stays alive until the decrement.
        s.in_region.fetch_add(1, Ordering::SeqCst);
        let ptr = s.job.load(Ordering::SeqCst);
        if !ptr.is_null() {
            // SAFETY: see above: the caller cannot return while this worker is counted in
            // `in_region`, and it withdrew the pointer before waiting.
            let f = unsafe { *ptr };
            take_chunks(s, f);
        }
        s.in_region.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Drop for ComputePool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        {
            let _g = self.shared.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_chunk_runs_once_across_regions_and_after_sleeping() {
        let pool = ComputePool::new(3).unwrap();
        for round in 0..200 {
            let mut data = vec![0u32; 1000 + round];
            pool.for_each_chunk_mut(&mut data, 7, |i, piece| {
                for (k, v) in piece.iter_mut().enumerate() {
                    *v += (i * 7 + k) as u32 + 1;
                }
            });
            for (k, v) in data.iter().enumerate() {
                assert_eq!(*v, k as u32 + 1, "round {round} element {k}");
            }
            if round == 100 {
                // Let the workers fall asleep; the next region must wake them.
                std::thread::sleep(Duration::from_micros(SPIN_BEFORE_SLEEP_US * 3));
            }
        }
    }

    #[test]
    fn several_callers_take_turns() {
        let pool = Arc::new(ComputePool::new(2).unwrap());
        let handles: Vec<_> = (0..4)
            .map(|c| {
                let pool = pool.clone();
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        let sum = AtomicUsize::new(0);
                        pool.run(100, &|i| {
                            sum.fetch_add(i + c, Ordering::Relaxed);
                        });
                        assert_eq!(sum.load(Ordering::Relaxed), 4950 + 100 * c);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    }
}
