//! Connecting to the engine a URL names, with errors that name the URL.

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use courier::Engine;

/// Connects to `url` for an admin command (`queues`, `dlq`).
///
/// An inspecting command must not create what it inspects: a `sqlite://` URL whose file does not exist is an error
/// (most likely a typo or the wrong working directory), not a fresh empty database.
pub(crate) async fn existing(url: &str) -> anyhow::Result<Engine> {
    if let Some(path) = sqlite_path(url)
        && !path.exists()
    {
        bail!(
            "no Courier database at '{}' (engine URL '{url}'): check the path and the working directory, or run a \
             service or `courier demo` first",
            path.display()
        );
    }
    any(url).await
}

/// Connects to `url`, creating the engine's storage if it is an embedded one.
pub(crate) async fn any(url: &str) -> anyhow::Result<Engine> {
    match courier::connect(url).await {
        Ok(engine) => Ok(engine),
        // Engine errors name the URL; add it where one does not (e.g. an I/O error opening a file).
        Err(e) if e.to_string().contains(url) => Err(e.into()),
        Err(e) => Err(e).with_context(|| format!("cannot connect to the engine '{url}'")),
    }
}

/// The file a `sqlite://` URL names (`sqlite://./x.db` relative, `sqlite:///abs/x.db` absolute), if it is one.
fn sqlite_path(url: &str) -> Option<PathBuf> {
    let rest = url.strip_prefix("sqlite://")?;
    let path = rest.split_once('?').map_or(rest, |(path, _)| path);
    (!path.trim().is_empty()).then(|| PathBuf::from(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_sqlite_paths() {
        assert_eq!(sqlite_path("sqlite://./data/c.db"), Some(PathBuf::from("./data/c.db")));
        assert_eq!(sqlite_path("sqlite:///tmp/c.db?synchronous=normal"), Some(PathBuf::from("/tmp/c.db")));
        assert_eq!(sqlite_path("sqlite://"), None);
        assert_eq!(sqlite_path("memory://"), None);
    }
}
