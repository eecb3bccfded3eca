//! The shared store on Redis: one multiplexed connection (made on first use, dropped and remade
//! after a connection-level failure), every command bounded by the tier's `timeout`; the lock is
//! `SET NX PX`, released by a compare-and-delete script.

use std::time::Duration;

use futures::future::BoxFuture;
use redis::aio::MultiplexedConnection;

use super::{SharedStore, StoreError, redact_url};

/// Releases a lock only while it still holds this pod's token.
const UNLOCK_SCRIPT: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end";

pub struct RedisStore {
    client: redis::Client,
    /// Without its password.
    url: String,
    conn: tokio::sync::Mutex<Option<MultiplexedConnection>>,
    timeout: Duration,
}

impl RedisStore {
    /// A store at `url` (`redis://` or `rediss://`); no connection is made here. The error
    /// says what is wrong with the URL, never the URL itself (it may hold a password).
    pub fn open(url: &str, timeout: Duration) -> Result<RedisStore, String> {
        let client = redis::Client::open(url).map_err(|e| e.to_string())?;
        Ok(RedisStore {
            client,
            url: redact_url(url),
            conn: tokio::sync::Mutex::new(None),
            timeout,
        })
    }

    /// Runs one command within `timeout`, connecting first if needed.
    async fn query<T: redis::FromRedisValue>(&self, cmd: redis::Cmd) -> Result<T, StoreError> {
        let run = async {
            let mut conn = {
                let mut slot = self.conn.lock().await;
                match &*slot {
                    Some(c) => c.clone(),
                    None => {
                        let config = redis::AsyncConnectionConfig::new()
                            .set_connection_timeout(Some(self.timeout))
                            .set_response_timeout(Some(self.timeout));
                        let c = self
                            .client
                            .get_multiplexed_async_connection_with_config(&config)
                            .await
                            .map_err(|e| (true, e))?;
                        *slot = Some(c.clone());
                        c
                    }
                }
            };
            cmd.query_async::<T>(&mut conn)
                .await
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
