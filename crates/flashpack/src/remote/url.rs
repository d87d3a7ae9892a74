//! Recognising and splitting the URLs the engine reads: `http://`, `https://`, `s3://bucket/key`.
use super::RemoteError;

/// Which kind of store a URL names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// `http://`.
    Http,
    /// `https://`.
    Https,
    /// `s3://`.
    S3,
}

/// A parsed remote URL: the store (`base`: `scheme://host[:port]`, or the S3 bucket) and the
/// object's key in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteUrl {
    /// The URL as given (named in every error).
    pub url: String,
    /// Its scheme.
    pub scheme: Scheme,
    /// `http(s)://host[:port]` for HTTP, the bucket name for S3.
    pub base: String,
    /// The object's path: percent-encoded as in the URL for HTTP, the raw key for S3.
    pub key: String,
}

/// True when `s` names a remote object rather than a local path.
pub fn is_remote(s: &str) -> bool {
    scheme_of(s).is_some()
}

fn scheme_of(s: &str) -> Option<(Scheme, &str)> {
    let (scheme, rest) = s.split_once("://")?;
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        "s3" => Scheme::S3,
        _ => return None,
    };
    Some((scheme, rest))
}

impl RemoteUrl {
    /// Splits `url`; anything but `http(s)://host/path` or `s3://bucket/key` is
    /// [`RemoteError::BadUrl`].
    pub fn parse(url: &str) -> Result<RemoteUrl, RemoteError> {
        let bad = |why: &str| RemoteError::BadUrl(why.to_string());
        let (scheme, rest) =
            scheme_of(url).ok_or_else(|| bad("expected http://, https:// or s3://"))?;
        let rest = rest.split(['?', '#']).next().unwrap_or("");
        if url.len() != url.split(['?', '#']).next().unwrap_or("").len() {
            return Err(bad("query strings and fragments are not supported"));
        }
        let (authority, key) = rest.split_once('/').unwrap_or((rest, ""));
        if authority.is_empty() {
            return Err(bad(match scheme {
                Scheme::S3 => "no bucket name",
                _ => "no host",
            }));
        }
        if key.is_empty() || key.ends_with('/') {
            return Err(bad("no object key (the URL must name a file)"));
        }
        let base = match scheme {
            Scheme::Http => format!("http://{authority}"),
            Scheme::Https => format!("https://{authority}"),
            Scheme::S3 => authority.to_string(),
        };
        Ok(RemoteUrl {
            url: url.to_string(),
            scheme,
            base,
            key: key.to_string(),
        })
    }

    /// The URL of `name` in the same folder as this object (a shard beside its index).
    pub fn sibling(&self, name: &str) -> Result<RemoteUrl, RemoteError> {
        let dir = match self.url.rfind('/') {
            Some(i) => &self.url[..=i],
            None => return Err(RemoteError::BadUrl("no folder".into())),
        };
        RemoteUrl::parse(&format!("{dir}{name}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_store_and_key() {
        let u = RemoteUrl::parse("https://example.com:8443/models/a%20b.safetensors").unwrap();
        assert_eq!(u.scheme, Scheme::Https);
        assert_eq!(u.base, "https://example.com:8443");
        assert_eq!(u.key, "models/a%20b.safetensors");
        let s = RemoteUrl::parse("s3://bucket/dir/m.flashpack").unwrap();
        assert_eq!(
            (s.scheme, s.base.as_str(), s.key.as_str()),
            (Scheme::S3, "bucket", "dir/m.flashpack")
        );
        assert_eq!(
            s.sibling("shard-1.safetensors").unwrap().url,
            "s3://bucket/dir/shard-1.safetensors"
        );
        assert!(is_remote("HTTP://h/x") && !is_remote("/tmp/x") && !is_remote("file:///x"));
    }

    #[test]
    fn unusable_urls_say_why() {
        for (url, why) in [
            ("s3:///key", "no bucket"),
            ("http://host", "no object key"),
            ("http://host/dir/", "no object key"),
            ("https:///x", "no host"),
            ("http://h/x?sig=1", "query"),
            ("ftp://h/x", "expected http"),
        ] {
            let e = RemoteUrl::parse(url).unwrap_err().to_string();
            assert!(e.contains(why), "{url}: {e}");
        }
    }
}
