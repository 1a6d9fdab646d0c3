//! Splits a byte stream into lines (newline-delimited JSON, as Ollama streams).

use bytes::{Buf, Bytes, BytesMut};
use futures_util::{Stream, StreamExt};

/// A line longer than this is a broken or hostile upstream, not a chunk.
pub const MAX_LINE_BYTES: usize = 16 * 1024 * 1024;

#[derive(Debug, PartialEq, Eq)]
pub enum LineError<E> {
    Source(E),
    TooLong,
}

/// Yields each complete line without its `\n` (and `\r`); blank lines are skipped. A last
/// line without a newline is yielded when the source ends.
pub fn lines<S, E>(source: S) -> impl Stream<Item = Result<Bytes, LineError<E>>>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
{
    futures_util::stream::unfold(
        (source, BytesMut::new(), false),
        |(mut source, mut buffer, mut ended)| async move {
            loop {
                if let Some(pos) = buffer.iter().position(|&b| b == b'\n') {
                    let mut line = buffer.split_to(pos + 1).freeze();
                    line.truncate(pos);
                    if line.last() == Some(&b'\r') {
                        line.truncate(line.len() - 1);
                    }
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    return Some((Ok(line), (source, buffer, ended)));
                }
                if ended {
                    if buffer.iter().all(u8::is_ascii_whitespace) {
                        return None;
                    }
                    let line = buffer.split().freeze();
                    return Some((Ok(line), (source, buffer, ended)));
                }
                if buffer.len() > MAX_LINE_BYTES {
                    buffer.advance(buffer.len());
                    ended = true;
                    return Some((Err(LineError::TooLong), (source, buffer, ended)));
                }
                match source.next().await {
                    Some(Ok(bytes)) => buffer.extend_from_slice(&bytes),
                    Some(Err(err)) => {
                        ended = true;
                        buffer.clear();
                        return Some((Err(LineError::Source(err)), (source, buffer, ended)));
                    }
                    None => ended = true,
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::stream;

    async fn collect(parts: Vec<&'static str>) -> Vec<String> {
        let source = stream::iter(parts.into_iter().map(|p| Ok::<_, ()>(Bytes::from(p))));
        lines(source)
            .map(|l| String::from_utf8(l.unwrap().to_vec()).unwrap())
            .collect()
            .await
    }

    #[tokio::test]
    async fn lines_are_split_across_and_within_chunks() {
        let got = collect(vec!["{\"a\":1}\n{\"b\"", ":2}\r\n\n{\"c\":3}\n{\"d\":4}"]).await;
        assert_eq!(
            got,
            vec!["{\"a\":1}", "{\"b\":2}", "{\"c\":3}", "{\"d\":4}"]
        );
    }

    #[tokio::test]
    async fn a_source_error_is_reported_once_and_ends_the_stream() {
        let source = stream::iter(vec![
            Ok(Bytes::from("x\n")),
            Err("boom"),
            Ok(Bytes::from("y\n")),
        ]);
        let got: Vec<_> = lines(source).collect().await;
        assert_eq!(
            got,
            vec![Ok(Bytes::from("x")), Err(LineError::Source("boom"))]
        );
    }
}
