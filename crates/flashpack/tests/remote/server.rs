//! A small HTTP/1.1 server for the remote tests, on 127.0.0.1 (a free port), serving one object
//! with `Range`, `HEAD` and `If-Match` the way nginx and S3 do, and injecting faults on demand.
//! It logs every request (method, path, headers, body bytes sent), and can answer like the
//! Hugging Face Hub: a 302 to a CDN path for every object.
#![allow(dead_code)] // each test binary uses part of it
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

/// What the server does wrong, and how many times.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    None,
    /// Sends the headers and half of the body of the next `n` GETs, then drops the connection.
    DropMidBody(usize),
    /// Answers the next `n` GETs with 503.
    Unavailable(usize),
    /// Every GET: a body shorter than its Content-Length, then the connection closes.
    Truncate,
    /// Every GET: 206 with a Content-Range one byte off the one asked for.
    WrongContentRange,
    /// After `n` GETs the object is replaced (new bytes, new ETag).
    ReplaceAfter(usize),
    /// Every request: 403.
    Forbidden,
    /// Every GET: the headers and a few bytes of the body, then nothing (the connection is
    /// held open for a minute).
    Stall,
    /// Every request (HEAD too): no answer at all, the connection held open for a minute.
    Silent,
    /// Every GET: the body at about this many bytes a second.
    Slow(usize),
    /// Every `n`-th GET reports the other version's validators (ETag, Last-Modified) with this
    /// version's bytes, as a load balancer in front of servers that disagree would.
    FlakyValidators(usize),
}

/// Which validators the server sends, and whether it honours conditional requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validators {
    /// An ETag: `Some(false)` strong (`"v1"`), `Some(true)` weak (`W/"v1"`), `None` none.
    pub etag: Option<bool>,
    /// A Last-Modified (one second later for each new version, unless `same_second`).
    pub last_modified: bool,
    /// A replacement keeps the original's Last-Modified second.
    pub same_second: bool,
    /// `If-Match` and `If-Unmodified-Since` are honoured (412); else ignored, as many static
    /// servers do.
    pub conditional: bool,
}

impl Validators {
    /// As nginx and S3: a strong ETag and a Last-Modified, conditions honoured.
    pub const STRONG: Validators = Validators {
        etag: Some(false),
        last_modified: true,
        same_second: false,
        conditional: true,
    };
    /// No ETag, only a Last-Modified (conditions honoured).
    pub const LAST_MODIFIED: Validators = Validators {
        etag: None,
        ..Validators::STRONG
    };
    /// No validator at all.
    pub const NONE: Validators = Validators {
        etag: None,
        last_modified: false,
        ..Validators::STRONG
    };
}

/// The `Last-Modified` of `version` (1, 2, ...) under `v`.
fn last_modified(v: &Validators, version: u32) -> String {
    let s = if v.same_second { 0 } else { version - 1 };
    format!("Sun, 29 Nov 2026 12:00:{s:02} GMT")
}

/// The `ETag` of `version` under `v`, if it sends one.
fn etag_of(v: &Validators, version: u32) -> Option<String> {
    v.etag.map(|weak| match weak {
        true => format!("W/\"v{version}\""),
        false => format!("\"v{version}\""),
    })
}

/// One request as the server saw it.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// (lower-case name, value)
    pub headers: Vec<(String, String)>,
    /// Body bytes sent back.
    pub body_bytes: usize,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

struct State {
    body: Vec<u8>,
    /// The object's version: 1, then 2 once replaced.
    version: u32,
    validators: Validators,
    /// Faults apply to GETs after this many.
    fault_after: usize,
    fault: Fault,
    gets: usize,
    /// Answer requests outside `/cdn/` with a 302 to `/cdn/<path>` (as the Hub does).
    redirect: bool,
    /// Where the 302 points: `http://host:port` of another server, or this one (`None`).
    redirect_to: Option<String>,
    /// Objects by path (without the leading `/`): other paths are 404. `None`: `body` everywhere.
    files: Option<std::collections::HashMap<String, Vec<u8>>>,
    log: Vec<Request>,
}

pub struct Server {
    pub port: u16,
    state: Arc<Mutex<State>>,
}

impl Server {
    /// Serves `body` at every path, with `fault`.
    pub fn start(body: Vec<u8>, fault: Fault) -> Server {
        Self::start_with(body, fault, false)
    }

    /// Serves `body` at `/cdn/<any path>`, every other path answered with a 302 to it.
    pub fn start_redirecting(body: Vec<u8>) -> Server {
        Self::start_with(body, Fault::None, true)
    }

