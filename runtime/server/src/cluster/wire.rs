//! What a cluster's leader and the nodes that run its slices say to each
//! other, and how it is framed on the connection between them.
//!
//! A standby node opens one connection to the leader (an HTTP upgrade of
//! `GET /internal/v1/workers`) and runs the guests of the slices the leader
//! hands it. The leader keeps everything else: it claims the run, reads its
//! journal and snapshot, answers and journals every host call the guest
//! makes, and commits the slice's end. Each frame is a JSON message and, for
//! bundles and memory images, a binary attachment:
//! `[total length: u32][message length: u32][message][attachment]`, lengths
//! big-endian.

use kiln_sandbox::wit::kiln::task::types::{StartContext, Wake};
use kiln_sandbox::{ChildRequest, Limits, LogCounts, StepOutcome, TrapKind};
use kiln_types::{HostCall, JournalEntry, Logs, RunId, TokenId};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The protocol's name in the `Upgrade` header.
pub(crate) const PROTOCOL: &str = "kiln-worker/1";

/// The largest frame either side sends or reads: a memory image larger
/// than this once compressed does not cross (see [`fits`]).
const MAX_FRAME: usize = u32::MAX as usize;

/// Whether an attachment of `bytes` fits in a frame, with room for its
/// message.
pub(crate) fn fits(bytes: usize) -> bool {
    bytes <= MAX_FRAME - (1 << 20)
}

/// What the leader sends a worker.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ToWorker {
    /// Start a session: instantiate the bundle with this content hash.
    Open {
        /// The session's number on this connection.
        session: u64,
        /// The bundle's content hash.
        bundle: String,
        /// The attempt's limits.
        limits: Limits,
    },
    /// The bytes of a bundle the worker asked for (the attachment).
    Bundle {
        /// The session that asked.
        session: u64,
        /// The bundle's content hash.
        hash: String,
    },
    /// What the attempt masks and where its logging stands, before its
    /// first call.
    Setup {
        /// The session.
        session: u64,
        /// Every form of every secret to mask.
        redactor: Vec<String>,
        /// Where logging stands.
        logs: Option<LogCounts>,
    },
    /// One call on the instance.
    Call {
        /// The session.
        session: u64,
        /// The call.
        call: Box<Call>,
        /// The journal entries still to replay, in order.
        replay: Vec<JournalEntry>,
        /// Values `env-var` calls in `replay` read, opened: `(sealed, value)`.
        opened: Vec<(String, String)>,
        /// What the run has left of its journal budget.
        room: Room,
    },
    /// Interrupt the guest at its next epoch tick.
    Interrupt {
        /// The session.
        session: u64,
    },
    /// End the session: interrupt the guest if it is in a call, and drop
    /// the instance.
    Close {
        /// The session.
        session: u64,
    },
    /// The answer to a host call the worker asked the leader to make.
    Reply {
        /// The session.
        session: u64,
        /// The request's number.
        call: u64,
        /// The answer, or why the call failed.
        answer: Result<Answer, String>,
        /// What the run has left of its journal budget after the call.
        room: Room,
    },
    /// Are you there?
    Ping,
}

/// A call on an instance.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Call {
    /// Start the attempt.
    Start(StartContext),
    /// Deliver a wake.
    Resume(Wake),
    /// Make the guest's memory the image attached (zstd-compressed).
    Restore,
    /// Run the cancel hooks.
    Cancel(String),
    /// Copy the guest's memory (sent back attached, zstd-compressed).
    Capture,
}

/// What a run has used of its journal budget, and its limits, sent with
/// each call and each answer, so the worker stops a guest that goes past
/// them as the leader would (it counts the entries it sends in between).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(crate) struct Room {
    /// Entries the run's journal holds.
    pub(crate) entries: u64,
    /// Bytes the run's journal holds.
    pub(crate) bytes: u64,
    /// Its limit of entries.
    pub(crate) max_entries: u64,
    /// Its limit of bytes.
    pub(crate) max_bytes: u64,
}

impl Default for Room {
    /// No limit.
    fn default() -> Self {
        Room {
            entries: 0,
            bytes: 0,
            max_entries: u64::MAX,
            max_bytes: u64::MAX,
        }
    }
}

