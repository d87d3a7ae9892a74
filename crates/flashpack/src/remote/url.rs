//! Recognising and splitting the URLs the engine reads: `http://`, `https://`, `s3://bucket/key`
//! and `hf://org/repo[@revision]/path/in/repo` (a file of a Hugging Face Hub model repository,
//! read from `{HF_ENDPOINT or https://huggingface.co}/org/repo/resolve/<revision>/path`,
//! revision `main` unless given; `HF_TOKEN` or `HUGGING_FACE_HUB_TOKEN`, when set, is sent to
//! the Hub as a bearer token).
//!
//! ```
//! use flashpack::remote::is_remote;
//! assert!(is_remote("hf://org/repo@v1.0/unet/model.safetensors"));
//! assert!(is_remote("s3://bucket/model.flashpack"));
//! assert!(!is_remote("unet/model.safetensors"));
//! ```
// Without the `remote` feature only recognition (`is_remote`, `url_of`) is used: the parser
// serves the client, which that build leaves out.
#![cfg_attr(not(feature = "remote"), allow(dead_code))]

use super::RemoteError;

/// The Hub's address when `HF_ENDPOINT` is not set.
pub const DEFAULT_HF_ENDPOINT: &str = "https://huggingface.co";

/// Which kind of store a URL names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// `http://`.
    Http,
    /// `https://`.
    Https,
    /// `s3://`.
    S3,
    /// `hf://`: a file of a Hugging Face Hub repository, read over HTTP(S) from the Hub.
    Hf,
}

/// A parsed remote URL: the store (`base`: `scheme://host[:port]`, or the S3 bucket) and the
/// object's key in it. An `hf://` URL's store is the Hub's address and its key the file's
/// `resolve` path there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteUrl {
    /// The URL as given (named in every error).
    pub url: String,
    /// Its scheme.
    pub scheme: Scheme,
    /// `http(s)://host[:port]` for HTTP and the Hub, the bucket name for S3.
    pub base: String,
    /// The object's path: percent-encoded as in the URL for HTTP (and the Hub), the raw key
    /// for S3.
    pub key: String,
}

/// True when `s` names a remote object rather than a local path.
pub fn is_remote(s: &str) -> bool {
    scheme_of(s).is_some()
}

/// The URL that `location` spells, if it is one: where every open decides, once, between a
/// local file and a remote object.
pub(crate) fn url_of(location: &std::path::Path) -> Option<&str> {
    location.to_str().filter(|s| is_remote(s))
}

fn scheme_of(s: &str) -> Option<(Scheme, &str)> {
    let (scheme, rest) = s.split_once("://")?;
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        "s3" => Scheme::S3,
        "hf" => Scheme::Hf,
        _ => return None,
    };
    Some((scheme, rest))
}

impl RemoteUrl {
    /// Splits `url`; anything but `http(s)://host/path`, `s3://bucket/key` or
    /// `hf://org/repo[@revision]/path` is [`RemoteError::BadUrl`]. An `hf://` URL is resolved
    /// against `HF_ENDPOINT` (default [`DEFAULT_HF_ENDPOINT`]).
    pub fn parse(url: &str) -> Result<RemoteUrl, RemoteError> {
        let endpoint = std::env::var("HF_ENDPOINT")
            .ok()
            .filter(|e| !e.trim().is_empty());
        Self::parse_hub(url, endpoint.as_deref().unwrap_or(DEFAULT_HF_ENDPOINT))
    }

    /// As [`parse`](Self::parse), resolving an `hf://` URL against the Hub at `endpoint`
    /// (`https://host[:port][/prefix]`).
    pub fn parse_hub(url: &str, endpoint: &str) -> Result<RemoteUrl, RemoteError> {
        let bad = |why: &str| RemoteError::BadUrl(why.to_string());
        let (scheme, rest) =
            scheme_of(url).ok_or_else(|| bad("expected http://, https://, s3:// or hf://"))?;
        let rest = rest.split(['?', '#']).next().unwrap_or("");
        if url.len() != url.split(['?', '#']).next().unwrap_or("").len() {
            return Err(bad("query strings and fragments are not supported"));
        }
        if scheme == Scheme::Hf {
            return hub_url(url, rest, endpoint);
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
            Scheme::Https | Scheme::Hf => format!("https://{authority}"),
            Scheme::S3 => authority.to_string(),
        };
        Ok(RemoteUrl {
            url: url.to_string(),
            scheme,
            base,
            key: key.to_string(),
        })
    }

    /// The URL of `name` in the same folder as this object (a shard beside its index),
    /// resolved as this one was.
    pub fn sibling(&self, name: &str) -> Result<RemoteUrl, RemoteError> {
        let folder = |s: &str| s.rfind('/').map_or("", |i| &s[..=i]).to_string();
        let (dir, key_dir) = (folder(&self.url), folder(&self.key));
        if name.is_empty() || name.ends_with('/') {
            return Err(RemoteError::BadUrl(format!("'{name}' is not a file name")));
        }
        Ok(RemoteUrl {
            url: format!("{dir}{name}"),
            scheme: self.scheme,
            base: self.base.clone(),
            key: format!("{key_dir}{name}"),
        })
    }

