//! An incremental Server-Sent Events parser (WHATWG rules: `\n`, `\r\n` or
//! `\r` line ends, multi-line `data`, comments, a blank line dispatches).
//! Bytes may arrive split anywhere, even inside a UTF-8 sequence.

use bytes::{Buf, BytesMut};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Event {
    /// The `event:` field, if any.
    pub event: Option<String>,
    pub data: String,
}

#[derive(Debug, Default)]
pub struct Parser {
    buf: BytesMut,
    event: Option<String>,
    data: String,
    has_data: bool,
    /// The previous line ended with `\r`; a following `\n` belongs to it.
    after_cr: bool,
}

impl Parser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds bytes; appends every completed event to `out`.
    pub fn feed(&mut self, bytes: &[u8], out: &mut Vec<Event>) {
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

    /// True if bytes of an unfinished event are buffered.
    pub fn has_partial(&self) -> bool {
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
