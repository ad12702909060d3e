//! The control plane's bulk work — parsing a reloaded config and building its snapshot, freeing the snapshot and
//! config it replaced — done on a thread of its own that Linux runs only when no other thread wants its CPU
//! (`SCHED_IDLE`).
//!
//! With 10,000 backends that work takes about 20 ms of CPU. At the control plane's own priority (nice 10) a
//! worker that woke on the same CPU still waited for the rest of the scheduler's slice, and those waits were the
//! p99 of requests during reloads (benches/reload.py: 1.34× the p99 without reloads). A waking thread of normal
//! priority preempts a `SCHED_IDLE` one at once (1.16× and 1.35×, docs/performance.md). The status page's once-a-second
//! reading of every backend's counters runs here too (counters each label handle keeps for the page: atomics
//! only, no lock). Health checks, the admin API and `/metrics` stay
//! on the control plane's thread: they must answer when the CPUs are busy, and they share locks (the metric
//! families') with the workers, which a thread that may wait seconds for a CPU must not hold.
//!
//! On CPUs that requests keep fully busy this thread gets almost nothing (about 0.3% of one): a reload of 10,000
//! backends took 10 s there. So [`run`] runs a job on the caller's thread instead while [`busy`]:
//! none of the process's CPUs had 5% of its time idle over the last second ([`watch_cpus`] reads `/proc/stat`),
//! or a job of the thread's waited more than [`PATIENCE`] in the last second, or it has not started this one
//! within that time. A reload then applies at the control plane's priority, as before: the requests pay for it
//! with a busy CPU's latency rather than the operator with a reload that does not come. What this cannot catch:
//! CPUs that fill up after the thread has started a job (the job then finishes in the thread's small share;
//! the priority of a `SCHED_IDLE` thread cannot be raised again without privileges), and a container's CPU
//! quota, which `/proc/stat` does not show (there the take-back after [`PATIENCE`] is what helps).

use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long a job may wait for a CPU before the thread counts as starved.
pub(crate) const PATIENCE: Duration = Duration::from_millis(50);
/// How long the thread counts as starved after a job that waited longer than [`PATIENCE`] (nothing is sent to it
/// meanwhile, so no job could clear it).
const STARVED_FOR: Duration = Duration::from_secs(1);

type Job = Box<dyn FnOnce() + Send>;

struct Thread {
    jobs: mpsc::Sender<Job>,
    /// Jobs sent and not finished.
    queued: AtomicUsize,
    /// When the thread last finished a job, in µs since `epoch`.
    progress_us: AtomicU64,
    /// Until when (µs since `epoch`) the thread counts as starved: set when a job waited more than [`PATIENCE`],
    /// cleared by a prompt one.
    starved_until_us: AtomicU64,
    epoch: Instant,
}

/// The thread, started at the first job (`None` if it could not be started: jobs then run on the caller's
/// thread).
static THREAD: OnceLock<Option<Thread>> = OnceLock::new();

/// Runs `job` on the background thread and waits for its result (a panic in it is resumed here); the job runs
/// inside the caller's tokio runtime context, so it may spawn tasks there. While the CPUs are [`busy`], `job`
/// runs here, now instead; also when the thread has not started it within [`PATIENCE`] (still on an earlier
/// job, or kept off the CPU).
pub(crate) async fn run<T: Send + 'static>(job: impl FnOnce() -> T + Send + 'static) -> T {
    if busy() {
        tracing::debug!("the CPU is busy: the control plane does this job itself");
        return job();
    }
    // Whoever takes the job out of the slot runs it; neither side ever waits for the lock.
    let slot = Arc::new(Mutex::new(Some(job)));
    let theirs = Arc::clone(&slot);
    let (tx, mut rx) = tokio::sync::oneshot::channel();
    submit(
        move || {
            let job = theirs.try_lock().ok().and_then(|mut s| s.take());
            job.map(|job| catch_unwind(AssertUnwindSafe(job)))
        },
        move |result| {
            if let Some(result) = result {
                let _ = tx.send(result);
            }
        },
    );
    let answer = tokio::select! {
        answer = &mut rx => Some(answer),
        () = tokio::time::sleep(PATIENCE) => None,
    };
    let answer = match answer {
        Some(answer) => answer,
        None => match slot.try_lock().ok().and_then(|mut s| s.take()) {
            Some(job) => {
                tracing::debug!(
                    "the background thread did not start the job in time: the control plane does it"
                );
                return job();
            }
            // The thread has it.
            None => rx.await,
        },
    };
    match answer {
        Ok(Ok(value)) => value,
        Ok(Err(panic)) => resume_unwind(panic),
        Err(_) => {
            unreachable!("a job the thread took answers: the thread catches panics and never ends")
        }
    }
}

