//! Threads for the kernels: a [`Team`] that stays awake between the many short parallel steps of
//! token generation, and [`Workers`], the choice a kernel call is given (one thread, the current
//! rayon pool, or a team).
//!
//! Generating a token from a large model runs a few hundred matrix–vector products of 50–500 µs
//! each with a few microseconds of serial work (norms, quantization) between them. A rayon worker
//! goes to sleep within microseconds of running out of work, and on a virtual machine waking it
//! took 30–80 µs (the idle vCPU halts and needs an interrupt through the hypervisor): a large part
//! of each split product. A team's helpers spin on a counter for [`SPIN`] after each task (ggml's
//! thread pool does the same), so handing out the next task costs a cache-line transfer; they park
//! only when no task came for that long. Batched work with long products (the classifier runtime)
//! keeps using rayon.

#![allow(unsafe_code)]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rayon::prelude::*;

/// How long an idle helper spins before it parks: far longer than the serial gaps inside a
/// token's forward pass and between tokens (microseconds), so a generating model's helpers stay
/// awake, and short enough that an idle decoder stops using its cores at once.
const SPIN: Duration = Duration::from_millis(5);

/// Where a kernel call runs its parts.
#[derive(Clone, Copy)]
pub enum Workers<'a> {
    /// On the calling thread.
    One,
    /// Over the current rayon pool.
    Rayon,
    /// Over a team (the caller is its first thread).
    Team(&'a Team),
}

impl Workers<'_> {
    /// Threads the parts spread over.
    pub fn count(self) -> usize {
        match self {
            Workers::One => 1,
            Workers::Rayon => rayon::current_num_threads(),
            Workers::Team(team) => team.threads(),
        }
    }

    /// `f(i, chunk)` for each chunk `i` of `out` cut into chunks of `size` (the last may be
    /// shorter), spread over the workers; a team gives each thread a contiguous run of chunks.
    pub fn for_chunks<T: Send>(self, out: &mut [T], size: usize, f: impl Fn(usize, &mut [T]) + Sync) {
        let size = size.max(1);
        match self {
            Workers::One => out.chunks_mut(size).enumerate().for_each(|(i, c)| f(i, c)),
            Workers::Rayon => out.par_chunks_mut(size).enumerate().for_each(|(i, c)| f(i, c)),
            Workers::Team(team) => {
                let (len, chunks) = (out.len(), out.len().div_ceil(size));
                let per_thread = chunks.div_ceil(team.threads());
                let base = SendPtr(out.as_mut_ptr());
                team.run(&|thread| {
                    let first = (thread * per_thread).min(chunks);
                    let last = ((thread + 1) * per_thread).min(chunks);
                    for i in first..last {
                        let (start, end) = (i * size, ((i + 1) * size).min(len));
                        // SAFETY: chunk i is [i·size, min((i+1)·size, len)) of `out`, which the
                        // `&mut` borrow holds for this call; each chunk goes to one thread only,
                        // and `run` returns only when every thread is done.
                        let chunk = unsafe { std::slice::from_raw_parts_mut(base.at(start), end - start) };
                        f(i, chunk);
                    }
                });
            }
        }
    }
}

/// A pointer that may cross to the team's threads (each uses a disjoint part of its target).
struct SendPtr<T>(*mut T);

impl<T> Clone for SendPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for SendPtr<T> {}

// SAFETY: `for_chunks` hands each thread a disjoint range of the pointee.
unsafe impl<T: Send> Send for SendPtr<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Sync for SendPtr<T> {}

impl<T> SendPtr<T> {
    /// The element `offset` places on (a method, so closures capture the whole wrapper).
    fn at(self, offset: usize) -> *mut T {
        self.0.wrapping_add(offset)
    }
}

/// The task being run: a borrowed closure whose lifetime is erased while [`Team::run`] waits for
/// every helper to finish with it.
#[derive(Clone, Copy)]
struct Task(*const (dyn Fn(usize) + Sync));

// SAFETY: the closure is `Sync`, and `Team::run` keeps it alive until every helper is done.
unsafe impl Send for Task {}

/// What the caller and the helpers share.
struct Shared {
    /// Bumped for each task (and to stop); helpers run the task when it changes.
    epoch: AtomicUsize,
    task: Mutex<Option<Task>>,
    /// Helpers still running the current task.
    busy: AtomicUsize,
    /// Helpers parked (or about to be) on `wake`.
    parked: AtomicUsize,
    park: Mutex<()>,
    wake: Condvar,
    stop: AtomicBool,
    /// A helper's part of the current task panicked.
    panicked: AtomicBool,
}

/// `threads − 1` helper threads that, with the caller, run each task of [`Team::run`].
pub struct Team {
    threads: usize,
    shared: Arc<Shared>,
    helpers: Vec<JoinHandle<()>>,
    /// One task at a time (tasks from two threads would share the epoch).
    running: Mutex<()>,
}

