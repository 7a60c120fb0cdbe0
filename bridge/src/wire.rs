//! What a bridge adds to Zenoh's own messages: the time a request may take
//! and the name its cancel would come by (a query's attachment), a cancel
//! (a put on the instance's cancel key), a hybus error kind (a reply
//! error's payload) and the lengths of the publications a topic's put
//! carries together (its attachment, [`encode_batch`]).
//!
//! Why cancels of our own: Zenoh 1.10 ends a query only on the querying
//! side (its `CancellationToken`, behind the `unstable` feature, stops
//! waiting there and tells nobody), so the exporting side would go on
//! with a call nobody waits for until its deadline.

use std::time::Duration;

use hybus::Error;

/// First bytes of a reply error made by a bridge.
const ERROR_MAGIC: &[u8; 6] = b"hybus1";

/// At most this many publications go in one batch (a batch listing more is refused).
pub const MAX_BATCH: usize = 64;

/// First byte of a batch's attachment.
const BATCH_MAGIC: u8 = b'B';

/// The attachment of a put that carries several publications of one
/// topic, their payloads one after the other: the magic, then each
/// payload's length (u32, little-endian). A put without an attachment
/// carries one publication.
pub fn encode_batch(lengths: impl ExactSizeIterator<Item = usize>) -> Vec<u8> {
    let mut b = Vec::with_capacity(1 + 4 * lengths.len());
    b.push(BATCH_MAGIC);
    for len in lengths {
        b.extend_from_slice(&(len as u32).to_le_bytes());
    }
    b
}

/// The payload lengths a batch's attachment lists, checked against the
/// put's payload length `total`; `None` if the attachment is not a batch
/// or does not add up (a peer's error: the put is dropped).
pub fn decode_batch(b: &[u8], total: usize) -> Option<Vec<usize>> {
    let lengths = b.strip_prefix(&[BATCH_MAGIC])?;
    if lengths.len() % 4 != 0 || lengths.len() / 4 > MAX_BATCH {
        return None;
    }
    let lengths: Vec<usize> =
        lengths.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as usize).collect();
    (lengths.iter().try_fold(0usize, |sum, &l| sum.checked_add(l)) == Some(total)).then_some(lengths)
}

/// The attachment of a query: the milliseconds the caller still waits,
/// then the query's cancel tag (see [`encode_cancel`]).
pub fn encode_query(t: Duration, tag: &[u8]) -> Vec<u8> {
    let mut b = (t.as_millis().min(u64::MAX as u128) as u64).to_le_bytes().to_vec();
    b.extend_from_slice(tag);
    b
}

/// The time a query's attachment gives, if it is one of ours.
pub fn decode_timeout(b: &[u8]) -> Option<Duration> {
    Some(Duration::from_millis(u64::from_le_bytes(b.get(..8)?.try_into().ok()?)))
}

/// The cancel tag a query's attachment carries (empty if none: a bridge
/// of an earlier version).
pub fn query_tag(b: &[u8]) -> &[u8] {
    b.get(8..).unwrap_or(&[])
}

/// The tag that names query `id` of bridge `importer` to the exporting
/// side; what the importer puts on the instance's cancel key to cancel it.
pub fn encode_cancel(id: u64, importer: &str) -> Vec<u8> {
    let mut b = id.to_le_bytes().to_vec();
    b.extend_from_slice(importer.as_bytes());
    b
}

/// A reply error's payload for `e`: the magic, a kind byte, the message.
pub fn encode_error(e: &Error) -> Vec<u8> {
    let (kind, message) = match e {
        Error::NoSuchService => (1, String::new()),
        Error::NoInstance => (2, String::new()),
        Error::DeadlineExceeded => (3, String::new()),
        Error::PeerGone => (4, String::new()),
        Error::PayloadTooLarge { len, max } => (5, format!("{len} {max}")),
        Error::OutOfPool { len } => (6, len.to_string()),
        Error::QueueFull => (7, String::new()),
        Error::Cancelled => (8, String::new()),
        Error::AccessDenied(m) => (9, m.clone()),
        Error::QuotaExceeded(m) => (10, m.clone()),
        Error::Service { code: 0, message } => (11, message.clone()),
        Error::Service { code, message } => (13, format!("{code} {message}")),
        Error::NotFound(m) => (12, m.clone()),
        other => (11, other.to_string()),
    };
    let mut v = Vec::with_capacity(ERROR_MAGIC.len() + 1 + message.len());
    v.extend_from_slice(ERROR_MAGIC);
    v.push(kind);
    v.extend_from_slice(message.as_bytes());
    v
}

