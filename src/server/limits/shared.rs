//! The keys' limits shared by every replica, kept in Redis or Valkey (`[limits] store =
//! "redis"`). Each check is one server-side script, so one round trip, atomic over all replicas:
//! - requests and tokens per minute are GCRA (the same algorithm `governor` runs locally): one
//!   "theoretical arrival time" per key, read and advanced by the script with the server's clock,
//!   so the replicas' clocks do not matter;
//! - requests in flight are leases in a sorted set scored by their expiry: a request adds one,
//!   renews it every third of `lease_ttl` while it runs and removes it when it ends (or its client
//!   goes away); the leases of a replica that dies expire by themselves.
//!
//! A key's counters share one hash tag (`{prefix:key}`), so a script's keys are on one slot of a
//! Redis Cluster. While the store does not answer, calls fail at once (never a wait per request)
//! and one task reconnects in the background.

use redis::aio::MultiplexedConnection;
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, FromRedisValue, RedisResult, Script, ScriptInvocation};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex, RwLock, Weak};
use std::time::Duration;

use crate::config::{RedisTarget, SharedLimitsConfig, StoreFallback};

/// How long a (re)connection may take; calls have their own, shorter, `timeout`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The pause between two attempts to reach a store that is down.
const RECONNECT_PAUSE: Duration = Duration::from_millis(500);

/// The server's clock in milliseconds (a float), as each script reads it.
const NOW: &str =
    "local t = redis.call('TIME')\nlocal now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000\n";

/// KEYS: the rate's state, the lease set. ARGV: requests per minute (0: none), leases at once
/// (0: none), the lease's id, its time to live (ms).
/// Answers {1, remaining, reset_ms, 0} admitted, {2, 0, 0, retry_ms} over the rate,
/// {3, 0, 0, 0} no slot free. Nothing is taken from one limit when the other refuses.
const ADMIT: &str = r"
local rate = tonumber(ARGV[1])
local remaining, reset, new_tat = 0, 0, nil
if rate > 0 then
  local interval = 60000 / rate
  local tat = tonumber(redis.call('GET', KEYS[1])) or now
  if tat < now then tat = now end
  new_tat = tat + interval
  local excess = new_tat - now - interval * rate
  if excess > 0 then return {2, 0, 0, math.ceil(excess)} end
  remaining = math.floor((interval * rate - (new_tat - now)) / interval + 1e-6)
  reset = math.ceil(new_tat - now)
end
local slots = tonumber(ARGV[2])
if slots > 0 then
  local ttl = tonumber(ARGV[4])
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  if redis.call('ZCARD', KEYS[2]) >= slots then return {3, 0, 0, 0} end
  redis.call('ZADD', KEYS[2], now + ttl, ARGV[3])
  redis.call('PEXPIRE', KEYS[2], ttl + 1000)
end
if new_tat then
  redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil(new_tat - now) + 1000)
end
return {1, remaining, reset, 0}
";

/// KEYS: the token budget's state. ARGV: tokens per minute, tokens wanted.
/// Answers {1, remaining, reset_ms, 0}, {2, 0, 0, retry_ms}, or {3, 0, 0, 0} (more than a minute's
/// budget: never possible).
const TAKE: &str = r"
local limit, cost = tonumber(ARGV[1]), tonumber(ARGV[2])
if cost > limit then return {3, 0, 0, 0} end
local interval = 60000 / limit
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local new_tat = tat + interval * cost
local excess = new_tat - now - interval * limit
if excess > 0 then return {2, 0, 0, math.ceil(excess)} end
redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil(new_tat - now) + 1000)
return {1, math.floor((interval * limit - (new_tat - now)) / interval + 1e-6), math.ceil(new_tat - now), 0}
";