/// Frees `value` on the background thread; here, now, while [`busy`]: a thread kept off the CPU must not hold on
/// to what it was given to free (a replaced snapshot of 10,000 backends is tens of megabytes).
pub(crate) fn drop_later<T: Send + 'static>(value: T) {
    if busy() {
        drop(value);
    } else {
        spawn(move || drop(value));
    }
}

/// Runs `job` on the background thread without waiting for it.
fn spawn(job: impl FnOnce() + Send + 'static) {
    submit(move || catch_unwind(AssertUnwindSafe(job)), drop);
}

/// Were the CPUs this process may use all busy over the last second (see [`watch_cpus`]), did a job of the
/// thread's wait more than [`PATIENCE`] (queued or off the CPU) in the last [`STARVED_FOR`], or has one been
/// waiting that long?
pub(crate) fn busy() -> bool {
    if NO_SPARE_CPU.load(Ordering::Relaxed) {
        return true;
    }
    let Some(Some(t)) = THREAD.get() else {
        return false;
    };
    let now_us = t.epoch.elapsed().as_micros() as u64;
    if now_us < t.starved_until_us.load(Ordering::Relaxed) {
        return true;
    }
    let since_progress = now_us.saturating_sub(t.progress_us.load(Ordering::Relaxed));
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
            let now_us = t.epoch.elapsed().as_micros() as u64;
            let until = if waited > PATIENCE {
                now_us + STARVED_FOR.as_micros() as u64
            } else {
                0
            };
            t.starved_until_us.store(until, Ordering::Relaxed);
            t.progress_us.store(now_us, Ordering::Relaxed);
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
            starved_until_us: AtomicU64::new(0),
            epoch: wall_clock(),
        }),
        Err(e) => {
            tracing::warn!(error = %e, "cannot start the background thread; its work runs on the control plane");
            None
        }
    }
}

/// Set while none of the CPUs this process may run on had [`SPARE`] of its time idle over the last second.
static NO_SPARE_CPU: AtomicBool = AtomicBool::new(false);
/// The share of a CPU's time left idle below which the CPU counts as busy.
const SPARE: f64 = 0.05;

/// Samples `/proc/stat` once a second (Linux; elsewhere it returns at once) until `until`, and keeps [`busy`] up
/// to date: on CPUs that requests keep busy, the background thread would get almost no time. Runs on the
/// control plane.
pub(crate) async fn watch_cpus(until: impl Future<Output = ()>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut before: Option<Vec<CpuTimes>> = None;
    let mut until = std::pin::pin!(until);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = &mut until => {
                NO_SPARE_CPU.store(false, Ordering::Relaxed);
                return;
            }
        }
        let Some(now) = cpu_times() else {
            NO_SPARE_CPU.store(false, Ordering::Relaxed);
            return;
        };
        if let Some(before) = &before {
            NO_SPARE_CPU.store(!any_spare(before, &now, allowed_cpus()), Ordering::Relaxed);
        }
        before = Some(now);
    }
}

/// One CPU's counters from `/proc/stat`: its number, its idle time (with I/O wait) and its total, in ticks.
#[derive(Debug, Clone, Copy, PartialEq)]
struct CpuTimes {
    cpu: usize,
    idle: u64,
    total: u64,
}

fn cpu_times() -> Option<Vec<CpuTimes>> {
    #[cfg(target_os = "linux")]
    if let Ok(text) = std::fs::read_to_string("/proc/stat") {
        return Some(parse_proc_stat(&text));
    }
    None
}

