//! Line framing on one connection: requests up to [`MAX_LINE`] bytes, read into buffers this
//! module owns, so that the bytes of a request (which may carry a PIN or a private key) are
//! wiped as soon as it has been handled.

use crate::wire::MAX_LINE;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};
use zeroize::Zeroize;

/// How much is read from the socket at a time.
const CHUNK: usize = 8 * 1024;

/// What the next read off a connection produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// A complete line, in the caller's buffer, newline removed.
    Line,
    /// A line longer than the limit; it has been skipped up to its newline (or the end).
    TooLarge,
    /// The peer closed the connection.
    Eof,
    /// The peer started no request for too long after its last one.
    Idle,
    /// The peer took too long to finish a line it had started.
    Stalled,
}

/// The read side of a connection: a fixed buffer whose consumed bytes are overwritten, and the
/// current line, wiped by [`Reader::wipe_line`] once answered.
pub struct Reader<R> {
    inner: R,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    line: Vec<u8>,
}

impl<R: AsyncRead + Unpin> Reader<R> {
    pub fn new(inner: R) -> Self {
        Reader { inner, buf: vec![0; CHUNK].into_boxed_slice(), start: 0, end: 0, line: Vec::new() }
    }

    /// The stream it reads.
    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// The line the last [`Frame::Line`] read.
    pub fn line(&self) -> &[u8] {
        &self.line
    }

    /// Whether bytes of a next request have already been read (pipelined).
    pub fn has_buffered(&self) -> bool {
        self.start < self.end
    }

    /// Whether a whole next request has already been read: its answer can go out with this
    /// one's. Part of one is not enough, as its client may wait for this answer to send the rest.
    pub fn has_buffered_line(&self) -> bool {
        self.buf[self.start..self.end].contains(&b'\n')
    }

    /// Overwrites the current line, once its request has been handled.
    pub fn wipe_line(&mut self) {
        self.line.as_mut_slice().zeroize();
        self.line.clear();
    }

    async fn fill(&mut self) -> std::io::Result<usize> {
        if self.start == self.end {
            self.start = 0;
            self.end = self.inner.read(&mut self.buf).await?;
        }
        Ok(self.end - self.start)
    }

    fn consume(&mut self, n: usize) {
        self.buf[self.start..self.start + n].zeroize();
        self.start += n;
    }

    /// Appends to the line, growing it without leaving a copy behind in freed memory.
    fn push_line(&mut self, from: usize, to: usize) {
        let needed = self.line.len() + (to - from);
        if needed > self.line.capacity() {
            let mut bigger = Vec::with_capacity(needed.next_power_of_two().min(MAX_LINE));
            bigger.extend_from_slice(&self.line);
            self.line.zeroize();
            self.line = bigger;
        }
        self.line.extend_from_slice(&self.buf[from..to]);
    }

    /// Reads one line. A longer line than [`MAX_LINE`] is discarded as it arrives, so a peer
    /// cannot make the daemon buffer more than that.
    pub async fn read_frame(&mut self) -> std::io::Result<Frame> {
        self.wipe_line();
        let mut too_large = false;
        loop {
            if self.fill().await? == 0 {
                // A last line without a newline still counts; an empty tail is just the end.
                return Ok(match (too_large, self.line.is_empty()) {
                    (true, _) => Frame::TooLarge,
                    (false, true) => Frame::Eof,
                    (false, false) => Frame::Line,
                });
            }
            let available = &self.buf[self.start..self.end];
            let (chunk, found) = match available.iter().position(|&b| b == b'\n') {
                Some(i) => (i, Some(i + 1)),
                None => (available.len(), None),
            };
            if !too_large && self.line.len() + chunk < MAX_LINE {
                self.push_line(self.start, self.start + chunk);
            } else {
                too_large = true;
                self.wipe_line();
            }
            self.consume(found.unwrap_or(chunk));
            if found.is_some() {
                return Ok(if too_large { Frame::TooLarge } else { Frame::Line });
            }
        }
    }

    /// [`read_frame`](Self::read_frame), giving up when no request starts within `idle` or a
    /// started line does not end within `read_timeout`: a stalled client cannot hold a
    /// connection slot for long.
    pub async fn read_frame_within(
        &mut self,
        idle: Duration,
        read_timeout: Duration,
    ) -> std::io::Result<Frame> {
        if !self.has_buffered() {
            match tokio::time::timeout(idle, self.fill()).await {
                Err(_) => return Ok(Frame::Idle),
                Ok(Err(e)) => return Err(e),
                Ok(Ok(_)) => {}
            }
        }
        tokio::time::timeout(read_timeout, self.read_frame()).await.unwrap_or(Ok(Frame::Stalled))
    }
}

/// Resolves when the peer has closed the connection altogether (not only its writing half: a
/// client such as `socat` sends its request, shuts its side down, and still reads the answer).
/// Stays pending while there is no news, or when the news is a next request (pipelining: the
/// client is there).
pub async fn hung_up(read: &tokio::net::unix::OwnedReadHalf) {
    use std::os::fd::AsRawFd;
    if let Ok(ready) = read.ready(tokio::io::Interest::READABLE).await
        && ready.is_read_closed()
    {
        let stream: &tokio::net::UnixStream = read.as_ref();
        let mut poll = libc::pollfd { fd: stream.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd, and a zero timeout: poll only reports.
        let polled = unsafe { libc::poll(&mut poll, 1, 0) };
        if polled == 1 && poll.revents & libc::POLLHUP != 0 {
            return;
        }
    }
    std::future::pending::<()>().await
}

impl<R> Drop for Reader<R> {
    fn drop(&mut self) {
        self.buf.zeroize();
        self.line.zeroize();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn frames(input: Vec<u8>) -> Vec<(Frame, Vec<u8>)> {
        let mut reader = Reader::new(input.as_slice());
        let mut out = Vec::new();
        loop {
            let frame = reader.read_frame().await.unwrap();
            if frame == Frame::Eof {
                return out;
            }
            out.push((frame, reader.line().to_vec()));
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

    #[tokio::test]
    async fn what_a_request_carried_is_wiped_once_handled() {
        let input = b"{\"op\":\"unlock\",\"pin\":\"s3cret\"}\n{\"op\":\"keys\"}\n".to_vec();
        let mut reader = Reader::new(input.as_slice());
        assert_eq!(reader.read_frame().await.unwrap(), Frame::Line);
        assert!(reader.line().ends_with(b"\"s3cret\"}"));
        let secret_gone = |reader: &Reader<&[u8]>| !reader.buf.windows(6).any(|w| w == b"s3cret");
        assert!(secret_gone(&reader), "the read buffer still holds the consumed request");
        reader.wipe_line();
        assert!(reader.line().is_empty());
        assert!(reader.has_buffered(), "the pipelined request is still there");
        assert_eq!(reader.read_frame().await.unwrap(), Frame::Line);
        assert_eq!(reader.line(), b"{\"op\":\"keys\"}");
    }

    #[tokio::test]
    async fn a_client_that_asks_nothing_is_idle_and_one_that_stops_mid_line_has_stalled() {
        use tokio::io::AsyncWriteExt;
        let short = Duration::from_millis(20);
        let (mut client, server) = tokio::io::duplex(64);
        let mut reader = Reader::new(server);
        assert_eq!(reader.read_frame_within(short, short).await.unwrap(), Frame::Idle);
        client.write_all(b"{\"op\":").await.unwrap();
        assert_eq!(reader.read_frame_within(short, short).await.unwrap(), Frame::Stalled);
    }
}
