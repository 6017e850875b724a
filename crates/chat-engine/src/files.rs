//! Uploaded files: where an attachment's bytes live under DATA_DIR, writing them, finding them again, and
//! removing them when their message goes, so that every door and every way a message can go shares one
//! lifecycle.
//!
//! Layout: `DATA_DIR/attachments/{channel}/{id}-{token}` holds a file's bytes, and `{id}-{token}.json` beside
//! it the name and media type to serve it with (so that serving needs no store lookup). The token is 128
//! random bits, kept in the message's [`Attachment`] record: a URL without it finds no file.
//!
//! The lifecycle, and why it is safe against a crash at any point:
//! - An [`Upload`] writes its files before the message that carries them is sent. Each file is registered as
//!   *pending* from before it is created until its command is settled, so no sweep removes it meanwhile.
//! - The writer takes the upload with its command ([`crate::Engine::command_with_upload`]): a refused
//!   command's files are removed at once; a committed one's are kept. An upload dropped before the writer took
//!   it (a bad multipart body, a client gone, a rate limit) removes its files on drop.
//! - Events that remove messages (a delete, a bulk delete, a channel's or a space's deletion, an empty
//!   network channel going away) and retention remove those messages' files *after* the removal committed,
//!   never before: a crash in between leaves files that no message refers to, never a message whose file is
//!   gone.
//! - What a crash leaves behind (files of removed messages, uploads whose command never committed) is found
//!   by [`Files::sweep`]: every stored file that no message in the store refers to, that is not pending, and
//!   that was last written before the sweep's cutoff (an upload in flight is younger).

use std::collections::{HashMap, HashSet};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use chat_core::{Attachment, ChannelId};
use chat_log::Store;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt as _;

use crate::error::EngineError;

/// How many times an upload draws a new id when the file name it makes is taken.
const ID_TRIES: usize = 8;

/// The stored files of attachments under `DATA_DIR/attachments`, and the uploads not yet settled.
#[derive(Debug)]
pub struct Files {
    root: PathBuf,
    /// Files written by uploads whose command is not settled yet, by channel: a sweep leaves them alone.
    pending: Mutex<HashMap<ChannelId, HashSet<String>>>,
}

/// A stored file found by [`Files::find`]: where its bytes are and how to serve them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredFile {
    /// The file holding the bytes.
    pub path: PathBuf,
    /// The name it was uploaded with (as the uploading transport made it safe).
    pub filename: String,
    /// The media type it was uploaded with, if any.
    pub content_type: Option<String>,
}

/// What a [`Files::sweep`] found (and, with `fix`, removed).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Stored files (bytes or their `.json` records) that a message in the store refers to.
    pub live: u64,
    /// Files no message refers to: left by a crash between a removal's commit and the unlink, or by an
    /// upload whose message never committed. Removed when the sweep fixes.
    pub orphans: Vec<PathBuf>,
    /// Their total size in bytes.
    pub orphan_bytes: u64,
    /// Files skipped because an upload in this process has not settled yet, or because they were written
    /// after the cutoff (an upload in flight).
    pub young: u64,
    /// Entries under the attachments directory that chatd did not make (names of another shape): reported,
    /// never removed.
    pub unknown: Vec<PathBuf>,
    /// Whether the orphans were removed.
    pub fixed: bool,
}

/// What a `.json` record beside a stored file holds.
#[derive(Serialize, Deserialize)]
struct Record {
    filename: String,
    content_type: Option<String>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section below leaves the set consistent at each step; a panic elsewhere changes nothing.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The name an attachment's bytes are stored under in its channel's directory.
fn stored_name(id: u64, token: &str) -> String {
    format!("{id}-{token}")
}

/// Whether `token` has the shape of one we make (32 hex digits), so that it is safe to put in a path.
pub fn token_shaped(token: &str) -> bool {
    token.len() == 32 && token.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Parses a stored file's name, `{id}-{token}` or `{id}-{token}.json`, into the first form.
fn parse_stored(name: &str) -> Option<&str> {
    let base = name.strip_suffix(".json").unwrap_or(name);
    let (id, token) = base.split_once('-')?;
    (id.parse::<u64>().is_ok_and(|id| id > 0) && token_shaped(token)).then_some(base)
}

fn random<const N: usize>() -> Result<[u8; N], std::io::Error> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes)
        .map_err(|e| std::io::Error::other(format!("no randomness: {e}")))?;
    Ok(bytes)
}

/// A fresh URL token: 128 random bits in hex.
fn new_token() -> Result<String, std::io::Error> {
    Ok(random::<16>()?.iter().map(|b| format!("{b:02x}")).collect())
}