/// What a worker sends the leader.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum FromWorker {
    /// The first message: who the worker is and how many guests it runs at
    /// once.
    Hello {
        /// The worker's node id.
        node: String,
        /// How many sessions it takes at once.
        capacity: u32,
    },
    /// The session's instance is ready.
    Opened {
        /// The session.
        session: u64,
    },
    /// The worker needs a bundle's bytes.
    NeedBundle {
        /// The session.
        session: u64,
        /// The bundle's content hash.
        hash: String,
    },
    /// The session could not start.
    OpenFailed {
        /// The session.
        session: u64,
        /// Why.
        error: String,
    },
    /// A host call the guest made, to journal.
    Record {
        /// The session.
        session: u64,
        /// The call and its answer.
        call: HostCall,
    },
    /// A host call for the leader to make and journal.
    Request {
        /// The session.
        session: u64,
        /// The request's number.
        call: u64,
        /// The call.
        request: Request,
    },
    /// A call on the instance ended.
    Done {
        /// The session.
        session: u64,
        /// How it ended.
        result: Done,
        /// The journal entries still to replay.
        replay: Vec<JournalEntry>,
        /// Execution time the attempt used so far.
        used: Duration,
        /// Log calls the attempt made so far.
        log_calls: u64,
        /// Log lines kept since the last call.
        logs: Logs,
    },
    /// Yes.
    Pong,
    /// The worker drains: it finishes the guests it runs and takes no
    /// more.
    Draining,
}

/// How a call on an instance ended.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Done {
    /// A start or a resume: the step.
    Step(StepOutcome),
    /// A restore or a cancel, done.
    Ok,
    /// A capture: the image is attached.
    Image,
    /// A restore or a capture that trapped.
    Trap(TrapKind),
}

/// A host call the leader makes for a worker's guest.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Request {
    /// `trigger` and `batch-trigger`.
    Spawn {
        /// The children.
        children: Vec<ChildRequest>,
        /// Whether they are one batch.
        batch: bool,
    },
    /// `create-token`.
    CreateToken {
        /// The options, as JSON.
        options: String,
    },
    /// `update-metadata`.
    UpdateMetadata {
        /// `current`, `parent` or `root`.
        target: String,
        /// The operations, as JSON.
        operations: String,
    },
    /// `add-tags`.
    AddTags {
        /// The tags.
        tags: Vec<String>,
    },
    /// `stream-append`.
    StreamAppend {
        /// The stream.
        key: String,
        /// The chunk, as JSON.
        chunk: String,
    },
    /// `env-var`.
    EnvVar {
        /// The variable.
        name: String,
    },
}

/// The answer to a [`Request`].
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Answer {
    /// The children a spawn created.
    Spawned {
        /// The batch, for a batch.
        batch: Option<String>,
        /// The runs, in request order.
        runs: Vec<RunId>,
    },
    /// The token created, and its callback URL.
    Token(TokenId, String),
    /// The metadata afterwards, as JSON.
    Metadata(String),
    /// Tags added.
    Tagged,
    /// The chunk's number.
    Appended(u64),
    /// The variable's value, and whether it is a secret.
    EnvVar(Option<(String, bool)>),
}

/// Attachments this large are written apart rather than copied into the
/// batch.
const COPIED: usize = 64 * 1024;

/// Writes the frames `outgoing` gives until it closes, the frames queued
/// together in one write: a frame's lengths and message, or two small
/// frames, never leave in writes of their own, which would wait on the
/// peer's delayed acknowledgement. An attachment over 64 KiB is written
/// apart rather than copied.
pub(crate) async fn write_frames<W: AsyncWrite + Unpin>(
    writer: &mut W,
    outgoing: &mut tokio::sync::mpsc::UnboundedReceiver<Frame>,
) -> std::io::Result<()> {
    let mut buffer = Vec::new();
    while let Some(first) = outgoing.recv().await {
        let mut next = Some(first);
        while let Some(frame) = next.take() {
            head(&mut buffer, &frame.message, frame.attachment.len())?;
            if frame.attachment.len() > COPIED {
                writer.write_all(&buffer).await?;
                buffer.clear();
                writer.write_all(&frame.attachment).await?;
            } else {
                buffer.extend_from_slice(&frame.attachment);
            }
            if buffer.len() < 1 << 20 {
                next = outgoing.try_recv().ok();
            }
        }
        if !buffer.is_empty() {
            writer.write_all(&buffer).await?;
            buffer.clear();
        }
    }
    Ok(())
}

