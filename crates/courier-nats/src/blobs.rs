//! Bodies larger than the server's `max_payload` (1 MiB by default): the body is stored in chunks on
//! `<ns>.blob.<id>` in the stream `<ns>_blobs`, and the message carries only the header `Courier-Blob: <id>:<chunks>`
//! (a claim check). Copies made by retries, releases, dead-lettering and replays carry the same header, so a large
//! body is stored once per publish. Chunks are kept for [`BLOB_MAX_AGE`].

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use bytes::{Bytes, BytesMut};
use courier_core::{Error, Result};

use crate::names::Names;
use crate::transport::js_error;

/// The header naming a message's stored body.
pub(crate) const BLOB: &str = "Courier-Blob";

/// How long a large body is kept: a message redelivered or replayed after this has lost its body.
pub const BLOB_MAX_AGE: Duration = Duration::from_secs(14 * 24 * 3600);

/// Room left in a chunk for the publish's headers.
const MARGIN: usize = 64 * 1024;

pub(crate) fn stream_config(names: &Names, storage: stream::StorageType, replicas: usize) -> stream::Config {
    stream::Config {
        name: names.blob_stream(),
        description: Some(format!("Courier bodies over max_payload of namespace '{}'", names.namespace)),
        subjects: vec![format!("{}.blob.>", names.namespace)],
        max_age: BLOB_MAX_AGE,
        storage,
        num_replicas: replicas,
        ..Default::default()
    }
}

/// Whether a publish of this size must go through a blob.
pub(crate) fn too_big(client: &async_nats::Client, body: usize, headers: usize) -> bool {
    body + headers + 512 > client.server_info().max_payload
}

/// Stores a body in chunks; returns the header value that names it.
pub(crate) async fn store(js: &jetstream::Context, names: &Names, body: &Bytes) -> Result<String> {
    let max = js.client().server_info().max_payload;
    let chunk = max.saturating_sub(MARGIN).max(max / 2).max(1);
    let id = uuid::Uuid::now_v7().simple().to_string();
    let subject = format!("{}.blob.{id}", names.namespace);
    let mut acks = Vec::new();
    let mut chunks = 0;
    for part in body.chunks(chunk) {
        acks.push(
            js.publish(subject.clone(), body.slice_ref(part))
                .await
                .map_err(|e| js_error("cannot store a large body", e))?,
        );
        chunks += 1;
    }
    for ack in acks {
        ack.await.map_err(|e| js_error("cannot store a large body", e))?;
    }
    Ok(format!("{id}:{chunks}"))
}

/// Reads back a body stored by [`store`].
pub(crate) async fn load(blobs: &stream::Stream, names: &Names, claim: &str) -> Result<Bytes> {
    let missing = || Error::engine(format!("the stored body '{claim}' is gone (older than {BLOB_MAX_AGE:?}?)"));
    let (id, chunks) = claim.split_once(':').ok_or_else(missing)?;
    let chunks: usize = chunks.parse().map_err(|_| missing())?;
    let subject = format!("{}.blob.{id}", names.namespace);
    let mut body = BytesMut::new();
    let mut next = 1;
    for _ in 0..chunks {
        let part = blobs
            .raw_message_builder()
            .sequence(next)
            .next_by_subject(subject.clone())
            .send()
            .await
            .map_err(|e| missing().with_source(e))?;
        next = part.sequence + 1;
        body.extend_from_slice(&part.payload);
    }
    Ok(body.freeze())
}
