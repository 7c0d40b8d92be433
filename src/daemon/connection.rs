//! Line framing on one connection: requests up to [`MAX_LINE`] bytes, answers in order.

use crate::protocol::MAX_LINE;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead};

/// What the next read off a connection produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// A complete line, in the caller's buffer, newline removed.
    Line,
    /// A line longer than the limit; it has been skipped up to its newline (or the end).
    TooLarge,
    /// The peer closed the connection.
    Eof,
    /// The peer sat idle too long, or took too long to finish a line.
    Stalled,
}

/// [`read_frame`], giving up when no request starts within `idle` or a started line does not
/// end within `read_timeout`: a stalled client cannot hold a connection slot for long.
pub async fn read_frame_within<R: AsyncRead + Unpin>(
    reader: &mut tokio::io::BufReader<R>,
    line: &mut Vec<u8>,
    idle: Duration,
    read_timeout: Duration,
) -> std::io::Result<Frame> {
    if reader.buffer().is_empty() {
        match tokio::time::timeout(idle, reader.fill_buf()).await {
            Err(_) => return Ok(Frame::Stalled),
            Ok(Err(e)) => return Err(e),
            Ok(Ok(_)) => {}
        }
    }
    tokio::time::timeout(read_timeout, read_frame(reader, line)).await.unwrap_or(Ok(Frame::Stalled))
}

/// Reads one line into `line` (cleared first). A longer line than [`MAX_LINE`] is discarded as
/// it arrives, so a peer cannot make the daemon buffer more than that.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut tokio::io::BufReader<R>,
    line: &mut Vec<u8>,
) -> std::io::Result<Frame> {
    line.clear();
    let mut too_large = false;
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            // A last line without a newline still counts; an empty tail is just the end.
            return Ok(match (too_large, line.is_empty()) {
                (true, _) => Frame::TooLarge,
                (false, true) => Frame::Eof,
                (false, false) => Frame::Line,
            });
        }
        let (chunk, found) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (&available[..i], Some(i + 1)),
            None => (available, None),
        };
        if !too_large && line.len() + chunk.len() < MAX_LINE {
            line.extend_from_slice(chunk);
        } else {
            too_large = true;
            line.clear();
        }
        let used = found.unwrap_or(available.len());
        reader.consume(used);
        if found.is_some() {
            return Ok(if too_large { Frame::TooLarge } else { Frame::Line });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::BufReader;

    async fn frames(input: Vec<u8>) -> Vec<(Frame, Vec<u8>)> {
        let mut reader = BufReader::with_capacity(1024, input.as_slice());
        let mut out = Vec::new();
        let mut line = Vec::new();
        loop {
            let frame = read_frame(&mut reader, &mut line).await.unwrap();
            if frame == Frame::Eof {
                return out;
            }
            out.push((frame, line.clone()));
        }
    }

    #[tokio::test]
    async fn splits_lines_and_skips_long_ones() {
        let mut input = b"{\"op\":\"keys\"}\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', MAX_LINE + 10));
        input.extend_from_slice(b"\nlast");
        let got = frames(input).await;
        assert_eq!(got.len(), 3);
        assert_eq!(got[0], (Frame::Line, b"{\"op\":\"keys\"}".to_vec()));
        assert_eq!(got[1].0, Frame::TooLarge);
        assert_eq!(got[2], (Frame::Line, b"last".to_vec()));
    }

    #[tokio::test]
    async fn a_line_just_under_the_limit_passes() {
        let mut input = vec![b'y'; MAX_LINE - 1];
        input.push(b'\n');
        let got = frames(input).await;
        assert_eq!(got[0].0, Frame::Line);
        assert_eq!(got[0].1.len(), MAX_LINE - 1);
    }
}