    /// Answers every request with a 302 to `{target}/cdn/<path>` (another server: the Hub's
    /// CDN is another host).
    pub fn start_redirecting_to(target: &str) -> Server {
        let server = Self::start_with(Vec::new(), Fault::None, true);
        server.state.lock().unwrap().redirect_to = Some(target.to_string());
        server
    }

    /// Serves each of `files` (path without the leading `/`, bytes) at its path; any other
    /// path is 404.
    pub fn start_files(files: Vec<(String, Vec<u8>)>) -> Server {
        let server = Self::start_with(Vec::new(), Fault::None, false);
        server.state.lock().unwrap().files = Some(files.into_iter().collect());
        server
    }

    fn start_with(body: Vec<u8>, fault: Fault, redirect: bool) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let port = listener.local_addr().expect("local addr").port();
        let state = Arc::new(Mutex::new(State {
            body,
            version: 1,
            validators: Validators::STRONG,
            fault_after: 0,
            fault,
            gets: 0,
            redirect,
            redirect_to: None,
            files: None,
            log: Vec::new(),
        }));
        let s = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let s = s.clone();
                std::thread::spawn(move || serve(conn, &s));
            }
        });
        Server { port, state }
    }

    /// Sends `validators` (set before the first request).
    pub fn with_validators(self, validators: Validators) -> Server {
        self.state.lock().unwrap().validators = validators;
        self
    }

    /// The fault starts after `n` GETs (set before the first request).
    pub fn with_fault_after(self, n: usize) -> Server {
        self.state.lock().unwrap().fault_after = n;
        self
    }

    pub fn url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/{name}", self.port)
    }

    /// GET requests answered so far.
    pub fn gets(&self) -> usize {
        self.state.lock().unwrap().gets
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<Request> {
        self.state.lock().unwrap().log.clone()
    }

    /// Body bytes sent so far.
    pub fn bytes_sent(&self) -> usize {
        self.requests().iter().map(|r| r.body_bytes).sum()
    }
}