/// The per-CPU lines of `/proc/stat` (`cpuN user nice system idle iowait irq softirq steal guest guest_nice`;
/// guest time is already inside user and nice).
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn parse_proc_stat(text: &str) -> Vec<CpuTimes> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_ascii_whitespace();
            let cpu = fields.next()?.strip_prefix("cpu")?.parse().ok()?;
            let ticks: Vec<u64> = fields.take(8).map_while(|f| f.parse().ok()).collect();
            (ticks.len() >= 5).then(|| CpuTimes {
                cpu,
                idle: ticks[3] + ticks[4],
                total: ticks.iter().sum(),
            })
        })
        .collect()
}

/// Did any of the `allowed` CPUs (all when `None`) spend at least [`SPARE`] of the time between the two samples
/// idle? A CPU without ticks in between (offline) does not count.
/// Nothing to compare counts as spare.
fn any_spare(before: &[CpuTimes], now: &[CpuTimes], allowed: Option<Vec<usize>>) -> bool {
    let mut idle_shares = now
        .iter()
        .filter(|c| allowed.as_ref().is_none_or(|a| a.contains(&c.cpu)))
        .filter_map(|c| {
            let b = before.iter().find(|b| b.cpu == c.cpu)?;
            let total = c.total.checked_sub(b.total).filter(|t| *t > 0)?;
            Some(c.idle.saturating_sub(b.idle) as f64 / total as f64)
        })
        .peekable();
    idle_shares.peek().is_none() || idle_shares.any(|idle| idle >= SPARE)
}

/// The CPUs this process may run on (`None`: unknown, all of them).
fn allowed_cpus() -> Option<Vec<usize>> {
    #[cfg(target_os = "linux")]
    if let Ok(set) = rustix::thread::sched_getaffinity(None) {
        return Some(
            (0..rustix::thread::CpuSet::MAX_CPU)
                .filter(|&i| set.is_set(i))
                .collect(),
        );
    }
    None
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

    /// Runs `job` on the thread (never on the caller's), for its answer.
    async fn on_thread<T: Send + 'static>(job: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = tokio::sync::oneshot::channel();
        spawn(move || {
            let _ = tx.send(job());
        });
        rx.await.expect("the job answers")
    }

    /// Until the thread no longer counts as busy, with nothing sent to it: a starved job is forgotten after
    /// [`STARVED_FOR`].
    async fn settle() -> bool {
        let deadline = wall_clock() + Duration::from_secs(30);
        while busy() && wall_clock() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        !busy()
    }

    #[tokio::test]
    async fn jobs_run_on_the_background_thread_at_idle_priority() {
        let _turn = ONE_AT_A_TIME.lock().await;
        let caller = std::thread::current().id();
        let (thread, name) = on_thread(|| {
            let t = std::thread::current();
            (t.id(), t.name().map(str::to_owned))
        })
        .await;
        assert_ne!(thread, caller);
        assert_eq!(name.as_deref(), Some("switchyard-background"));
        #[cfg(target_os = "linux")]
        assert_eq!(
            on_thread(thread_priority::thread_schedule_policy)
                .await
                .ok(),
            Some(thread_priority::ThreadSchedulePolicy::Normal(
                thread_priority::NormalThreadSchedulePolicy::Idle
            ))
        );
    }

    #[tokio::test]
    async fn jobs_may_spawn_on_the_callers_runtime() {
        let _turn = ONE_AT_A_TIME.lock().await;
        let spawned = on_thread(|| tokio::spawn(async { 7 })).await;
        assert_eq!(spawned.await.ok(), Some(7));
    }

    #[tokio::test]
    async fn a_panic_reaches_the_caller_and_the_thread_lives_on() {
        let _turn = ONE_AT_A_TIME.lock().await;
        let panicked = tokio::spawn(run(|| -> u32 { panic!("in a job") })).await;
        assert!(panicked.is_err_and(|e| e.is_panic()));
        assert_eq!(run(|| 2 + 2).await, 4);
        spawn(|| panic!("in a job nobody waits for"));
        assert_eq!(on_thread(|| 5).await, 5);
    }

    /// With the thread held up by a job, the next one runs on the caller's thread (taken back after the
    /// patience); the held-up job, which waited without the CPU, leaves the thread counted busy for a while,
    /// and then not, though no job was sent to it since.
    #[tokio::test]
    async fn a_job_kept_waiting_sends_the_next_ones_to_the_caller() {
        let _turn = ONE_AT_A_TIME.lock().await;
        assert!(settle().await);
        let (release, released) = std::sync::mpsc::channel::<()>();
        let (started, is_started) = tokio::sync::oneshot::channel();
        spawn(move || {
            let _ = started.send(());
            let _ = released.recv();
        });
        let _ = is_started.await;
        let caller = std::thread::current().id();
        let here =
            || tokio::time::timeout(Duration::from_secs(5), run(|| std::thread::current().id()));
        assert_eq!(here().await.ok(), Some(caller));
        assert!(
            busy(),
            "a job pending for more than {PATIENCE:?} makes the thread busy"
        );
        assert_eq!(here().await.ok(), Some(caller));
        let (dropped, where_dropped) = std::sync::mpsc::channel();
        drop_later(DropSays(dropped.clone()));
        assert_eq!(
            where_dropped.try_recv().ok(),
            Some(caller),
            "freed here while busy"
        );
        let _ = release.send(());
        let deadline = wall_clock() + Duration::from_secs(10);
        while THREAD
            .get()
            .and_then(Option::as_ref)
            .is_some_and(|t| t.queued.load(Ordering::Relaxed) > 0)
            && wall_clock() < deadline
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(busy(), "the held-up job waited past the patience");
        assert!(settle().await, "the thread counts as busy for a while only");
        drop_later(DropSays(dropped));
        let on = tokio::task::spawn_blocking(move || {
            where_dropped.recv_timeout(Duration::from_secs(10))
        });
        let on = on.await.ok().and_then(Result::ok);
        assert!(
            on.is_some_and(|t| t != caller),
            "freed on the thread when not busy"
        );
    }

    /// Tells, when dropped, the thread it was dropped on.
    struct DropSays(std::sync::mpsc::Sender<std::thread::ThreadId>);

    impl Drop for DropSays {
        fn drop(&mut self) {
            let _ = self.0.send(std::thread::current().id());
        }
    }

    const PROC_STAT: &str = "cpu  300 0 300 1400 0 0 0 0 0 0
