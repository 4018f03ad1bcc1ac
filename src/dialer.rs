//! The HTTP dialer: POSTs a JSON dial request to the platform's own endpoint, which asks the
//! provider to place the call (`dialer.url`, or `SWITCHBOARD_DIALER_URL`).
//!
//! 2xx: accepted. 429: the provider is rate-limiting (the pool's cooldown path; `Retry-After`
//! is honoured). Anything else, a refused connection or no answer within `dialer.timeout_ms`:
//! failed. One connection per dial: dials are rare next to admissions.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use switchboard_actors::dialer::{DialFuture, DialOutcome, DialRequest, Dialer};

use crate::client::{Client, parse_http_url};

pub struct HttpDialer {
    address: SocketAddr,
    path: String,
    token: Option<String>,
    timeout: Duration,
}

impl HttpDialer {
    /// `url` is `http://HOST[:PORT][/PATH]` with an IP literal or `localhost` host.
    pub fn new(url: &str, token: Option<String>, timeout: Duration) -> anyhow::Result<HttpDialer> {
        let rest = url.trim().strip_prefix("http://").with_context(|| format!("dialer URL {url:?} must start with http://"))?;
        let (authority, path) = match rest.find('/') {
            Some(slash) => (&rest[..slash], &rest[slash..]),
            None => (rest, "/"),
        };
        if path.contains(['?', '#']) {
            bail!("dialer URL {url:?}: no query or fragment");
        }
        let address = parse_http_url(&format!("http://{authority}"))?;
        Ok(HttpDialer { address, path: path.to_owned(), token, timeout })
    }

    async fn post(&self, request: &DialRequest) -> DialOutcome {
        let body = serde_json::to_value(request).expect("a dial request serialises");
        let mut client = match Client::connect(self.address, self.token.clone()).await {
            Ok(client) => client,
            Err(error) => return DialOutcome::Failed(format!("dialer unreachable: {error}")),
        };
        match client.post(&self.path, &body).await {
            Ok(response) if (200..300).contains(&response.status) => DialOutcome::Accepted,
            Ok(response) if response.status == 429 => {
                DialOutcome::RateLimited { retry_after_s: response.header("retry-after").and_then(|v| v.trim().parse().ok()) }
            }
            Ok(response) => DialOutcome::Failed(format!("dialer answered {}", response.status)),
            Err(error) => DialOutcome::Failed(format!("dialer request failed: {error}")),
        }
    }
}

impl Dialer for HttpDialer {
    fn dial(&self, request: DialRequest) -> DialFuture<'_> {
        Box::pin(async move {
            match tokio::time::timeout(self.timeout, self.post(&request)).await {
                Ok(outcome) => outcome,
                Err(_) => DialOutcome::Failed(format!("dialer did not answer within {} ms", self.timeout.as_millis())),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_an_address_and_a_path() {
        let dialer = HttpDialer::new("http://127.0.0.1:9000/v1/dial", None, Duration::from_secs(1)).unwrap();
        assert_eq!((dialer.address.to_string().as_str(), dialer.path.as_str()), ("127.0.0.1:9000", "/v1/dial"));
        assert_eq!(HttpDialer::new("http://localhost:9000", None, Duration::from_secs(1)).unwrap().path, "/");
        assert!(HttpDialer::new("https://127.0.0.1/dial", None, Duration::from_secs(1)).is_err());
        assert!(HttpDialer::new("http://127.0.0.1/dial?x=1", None, Duration::from_secs(1)).is_err());
    }
}
