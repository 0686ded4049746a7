//! Form fields of the HMAC endpoints, as Go's `Request.FormValue` finds
//! them: an urlencoded or multipart body first, then the URL query.

use std::ops::Range;

use bytes::Bytes;
use hyper::header::{HeaderMap, CONTENT_TYPE};

/// Why a form could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FormError {
    #[error("malformed multipart body: {0}")]
    Multipart(String),
}

/// Field values by name, as raw bytes: content to sign may be any bytes.
/// Every decoded name and value is kept in one buffer (a form costs two
/// allocations, not two per field).
#[derive(Debug, Default)]
pub struct Form {
    text: Vec<u8>,
    /// (name, value), as ranges of `text`, in order.
    fields: Vec<(Range<usize>, Range<usize>)>,
}

impl Form {
    /// Parses the body (by its content type) and appends the query, so a
    /// body value wins over a query value of the same name.
    pub async fn parse(
        headers: &HeaderMap,
        body: Bytes,
        query: Option<&str>,
    ) -> Result<Self, FormError> {
        let content_type = headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let mime = content_type.split(';').next().unwrap_or("").trim();
        let query = query.unwrap_or("");
        let mut form = Form::default();
        if mime.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
            form.text.reserve(body.len() + query.len());
            form.urlencoded(&body);
        } else if mime.eq_ignore_ascii_case("multipart/form-data") {
            // Boxed: multer's futures are large, and every request's
            // future would otherwise carry their size.
            Box::pin(form.multipart(content_type, body)).await?;
        }
        form.urlencoded(query.as_bytes());
        Ok(form)
    }

    async fn multipart(&mut self, content_type: &str, body: Bytes) -> Result<(), FormError> {
        let boundary = multer::parse_boundary(content_type)
            .map_err(|e| FormError::Multipart(e.to_string()))?;
        let stream = futures::stream::once(async move { Ok::<Bytes, std::io::Error>(body) });
        let mut multipart = multer::Multipart::new(stream, boundary);
        while let Some(field) = multipart
            .next_field()
            .await
            .map_err(|e| FormError::Multipart(e.to_string()))?
        {
            let name = self.push(field.name().unwrap_or("").as_bytes());
            let value = field
                .bytes()
                .await
                .map_err(|e| FormError::Multipart(e.to_string()))?;
            let value = self.push(&value);
            self.fields.push((name, value));
        }
        Ok(())
    }

    fn push(&mut self, raw: &[u8]) -> Range<usize> {
        let start = self.text.len();
        self.text.extend_from_slice(raw);
        start..self.text.len()
    }

    /// Appends the pairs of `application/x-www-form-urlencoded` input, as
    /// exact bytes. Not `form_urlencoded::parse`: it decodes to UTF-8
    /// lossily, and a signature must cover the exact bytes sent.
    fn urlencoded(&mut self, input: &[u8]) {
        for pair in input.split(|b| *b == b'&').filter(|p| !p.is_empty()) {
            let mut parts = pair.splitn(2, |b| *b == b'=');
            let name = self.decode(parts.next().unwrap_or(b""));
            let value = self.decode(parts.next().unwrap_or(b""));
            self.fields.push((name, value));
        }
    }

    /// `+` is a space and `%XX` a byte; a `%` without two hex digits
    /// stands for itself (as `percent_decode` reads it; Go's `ParseQuery`
    /// drops such a pair instead). Runs of plain bytes are copied whole.
    fn decode(&mut self, mut part: &[u8]) -> Range<usize> {
        let start = self.text.len();
        while let Some(at) = part.iter().position(|b| matches!(b, b'+' | b'%')) {
            self.text.extend_from_slice(&part[..at]);
            let (byte, used) = match (part[at], hex(part.get(at + 1)), hex(part.get(at + 2))) {
                (b'+', ..) => (b' ', 1),
                (_, Some(high), Some(low)) => (high << 4 | low, 3),
                _ => (b'%', 1),
            };
            self.text.push(byte);
            part = &part[at + used..];
        }
        self.text.extend_from_slice(part);
        start..self.text.len()
    }

    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.fields
            .iter()
            .find(|(n, _)| &self.text[n.clone()] == name.as_bytes())
            .map(|(_, v)| &self.text[v.clone()])
    }
}

fn hex(digit: Option<&u8>) -> Option<u8> {
    (*digit? as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn headers(ct: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
        h
    }

    #[tokio::test]
    async fn body_wins_over_query_and_bytes_are_exact() {
        let f = Form::parse(
            &headers("application/x-www-form-urlencoded"),
            Bytes::from_static(b"content=a+b%26c%FF&x"),
            Some("content=query&uuid=u"),
        )
        .await
        .unwrap();
        assert_eq!(f.get("content"), Some(&b"a b&c\xff"[..]));
        assert_eq!(f.get("uuid"), Some(&b"u"[..]));
        assert_eq!(f.get("x"), Some(&b""[..]));
        assert_eq!(f.get("missing"), None);
    }

    #[tokio::test]
    async fn percent_signs_without_two_hex_digits_stand_for_themselves() {
        let f = Form::parse(
            &headers("Application/X-WWW-Form-Urlencoded; charset=utf-8"),
            Bytes::from_static(b"a=%+1&b=%2&c=%zz%41%4a%&d=100%25+%2B&%63=x"),
            None,
        )
        .await
        .unwrap();
        assert_eq!(f.get("a"), Some(&b"% 1"[..]));
        assert_eq!(f.get("b"), Some(&b"%2"[..]));
        assert_eq!(f.get("c"), Some(&b"%zzAJ%"[..]), "the first c, not %63");
        assert_eq!(f.get("d"), Some(&b"100% +"[..]));
    }

    #[tokio::test]
    async fn query_only_without_form_content_type() {
        let f = Form::parse(
            &HeaderMap::new(),
            Bytes::from_static(b"content=body"),
            Some("content=q"),
        )
        .await
        .unwrap();
        assert_eq!(f.get("content"), Some(&b"q"[..]));
    }

    #[tokio::test]
    async fn multipart() {
        let body =
            "--XX\r\nContent-Disposition: form-data; name=\"content\"\r\n\r\nhello\r\n--XX--\r\n";
        let f = Form::parse(
            &headers("multipart/form-data; boundary=XX"),
            Bytes::from(body),
            None,
        )
        .await
        .unwrap();
        assert_eq!(f.get("content"), Some(&b"hello"[..]));
    }
}
