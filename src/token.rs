//! The admin bearer token: from `SWITCHBOARD_ADMIN_TOKEN`, else the config file, else the one
//! generated on first start and kept in `<data_dir>/admin_token` (mode 0600), printed once.

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Where the token comes from, so start-up can say so without printing it again.
pub enum TokenSource {
    Environment,
    Config,
    File,
    Generated,
}

/// A token shorter than this is refused at start, wherever it comes from.
pub const TOKEN_CHARS_MIN: usize = 16;

pub fn resolve(env_token: Option<String>, config_token: Option<&str>, data_dir: &Path) -> std::io::Result<(String, TokenSource)> {
    if let Some(token) = env_token.filter(|t| !t.is_empty()) {
        if token.chars().count() < TOKEN_CHARS_MIN {
            let why = format!("SWITCHBOARD_ADMIN_TOKEN must be at least {TOKEN_CHARS_MIN} characters");
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, why));
        }
        return Ok((token, TokenSource::Environment));
    }
    if let Some(token) = config_token {
        return Ok((token.to_owned(), TokenSource::Config));
    }
    let path = data_dir.join("admin_token");
    match std::fs::read_to_string(&path) {
        Ok(token) if !token.trim().is_empty() => {
            return Ok((token.trim().to_owned(), TokenSource::File));
        }
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }
    let token = generate()?;
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path)?;
    file.write_all(token.as_bytes())?;
    file.sync_all()?;
    Ok((token, TokenSource::Generated))
}

/// 32 random bytes from the kernel, hex-encoded.
fn generate() -> std::io::Result<String> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_tokens_are_refused_and_the_environment_wins() {
        let dir = tempfile::tempdir().unwrap();
        assert!(resolve(Some("short".into()), None, dir.path()).is_err());
        let (token, _) = resolve(Some("an-env-token-long-enough".into()), Some("a-config-token-long-enough"), dir.path()).unwrap();
        assert_eq!(token, "an-env-token-long-enough");
        assert!(!dir.path().join("admin_token").exists(), "nothing is generated when a token is given");
    }
}
