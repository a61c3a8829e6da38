//! Incremental parsers of upstream streams into [`Event`]s.
//!
//! - Server-Sent Events (WHATWG rules: `\n`, `\r\n` or `\r` line ends,
//!   multi-line `data`, comments, a blank line dispatches), what every
//!   protocol but Bedrock streams;
//! - AWS event streams (`application/vnd.amazon.eventstream`, Bedrock's
//!   `converse-stream`): binary frames with headers and a CRC-checked
//!   payload, decoded by `aws-smithy-eventstream`. An `event` message becomes
//!   an [`Event`] named by its `:event-type`; an `exception` message one named
//!   `exception:<:exception-type>`; an `error` message or a frame that does not
//!   decode one named `error:<code>`, its data the message.
//!
//! Bytes may arrive split anywhere, even inside a UTF-8 sequence or a frame.

use aws_smithy_eventstream::frame::{DecodedFrame, MessageFrameDecoder};
use aws_smithy_types::event_stream::{HeaderValue, Message};
use bytes::{Buf, BytesMut};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Event {
    /// The `event:` field, if any.
    pub event: Option<String>,
    pub data: String,
}

/// A stream parser: SSE unless made with [`Parser::event_stream`].
#[derive(Debug, Default)]
pub struct Parser {
    sse: SseParser,
    /// `Some` for an AWS event stream.
    frames: Option<Box<Frames>>,
}

#[derive(Debug, Default)]
struct Frames {
    buf: BytesMut,
    decoder: MessageFrameDecoder,
    /// A frame failed to decode: the stream cannot be resynchronised.
    broken: bool,
    /// The decoder holds the prelude of a frame whose rest has not come.
    mid_frame: bool,
}

impl Parser {
    /// A Server-Sent Events parser.
    pub fn new() -> Self {
        Self::default()
    }

    /// An AWS event-stream parser.
    pub fn event_stream() -> Self {
        Parser {
            sse: SseParser::default(),
            frames: Some(Box::default()),
        }
    }

    /// Feeds bytes; appends every completed event to `out`.
    pub fn feed(&mut self, bytes: &[u8], out: &mut Vec<Event>) {
        match &mut self.frames {
            None => self.sse.feed(bytes, out),
            Some(f) => f.feed(bytes, out),
        }
    }

    /// True if bytes of an unfinished event are buffered.
    pub fn has_partial(&self) -> bool {
        match &self.frames {
            None => self.sse.has_partial(),
            Some(f) => !f.broken && (f.mid_frame || !f.buf.is_empty()),
        }
    }
}

fn header<'a>(m: &'a Message, name: &str) -> Option<&'a str> {
    m.headers()
        .iter()
        .find(|h| h.name().as_str() == name)
        .and_then(|h| match h.value() {
            HeaderValue::String(s) => Some(s.as_str()),
            _ => None,
        })
}

impl Frames {
    fn feed(&mut self, bytes: &[u8], out: &mut Vec<Event>) {
        if self.broken {
            return;
        }
        self.buf.extend_from_slice(bytes);
        loop {
            // The decoder takes a frame's 12-byte prelude out of the buffer
            // as soon as it has it, and keeps it until the rest comes.
            let had_prelude = self.buf.len() >= 12;
            match self.decoder.decode_frame(&mut self.buf) {
                Ok(DecodedFrame::Complete(m)) => {
                    self.mid_frame = false;
                    out.push(Self::event(&m));
                }
                Ok(DecodedFrame::Incomplete) => {
                    self.mid_frame |= had_prelude;
                    break;
                }
                Err(e) => {
                    self.broken = true;
                    self.buf.clear();
                    out.push(Event {
                        event: Some("error:InvalidFrame".into()),
                        data: format!("the event stream has a frame that does not decode ({e})"),
                    });
                    break;
                }
            }
        }
    }