    /// The address read: `base/key` for HTTP and the Hub (an `hf://` URL's resolved form),
    /// the URL itself for S3 (what the tests check a parse against).
    #[cfg(test)]
    pub fn http_url(&self) -> String {
        match self.scheme {
            Scheme::S3 => self.url.clone(),
            _ => format!("{}/{}", self.base, self.key),
        }
    }

    /// True when the store is reached over plain `http://`.
    pub fn is_plain_http(&self) -> bool {
        self.scheme != Scheme::S3 && self.base.starts_with("http://")
    }
}

/// `hf://org/repo[@revision]/path` (`rest` is what follows `hf://`) as a file of the Hub at
/// `endpoint`: base `scheme://host[:port]`, key `[prefix/]org/repo/resolve/<revision>/path`.
fn hub_url(url: &str, rest: &str, endpoint: &str) -> Result<RemoteUrl, RemoteError> {
    let bad = |why: String| RemoteError::BadUrl(why);
    let mut parts = rest.splitn(3, '/');
    let (org, repo, path) = match (parts.next(), parts.next(), parts.next()) {
        (Some(o), Some(r), Some(p)) if !o.is_empty() && !r.is_empty() && !p.is_empty() => (o, r, p),
        _ => {
            return Err(bad(
                "expected hf://org/repo[@revision]/path/in/repo (a file of a model repository)"
                    .into(),
            ))
        }
    };
    let (repo, revision) = match repo.split_once('@') {
        Some((r, rev)) if !r.is_empty() && !rev.is_empty() => (r, rev),
        Some(_) => return Err(bad("an empty repository name or revision".into())),
        None => (repo, "main"),
    };
    if path.ends_with('/')
        || path
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(bad(format!(
            "'{path}' is not a file path inside the repository"
        )));
    }
    let endpoint = endpoint.trim_end_matches('/');
    let (scheme, after) = endpoint
        .split_once("://")
        .filter(|(s, a)| matches!(*s, "http" | "https") && !a.is_empty())
        .ok_or_else(|| {
            bad(format!(
                "HF_ENDPOINT={endpoint:?} is not an http(s):// address"
            ))
        })?;
    let (authority, prefix) = after.split_once('/').unwrap_or((after, ""));
    let prefix = if prefix.is_empty() {
        String::new()
    } else {
        format!("{prefix}/")
    };
    Ok(RemoteUrl {
        url: url.to_string(),
        scheme: Scheme::Hf,
        base: format!("{scheme}://{authority}"),
        key: format!("{prefix}{org}/{repo}/resolve/{revision}/{path}"),
    })
}

/// The Hub token from the environment (`HF_TOKEN`, else `HUGGING_FACE_HUB_TOKEN`), if set.
#[cfg(feature = "remote")]
pub(crate) fn hub_token() -> Option<String> {
    ["HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"]
        .iter()
        .filter_map(|v| std::env::var(v).ok())
        .map(|t| t.trim().to_string())
        .find(|t| !t.is_empty())
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
        assert!(is_remote("hf://org/repo/x.safetensors"));
    }

    #[test]
    fn hub_urls_resolve_to_the_resolve_path_of_the_endpoint() {
        let hub = "https://huggingface.co";
        let u = RemoteUrl::parse_hub("hf://org/repo/model.safetensors", hub).unwrap();
        assert_eq!(u.scheme, Scheme::Hf);
        assert_eq!(u.url, "hf://org/repo/model.safetensors");
        assert_eq!(
            u.http_url(),
            "https://huggingface.co/org/repo/resolve/main/model.safetensors"
        );
        assert!(!u.is_plain_http());
        let u = RemoteUrl::parse_hub("hf://org/repo@abc123/unet/x.safetensors", hub).unwrap();
        assert_eq!(
            u.http_url(),
            "https://huggingface.co/org/repo/resolve/abc123/unet/x.safetensors"
        );
        // A shard beside an index keeps the revision and the folder.
        let s = u.sibling("y.safetensors").unwrap();
        assert_eq!(s.url, "hf://org/repo@abc123/unet/y.safetensors");
        assert_eq!(
            s.http_url(),
            "https://huggingface.co/org/repo/resolve/abc123/unet/y.safetensors"
        );
        // A mirror with a path prefix, over plain HTTP.
        let u = RemoteUrl::parse_hub("hf://o/r/m.flashpack", "http://127.0.0.1:8080/hub/").unwrap();
        assert_eq!(
            u.http_url(),
            "http://127.0.0.1:8080/hub/o/r/resolve/main/m.flashpack"
        );
        assert!(u.is_plain_http());
        for (url, why) in [
            ("hf://org/repo", "expected hf://org/repo"),
            ("hf://org/repo/", "expected hf://org/repo"),
            ("hf://org/repo@/x", "empty"),
            ("hf://org/repo/a/../x", "not a file path"),
            ("hf://org/repo/dir/", "not a file path"),
        ] {
            let e = RemoteUrl::parse_hub(url, hub).unwrap_err().to_string();
            assert!(e.contains(why), "{url}: {e}");
        }
        let e = RemoteUrl::parse_hub("hf://o/r/x", "ftp://mirror").unwrap_err();
        assert!(e.to_string().contains("HF_ENDPOINT"), "{e}");
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