/// KEYS: the token budget's state. ARGV: tokens per minute, tokens used beyond the estimate.
/// Drains the budget as far as empty, as the local settle does.
const SETTLE: &str = r"
local limit, extra = tonumber(ARGV[1]), tonumber(ARGV[2])
local interval = 60000 / limit
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local new_tat = math.min(tat + interval * extra, now + interval * limit)
redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil(new_tat - now) + 1000)
return 1
";

/// KEYS: the lease set. ARGV: the lease's id, its time to live (ms). Renews a lease still held.
const RENEW: &str = r"
local renewed = redis.call('ZADD', KEYS[1], 'XX', 'CH', now + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) + 1000)
return renewed
";

/// KEYS: the lease set. ARGV: the lease's id.
const RELEASE: &str = "return redis.call('ZREM', KEYS[1], ARGV[1])\n";

fn script(body: &str) -> Script {
    // `TIME` first: the scripts read the server's clock, never the replica's.
    Script::new(&format!("{NOW}{body}"))
}

static ADMIT_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(ADMIT));
static TAKE_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(TAKE));
static SETTLE_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(SETTLE));
static RENEW_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(RENEW));
static RELEASE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(RELEASE));

// One per store, made once: the size of its variants does not matter.
#[allow(clippy::large_enum_variant)]
enum Client {
    Node(redis::Client),
    Cluster(redis::cluster::ClusterClient),
    /// Asked for the current primary at every (re)connection, so a failover is followed.
    Sentinel(tokio::sync::Mutex<redis::sentinel::SentinelClient>),
}

