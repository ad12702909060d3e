//! The control plane's bulk work — parsing a reloaded config and building its snapshot, freeing the snapshot it
//! replaced, reading every series for the status page — done on a thread of its own that Linux runs only when no
//! other thread wants its CPU (`SCHED_IDLE`).
//!
//! With 10,000 backends that work takes tens of milliseconds. At the control plane's own priority (nice 10) a
//! worker that woke on the same CPU still waited for the rest of the scheduler's slice, and those waits were the
//! p99 of requests during reloads (benches/reload.py: 1.72× the p99 without reloads). A waking thread of normal
//! priority preempts a `SCHED_IDLE` one at once (1.02×, docs/performance.md). Health checks, the admin API and
//! `/metrics` stay on the control plane's thread: they are small, and must answer when the CPU is busy.
//!
//! On a CPU that requests keep fully busy this thread gets almost nothing (about 0.3% of it): a reload of 10,000
//! backends took 10 s there. So the thread keeps track of how long its jobs waited for a CPU, and while the last
//! one waited more than [`PATIENCE`] (or one has been waiting that long), [`run_unless_busy`] runs a job on the
//! caller's thread instead: a reload then applies at the control plane's priority, as before, and the requests
//! pay for it with a busy CPU's latency rather than the operator with a reload that does not come.

use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a job may wait for a CPU before the thread counts as starved.
pub(crate) const PATIENCE: Duration = Duration::from_millis(50);

type Job = Box<dyn FnOnce() + Send>;

struct Thread {
    jobs: mpsc::Sender<Job>,
    /// Jobs sent and not finished.
    queued: AtomicUsize,
    /// When the thread last finished a job, in µs since `epoch`.
    progress_us: AtomicU64,
    /// The last job finished waited more than [`PATIENCE`] for a CPU.
    starved: AtomicBool,
    epoch: Instant,
}

/// The thread, started at the first job (`None` if it could not be started: jobs then run on the caller's
/// thread).
static THREAD: OnceLock<Option<Thread>> = OnceLock::new();

/// Runs `job` on the background thread and waits for its result (a panic in it is resumed here). The job runs
/// inside the caller's tokio runtime context, so it may spawn tasks there.
pub(crate) async fn run<T: Send + 'static>(job: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = tokio::sync::oneshot::channel();
    submit(
        move || catch_unwind(AssertUnwindSafe(job)),
        move |result| {
            let _ = tx.send(result);
        },
    );
    match rx.await {
        Ok(Ok(value)) => value,
        Ok(Err(panic)) => resume_unwind(panic),
        Err(_) => unreachable!(
            "every job submitted runs and answers: the thread catches panics and never ends"
        ),
    }
}

/// [`run`], unless the thread is starved for CPU ([`busy`]): then `job` runs here, now.
pub(crate) async fn run_unless_busy<T: Send + 'static>(
    job: impl FnOnce() -> T + Send + 'static,
) -> T {
    if busy() {
        tracing::debug!("the CPU is busy: the control plane does this job itself");
        return job();
    }
    run(job).await
}

/// Runs `job` on the background thread without waiting for it.
pub(crate) fn spawn(job: impl FnOnce() + Send + 'static) {
    submit(move || catch_unwind(AssertUnwindSafe(job)), drop);
}

/// Did the thread's last job wait more than [`PATIENCE`] (queued or off the CPU), or has a job been waiting that
/// long?
pub(crate) fn busy() -> bool {
    let Some(Some(t)) = THREAD.get() else {
        return false;
    };
    if t.starved.load(Ordering::Relaxed) {
        return true;
    }
    let since_progress = (t.epoch.elapsed().as_micros() as u64)
        .saturating_sub(t.progress_us.load(Ordering::Relaxed));
    t.queued.load(Ordering::Relaxed) > 0 && since_progress > PATIENCE.as_micros() as u64
}

/// Sends `work` to the thread, which hands its result to `answer` once it has noted how long `work` waited,
/// from its sending to its end, beyond the CPU time it used (so that a caller woken by the answer sees [`busy`]
/// up to date).
fn submit<R: 'static>(
    work: impl FnOnce() -> R + Send + 'static,
    answer: impl FnOnce(R) + Send + 'static,
) {
    let (runtime, submitted) = (tokio::runtime::Handle::try_current().ok(), wall_clock());
    let job: Job = Box::new(move || {
        let _entered = runtime.as_ref().map(tokio::runtime::Handle::enter);
        let cpu = cpu_time();
        let result = work();
        // From its sending: a thread kept off the CPU may not even start a job for a long while.
        let waited = submitted
            .elapsed()
            .saturating_sub(cpu_time().saturating_sub(cpu));
        if let Some(Some(t)) = THREAD.get() {
            t.starved.store(waited > PATIENCE, Ordering::Relaxed);
            t.progress_us
                .store(t.epoch.elapsed().as_micros() as u64, Ordering::Relaxed);
        }
        answer(result);
    });
    let Some(t) = THREAD.get_or_init(start).as_ref() else {
        return job();
    };
    if t.queued.fetch_add(1, Ordering::Relaxed) == 0 {
        // Idle until now: the wait starts here.
        t.progress_us
            .store(t.epoch.elapsed().as_micros() as u64, Ordering::Relaxed);
    }
    if let Err(mpsc::SendError(job)) = t.jobs.send(job) {
        t.queued.fetch_sub(1, Ordering::Relaxed);
        job();
    }
}