/// Appends a frame's lengths and message to `buffer`.
fn head(buffer: &mut Vec<u8>, message: &[u8], attachment: usize) -> std::io::Result<()> {
    let total = 4 + message.len() + attachment;
    if total > MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("a frame of {total} bytes is over the limit of {MAX_FRAME}"),
        ));
    }
    buffer.extend_from_slice(&(total as u32).to_be_bytes());
    buffer.extend_from_slice(&(message.len() as u32).to_be_bytes());
    buffer.extend_from_slice(message);
    Ok(())
}

/// Reads one frame: its message and attachment, or `None` at the end of
/// the connection. Fails with `TimedOut` once `silence` passes with no
/// byte coming: a frame that is coming is read however long it takes (a
/// large memory image on a slow link), as long as its bytes keep coming.
pub(crate) async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    silence: std::time::Duration,
) -> std::io::Result<Option<(Vec<u8>, Vec<u8>)>> {
    let mut head = [0u8; 4];
    if !fill(reader, &mut head, silence, true).await? {
        return Ok(None);
    }
    let total = u32::from_be_bytes(head) as usize;
    if total < 4 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "a frame shorter than its header",
        ));
    }
    fill(reader, &mut head, silence, false).await?;
    let length = u32::from_be_bytes(head) as usize;
    if length > total - 4 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "a frame whose message is longer than the frame",
        ));
    }
    let mut message = vec![0u8; length];
    fill(reader, &mut message, silence, false).await?;
    let mut attachment = vec![0u8; total - 4 - length];
    fill(reader, &mut attachment, silence, false).await?;
    Ok(Some((message, attachment)))
}

/// Fills `buffer`, each read waiting at most `silence`. `Ok(false)` if the
/// connection ended before the first byte and `at_start` allows that.
async fn fill<R: AsyncRead + Unpin>(
    reader: &mut R,
    buffer: &mut [u8],
    silence: std::time::Duration,
    at_start: bool,
) -> std::io::Result<bool> {
    let mut filled = 0;
    while filled < buffer.len() {
        let read = match tokio::time::timeout(silence, reader.read(&mut buffer[filled..])).await {
            Ok(read) => read?,
            Err(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("nothing came for {silence:?}"),
                ));
            }
        };
        if read == 0 {
            if at_start && filled == 0 {
                return Ok(false);
            }
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        filled += read;
    }
    Ok(true)
}

/// A message and its attachment, encoded for [`write_frame`].
pub(crate) struct Frame {
    /// The message, as JSON.
    pub(crate) message: Vec<u8>,
    /// The attachment.
    pub(crate) attachment: Vec<u8>,
}

impl Frame {
    /// `message` with `attachment`.
    pub(crate) fn new<T: Serialize>(message: &T, attachment: Vec<u8>) -> Self {
        Frame {
            // Every message is plain data: encoding it cannot fail.
            message: serde_json::to_vec(message).unwrap_or_default(),
            attachment,
        }
    }
}

/// A memory image, compressed for the connection.
pub(crate) fn pack(image: &[u8]) -> std::io::Result<Vec<u8>> {
    zstd::bulk::compress(image, 1)
}

/// A memory image [`pack`] compressed, at most `limit` bytes once
/// decompressed. The buffer grows as the image comes out: nothing of
/// `limit`'s size is reserved up front.
pub(crate) fn unpack(packed: &[u8], limit: usize) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut image = Vec::new();
    zstd::stream::read::Decoder::new(packed)?
        .take(limit as u64 + 1)
        .read_to_end(&mut image)?;
    if image.len() > limit {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("the image is over its limit of {limit} bytes"),
        ));
    }
    Ok(image)
}

/// [`pack`] on the blocking pool (a large memory takes a while); the image
/// is given back to the capture buffers' pool there.
pub(crate) async fn pack_off(image: Vec<u8>) -> std::io::Result<Vec<u8>> {
    tokio::task::spawn_blocking(move || {
        let packed = pack(&image);
        kiln_sandbox::recycle_capture(image);
        packed
    })
    .await
    .map_err(std::io::Error::other)?
}