#[derive(Clone)]
enum Connection {
    Node(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl Connection {
    async fn invoke<T: FromRedisValue>(&mut self, call: &ScriptInvocation<'_>) -> RedisResult<T> {
        match self {
            Connection::Node(connection) => call.invoke_async(connection).await,
            Connection::Cluster(connection) => call.invoke_async(connection).await,
        }
    }

    async fn ping(&mut self) -> RedisResult<()> {
        let ping = redis::cmd("PING");
        match self {
            Connection::Node(connection) => ping.query_async(connection).await,
            Connection::Cluster(connection) => ping.query_async(connection).await,
        }
    }
}

/// The store did not answer (or answered with an error) in time: what the caller's
/// `on_store_unavailable` says happens next.
#[derive(Debug, Clone)]
pub struct Unavailable;

/// How a request fared against its key's shared limits.
pub enum Admission {
    /// Admitted; `rate` is the requests-per-minute state when the key has that limit.
    Admitted {
        rate: Option<RateState>,
        lease: Option<Lease>,
    },
    /// Over the rate: retry after this long.
    OverRate(Duration),
    /// Every slot of the key is held.
    NoSlot,
}

/// What is left of a rate after a check.
#[derive(Debug, Clone, Copy)]
pub struct RateState {
    pub remaining: u32,
    /// Until the rate is back to its full burst.
    pub reset: Duration,
}

/// How a token reservation fared.
pub enum Tokens {
    Taken(RateState),
    /// Over the budget: retry after this long.
    OverBudget(Duration),
    /// More than the key's whole budget per minute.
    TooLarge,
}

/// The shared store's state as `/readyz` and `/metrics` report it.
#[derive(Debug, Clone)]
pub struct StoreHealth {
    pub up: bool,
    /// Why it is down, when it is (the client's message: no secret is in it).
    pub error: Option<String>,
}

pub struct SharedLimits {
    client: Client,
    connection: RwLock<Option<Connection>>,
    reconnecting: AtomicBool,
    health: Mutex<StoreHealth>,
    pub config: SharedLimitsConfig,
}

impl SharedLimits {
    /// The store of `config`; it connects in the background (requests meanwhile meet
    /// `on_store_unavailable`). Outside a Tokio runtime, the first call connects.
    pub fn new(config: &SharedLimitsConfig) -> Result<Arc<SharedLimits>, String> {
        let client = match &config.target {
            RedisTarget::Node(url) => {
                let mut url = url::Url::parse(url).map_err(|err| err.to_string())?;
                if let Some(user) = &config.username {
                    url.set_username(user)
                        .map_err(|()| "the URL takes no username".to_owned())?;
                }
                if let Some(password) = &config.password {
                    url.set_password(Some(password.expose()))
                        .map_err(|()| "the URL takes no password".to_owned())?;
                }
                Client::Node(redis::Client::open(url.as_str()).map_err(|err| err.to_string())?)
            }
            RedisTarget::Cluster(nodes) => {
                let mut builder =
                    redis::cluster::ClusterClient::builder(nodes.iter().map(String::as_str))
                        .connection_timeout(CONNECT_TIMEOUT)
                        .response_timeout(config.timeout);
                if let Some(user) = &config.username {
                    builder = builder.username(user);
                }
                if let Some(password) = &config.password {
                    builder = builder.password(password.expose());
                }
                Client::Cluster(builder.build().map_err(|err| err.to_string())?)
            }
            RedisTarget::Sentinel { sentinels, service } => {
                let mut primary = redis::RedisConnectionInfo::default();
                if let Some(user) = &config.username {
                    primary = primary.set_username(user);
                }
                if let Some(password) = &config.password {
                    primary = primary.set_password(password.expose());
                }
                let mut node = redis::sentinel::SentinelNodeConnectionInfo::default()
                    .set_redis_connection_info(primary);
                // The primary is spoken to as the sentinels are: TLS when they use it.
                if sentinels
                    .iter()
                    .any(|url| url.starts_with("rediss") || url.starts_with("valkeys"))
                {
                    node = node.set_tls_mode(redis::TlsMode::Secure);
                }
                let client = redis::sentinel::SentinelClient::build(
                    sentinels.iter().map(String::as_str).collect(),
                    service,
                    Some(node),
                    redis::sentinel::SentinelServerType::Master,
                )
                .map_err(|err| err.to_string())?;
                Client::Sentinel(tokio::sync::Mutex::new(client))
            }
        };
        let store = Arc::new(SharedLimits {
            client,
            connection: RwLock::new(None),
            reconnecting: AtomicBool::new(false),
            health: Mutex::new(StoreHealth {
                up: false,
                error: Some("not connected yet".to_owned()),
            }),
            config: config.clone(),
        });
        if tokio::runtime::Handle::try_current().is_ok() {
            store.reconnect();
        }
        Ok(store)
    }

    pub fn on_unavailable(&self) -> StoreFallback {
        self.config.on_unavailable
    }

    pub fn health(&self) -> StoreHealth {
        self.health
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn key(&self, name: &str, what: &str) -> String {
        format!("{{{}:{name}}}:{what}", self.config.key_prefix)
    }

    /// Requests per minute (0: none) and slots in flight (0: none) of key `name`, in one call.
    pub async fn admit(
        self: &Arc<Self>,
        name: &str,
        per_minute: u32,
        slots: u32,
    ) -> Result<Admission, Unavailable> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let leases = self.key(name, "leases");
        let mut call = ADMIT_SCRIPT.prepare_invoke();
        call.key(self.key(name, "rpm"))
            .key(&leases)
            .arg(per_minute)
            .arg(slots)
            .arg(&id)
            .arg(self.lease_ttl_ms());
        let answer: [i64; 4] = self.call(&call).await?;
        Ok(match answer {
            [1, remaining, reset, _] => Admission::Admitted {
                rate: (per_minute > 0).then(|| rate_state(remaining, reset)),
                lease: (slots > 0).then(|| Lease::hold(self.clone(), leases, id)),
            },
            [2, _, _, retry] => Admission::OverRate(millis(retry)),
            _ => Admission::NoSlot,
        })
    }

    /// Reserves `cost` tokens of the key's `per_minute` budget.
    pub async fn take_tokens(
        self: &Arc<Self>,
        name: &str,
        per_minute: u32,
        cost: u32,
    ) -> Result<Tokens, Unavailable> {
        let mut call = TAKE_SCRIPT.prepare_invoke();
        call.key(self.key(name, "tpm")).arg(per_minute).arg(cost);
        let answer: [i64; 4] = self.call(&call).await?;
        Ok(match answer {
            [1, remaining, reset, _] => Tokens::Taken(rate_state(remaining, reset)),
            [2, _, _, retry] => Tokens::OverBudget(millis(retry)),
            _ => Tokens::TooLarge,
        })
    }

    /// Counts `extra` tokens used beyond the reservation, draining the budget as far as empty.
    pub async fn settle_tokens(
        self: &Arc<Self>,
        name: &str,
        per_minute: u32,
        extra: u64,
    ) -> Result<(), Unavailable> {
        let mut call = SETTLE_SCRIPT.prepare_invoke();
        call.key(self.key(name, "tpm")).arg(per_minute).arg(extra);
        self.call::<i64>(&call).await.map(drop)
    }

    /// Whether the store answers a PING now (for `/readyz`); a store found down is reconnected.
    pub async fn probe(self: &Arc<Self>) -> StoreHealth {
        // Either way the outcome is in the health: `call_with` records a failure.
        let _ = self
            .call_with(|mut connection| async move { connection.ping().await })
            .await;
        self.health()
    }

    fn lease_ttl_ms(&self) -> u64 {
        self.config.lease_ttl.as_millis() as u64
    }

    fn connection(&self) -> Option<Connection> {
        self.connection
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn no_answer(&self) -> String {
        format!(
            "no answer within {} ms (limits.redis.timeout_ms)",
            self.config.timeout.as_millis()
        )
    }

    async fn call<T: FromRedisValue>(
        self: &Arc<Self>,
        call: &ScriptInvocation<'_>,
    ) -> Result<T, Unavailable> {
        self.call_with(|mut connection| async move { connection.invoke(call).await })
            .await
    }

    /// Runs `work` on the connection within `timeout`; no connection, an error or no answer in
    /// time is `Unavailable`, and the last two drop the connection and reconnect.
    async fn call_with<T, Work, Fut>(self: &Arc<Self>, work: Work) -> Result<T, Unavailable>
    where
        Work: FnOnce(Connection) -> Fut,
        Fut: std::future::Future<Output = RedisResult<T>>,
    {
        let Some(connection) = self.connection() else {
            self.reconnect();
            return Err(Unavailable);
        };
        match tokio::time::timeout(self.config.timeout, work(connection)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err)) => {
                self.lost(err.to_string());
                Err(Unavailable)
            }
            Err(_) => {
                self.lost(self.no_answer());
                Err(Unavailable)
            }
        }
    }

    /// The connection failed: drop it, say so once, and reconnect in the background.
    fn lost(self: &Arc<Self>, error: String) {
        *self.connection.write().unwrap_or_else(|e| e.into_inner()) = None;
        {
            let mut health = self.health.lock().unwrap_or_else(|e| e.into_inner());
            if health.up {
                tracing::warn!(
                    error = %error,
                    fallback = ?self.config.on_unavailable,
                    "the shared limits store does not answer; requests meet limits.on_store_unavailable until it is back"
                );
            }
            *health = StoreHealth {
                up: false,
                error: Some(error),
            };
        }
        self.reconnect();
    }

    /// Starts the one task that reconnects, unless it runs already. It holds the store weakly:
    /// a store replaced by a reload stops trying.
    fn reconnect(self: &Arc<Self>) {
        if self.reconnecting.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.reconnecting.store(false, Ordering::Release);
            return;
        };
        let weak: Weak<SharedLimits> = Arc::downgrade(self);
        runtime.spawn(async move {
            loop {
                let Some(store) = weak.upgrade() else { return };
                match tokio::time::timeout(CONNECT_TIMEOUT, store.connect()).await {
                    Ok(Ok(connection)) => {
                        *store.connection.write().unwrap_or_else(|e| e.into_inner()) =
                            Some(connection);
                        let mut health = store.health.lock().unwrap_or_else(|e| e.into_inner());
                        tracing::info!(
                            "the shared limits store answers; keys' limits are shared again"
                        );
                        *health = StoreHealth {
                            up: true,
                            error: None,
                        };
                        store.reconnecting.store(false, Ordering::Release);
                        return;
                    }
                    Ok(Err(err)) => store.record_down(err.to_string()),
                    Err(_) => store.record_down(format!(
                        "no connection within {} s",
                        CONNECT_TIMEOUT.as_secs()
                    )),
                }
                drop(store);
                tokio::time::sleep(RECONNECT_PAUSE).await;
            }
        });
    }