    fn event(m: &Message) -> Event {
        let payload = String::from_utf8_lossy(m.payload()).into_owned();
        match header(m, ":message-type").unwrap_or("event") {
            "exception" => Event {
                event: Some(format!(
                    "exception:{}",
                    header(m, ":exception-type").unwrap_or("unknown")
                )),
                data: payload,
            },
            "error" => Event {
                event: Some(format!(
                    "error:{}",
                    header(m, ":error-code").unwrap_or("unknown")
                )),
                data: header(m, ":error-message").unwrap_or("").to_string(),
            },
            _ => Event {
                event: header(m, ":event-type").map(str::to_string),
                data: payload,
            },
        }
    }
}

#[derive(Debug, Default)]
struct SseParser {
    buf: BytesMut,
    event: Option<String>,
    data: String,
    has_data: bool,
    /// The previous line ended with `\r`; a following `\n` belongs to it.
    after_cr: bool,
}

impl SseParser {
    fn feed(&mut self, bytes: &[u8], out: &mut Vec<Event>) {
        self.buf.extend_from_slice(bytes);
        loop {
            if self.after_cr && self.buf.first() == Some(&b'\n') {
                self.buf.advance(1);
            }
            self.after_cr = false;
            let Some(end) = memchr::memchr2(b'\n', b'\r', &self.buf) else {
                break;
            };
            let line = self.buf.split_to(end);
            let term = self.buf[0];
            self.buf.advance(1);
            if term == b'\r' {
                self.after_cr = true;
            }
            self.line(&line, out);
        }
    }

    fn has_partial(&self) -> bool {
        !self.buf.is_empty() || self.has_data
    }

    fn line(&mut self, line: &[u8], out: &mut Vec<Event>) {
        if line.is_empty() {
            if self.has_data {
                out.push(Event {
                    event: self.event.take(),
                    data: std::mem::take(&mut self.data),
                });
            }
            self.event = None;
            self.has_data = false;
            return;
        }
        if line[0] == b':' {
            return;
        }
        let (field, value) = match memchr::memchr(b':', line) {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        // A whole line: invalid only if the upstream sent invalid UTF-8.
        // (`from_utf8` checks ASCII a word at a time; the lossy path does
        // not.)
        let value = match std::str::from_utf8(value) {
            Ok(s) => std::borrow::Cow::Borrowed(s),
            Err(_) => String::from_utf8_lossy(value),
        };
        match field {
            b"data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(&value);
                self.has_data = true;
            }
            b"event" => self.event = Some(value.into_owned()),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(chunks: &[&[u8]]) -> Vec<Event> {
        let mut p = Parser::new();
        let mut out = Vec::new();
        for c in chunks {
            p.feed(c, &mut out);
        }
        out
    }

    #[test]
    fn basic_events() {
        let ev = parse_all(&[b"data: {\"a\":1}\n\ndata: [DONE]\n\n"]);
        assert_eq!(ev.len(), 2);
        assert_eq!(ev[0].data, "{\"a\":1}");
        assert_eq!(ev[1].data, "[DONE]");
    }

    #[test]
    fn split_anywhere_gives_same_events() {
        let whole = b"event: message_start\ndata: {\"x\":\"h\xc3\xa9llo\"}\r\n\r\n: comment\ndata: a\ndata: b\n\ndata:[DONE]\r\r";
        let expect = parse_all(&[whole]);
        assert_eq!(expect.len(), 3);
        assert_eq!(expect[0].event.as_deref(), Some("message_start"));
        assert_eq!(expect[0].data, "{\"x\":\"h\u{e9}llo\"}");
        assert_eq!(expect[1].data, "a\nb");
        assert_eq!(expect[2].data, "[DONE]");
        for i in 0..whole.len() {
            for j in i..whole.len() {
                let got = parse_all(&[&whole[..i], &whole[i..j], &whole[j..]]);
                assert_eq!(got, expect, "split at {i},{j}");
            }
        }
    }

    #[test]
    fn partial_event_is_reported() {
        let mut p = Parser::new();
        let mut out = Vec::new();
        p.feed(b"data: {\"a\"", &mut out);
        assert!(out.is_empty());
        assert!(p.has_partial());
        p.feed(b":1}\n\n", &mut out);
        assert_eq!(out.len(), 1);
        assert!(!p.has_partial());
    }
}
