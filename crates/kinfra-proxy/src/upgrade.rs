//! Keeps an HTTP/1 upgrade (WebSocket) handshake's request body open until the backend's
//! `101`, so pingora cannot mistake the end of that empty body for the end of the tunnel.
//!
//! pingora 0.9 (cloudflare/pingora#946, fix proposed in #947, not released) runs the two
//! directions of a proxied request as two halves. A `GET` upgrade request has an empty body,
//! so the client-side half passes on "end of body" at once. When the upstream half reads the
//! backend's `101` before it takes that "end of body" (a fast backend, a busy machine: the
//! order is a coin toss), it counts it as the end of the upgraded stream and closes the
//! tunnel the instant it opened: the client sees the `101`, then EOF.
//!
//! The way around it here: an upgrade request without a body is marked as chunked towards
//! pingora's reader before pingora first looks at its body. The reader then waits for body
//! bytes that never come instead of ending; the `101` turns it into the pass-through reader
//! of the upgraded stream as usual. Towards the backend the request keeps an explicit empty
//! body (`Content-Length: 0`), never the invented chunked framing. A backend that refuses the
//! upgrade answers as usual; the client's connection is then closed shortly after that answer
//! (its body reader would otherwise wait for chunks forever).

use http::header;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use std::time::Duration;

/// How long the connection of a refused upgrade waits for more from the client once the
/// answer was sent.
const REFUSED_GRACE: Duration = Duration::from_millis(100);

/// Marks a bodiless HTTP/1 upgrade request as chunked for pingora's request-body reader, so
/// its end is not announced before the `101`. Returns true when it did (then
/// [`frame_upstream`] and [`answered`] apply). Must run before anything asks pingora about
/// the request body (`is_body_empty`, `is_body_done`, reading it): the reader is set up from
/// the headers at that first question.
pub(crate) fn hold_body_open(session: &mut Session) -> bool {
    if !session.is_upgrade_req() {
        return false;
    }
    let req = session.req_header_mut();
    if req.headers.contains_key(header::CONTENT_LENGTH)
        || req.headers.contains_key(header::TRANSFER_ENCODING)
    {
        return false;
    }
    req.insert_header(header::TRANSFER_ENCODING, "chunked")
        .is_ok()
}

/// The request towards the backend: an explicit empty body, not the chunked framing
/// [`hold_body_open`] showed pingora's reader.
pub(crate) fn frame_upstream(upstream: &mut RequestHeader) -> pingora::Result<()> {
    upstream.remove_header(&header::TRANSFER_ENCODING);
    upstream.insert_header(header::CONTENT_LENGTH, "0")?;
    Ok(())
}

/// The backend answered the handshake: when it refused the upgrade, the client's connection
/// is not kept waiting for the body that was held open (it closes shortly after the answer).
pub(crate) fn answered(session: &mut Session, resp: &ResponseHeader) {
    if resp.status != http::StatusCode::SWITCHING_PROTOCOLS {
        session.set_keepalive(None);
        session.set_read_timeout(Some(REFUSED_GRACE));
    }
}