    fn record_down(&self, error: String) {
        let mut health = self.health.lock().unwrap_or_else(|e| e.into_inner());
        health.up = false;
        health.error = Some(error);
    }

    fn node_config(&self) -> AsyncConnectionConfig {
        AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(self.config.timeout))
    }

    async fn connect(&self) -> RedisResult<Connection> {
        let mut connection = match &self.client {
            Client::Node(client) => Connection::Node(
                client
                    .get_multiplexed_async_connection_with_config(&self.node_config())
                    .await?,
            ),
            Client::Cluster(client) => Connection::Cluster(client.get_async_connection().await?),
            Client::Sentinel(client) => Connection::Node(
                client
                    .lock()
                    .await
                    .get_async_connection_with_config(&self.node_config())
                    .await?,
            ),
        };
        connection.ping().await?;
        Ok(connection)
    }
}

fn millis(ms: i64) -> Duration {
    Duration::from_millis(ms.max(0) as u64)
}

fn rate_state(remaining: i64, reset: i64) -> RateState {
    RateState {
        remaining: remaining.clamp(0, i64::from(u32::MAX)) as u32,
        reset: millis(reset),
    }
}

/// A slot of a key's requests in flight, held while the request runs: renewed in the
/// background, given back when dropped (the request ended, failed, or its client left).
pub struct Lease {
    store: Arc<SharedLimits>,
    set: String,
    id: String,
    renewal: tokio::task::JoinHandle<()>,
}

