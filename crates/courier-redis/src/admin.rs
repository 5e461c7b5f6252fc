//! [`Admin`] for the Redis transport: queue depths and dead letters (list, replay, purge).

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::{TimeZone, Utc};
use courier_core::{Admin, DeadLetter, DeadLetterFilter, Error, QueueStats, Result, strip_failure_annotations};
use redis::{AsyncCommands, Value};

use crate::conn::to_error;
use crate::entry::{array, encode_headers, int, parse_range};
use crate::transport::RedisTransport;

/// A dead letter's entry id: `<stream id>@<queue>` (stream ids are unique per queue only).
fn entry_id(stream_id: &str, queue: &str) -> String {
    format!("{stream_id}@{queue}")
}

fn split_entry_id(entry_id: &str) -> Result<(&str, &str)> {
    entry_id.split_once('@').filter(|(id, q)| !id.is_empty() && !q.is_empty()).ok_or_else(|| {
        Error::not_found(format!(
            "'{entry_id}' is not a dead-letter id of the Redis engine (they look like '1718000000000-0@orders')"
        ))
    })
}

impl RedisTransport {
    async fn queue_names(&self) -> Result<Vec<String>> {
        let conn = &self.core.conn;
        let mut c = conn.get().await.map_err(|e| to_error("listing queues", e))?;
        let mut names: Vec<String> =
            conn.check(c.smembers(self.core.keys.queues()).await).map_err(|e| to_error("listing queues", e))?;
        names.sort();
        Ok(names)
    }

    async fn read_dead_letters(&self, queue: &str, limit: Option<usize>) -> Result<Vec<DeadLetter>> {
        let conn = &self.core.conn;
        let what = format!("listing dead letters of '{queue}'");
        let mut c = conn.get().await.map_err(|e| to_error(&what, e))?;
        let mut cmd = redis::cmd("XRANGE");
        cmd.arg(self.core.keys.dead_letters(queue)).arg("-").arg("+");
        if let Some(limit) = limit {
            cmd.arg("COUNT").arg(limit.max(1));
        }
        let reply: Value = conn.check(cmd.query_async(&mut c).await).map_err(|e| to_error(&what, e))?;
        Ok(parse_range(reply)
            .into_iter()
            .map(|entry| DeadLetter {
                entry_id: entry_id(&entry.id.to_string(), queue),
                queue: queue.to_owned(),
                dead_lettered_at: Utc
                    .timestamp_millis_opt(i64::try_from(entry.id.millis).unwrap_or(i64::MAX))
                    .single()
                    .unwrap_or_else(Utc::now),
                message: entry.into_parts().0,
            })
            .collect())
    }
}

#[async_trait]
impl Admin for RedisTransport {
    async fn queues(&self) -> Result<Vec<QueueStats>> {
        let mut inv = self.core.scripts.stats.prepare_invoke();
        inv.arg(&self.core.keys.prefix);
        let reply: Value = self.core.invoke("reading queue depths", &inv).await?;
        let values = array(reply);
        let mut stats: Vec<QueueStats> = values
            .chunks_exact(5)
            .map(|row| {
                let n = |v: &Value| int(v).unwrap_or(0).max(0) as u64;
                let name = match &row[0] {
                    Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
                    other => format!("{other:?}"),
                };
                let (length, pending) = (n(&row[1]), n(&row[2]));
                QueueStats {
                    name,
                    ready: length.saturating_sub(pending),
                    in_flight: pending,
                    delayed: n(&row[3]),
                    dead_lettered: n(&row[4]),
                }
            })
            .collect();
        stats.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(stats)
    }

    async fn dead_letters(&self, filter: &DeadLetterFilter) -> Result<Vec<DeadLetter>> {
        let queues = match &filter.queue {
            Some(q) => vec![q.clone()],
            None => self.queue_names().await?,
        };
        // Only a plain listing of one queue can stop reading early; other filters look at every entry.
        let early = (queues.len() == 1 && filter.fingerprint.is_none() && filter.entry_ids.is_empty())
            .then_some(filter.limit)
            .flatten();
        let mut found = Vec::new();
        for queue in &queues {
            found.extend(self.read_dead_letters(queue, early).await?.into_iter().filter(|d| filter.matches(d)));
        }
        found.sort_by_key(|d| (d.dead_lettered_at, d.entry_id.clone()));
        if let Some(limit) = filter.limit {
            found.truncate(limit);
        }
        Ok(found)
    }

    async fn replay_dead_letter(&self, entry_id: &str) -> Result<()> {
        let (stream_id, queue) = split_entry_id(entry_id)?;
        let entry =
            self.read_dead_letters(queue, None).await?.into_iter().find(|d| d.entry_id == entry_id).ok_or_else(
                || Error::not_found(format!("no dead letter '{entry_id}' (replayed or purged already?)")),
            )?;
        let mut headers = entry.message.headers;
        strip_failure_annotations(&mut headers);
        let mut inv = self.core.scripts.replay.prepare_invoke();
        inv.arg(&self.core.keys.prefix).arg(queue).arg(stream_id).arg(encode_headers(&headers)?);
        let replayed: i64 = self.core.invoke(&format!("replaying dead letter '{entry_id}'"), &inv).await?;
        if replayed == 0 {
            return Err(Error::not_found(format!("no dead letter '{entry_id}' (replayed or purged already?)")));
        }
        Ok(())
    }

    async fn purge_dead_letters(&self, filter: &DeadLetterFilter) -> Result<u64> {
        let mut by_queue: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for dl in self.dead_letters(filter).await? {
            if let Ok((id, _)) = split_entry_id(&dl.entry_id) {
                by_queue.entry(dl.queue.clone()).or_default().push(id.to_owned());
            }
        }
        let conn = &self.core.conn;
        let mut purged = 0u64;
        for (queue, ids) in by_queue {
            let what = format!("purging dead letters of '{queue}'");
            let mut c = conn.get().await.map_err(|e| to_error(&what, e))?;
            for chunk in ids.chunks(1000) {
                let n: u64 = conn
                    .check(
                        redis::cmd("XDEL")
                            .arg(self.core.keys.dead_letters(&queue))
                            .arg(chunk)
                            .query_async(&mut c)
                            .await,
                    )
                    .map_err(|e| to_error(&what, e))?;
                purged += n;
            }
        }
        Ok(purged)
    }
}
