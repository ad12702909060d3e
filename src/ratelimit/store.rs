//! The store `global` limits meet in: Redis, synced every [`SYNC_EVERY`] by one task per instance.
//!
//! Each sync sends, for every bucket used since the last one, how many requests this instance allowed; a Lua
//! script (atomic in Redis) moves the shared bucket on by that many tokens from Redis's own clock, and answers
//! how far ahead of now it stands. The instance moves its bucket at least as far, so what the others allowed
//! counts here within one sync. No request waits on Redis. If a sync fails or takes longer than `timeout`,
//! the instance counts the error, logs once, and goes on with its own buckets alone (its counts from the
//! outage are dropped, not sent later, so a recovery does not block everyone); it reconnects with backoff
//! and logs once when the store is back.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use prometheus::IntCounter;
use tokio::time::Instant;

use super::{Bucket, RateLimit, clock};
use crate::config::RateLimitStoreSettings;

/// How often each instance syncs its counts with the store.
pub(crate) const SYNC_EVERY: Duration = Duration::from_millis(20);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Moves each shared bucket (KEYS[i]) on by ARGV[2i] tokens of ARGV[1] µs, charged from when the first of them
/// was allowed (ARGV[2i+1] µs before now, on Redis's clock); answers how many µs ahead of now each stands. A
/// bucket expires a second after it is full again. (`replicate_commands`: Redis before 5 needs it for `TIME`.)
const SYNC_SCRIPT: &str = r"
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local emission = tonumber(ARGV[1])
local out = {}
for i = 1, #KEYS do
  local since = now - tonumber(ARGV[2 * i + 1])
  local tat = tonumber(redis.call('GET', KEYS[i])) or since
  if tat < since then tat = since end
  tat = tat + tonumber(ARGV[2 * i]) * emission
  local ahead = math.max(tat - now, 0)
  redis.call('SET', KEYS[i], string.format('%.3f', tat), 'PX', math.floor(ahead / 1000) + 1000)
  out[i] = math.floor(tat - now)
end
return out
";
/// The longest a connection (TCP, and loading the script) may take, whatever the sync `timeout`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

pub(crate) struct Store {
    pub(crate) settings: RateLimitStoreSettings,
    /// Buckets used since the last sync.
    touched: Mutex<Vec<Touched>>,
    /// The last sync worked (or none was tried yet).
    up: AtomicBool,
    errors: IntCounter,
}

/// A bucket to sync, with what the sync needs of its limit.
struct Touched {
    /// `switchyard:rate:{limit}:{key}`.
    redis_key: Vec<u8>,
    /// µs per token.
    emission_us: f64,
    bucket: Arc<Bucket>,
}

impl Store {
    /// The store for `settings`, syncing from a task of the current runtime (none outside one: the fuzz
    /// targets build snapshots without a runtime, and nothing syncs there).
    pub(crate) fn start(settings: &RateLimitStoreSettings, errors: IntCounter) -> Arc<Self> {
        let store = Arc::new(Self {
            settings: settings.clone(),
            touched: Mutex::new(Vec::new()),
            up: AtomicBool::new(true),
            errors,
        });
        if let (Ok(handle), Ok(client)) = (
            tokio::runtime::Handle::try_current(),
            redis::Client::open(settings.redis.as_str()),
        ) {
            handle.spawn(sync(Arc::downgrade(&store), client));
        }
        store
    }

    /// `bucket` of `limit`, under `key`, allowed its first request since the last sync.
    pub(crate) fn touched(&self, limit: &RateLimit, key: &[u8], bucket: &Arc<Bucket>) {
        let mut redis_key = Vec::with_capacity(16 + limit.name.len() + key.len());
        redis_key.extend_from_slice(b"switchyard:rate:");
        redis_key.extend_from_slice(limit.name.as_bytes());
        redis_key.push(b':');
        redis_key.extend_from_slice(key);
        let (emission_ns, _) = limit.shape();
        let entry = Touched {
            redis_key,
            emission_us: emission_ns as f64 / 1000.0,
            bucket: Arc::clone(bucket),
        };
        self.touched
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(entry);
    }

