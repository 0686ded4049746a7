//! Form fields of the HMAC endpoints, as Go's `Request.FormValue` finds
//! them: an urlencoded or multipart body first, then the URL query.

use bytes::Bytes;
use hyper::header::{HeaderMap, CONTENT_TYPE};
use percent_encoding::percent_decode;

/// Why a form could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FormError {
    #[error("malformed multipart body: {0}")]
    Multipart(String),
}

/// Field values by name, as raw bytes: content to sign may be any bytes.
#[derive(Debug, Default)]
pub struct Form {
    fields: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Form {
    /// Parses the body (by its content type) and appends the query, so a
    /// body value wins over a query value of the same name.
    pub async fn parse(
        headers: &HeaderMap,
        body: Bytes,
        query: Option<&str>,
    ) -> Result<Self, FormError> {
        let mut form = Form::default();
        let content_type = headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let mime = content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if mime == "application/x-www-form-urlencoded" {
            form.fields.extend(urlencoded(&body));
        } else if mime == "multipart/form-data" {
            let boundary = multer::parse_boundary(content_type)
                .map_err(|e| FormError::Multipart(e.to_string()))?;
            let stream = futures::stream::once(async move { Ok::<Bytes, std::io::Error>(body) });
            let mut multipart = multer::Multipart::new(stream, boundary);
            while let Some(field) = multipart
                .next_field()
                .await
                .map_err(|e| FormError::Multipart(e.to_string()))?
            {
                let name = field.name().unwrap_or("").as_bytes().to_vec();
                let value = field
                    .bytes()
                    .await
                    .map_err(|e| FormError::Multipart(e.to_string()))?;
                form.fields.push((name, value.to_vec()));
            }
        }
        if let Some(q) = query {
            form.fields.extend(urlencoded(q.as_bytes()));
        }
        Ok(form)
    }

    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.fields
            .iter()
            .find(|(n, _)| n == name.as_bytes())
            .map(|(_, v)| v.as_slice())
    }
}

/// `application/x-www-form-urlencoded` to byte pairs. Not
/// `form_urlencoded::parse`: it decodes to UTF-8 lossily, and a signature
/// must cover the exact bytes sent.
fn urlencoded(input: &[u8]) -> impl Iterator<Item = (Vec<u8>, Vec<u8>)> + '_ {
    input
        .split(|b| *b == b'&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let mut parts = pair.splitn(2, |b| *b == b'=');
            let name = decode(parts.next().unwrap_or(b""));
            let value = decode(parts.next().unwrap_or(b""));
            (name, value)
        })
}

fn decode(part: &[u8]) -> Vec<u8> {
    let spaced: Vec<u8> = part
        .iter()
        .map(|b| if *b == b'+' { b' ' } else { *b })
        .collect();
    percent_decode(&spaced).collect()
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