fn start() -> Option<Thread> {
    let (tx, rx) = mpsc::channel::<Job>();
    let started = std::thread::Builder::new()
        .name("switchyard-background".to_owned())
        .spawn(move || {
            lower_priority();
            for job in rx {
                job();
                if let Some(Some(t)) = THREAD.get() {
                    t.queued.fetch_sub(1, Ordering::Relaxed);
                }
            }
        });
    match started {
        Ok(_) => Some(Thread {
            jobs: tx,
            queued: AtomicUsize::new(0),
            progress_us: AtomicU64::new(0),
            starved: AtomicBool::new(false),
            epoch: wall_clock(),
        }),
        Err(e) => {
            tracing::warn!(error = %e, "cannot start the background thread; its work runs on the control plane");
            None
        }
    }
}

/// Now, by the real clock: a job's wait is its wall time less its CPU time, also when a test pauses tokio's.
#[allow(clippy::disallowed_methods)]
fn wall_clock() -> Instant {
    Instant::now()
}

/// The CPU time this thread has used.
fn cpu_time() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(
        t.tv_sec.max(0) as u64,
        t.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

/// Moves the current thread to `SCHED_IDLE` (always allowed: it only lowers the thread's priority).
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        use thread_priority::{
            NormalThreadSchedulePolicy, ThreadPriority, ThreadSchedulePolicy,
            set_thread_priority_and_policy, thread_native_id, thread_schedule_policy,
        };
        let idle = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle);
        // The crate also sets the nice value to 0, which an unprivileged thread started at nice 10 may not do;
        // the nice value means nothing under SCHED_IDLE, so the policy is what is checked.
        let _ = set_thread_priority_and_policy(thread_native_id(), ThreadPriority::Min, idle);
        if !matches!(thread_schedule_policy(), Ok(p) if p == idle) {
            tracing::debug!("cannot move the background thread to SCHED_IDLE");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The thread and its state are the process's: these tests take turns.
    static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    #[tokio::test]
    async fn jobs_run_on_the_background_thread_and_answer() {
        let _turn = ONE_AT_A_TIME.lock().await;
        let caller = std::thread::current().id();
        let (thread, name) = run(|| {
            let t = std::thread::current();
            (t.id(), t.name().map(str::to_owned))
        })
        .await;
        assert_ne!(thread, caller);
        assert_eq!(name.as_deref(), Some("switchyard-background"));
    }

    #[tokio::test]
    async fn jobs_may_spawn_on_the_callers_runtime() {
        let _turn = ONE_AT_A_TIME.lock().await;
        let spawned = run(|| tokio::spawn(async { 7 })).await;
        assert_eq!(spawned.await.ok(), Some(7));
    }

    #[tokio::test]
    async fn a_panic_reaches_the_caller_and_the_thread_lives_on() {
        let _turn = ONE_AT_A_TIME.lock().await;
        let panicked = tokio::spawn(run(|| -> u32 { panic!("in a job") })).await;
        assert!(panicked.is_err_and(|e| e.is_panic()));
        assert_eq!(run(|| 2 + 2).await, 4);
        let (tx, rx) = tokio::sync::oneshot::channel();
        spawn(move || {
            let _ = tx.send(5);
        });
        assert_eq!(rx.await.ok(), Some(5));
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn the_thread_runs_at_idle_priority() {
        let _turn = ONE_AT_A_TIME.lock().await;
        let policy = run(thread_priority::thread_schedule_policy).await;
        assert_eq!(
            policy.ok(),
            Some(thread_priority::ThreadSchedulePolicy::Normal(
                thread_priority::NormalThreadSchedulePolicy::Idle
            ))
        );
    }

    /// A job that sleeps (uses no CPU) for longer than the patience looks to the thread like one that waited
    /// for a CPU: while it is pending, and after it, the next job runs on the caller's thread; a prompt job on
    /// the thread clears that.
    #[tokio::test]
    async fn a_job_kept_waiting_sends_the_next_ones_to_the_caller() {
        let _turn = ONE_AT_A_TIME.lock().await;
        let on_caller = || async move {
            run_unless_busy(|| std::thread::current().id()).await == std::thread::current().id()
        };
        // Until a job on the thread finishes promptly (a busy test machine may keep a job waiting too).
        let settle = || async move {
            let deadline = wall_clock() + Duration::from_secs(30);
            while busy() && wall_clock() < deadline {
                run(|| ()).await;
            }
            !busy()
        };
        assert!(settle().await);
        assert!(!on_caller().await, "not busy: the job goes to the thread");
        let (release, released) = std::sync::mpsc::channel::<()>();
        let (started, is_started) = tokio::sync::oneshot::channel();
        spawn(move || {
            let _ = started.send(());
            let _ = released.recv();
        });
        let _ = is_started.await;
        // Pending for longer than the patience, with no progress.
        let deadline = wall_clock() + Duration::from_secs(10);
        while !busy() && wall_clock() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            busy(),
            "a job pending for more than {PATIENCE:?} makes the thread busy"
        );
        assert!(on_caller().await);
        tokio::time::sleep(PATIENCE).await;
        let _ = release.send(());
        // The blocked job waited (without CPU) past the patience: still busy after it ends ...
        let deadline = wall_clock() + Duration::from_secs(10);
        while THREAD
            .get()
            .and_then(Option::as_ref)
            .is_some_and(|t| t.queued.load(Ordering::Relaxed) > 0)
            && wall_clock() < deadline
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(busy());
        assert!(on_caller().await);
        // ... until a job on the thread finishes promptly.
        assert!(settle().await);
        assert!(!on_caller().await);
    }
}