/// A fresh attachment id: a snowflake (the upload's time since Discord's epoch, which clients read, in the
/// high bits) whose 22 low bits are random, so that ids sort by upload time and are not sequential. Never 0.
fn new_id() -> Result<u64, std::io::Error> {
    let ms = crate::now_ms();
    let noise = u32::from_le_bytes(random::<4>()?);
    let since = ms.saturating_sub(chat_core::DISCORD_EPOCH).max(1);
    Ok((since << 22) | u64::from(noise & 0x3F_FFFF))
}

/// Removes a file, treating one already gone as removed. Other failures are logged: the file stays an orphan
/// for the next sweep, which is all a failed unlink can cost.
fn unlink(path: &Path) -> bool {
    match std::fs::remove_file(path) {
        Ok(()) => true,
        Err(e) if e.kind() == ErrorKind::NotFound => false,
        Err(e) => {
            tracing::warn!(error = %e, path = %path.display(), "cannot remove a stored file");
            false
        }
    }
}

impl Files {
    /// The files under `data_dir/attachments`. Nothing is created until the first upload.
    pub fn new(data_dir: &Path) -> Self {
        Self {
            root: data_dir.join("attachments"),
            pending: Mutex::new(HashMap::new()),
        }
    }

    /// The directory every channel's files are under.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn dir(&self, channel: ChannelId) -> PathBuf {
        self.root.join(channel.to_string())
    }

    /// Starts an upload of files for a message to `channel`.
    pub fn upload(self: &Arc<Self>, channel: ChannelId) -> Upload {
        Upload {
            files: Arc::clone(self),
            channel,
            attachments: Vec::new(),
            state: UploadState::Open,
        }
    }

    /// Finds the stored file of attachment `id` with `token` in `channel`: `None` when there is none (a wrong
    /// token included, so that a guess cannot tell a missing file from a wrong token).
    pub async fn find(&self, channel: ChannelId, id: u64, token: &str) -> Option<StoredFile> {
        if !token_shaped(token) {
            return None;
        }
        let name = stored_name(id, token);
        let dir = self.dir(channel);
        let record = tokio::fs::read(dir.join(format!("{name}.json")))
            .await
            .ok()?;
        let record: Record = serde_json::from_slice(&record).ok()?;
        Some(StoredFile {
            path: dir.join(name),
            filename: record.filename,
            content_type: record.content_type,
        })
    }

    /// Removes the stored files of `attachments` in `channel` (bytes and records). Blocking: call it on the
    /// blocking pool. Returns how many files went.
    pub(crate) fn remove(&self, channel: ChannelId, attachments: &[Attachment]) -> u64 {
        let dir = self.dir(channel);
        let mut removed = 0;
        for a in attachments {
            if !token_shaped(&a.token) {
                // Not one of ours: no file of that name was ever written.
                continue;
            }
            let name = stored_name(a.id, &a.token);
            removed += u64::from(unlink(&dir.join(&name)));
            removed += u64::from(unlink(&dir.join(format!("{name}.json"))));
        }
        if removed > 0 {
            metrics::counter!("chatd_attachment_files_removed_total").increment(removed);
        }
        removed
    }

    /// Removes every stored file of a deleted channel, except an upload's still pending (its command will be
    /// refused, and the upload removes it then), and then the directory if it is empty. Blocking.
    pub(crate) fn remove_channel(&self, channel: ChannelId) -> u64 {
        let dir = self.dir(channel);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return 0;
        };
        let pending = lock(&self.pending)
            .get(&channel)
            .cloned()
            .unwrap_or_default();
        let mut removed = 0;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(base) = name.to_str().and_then(parse_stored) else {
                continue;
            };
            if !pending.contains(base) {
                removed += u64::from(unlink(&entry.path()));
            }
        }
        // Fails harmlessly when something is left (a pending upload, a file chatd did not make).
        let _ = std::fs::remove_dir(&dir);
        if removed > 0 {
            metrics::counter!("chatd_attachment_files_removed_total").increment(removed);
        }
        removed
    }

    fn register(&self, channel: ChannelId, name: &str) -> bool {
        lock(&self.pending)
            .entry(channel)
            .or_default()
            .insert(name.to_owned())
    }

    fn unregister(&self, channel: ChannelId, attachments: &[Attachment]) {
        let mut pending = lock(&self.pending);
        if let Some(set) = pending.get_mut(&channel) {
            for a in attachments {
                set.remove(&stored_name(a.id, &a.token));
            }
            if set.is_empty() {
                pending.remove(&channel);
            }
        }
    }

    /// Compares the stored files with the attachments the store's messages hold, and reports (with `fix`,
    /// removes) every file no message refers to. A file of an upload not yet settled in this process is left
    /// alone, and so is one last written after `cutoff`: an upload in flight in another process would be that
    /// young. Blocking: call it on the blocking pool.
    ///
    /// For each channel, the pending set is read after the directory is listed and before the store is
    /// asked: a file listed was registered before it was created, and is unregistered only after its message
    /// committed, so it is either pending at that moment or its message is already in the store.
    pub fn sweep(
        &self,
        store: &dyn Store,
        cutoff: SystemTime,
        fix: bool,
    ) -> Result<SweepReport, EngineError> {
        let mut report = SweepReport {
            fixed: fix,
            ..SweepReport::default()
        };
        let channels = match std::fs::read_dir(&self.root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(report),
            Err(e) => return Err(EngineError::Files(e)),
        };
        for entry in channels {
            let entry = entry.map_err(EngineError::Files)?;
            let path = entry.path();
            let channel = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u64>().ok())
                .and_then(ChannelId::from_raw);
            let (Some(channel), true) = (channel, path.is_dir()) else {
                report.unknown.push(path);
                continue;
            };
            self.sweep_channel(store, channel, &path, cutoff, fix, &mut report)?;
        }
        report.orphans.sort();
        report.unknown.sort();
        Ok(report)
    }

    fn sweep_channel(
        &self,
        store: &dyn Store,
        channel: ChannelId,
        dir: &Path,
        cutoff: SystemTime,
        fix: bool,
        report: &mut SweepReport,
    ) -> Result<(), EngineError> {
        let mut listed = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(EngineError::Files)? {
            let entry = entry.map_err(EngineError::Files)?;
            let name = entry.file_name();
            match name.to_str().and_then(parse_stored) {
                Some(base) if entry.path().is_file() => listed.push((base.to_owned(), entry)),
                _ => report.unknown.push(entry.path()),
            }
        }
        let pending = lock(&self.pending)
            .get(&channel)
            .cloned()
            .unwrap_or_default();
        let live: HashSet<String> = store
            .attachments(channel)?
            .iter()
            .map(|a| stored_name(a.id, &a.token))
            .collect();
        for (base, entry) in listed {
            if live.contains(&base) {
                report.live += 1;
                continue;
            }
            let meta = match entry.metadata() {
                Ok(meta) => meta,
                // Gone meanwhile (removed by its message's deletion): nothing to report.
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(EngineError::Files(e)),
            };
            let young = meta.modified().map_or(true, |at| at > cutoff);
            if pending.contains(&base) || young {
                report.young += 1;
                continue;
            }
            report.orphan_bytes += meta.len();
            let path = entry.path();
            if fix {
                unlink(&path);
            }
            report.orphans.push(path);
        }
        if fix && live.is_empty() && pending.is_empty() {
            // The directory of a channel with no files left goes too (it fails harmlessly if not empty).
            let _ = std::fs::remove_dir(dir);
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum UploadState {
    /// The transport holds it: dropped, its files go (its command never reached the writer).
    Open,
    /// The writer took it with its command: from here only the writer decides. Dropped in this state (the
    /// writer stopped mid-commit), its files stay for the sweep, since the commit may have happened.
    Taken,
    /// Settled: kept with a committed message, or removed.
    Settled,
}

/// Files written for one message before it is sent. Pass it to [`crate::Engine::command_with_upload`] with
/// the command whose message carries [`Upload::attachments`]; dropped before that, it removes its files.
#[derive(Debug)]
pub struct Upload {
    files: Arc<Files>,
    channel: ChannelId,
    attachments: Vec<Attachment>,
    state: UploadState,
}

/// A file being written by an [`Upload`]: feed it with [`NewFile::write`], then hand it to [`Upload::finish`].
#[derive(Debug)]
pub struct NewFile {
    out: tokio::fs::File,
    size: u64,
}

impl NewFile {
    /// Appends bytes.
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), std::io::Error> {
        self.out.write_all(chunk).await?;
        self.size += chunk.len() as u64;
        Ok(())
    }

    /// How many bytes were written so far.
    pub fn size(&self) -> u64 {
        self.size
    }
}

impl Upload {
    /// The channel the files are for.
    pub fn channel(&self) -> ChannelId {
        self.channel
    }

    /// The attachment records of the files written so far, for the message that carries them.
    pub fn attachments(&self) -> &[Attachment] {
        &self.attachments
    }

    /// Creates the next file, with a fresh id and token, named `filename` (already made safe by the
    /// transport) of type `content_type`. It is registered as pending before it exists.
    pub async fn create(
        &mut self,
        filename: String,
        content_type: Option<String>,
    ) -> Result<NewFile, std::io::Error> {
        let dir = self.files.dir(self.channel);
        tokio::fs::create_dir_all(&dir).await?;
        let token = new_token()?;
        let mut tries = 0;
        loop {
            let id = new_id()?;
            let name = stored_name(id, &token);
            if !self.files.register(self.channel, &name) {
                // Drawn twice in this process: draw again.
                tries += 1;
                if tries >= ID_TRIES {
                    return Err(std::io::Error::other("no free attachment id"));
                }
                continue;
            }
            // Recorded before the file exists, so that a failure from here on removes it with the rest.
            self.attachments.push(Attachment {
                id,
                filename: filename.clone(),
                size: 0,
                content_type: content_type.clone(),
                token: token.clone(),
            });
            let opened = tokio::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(dir.join(&name))
                .await;
            match opened {
                Ok(out) => return Ok(NewFile { out, size: 0 }),
                Err(e) => {
                    // Never overwrite another upload's file: forget this name and draw again.
                    if let Some(a) = self.attachments.pop() {
                        self.files
                            .unregister(self.channel, std::slice::from_ref(&a));
                    }
                    tries += 1;
                    if e.kind() != ErrorKind::AlreadyExists || tries >= ID_TRIES {
                        return Err(e);
                    }
                }
            }
        }
    }

    /// Finishes the file last created: flushes it and writes its record beside it.
    pub async fn finish(&mut self, mut file: NewFile) -> Result<(), std::io::Error> {
        file.out.flush().await?;
        let Some(last) = self.attachments.last_mut() else {
            return Err(std::io::Error::other("no file was created"));
        };
        last.size = file.size;
        let record = serde_json::to_vec(&Record {
            filename: last.filename.clone(),
            content_type: last.content_type.clone(),
        })
        .map_err(std::io::Error::other)?;
        let name = stored_name(last.id, &last.token);
        tokio::fs::write(
            self.files.dir(self.channel).join(format!("{name}.json")),
            record,
        )
        .await
    }

    /// The writer has the upload with its command.
    pub(crate) fn take(&mut self) {
        self.state = UploadState::Taken;
    }

    /// The message carrying the files committed: they stay.
    pub(crate) fn keep(mut self) {
        self.files.unregister(self.channel, &self.attachments);
        self.state = UploadState::Settled;
    }

    /// No message refers to the files (the command was refused or never ran): they go now, before this
    /// returns (a few unlinks), so that a refusal answered after it leaves nothing behind.
    pub fn discard(mut self) {
        self.remove_files(false);
    }

    /// As [`Upload::discard`], on the blocking pool: for the writer, which does not wait for the disk.
    pub(crate) fn discard_later(mut self) {
        self.remove_files(true);
    }

    fn remove_files(&mut self, later: bool) {
        self.state = UploadState::Settled;
        if self.attachments.is_empty() {
            return;
        }
        let files = Arc::clone(&self.files);
        let channel = self.channel;
        let attachments = std::mem::take(&mut self.attachments);
        let work = move || {
            files.remove(channel, &attachments);
            // Unregistered only once gone, so that no sweep counts them meanwhile.
            files.unregister(channel, &attachments);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) if later => {
                rt.spawn_blocking(work);
            }
            _ => work(),
        }
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        match self.state {
            UploadState::Open => self.remove_files(false),
            UploadState::Taken => {
                // The commit may have happened: only the sweep, which asks the store, may remove these.
                self.files.unregister(self.channel, &self.attachments);
            }
            UploadState::Settled => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_snowflakes_and_tokens_are_random_hex() {
        let id = new_id().unwrap();
        assert!(id > 0);
        let ms = (id >> 22) + chat_core::DISCORD_EPOCH;
        assert!(ms.abs_diff(crate::now_ms()) < 60_000, "real timestamp bits");
        let (a, b) = (new_token().unwrap(), new_token().unwrap());
        assert!(token_shaped(&a) && token_shaped(&b));
        assert_ne!(a, b);
        assert!(!token_shaped("../../etc/passwd0000000000000000"));
        assert!(!token_shaped(&a[..31]));
    }

    #[test]
    fn only_names_of_our_shape_parse() {
        let token = "0123456789abcdef0123456789abcdef";
        assert_eq!(
            parse_stored(&format!("42-{token}")),
            Some(&*format!("42-{token}"))
        );
        assert_eq!(
            parse_stored(&format!("42-{token}.json")),
            Some(&*format!("42-{token}"))
        );
        assert_eq!(parse_stored(&format!("0-{token}")), None);
        assert_eq!(parse_stored("42-short"), None);
        assert_eq!(parse_stored("notes.txt"), None);
    }
}