cpu0 100 0 100 800 0 0 0 0 0 0
cpu1 200 0 200 600 0 0 0 0 0 0
intr 12345 0 0
ctxt 999
";

    #[test]
    fn proc_stat_gives_each_cpus_idle_and_total_ticks() {
        assert_eq!(
            parse_proc_stat(PROC_STAT),
            vec![
                CpuTimes {
                    cpu: 0,
                    idle: 800,
                    total: 1000
                },
                CpuTimes {
                    cpu: 1,
                    idle: 600,
                    total: 1000
                },
            ]
        );
    }

    #[test]
    fn the_cpus_are_busy_when_none_the_process_may_use_was_idle_enough() {
        let before = parse_proc_stat(PROC_STAT);
        // CPU 0 ran flat out for 100 ticks, CPU 1 was idle for 30 of its 100.
        let now = vec![
            CpuTimes {
                cpu: 0,
                idle: 802,
                total: 1100,
            },
            CpuTimes {
                cpu: 1,
                idle: 630,
                total: 1100,
            },
        ];
        assert!(any_spare(&before, &now, None));
        assert!(any_spare(&before, &now, Some(vec![0, 1])));
        assert!(!any_spare(&before, &now, Some(vec![0])));
        assert!(any_spare(&before, &now, Some(vec![1])));
        // Nothing comparable (no ticks, or another CPU): not known to be busy.
        assert!(any_spare(&before, &before, Some(vec![0])));
        assert!(any_spare(&before, &now, Some(vec![5])));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_machine_shows_its_cpus() {
        let times = cpu_times().expect("/proc/stat");
        let allowed = allowed_cpus().expect("the affinity mask");
        assert!(times.iter().any(|c| allowed.contains(&c.cpu)));
    }
}
