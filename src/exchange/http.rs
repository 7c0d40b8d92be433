//! HTTPS for exchanges: ureq over rustls (on macOS over the system's TLS, Security.framework),
//! certificates verified against Mozilla's roots (on macOS the keychain's) plus any `--ca-file`
//! adds, no plain HTTP, no redirects (an assertion is posted to the URL given and nowhere
//! else), bounded answers and time.

use super::ExchangeError;
use std::path::Path;
use std::time::Duration;
use ureq::tls::{Certificate, PemItem, RootCerts, TlsConfig, TlsProvider};
use zeroize::Zeroizing;

/// How long one exchange may take, connection and answer.
const TIMEOUT: Duration = Duration::from_secs(30);

/// The most of an answer read (a token endpoint's answer is a few KiB).
const MAX_ANSWER: u64 = 1 << 20;

/// An HTTPS client.
pub struct Https {
    agent: ureq::Agent,
}

/// A service's answer: its status, the headers the errors quote, and its body (which may hold
/// a token: wiped when dropped).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Zeroizing<String>,
    /// `x-ratelimit-remaining`, `x-ratelimit-reset`, `retry-after`.
    pub remaining: Option<String>,
    pub reset: Option<String>,
    pub retry_after: Option<String>,
}

/// A request's body.
pub enum Body<'a> {
    None,
    Json(&'a str),
    Form(&'a [(&'a str, &'a str)]),
}

impl Https {
    /// A client that trusts Mozilla's roots (on macOS the keychain's), and with `ca_file`
    /// Mozilla's and the certificates in it.
    pub fn new(ca_file: Option<&Path>) -> Result<Https, ExchangeError> {
        let (provider, system_roots) = if cfg!(target_os = "macos") {
            (TlsProvider::NativeTls, RootCerts::PlatformVerifier)
        } else {
            (TlsProvider::Rustls, RootCerts::WebPki)
        };
        let roots = match ca_file {
            None => system_roots,
            Some(path) => {
                let mut roots: Vec<Certificate<'static>> = webpki_root_certs::TLS_SERVER_ROOT_CERTS
                    .iter()
                    .map(|der| Certificate::from_der(der.as_ref()).to_owned())
                    .collect();
                roots.extend(read_ca_file(path)?);
                RootCerts::from(roots)
            }
        };
        let config = ureq::Agent::config_builder()
            .https_only(true)
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_global(Some(TIMEOUT))
            .user_agent(concat!("jwt-agent/", env!("CARGO_PKG_VERSION")))
            .tls_config(TlsConfig::builder().provider(provider).root_certs(roots).build())
            .build();
        Ok(Https { agent: config.into() })
    }

    /// Sends one request; `bearer` goes in `Authorization`.
    pub fn send(
        &self,
        method: &str,
        url: &str,
        bearer: Option<&str>,
        headers: &[(&str, &str)],
        body: Body<'_>,
    ) -> Result<Answer, ExchangeError> {
        check_https(url)?;
        let unreachable = |e: ureq::Error| ExchangeError::Unreachable { url: url.to_owned(), why: why(&e) };
        let authorization = bearer.map(|token| Zeroizing::new(format!("Bearer {token}")));
        let mut request = ureq::http::Request::builder().method(method).uri(url);
        if let Some(value) = &authorization {
            request = request.header("Authorization", value.as_str());
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let content = match body {
            Body::None => None,
            Body::Json(json) => {
                request = request.header("Content-Type", "application/json");
                Some(Zeroizing::new(json.to_owned()))
            }
            Body::Form(pairs) => {
                request = request.header("Content-Type", "application/x-www-form-urlencoded");
                Some(Zeroizing::new(form_encode(pairs)))
            }
        };
        let bad_url =
            |e: ureq::http::Error| ExchangeError::Usage(format!("{url:?} is not a URL to send to: {e}"));
        let mut response = match &content {
            None => self.agent.run(request.body(()).map_err(bad_url)?),
            Some(content) => self.agent.run(request.body(content.as_bytes()).map_err(bad_url)?),
        }
        .map_err(unreachable)?;
        let header =
            |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(|v| printable(v, 40));
        let (remaining, reset, retry_after) =
            (header("x-ratelimit-remaining"), header("x-ratelimit-reset"), header("retry-after"));
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_ANSWER)
            .read_to_string()
            .map(Zeroizing::new)
            .map_err(unreachable)?;
        Ok(Answer { status, body, remaining, reset, retry_after })
    }
}

/// Refuses anything but an `https://` URL, before anything is sent.
pub fn check_https(url: &str) -> Result<(), ExchangeError> {
    let rest = url.get(..8).filter(|scheme| scheme.eq_ignore_ascii_case("https://"));
    if rest.is_none() || url.len() == 8 {
        return Err(ExchangeError::Usage(format!(
            "{url:?} is not an https:// URL; exchanges go over HTTPS only"
        )));
    }
    Ok(())
}

fn read_ca_file(path: &Path) -> Result<Vec<Certificate<'static>>, ExchangeError> {
    let bad = |why: String| ExchangeError::Usage(format!("--ca-file {}: {why}", path.display()));
    let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        if let PemItem::Certificate(cert) = item.map_err(|e| bad(e.to_string()))? {
            certs.push(cert);
        }
    }
    if certs.is_empty() {
        return Err(bad("it holds no PEM certificate (BEGIN CERTIFICATE)".into()));
    }
    Ok(certs)
}

/// Why a request got no answer, in words that say what to do about it.
fn why(e: &ureq::Error) -> String {
    // rustls's certificate errors come wrapped in an I/O error.
    let certificate = e.to_string().contains("certificate");
    match e {
        _ if certificate => format!(
            "{e}; if the server's certificate comes from a private CA (GitHub Enterprise Server, a test server), give that CA with --ca-file"
        ),
        ureq::Error::Timeout(_) => format!("no answer within {} s", TIMEOUT.as_secs()),
        ureq::Error::TooManyRedirects | ureq::Error::RedirectFailed => {
            "it answered with a redirect, and an assertion is sent to the URL given only; give the final URL"
                .into()
        }
        _ => e.to_string(),
    }
}

/// `application/x-www-form-urlencoded`.
fn form_encode(pairs: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (i, (name, value)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        encode_into(&mut out, name);
        out.push('=');
        encode_into(&mut out, value);
    }
    out
}

fn encode_into(out: &mut String, text: &str) {
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => out.push(byte as char),
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
}

/// `text` cut to `max` characters, without control characters (a service's words reach the
/// terminal).
pub fn printable(text: &str, max: usize) -> String {
    let clean: String = text.chars().filter(|c| !c.is_control()).take(max).collect();
    if text.chars().filter(|c| !c.is_control()).count() > max { format!("{clean}...") } else { clean }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_are_encoded() {
        assert_eq!(
            form_encode(&[("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"), ("s", "a b/c")]),
            "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&s=a+b%2Fc"
        );
    }

    #[test]
    fn only_https() {
        assert!(check_https("https://api.github.com").is_ok());
        assert!(check_https("HTTPS://api.github.com").is_ok());
        for bad in ["http://api.github.com", "https://", "api.github.com", "ftp://x", ""] {
            assert!(matches!(check_https(bad), Err(ExchangeError::Usage(_))), "{bad}");
        }
    }

    #[test]
    fn service_words_are_cut_and_cleaned() {
        assert_eq!(printable("a\u{1b}[31mb\n", 10), "a[31mb");
        assert_eq!(printable("abcdef", 3), "abc...");
    }
}
