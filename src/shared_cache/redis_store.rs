//! The shared store on Redis: one multiplexed connection (made on first use, dropped and remade
//! after a connection-level failure), every command bounded by the tier's `timeout`; the lock is
//! `SET NX PX`, released by a compare-and-delete script.
//!
//! The same store speaks to one Redis or to a Redis Cluster (`cache.shared.cluster`): every
//! command names exactly one key (the script too), so the cluster client routes each to the
//! node owning its slot, and a value and its lock need not share a slot. `rediss://` is checked
//! against `cache.shared.ca_file` when given, else the system roots.

use std::time::Duration;

use futures::future::BoxFuture;
use redis::aio::MultiplexedConnection;
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;

use super::{SharedCacheConfig, SharedStore, StoreError, redact_url};

/// One Redis, or a Cluster's seed nodes.
#[allow(
    clippy::large_enum_variant,
    reason = "one per process, made once at startup: its size costs nothing"
)]
enum Client {
    Single(redis::Client),
    Cluster(ClusterClient),
}

/// A connection of either kind; both are cheap to clone (they multiplex).
#[derive(Clone)]
enum Conn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

/// Releases a lock only while it still holds this pod's token.
const UNLOCK_SCRIPT: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end";

pub struct RedisStore {
    client: Client,
    /// Without its password.
    url: String,
    conn: tokio::sync::Mutex<Option<Conn>>,
    timeout: Duration,
}

impl RedisStore {
    /// A store for `config` (`redis://` or `rediss://`, one server or a Cluster's seeds); no
    /// connection is made here. The error names the field and says what is wrong, never the
    /// URL itself (it may hold a password).
    pub fn open(config: &SharedCacheConfig) -> Result<RedisStore, String> {
        let urls = config
            .seed_urls()
            .map_err(|p| format!("cache.shared.url: {p}"))?;
        let ca = config
            .ca_pem()
            .map_err(|p| format!("cache.shared.ca_file: {p}"))?;
        let certs = ca.map(|root| redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(root),
        });
        let bad = |e: redis::RedisError| format!("cache.shared.url: {e}");
        let client = if config.cluster {
            let mut b = redis::cluster::ClusterClientBuilder::new(urls.iter().map(String::as_str))
                .connection_timeout(config.timeout)
                .response_timeout(config.timeout);
            if let Some(certs) = certs {
                b = b.certs(certs);
            }
            Client::Cluster(b.build().map_err(bad)?)
        } else {
            let url = urls[0].as_str();
            Client::Single(match certs {
                Some(certs) => redis::Client::build_with_tls(url, certs).map_err(bad)?,
                None => redis::Client::open(url).map_err(bad)?,
            })
        };
        let mut shown = urls
            .iter()
            .map(|u| redact_url(u))
            .collect::<Vec<_>>()
            .join(",");
        if config.cluster {
            shown.insert_str(0, "cluster ");
        }
        Ok(RedisStore {
            client,
            url: shown,
            conn: tokio::sync::Mutex::new(None),
            timeout: config.timeout,
        })
    }

    async fn connect(&self) -> redis::RedisResult<Conn> {
        match &self.client {
            Client::Single(c) => {
                let config = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(self.timeout))
                    .set_response_timeout(Some(self.timeout));
                Ok(Conn::Single(
                    c.get_multiplexed_async_connection_with_config(&config)
                        .await?,
                ))
            }
            Client::Cluster(c) => Ok(Conn::Cluster(c.get_async_connection().await?)),
        }
    }

    /// Runs one command within `timeout`, connecting first if needed.
    async fn query<T: redis::FromRedisValue>(&self, cmd: redis::Cmd) -> Result<T, StoreError> {
        let run = async {
            let mut conn = {
                let mut slot = self.conn.lock().await;
                match &*slot {
                    Some(c) => c.clone(),
                    None => {
                        let c = self.connect().await.map_err(|e| (true, e))?;
                        *slot = Some(c.clone());
                        c
                    }
                }
            };
            match &mut conn {
                Conn::Single(c) => cmd.query_async::<T>(c).await,
                Conn::Cluster(c) => cmd.query_async::<T>(c).await,
            }
            .map_err(|e| (false, e))
        };
        let (reset, err) = match tokio::time::timeout(self.timeout, run).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err((connecting, e))) => {
                // A server's answer to a well-formed command (e.g. WRONGTYPE) leaves the
                // connection usable; anything else drops it, to reconnect next time.
                let answered = matches!(
                    e.kind(),
                    redis::ErrorKind::Server(_) | redis::ErrorKind::UnexpectedReturnType
                );
                if connecting || !answered {
                    (true, StoreError::Unavailable(e.to_string()))
                } else {
                    (false, StoreError::Refused(e.to_string()))
                }
            }
            Err(_) => (
                true,
                StoreError::Unavailable("operation timed out".to_owned()),
            ),
        };
        if reset {
            *self.conn.lock().await = None;
        }
        Err(err)
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl SharedStore for RedisStore {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>, StoreError>> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(key);
        Box::pin(self.query(cmd))
    }

    fn put<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(key).arg(value).arg("PX").arg(millis(ttl));
        Box::pin(self.query(cmd))
    }

    fn try_lock<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(key).arg(token).arg("NX").arg("PX").arg(millis(ttl));
        Box::pin(async move { Ok(self.query::<Option<String>>(cmd).await?.is_some()) })
    }

    fn unlock<'a>(&'a self, key: &'a str, token: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(UNLOCK_SCRIPT).arg(1).arg(key).arg(token);
        Box::pin(async move { self.query::<i64>(cmd).await.map(drop) })
    }

    fn describe(&self) -> String {
        self.url.clone()
    }
}