    fn take_touched(&self) -> Vec<Touched> {
        std::mem::take(
            &mut *self
                .touched
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    fn failed(&self, why: &str) {
        self.errors.inc();
        if self.up.swap(false, Ordering::Relaxed) {
            tracing::warn!(store = %self.settings.redis, error = why,
                "rate limit store unreachable: global limits fall back to each instance's own buckets");
        }
    }

    fn worked(&self) {
        if !self.up.swap(true, Ordering::Relaxed) {
            tracing::info!(store = %self.settings.redis, "rate limit store reachable again: global limits shared");
        }
    }
}

/// The sync loop; ends when the store is dropped (a reload replaced it).
async fn sync(store: Weak<Store>, client: redis::Client) {
    let mut connection: Option<redis::aio::MultiplexedConnection> = None;
    let mut backoff = BACKOFF_MIN;
    let mut retry_at = Instant::now();
    let script = redis::Script::new(SYNC_SCRIPT);
    let mut ticks = tokio::time::interval(SYNC_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(store) = store.upgrade() else { return };
        let batch = store.take_touched();
        let taken_at = clock(Instant::now());
        // Each bucket's count since the last sync, and how long ago (µs) the first of them was allowed.
        let counts: Vec<(u32, u64)> = batch
            .iter()
            .map(|t| {
                let count = t.bucket.pending.swap(0, Ordering::Relaxed);
                let first = t.bucket.first_pending.load(Ordering::Relaxed);
                (count, taken_at.saturating_sub(first) / 1000)
            })
            .collect();
        let timeout = store.settings.timeout;
        if connection.is_none() {
            if Instant::now() < retry_at {
                continue;
            }
            match tokio::time::timeout(timeout.max(CONNECT_TIMEOUT), connect(&client, &script))
                .await
            {
                Ok(Ok(c)) => {
                    connection = Some(c);
                    backoff = BACKOFF_MIN;
                }
                Ok(Err(e)) => store.failed(&e.to_string()),
                Err(_) => store.failed("connect timed out"),
            }
            if connection.is_none() {
                retry_at = Instant::now() + backoff;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        }
        let Some(conn) = connection.as_mut() else {
            continue;
        };
        if batch.is_empty() {
            // Nothing to send: a cheap check that the store is still there, so its loss is seen and logged.
            let ping = redis::cmd("PING");
            match tokio::time::timeout(timeout, ping.query_async::<String>(conn)).await {
                Ok(Ok(_)) => store.worked(),
                Ok(Err(e)) => {
                    store.failed(&e.to_string());
                    connection = None;
                }
                Err(_) => {
                    store.failed("timed out");
                    connection = None;
                }
            }
            continue;
        }
        let sent_at = Instant::now();
        match tokio::time::timeout(timeout, send(&script, conn, &batch, &counts)).await {
            Ok(Ok(aheads)) => {
                store.worked();
                let now = clock(sent_at);
                for (t, ahead_us) in batch.iter().zip(aheads) {
                    RateLimit::catch_up(&t.bucket, now + ahead_us.max(0) as u64 * 1000);
                }
            }
            Ok(Err(e)) => {
                store.failed(&e.to_string());
                connection = None;
            }
            Err(_) => {
                store.failed("timed out");
                connection = None;
            }
        }
    }
}

/// A connection with the sync script loaded (the pipeline calls it by its digest).
async fn connect(
    client: &redis::Client,
    script: &redis::Script,
) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    let mut connection = client.get_multiplexed_async_connection().await?;
    script.prepare_invoke().load_async(&mut connection).await?;
    Ok(connection)
}

/// One pipeline: a script call per limit (buckets of one limit share its emission); the answers in order.
async fn send(
    script: &redis::Script,
    conn: &mut redis::aio::MultiplexedConnection,
    batch: &[Touched],
    counts: &[(u32, u64)],
) -> redis::RedisResult<Vec<i64>> {
    let mut pipe = redis::pipe();
    let mut start = 0;
    while start < batch.len() {
        let emission = batch[start].emission_us;
        let end = batch[start..]
            .iter()
            .position(|t| t.emission_us != emission)
            .map_or(batch.len(), |n| start + n);
        let mut call = script.prepare_invoke();
        call.arg(emission);
        for (t, &(count, lag_us)) in batch[start..end].iter().zip(&counts[start..end]) {
            call.key(&t.redis_key[..]).arg(count).arg(lag_us);
        }
        pipe.invoke_script(&call);
        start = end;
    }
    let answers: Vec<Vec<i64>> = pipe.query_async(conn).await?;
    Ok(answers.into_iter().flatten().collect())
}