impl Lease {
    fn hold(store: Arc<SharedLimits>, set: String, id: String) -> Lease {
        let renewal = {
            let (store, set, id) = (store.clone(), set.clone(), id.clone());
            tokio::spawn(async move {
                let every = store.config.lease_ttl / 3;
                loop {
                    tokio::time::sleep(every).await;
                    let mut call = RENEW_SCRIPT.prepare_invoke();
                    call.key(&set).arg(&id).arg(store.lease_ttl_ms());
                    // A store that is down is reconnected by `call`; the lease may lapse meanwhile.
                    let _ = store.call::<i64>(&call).await;
                }
            })
        };
        Lease {
            store,
            set,
            id,
            renewal,
        }
    }
}

impl Lease {
    /// Gives the slot back now, and returns once the store has it (or did not answer in time:
    /// then the lease expires by itself). A request that ends this way before its client reads
    /// the end leaves no moment where its next request would find the slot still taken.
    pub async fn release(mut self) {
        self.renewal.abort();
        let (set, id) = (std::mem::take(&mut self.set), std::mem::take(&mut self.id));
        release(&self.store, &set, &id).await;
    }
}

async fn release(store: &Arc<SharedLimits>, set: &str, id: &str) {
    let mut call = RELEASE_SCRIPT.prepare_invoke();
    call.key(set).arg(id);
    let _ = store.call::<i64>(&call).await;
}

impl Drop for Lease {
    /// A lease dropped without [`Lease::release`] (the client went away) is given back in the
    /// background.
    fn drop(&mut self) {
        self.renewal.abort();
        if self.id.is_empty() {
            return; // released already
        }
        let (store, set, id) = (
            self.store.clone(),
            std::mem::take(&mut self.set),
            std::mem::take(&mut self.id),
        );
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { release(&store, &set, &id).await });
        }
    }
}