impl Team {
    /// A team of `threads` (the caller counts as one; at least one).
    pub fn new(threads: usize) -> Self {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            epoch: AtomicUsize::new(0),
            task: Mutex::new(None),
            busy: AtomicUsize::new(0),
            parked: AtomicUsize::new(0),
            park: Mutex::new(()),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
            panicked: AtomicBool::new(false),
        });
        let helpers = (1..threads)
            .map(|index| {
                let shared = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name(format!("qat-team-{index}"))
                    .spawn(move || helper(&shared, index))
                    .expect("the OS starts a thread")
            })
            .collect();
        Self { threads, shared, helpers, running: Mutex::new(()) }
    }

    /// Threads in the team, the caller included.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Run `task(i)` for every `i` in `0..threads` (the caller runs 0) and return when all are
    /// done. A task must not call `run` on the same team.
    ///
    /// # Panics
    /// If a part of the task panicked.
    pub fn run(&self, task: &(dyn Fn(usize) + Sync)) {
        if self.threads == 1 {
            task(0);
            return;
        }
        let _one_at_a_time = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let shared = &*self.shared;
        // SAFETY: only the lifetime is erased; this call waits below until no helper uses it.
        let erased: *const (dyn Fn(usize) + Sync + 'static) = unsafe { std::mem::transmute(task) };
        *shared.task.lock().unwrap_or_else(|e| e.into_inner()) = Some(Task(erased));
        shared.busy.store(self.threads - 1, Ordering::SeqCst);
        shared.epoch.fetch_add(1, Ordering::SeqCst);
        if shared.parked.load(Ordering::SeqCst) > 0 {
            let _guard = shared.park.lock().unwrap_or_else(|e| e.into_inner());
            shared.wake.notify_all();
        }
        let own = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| task(0)));
        while shared.busy.load(Ordering::Acquire) > 0 {
            std::hint::spin_loop();
        }
        *shared.task.lock().unwrap_or_else(|e| e.into_inner()) = None;
        if let Err(panic) = own {
            std::panic::resume_unwind(panic);
        }
        assert!(!shared.panicked.swap(false, Ordering::SeqCst), "a team thread's part of the task panicked");
    }
}

impl Drop for Team {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.epoch.fetch_add(1, Ordering::SeqCst);
        {
            let _guard = self.shared.park.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.wake.notify_all();
        }
        for helper in self.helpers.drain(..) {
            let _ = helper.join();
        }
    }
}

/// A helper's loop: wait for the epoch to change (spinning, then parked), run its part.
fn helper(shared: &Shared, index: usize) {
    // The epoch the team started at: the first task may be out before this thread runs.
    let mut seen = 0;
    loop {
        let mut idle_since = None;
        let mut spins = 0u32;
        while shared.epoch.load(Ordering::Acquire) == seen {
            std::hint::spin_loop();
            spins = spins.wrapping_add(1);
            // the clock only now and then: it costs more than a spin
            if spins.is_multiple_of(1024) && idle_since.get_or_insert_with(Instant::now).elapsed() > SPIN {
                let mut guard = shared.park.lock().unwrap_or_else(|e| e.into_inner());
                // counted before the epoch is read again, so `run` either sees this helper
                // parked and wakes it, or bumped the epoch before the read below
                shared.parked.fetch_add(1, Ordering::SeqCst);
                while shared.epoch.load(Ordering::SeqCst) == seen {
                    guard = shared.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
                }
                shared.parked.fetch_sub(1, Ordering::SeqCst);
            }
        }
        // `run` bumps the epoch once per task and waits for every helper before the next one
        seen = shared.epoch.load(Ordering::SeqCst);
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let task = *shared.task.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(task) = task {
            // SAFETY: `Team::run` keeps the closure alive until `busy` reaches zero.
            let part = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| unsafe { (*task.0)(index) }));
            if part.is_err() {
                shared.panicked.store(true, Ordering::SeqCst);
            }
        }
        shared.busy.fetch_sub(1, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_thread_runs_its_part_of_each_task() {
        for threads in [1, 2, 3] {
            let team = Team::new(threads);
            assert_eq!(team.threads(), threads);
            for round in 0..200 {
                let hits: Vec<AtomicUsize> = (0..threads).map(|_| AtomicUsize::new(0)).collect();
                team.run(&|i| {
                    hits[i].fetch_add(round + 1, Ordering::SeqCst);
                });
                assert!(hits.iter().all(|h| h.load(Ordering::SeqCst) == round + 1), "{threads} threads");
            }
        }
    }

    #[test]
    fn parked_helpers_wake_for_the_next_task() {
        let team = Team::new(2);
        let count = AtomicUsize::new(0);
        team.run(&|_| {
            count.fetch_add(1, Ordering::SeqCst);
        });
        std::thread::sleep(SPIN * 3);
        team.run(&|_| {
            count.fetch_add(1, Ordering::SeqCst);
        });
        assert_eq!(count.load(Ordering::SeqCst), 4);
    }

    #[test]
    fn chunks_cover_the_slice_once_on_every_kind_of_workers() {
        let team = Team::new(3);
        for workers in [Workers::One, Workers::Rayon, Workers::Team(&team)] {
            for (len, size) in [(0, 4), (1, 4), (10, 3), (32, 1), (7, 100)] {
                let mut out = vec![0usize; len];
                workers.for_chunks(&mut out, size, |i, chunk| {
                    chunk.iter_mut().enumerate().for_each(|(j, v)| *v += i * size + j + 1)
                });
                assert_eq!(out, (1..=len).collect::<Vec<_>>(), "len {len} size {size}");
            }
        }
    }

    #[test]
    fn a_panicking_part_panics_the_caller_and_the_team_goes_on() {
        let team = Team::new(2);
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            team.run(&|i| assert_ne!(i, 1, "part 1 fails"));
        }));
        assert!(caught.is_err());
        let count = AtomicUsize::new(0);
        team.run(&|_| {
            count.fetch_add(1, Ordering::SeqCst);
        });
        assert_eq!(count.load(Ordering::SeqCst), 2);
    }
}