fn serve(conn: TcpStream, state: &Mutex<State>) {
    let mut reader = BufReader::new(conn.try_clone().expect("clone"));
    let mut conn = conn;
    // One request per connection (every answer says `Connection: close`).
    let mut head = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        if line == "\r\n" {
            break;
        }
        head.push(line.trim_end().to_string());
    }
    let Some(first) = head.first() else { return };
    let method = first.split(' ').next().unwrap_or("").to_string();
    let path = first.split(' ').nth(1).unwrap_or("").to_string();
    let header = |name: &str| {
        head.iter().skip(1).find_map(|h| {
            let (k, v) = h.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    };
    let (range, if_match) = (header("range"), header("if-match"));
    let if_unmodified = header("if-unmodified-since");
    let mut st = state.lock().unwrap();
    let headers = head
        .iter()
        .skip(1)
        .filter_map(|h| {
            let (k, v) = h.split_once(':')?;
            Some((k.trim().to_ascii_lowercase(), v.trim().to_string()))
        })
        .collect();
    st.log.push(Request {
        method: method.clone(),
        path: path.clone(),
        headers,
        body_bytes: 0,
    });
    let entry = st.log.len() - 1;
    if st.redirect && !path.starts_with("/cdn/") {
        let to = st.redirect_to.clone().unwrap_or_default();
        let h = [
            format!("Location: {to}/cdn{path}"),
            "Content-Length: 0".into(),
        ];
        return reply(&mut conn, "302 Found", &h, b"");
    }
    if let Some(files) = &st.files {
        match files.get(path.trim_start_matches('/')) {
            Some(b) => st.body = b.clone(),
            None => {
                let h = ["Content-Length: 0".to_string()];
                return reply(&mut conn, "404 Not Found", &h, b"");
            }
        }
    }
    if method == "GET" {
        st.gets += 1;
    }
    // A GET after the first `fault_after` ones has the fault; a HEAD only when it starts at once.
    let faulty = match method.as_str() {
        "GET" => st.gets > st.fault_after,
        _ => st.fault_after == 0,
    };
    if faulty && st.fault == Fault::Silent {
        drop(st);
        std::thread::sleep(std::time::Duration::from_secs(60));
        return;
    }
    let v = st.validators;
    let len = st.body.len() as u64;
    let validators = |version: u32| {
        let mut h = Vec::new();
        if let Some(e) = etag_of(&v, version) {
            h.push(format!("ETag: {e}"));
        }
        if v.last_modified {
            h.push(format!("Last-Modified: {}", last_modified(&v, version)));
        }
        h
    };
    if st.fault == Fault::Forbidden {
        return reply(
            &mut conn,
            "403 Forbidden",
            &["Content-Length: 6".into()],
            b"denied",
        );
    }
    if method == "HEAD" {
        let mut h = vec![
            format!("Content-Length: {len}"),
            "Accept-Ranges: bytes".into(),
        ];
        h.extend(validators(st.version));
        return reply(&mut conn, "200 OK", &h, b"");
    }
    if method != "GET" {
        return reply(
            &mut conn,
            "405 Method Not Allowed",
            &["Content-Length: 0".into()],
            b"",
        );
    }
    match st.fault {
        _ if !faulty => {}
        Fault::Unavailable(n) if n > 0 => {
            st.fault = Fault::Unavailable(n - 1);
            return reply(
                &mut conn,
                "503 Service Unavailable",
                &["Content-Length: 4".into()],
                b"busy",
            );
        }
        Fault::ReplaceAfter(n) if st.gets > n => {
            st.body.iter_mut().for_each(|b| *b = b.wrapping_add(1));
            st.version = 2;
            st.fault = Fault::None;
        }
        _ => {}
    }
    // If-Match compares strongly: a weak ETag never matches (RFC 9110, 13.1.1).
    let etag = etag_of(&v, st.version).filter(|e| !e.starts_with("W/"));
    let mismatch = if_match
        .as_deref()
        .is_some_and(|m| m != "*" && Some(m) != etag.as_deref());
    // If-Unmodified-Since: one of the dates this server sent, older than the current one.
    let newer = if_unmodified.as_deref().is_some_and(|d| {
        (1..st.version).any(|old| last_modified(&v, old) == d) && last_modified(&v, st.version) != d
    });
    if v.conditional && (mismatch || newer) {
        return reply(
            &mut conn,
            "412 Precondition Failed",
            &["Content-Length: 0".into()],
            b"",
        );
    }
    let (start, end) = match range.as_deref().and_then(parse_range) {
        Some((s, e)) => (s, e.min(len - 1)),
        None => (0, len - 1),
    };
    let body = st.body[start as usize..=end as usize].to_vec();
    let fault = if faulty { st.fault } else { Fault::None };
    let shown_version = match fault {
        Fault::FlakyValidators(n) if st.gets % n == 0 => 3 - st.version,
        _ => st.version,
    };
    let sent = match fault {
        Fault::DropMidBody(n) if n > 0 => body.len() / 2,
        Fault::Truncate => body.len() / 2,
        Fault::Stall => body.len().min(16),
        _ => body.len(),
    };
    st.log[entry].body_bytes = sent;
    if let Fault::DropMidBody(n) = fault {
        if n > 0 {
            st.fault = Fault::DropMidBody(n - 1);
        }
    }
    drop(st);
    let shown = if fault == Fault::WrongContentRange {
        (start + 1, end + 1)
    } else {
        (start, end)
    };
    let mut h = vec![
        format!("Content-Length: {}", body.len()),
        format!("Content-Range: bytes {}-{}/{len}", shown.0, shown.1),
    ];
    h.extend(validators(shown_version));
    match fault {
        Fault::DropMidBody(n) if n > 0 => {
            reply(
                &mut conn,
                "206 Partial Content",
                &h,
                &body[..body.len() / 2],
            );
        }
        Fault::Truncate => reply(
            &mut conn,
            "206 Partial Content",
            &h,
            &body[..body.len() / 2],
        ),
        Fault::Stall => {
            reply(&mut conn, "206 Partial Content", &h, &body[..sent]);
            let _ = conn.flush();
            std::thread::sleep(std::time::Duration::from_secs(60));
        }
        Fault::Slow(rate) => {
            reply(&mut conn, "206 Partial Content", &h, b"");
            // In tenths of a second: `rate / 10` bytes each.
            for piece in body.chunks((rate / 10).max(1)) {
                if conn.write_all(piece).and_then(|()| conn.flush()).is_err() {
                    return; // the client went away
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
        _ => reply(&mut conn, "206 Partial Content", &h, &body),
    }
    // The connection closes here, mid-body for the faults that cut one short.
    let _ = conn.flush();
}

fn reply(conn: &mut TcpStream, status: &str, headers: &[String], body: &[u8]) {
    let mut out = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
    for h in headers {
        out.push_str(h);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    let _ = conn.write_all(out.as_bytes());
    let _ = conn.write_all(body);
}

fn parse_range(v: &str) -> Option<(u64, u64)> {
    let (s, e) = v.strip_prefix("bytes=")?.split_once('-')?;
    Some((s.parse().ok()?, e.parse().ok()?))
}
