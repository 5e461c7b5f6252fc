//! The registry of Courier's queues: a RabbitMQ stream `<ns>.registry`, because AMQP cannot list queues.
//!
//! Each record is a small message: `+<queue>` (declared), `-<queue>` (deleted), `~<marker>` (a reader's end
//! marker) or `=<id>\n<queue>\n...` (a snapshot of the whole set). A reader appends a fresh marker, reads the
//! stream from its first record to that marker, and so sees every record written before it started, however many
//! processes read or write at once (a stream is read without being consumed). When more than
//! [`COMPACT_AFTER`] records follow the last snapshot, the reader appends a new snapshot; size-based retention then
//! drops the old segments, so the stream stays small.

use std::collections::BTreeSet;
use std::time::Duration;

use courier_core::{Error, Result};
use futures::StreamExt;
use lapin::BasicProperties;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};

use crate::headers::long;
use crate::link::{Link, Route};

/// Records after the last snapshot that make a reader write a new one.
const COMPACT_AFTER: usize = 1000;
/// How long a reader waits for the next record before giving up.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Appends a record, declaring the stream if needed.
pub(crate) async fn append(link: &Link, record: &str) -> Result<()> {
    let name = link.names.registry();
    let props = BasicProperties::default().with_delivery_mode(2);
    if !link.publish(Route::Queue(&name), record.as_bytes(), &props).await? {
        declare(link).await?;
        if !link.publish(Route::Queue(&name), record.as_bytes(), &props).await? {
            return Err(Error::engine(format!("the registry stream '{name}' disappeared while writing to it")));
        }
    }
    Ok(())
}

async fn declare(link: &Link) -> Result<()> {
    let name = link.names.registry();
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), long("stream"));
    args.insert("x-max-length-bytes".into(), AMQPValue::LongLongInt(2_000_000));
    args.insert("x-stream-max-segment-size-bytes".into(), AMQPValue::LongLongInt(200_000));
    let channel = link.channel().await?;
    channel
        .queue_declare(name.as_str().into(), QueueDeclareOptions::durable(), args)
        .await
        .map_err(|e| crate::link::engine_error("declaring the registry stream", e))?;
    let _ = channel.close(200, "OK".into()).await;
    Ok(())
}

/// The Courier queues recorded in this namespace.
pub(crate) async fn read(link: &Link) -> Result<BTreeSet<String>> {
    let marker = uuid::Uuid::new_v4().simple().to_string();
    append(link, &format!("~{marker}")).await?;
    let channel = link.channel().await?;
    let fail = |e| crate::link::engine_error("reading the queue registry", e);
    channel.basic_qos(1000, BasicQosOptions::default()).await.map_err(fail)?;
    let mut args = FieldTable::default();
    args.insert("x-stream-offset".into(), long("first"));
    let mut consumer = channel
        .basic_consume(link.names.registry().as_str().into(), "".into(), BasicConsumeOptions::default(), args)
        .await
        .map_err(fail)?;
    let mut queues = BTreeSet::new();
    let mut since_snapshot = 0usize;
    let mut snapshot_id: Option<String> = None;
    let mut replay: Vec<String> = Vec::new();
    let mut seen_marker = false;
    loop {
        let next = tokio::time::timeout(READ_TIMEOUT, consumer.next()).await;
        let delivery = match next {
            Ok(Some(Ok(d))) => d,
            Ok(Some(Err(e))) => return Err(fail(e)),
            Ok(None) | Err(_) => {
                return Err(Error::timeout(format!(
                    "reading the queue registry '{}' did not reach its end within {READ_TIMEOUT:?}",
                    link.names.registry()
                )));
            }
        };
        let _ = delivery.acker.ack(BasicAckOptions::default()).await;
        let record = String::from_utf8_lossy(&delivery.data).into_owned();
        if seen_marker {
            // Compacting: records written between our marker and our snapshot are written again after it.
            if let Some(rest) = record.strip_prefix('=')
                && rest.split('\n').next() == snapshot_id.as_deref()
            {
                for r in &replay {
                    append(link, r).await?;
                }
                break;
            }
            if record.starts_with('+') || record.starts_with('-') {
                replay.push(record);
            }
            continue;
        }
        match record.as_bytes().first() {
            Some(b'+') => {
                queues.insert(record[1..].to_owned());
            }
            Some(b'-') => {
                queues.remove(&record[1..]);
            }
            Some(b'=') => {
                queues = record.split('\n').skip(1).filter(|q| !q.is_empty()).map(str::to_owned).collect();
                since_snapshot = 0;
                continue;
            }
            Some(b'~') if record[1..] == marker => {
                if since_snapshot <= COMPACT_AFTER {
                    break;
                }
                seen_marker = true;
                let id = uuid::Uuid::new_v4().simple().to_string();
                let mut snapshot = format!("={id}");
                for q in &queues {
                    snapshot.push('\n');
                    snapshot.push_str(q);
                }
                append(link, &snapshot).await?;
                snapshot_id = Some(id);
                continue;
            }
            _ => {}
        }
        since_snapshot += 1;
    }
    let _ = channel.close(200, "OK".into()).await;
    Ok(queues)
}