/// [`unpack`] on the blocking pool.
pub(crate) async fn unpack_off(packed: Vec<u8>, limit: usize) -> std::io::Result<Vec<u8>> {
    tokio::task::spawn_blocking(move || unpack(&packed, limit))
        .await
        .map_err(std::io::Error::other)?
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes one frame: `message` and `attachment`, in one write.
    async fn write_frame<W: AsyncWrite + Unpin>(
        writer: &mut W,
        message: &[u8],
        attachment: &[u8],
    ) -> std::io::Result<()> {
        let mut buffer = Vec::with_capacity(8 + message.len() + attachment.len());
        head(&mut buffer, message, attachment.len())?;
        buffer.extend_from_slice(attachment);
        writer.write_all(&buffer).await
    }

    #[tokio::test]
    async fn frames_round_trip_and_a_short_one_is_refused() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        write_frame(&mut a, b"{\"Ping\":null}", b"\x01\x02")
            .await
            .unwrap();
        write_frame(&mut a, b"x", b"").await.unwrap();
        drop(a);
        let wait = std::time::Duration::from_secs(5);
        let (message, attachment) = read_frame(&mut b, wait).await.unwrap().unwrap();
        assert_eq!(message, b"{\"Ping\":null}");
        assert_eq!(attachment, b"\x01\x02");
        let (message, attachment) = read_frame(&mut b, wait).await.unwrap().unwrap();
        assert_eq!((message.as_slice(), attachment.len()), (&b"x"[..], 0));
        assert!(read_frame(&mut b, wait).await.unwrap().is_none());

        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&8u32.to_be_bytes()).await.unwrap();
        a.write_all(&9u32.to_be_bytes()).await.unwrap();
        drop(a);
        assert!(read_frame(&mut b, wait).await.is_err());

        // Silence is an error; a frame whose bytes keep coming is waited
        // for.
        let (mut a, mut b) = tokio::io::duplex(64);
        let quiet = std::time::Duration::from_millis(500);
        let silent = read_frame(&mut b, quiet).await.unwrap_err();
        assert_eq!(silent.kind(), std::io::ErrorKind::TimedOut);
        a.write_all(&6u32.to_be_bytes()).await.unwrap();
        let slow = tokio::spawn(async move {
            for byte in [0, 0, 0, 1, b'x', b'y'] {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                a.write_all(&[byte]).await.unwrap();
            }
        });
        let (message, attachment) = read_frame(&mut b, quiet).await.unwrap().unwrap();
        assert_eq!((message, attachment), (b"x".to_vec(), b"y".to_vec()));
        slow.await.unwrap();
    }

    #[tokio::test]
    async fn queued_frames_read_back_in_order_with_their_attachments() {
        let (mut a, mut b) = tokio::io::duplex(1 << 22);
        let (out, mut outgoing) = tokio::sync::mpsc::unbounded_channel();
        out.send(Frame::new(&ToWorker::Ping, Vec::new())).unwrap();
        out.send(Frame::new(
            &ToWorker::Close { session: 3 },
            vec![7; 100_000],
        ))
        .unwrap();
        out.send(Frame::new(&ToWorker::Interrupt { session: 4 }, vec![1, 2]))
            .unwrap();
        drop(out);
        write_frames(&mut a, &mut outgoing).await.unwrap();
        let wait = std::time::Duration::from_secs(5);
        let mut read = Vec::new();
        while let Some((message, attachment)) = read_frame(&mut b, wait).await.unwrap() {
            let message: ToWorker = serde_json::from_slice(&message).unwrap();
            read.push((format!("{message:?}"), attachment.len()));
            if read.len() == 3 {
                break;
            }
        }
        assert_eq!(
            read,
            [
                ("Ping".to_string(), 0),
                ("Close { session: 3 }".to_string(), 100_000),
                ("Interrupt { session: 4 }".to_string(), 2),
            ]
        );
    }

    #[test]
    fn messages_with_wit_types_round_trip() {
        let call = ToWorker::Call {
            session: 7,
            call: Box::new(Call::Resume(Wake {
                id: 3,
                value: kiln_sandbox::wit::WakeValue::Timer,
            })),
            replay: vec![JournalEntry::HostCall(HostCall::NowMs { result: 5 })],
            opened: vec![("ab".into(), "cd".into())],
            room: Room::default(),
        };
        let frame = Frame::new(&call, Vec::new());
        let back: ToWorker = serde_json::from_slice(&frame.message).unwrap();
        assert!(
            matches!(back, ToWorker::Call { session: 7, call, .. } if matches!(*call, Call::Resume(ref w) if w.id == 3))
        );
        let image = vec![0u8; 1 << 20];
        let packed = pack(&image).unwrap();
        assert!(packed.len() < 1 << 12);
        assert_eq!(unpack(&packed, 1 << 20).unwrap(), image);
        assert!(unpack(&packed, 1 << 19).is_err());
    }
}
