//! Frames over async byte streams (cargo feature `tokio`, off by default so the crate stays
//! free of I/O for embedded users). The server and the agent both read and write their QUIC
//! streams with these.
//!
//! A reader learns a frame's length from its header and then takes the payload as it arrives:
//! its buffer grows with the bytes actually received (an announced size costs nothing), each
//! piece is offered to a `hold` callback that may refuse it (a memory budget), and a stream
//! that sends nothing for the `stall` time is given up.

use std::io;
use std::time::Duration;

use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::frame::{self, FrameError, HEADER_LEN};

/// Largest piece read at once.
const PIECE: usize = 16 * 1024;

/// Why a frame could not be read.
#[non_exhaustive]
#[derive(Debug, Error)]
pub enum ReadError<E> {
    /// The frame is bad: too large, empty, or cut short by the end of the stream.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The `hold` callback refused more bytes.
    #[error("refused to hold more of the frame")]
    Refused(E),
    /// No byte arrived for the stall time.
    #[error("the stream stalled")]
    Stalled,
    /// The stream failed.
    #[error("stream: {0}")]
    Io(io::Error),
}

/// Reads one frame of at most `limit` bytes of payload from `reader` and returns the payload.
/// Every piece of payload received is offered to `hold` first (return `Err` to refuse holding
/// it); a read that makes no progress for `stall` (if given) ends with [`ReadError::Stalled`].
pub async fn read_frame<R, E>(
    reader: &mut R,
    limit: usize,
    stall: Option<Duration>,
    mut hold: impl FnMut(usize) -> Result<(), E>,
) -> Result<Vec<u8>, ReadError<E>>
where
    R: AsyncRead + Unpin,
{
    let mut header = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        let n = within(stall, reader.read(&mut header[got..])).await?;
        if n == 0 {
            return Err(FrameError::Truncated {
                expected: HEADER_LEN,
                got,
            }
            .into());
        }
        got += n;
    }
    let len = frame::payload_len(header, limit)?;
    let mut payload = Vec::new();
    while payload.len() < len {
        let want = (len - payload.len()).min(PIECE);
        let before = payload.len();
        payload.reserve(want);
        let n = within(
            stall,
            (&mut *reader).take(want as u64).read_buf(&mut payload),
        )
        .await?;
        if n == 0 {
            return Err(FrameError::Truncated {
                expected: HEADER_LEN + len,
                got: HEADER_LEN + before,
            }
            .into());
        }
        hold(n).map_err(ReadError::Refused)?;
    }
    Ok(payload)
}

async fn within<E>(
    stall: Option<Duration>,
    read: impl Future<Output = io::Result<usize>>,
) -> Result<usize, ReadError<E>> {
    let result = match stall {
        Some(limit) => tokio::time::timeout(limit, read)
            .await
            .map_err(|_| ReadError::Stalled)?,
        None => read.await,
    };
    result.map_err(ReadError::Io)
}

/// Writes `payload` as one frame (header, then payload). Refuses payloads over
/// [`frame::MAX_FRAME`]. The caller ends the stream.
pub async fn write_frame<W>(writer: &mut W, payload: &[u8]) -> io::Result<()>
where
    W: AsyncWrite + Unpin,
{
    let header =
        frame::header(payload.len()).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    writer.write_all(&header).await?;
    writer.write_all(payload).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_bad_ones_are_refused() {
        let (mut a, mut b) = tokio::io::duplex(1 << 20);
        write_frame(&mut a, b"hello").await.unwrap();
        let read = read_frame(&mut b, 100, None, |_| Ok::<(), ()>(())).await;
        assert_eq!(read.unwrap(), b"hello");

        // Cut short.
        let (mut a, mut b) = tokio::io::duplex(1 << 20);
        a.write_all(&[0, 0, 0, 9, 1, 2]).await.unwrap();
        drop(a);
        let read = read_frame(&mut b, 100, None, |_| Ok::<(), ()>(())).await;
        assert!(matches!(
            read,
            Err(ReadError::Frame(FrameError::Truncated {
                expected: 13,
                got: 6
            }))
        ));

        // Too large, announced.
        let (mut a, mut b) = tokio::io::duplex(1 << 20);
        a.write_all(&[0, 1, 0, 0]).await.unwrap();
        let read = read_frame(&mut b, 100, None, |_| Ok::<(), ()>(())).await;
        assert!(matches!(
            read,
            Err(ReadError::Frame(FrameError::TooLarge { .. }))
        ));
    }

    #[tokio::test]
    async fn bytes_are_offered_as_they_arrive_and_a_stall_ends_the_read() {
        let (mut a, mut b) = tokio::io::duplex(1 << 20);
        a.write_all(&[0, 0, 0x10, 0]).await.unwrap();
        a.write_all(&[7; 1000]).await.unwrap();
        let mut held = 0;
        let read = read_frame(&mut b, 8192, Some(Duration::from_millis(50)), |n| {
            held += n;
            Ok::<(), ()>(())
        })
        .await;
        assert!(matches!(read, Err(ReadError::Stalled)));
        assert_eq!(held, 1000, "only what arrived was held");

        let (mut a, mut b) = tokio::io::duplex(1 << 20);
        a.write_all(&[0, 0, 0x10, 0]).await.unwrap();
        a.write_all(&[7; 4096]).await.unwrap();
        let read = read_frame(&mut b, 8192, None, |n| {
            if n > 100 { Err("full") } else { Ok(()) }
        })
        .await;
        assert!(matches!(read, Err(ReadError::Refused("full"))));
    }
}