/// The hybus error a reply error's payload stands for. Zenoh's own errors
/// (a query timing out) and strangers' are mapped by their text.
pub fn decode_error(b: &[u8]) -> Error {
    let Some(rest) = b.strip_prefix(ERROR_MAGIC.as_slice()) else {
        let text = String::from_utf8_lossy(b);
        return if text == "Timeout" { Error::DeadlineExceeded } else { service(format!("remote: {text}")) };
    };
    let Some((&kind, message)) = rest.split_first() else {
        return service("remote: an empty error".into());
    };
    let m = String::from_utf8_lossy(message).into_owned();
    match kind {
        1 => Error::NoSuchService,
        2 => Error::NoInstance,
        3 => Error::DeadlineExceeded,
        4 => Error::PeerGone,
        5 => {
            let mut it = m.split(' ').map(|n| n.parse().unwrap_or(0));
            Error::PayloadTooLarge { len: it.next().unwrap_or(0) as usize, max: it.next().unwrap_or(0) as u32 }
        }
        6 => Error::OutOfPool { len: m.parse().unwrap_or(0) },
        7 => Error::QueueFull,
        8 => Error::Cancelled,
        9 => Error::AccessDenied(m),
        10 => Error::QuotaExceeded(m),
        12 => Error::NotFound(m),
        13 => match m.split_once(' ').map(|(c, t)| (c.parse::<u32>(), t)) {
            Some((Ok(code), text)) => Error::Service { code, message: text.to_owned() },
            _ => service(m),
        },
        _ => service(m),
    }
}

/// A service error without a code of its own.
pub fn service(message: String) -> Error {
    Error::Service { code: 0, message }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_lists_its_lengths_and_a_wrong_sum_is_refused() {
        let a = encode_batch([3usize, 0, 8].into_iter());
        assert_eq!(decode_batch(&a, 11), Some(vec![3, 0, 8]));
        assert_eq!(decode_batch(&a, 12), None);
        assert_eq!(decode_batch(&a[..a.len() - 1], 11), None);
        assert_eq!(decode_batch(b"x", 0), None);
        let huge = encode_batch([u32::MAX as usize, u32::MAX as usize].into_iter());
        assert_eq!(decode_batch(&huge, 1), None);
    }

    #[test]
    fn kinds_survive_the_trip() {
        for e in [
            Error::NoSuchService,
            Error::NoInstance,
            Error::DeadlineExceeded,
            Error::PeerGone,
            Error::PayloadTooLarge { len: 5, max: 4 },
            Error::OutOfPool { len: 9 },
            Error::QueueFull,
            Error::Cancelled,
            Error::AccessDenied("policy".into()),
            Error::QuotaExceeded("q".into()),
            service("boom".into()),
            Error::Service { code: 404, message: "no key".into() },
            Error::NotFound("x".into()),
        ] {
            assert_eq!(decode_error(&encode_error(&e)), e);
        }
        assert_eq!(decode_error(b"Timeout"), Error::DeadlineExceeded);
        assert_eq!(decode_error(b"weird"), service("remote: weird".into()));
        let tag = encode_cancel(77, "host-a");
        let a = encode_query(Duration::from_millis(1234), &tag);
        assert_eq!((decode_timeout(&a), query_tag(&a)), (Some(Duration::from_millis(1234)), &tag[..]));
        // An earlier bridge's attachment: the timeout alone, no tag.
        let old = 1234u64.to_le_bytes();
        assert_eq!((decode_timeout(&old), query_tag(&old)), (Some(Duration::from_millis(1234)), &[][..]));
        assert_eq!(decode_timeout(b"x"), None);
    }
}
