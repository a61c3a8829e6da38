//! `polyplex catalog update`: a newer catalog than the one compiled in,
//! fetched from models.dev (or any URL or file), kept beside the config as
//! `polyplex-catalog.json` and installed at the start of every command that
//! reads the catalog (`serve`, `models`, `check`, `keys`, `usage`).

use polyplex_catalog::Catalog;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

/// Where `polyplex catalog update` fetches from by default.
pub const MODELS_DEV_URL: &str = "https://models.dev/api.json";
/// The saved catalog's file name, beside the config.
pub const FILE_NAME: &str = "polyplex-catalog.json";
/// The most a fetched catalog may weigh (models.dev's is about 1 MB).
const MAX_BYTES: usize = 64 << 20;
const FETCH_TIMEOUT: Duration = Duration::from_secs(60);

static NOTE: OnceLock<String> = OnceLock::new();

/// The saved catalog's path: `POLYPLEX_CATALOG`, else `polyplex-catalog.json`
/// in the config file's directory (the working directory without one).
pub fn path(config: Option<&Path>) -> PathBuf {
    if let Some(p) = std::env::var_os("POLYPLEX_CATALOG").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let dir = config
        .and_then(Path::parent)
        .filter(|d| !d.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    dir.join(FILE_NAME)
}

/// Installs the saved catalog, if there is one, as the process's catalog.
/// A saved file that cannot be read or is not a catalog is an error (the
/// operator asked for it; running on the old one silently would hide that).
pub fn install_saved(config: Option<&Path>) -> Result<(), String> {
    let p = path(config);
    let text = match std::fs::read_to_string(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("catalog {}: {e}", p.display())),
    };
    let c = Catalog::load(text).map_err(|e| {
        format!(
            "catalog {}: {e} (run `polyplex catalog update` again, or delete the file to use the built-in catalog)",
            p.display()
        )
    })?;
    let note = format!(
        "catalog: {} ({} providers{})",
        p.display(),
        c.providers.len(),
        c.generated_at
            .as_deref()
            .map(|g| format!(", generated {g}"))
            .unwrap_or_default()
    );
    if Catalog::install(c) {
        let _ = NOTE.set(note);
    }
    Ok(())
}

/// What [`install_saved`] installed, for the log.
pub fn note() -> Option<&'static str> {
    NOTE.get().map(String::as_str)
}

/// Fetches `source` (an http(s) URL or a file), turns models.dev's format
/// into polyplex's if it is that, checks it, and saves it beside `config`.
pub async fn update(source: &str, config: Option<&Path>) -> Result<(), String> {
    let text = if source.starts_with("http://") || source.starts_with("https://") {
        fetch(source).await?
    } else {
        std::fs::read_to_string(source).map_err(|e| format!("cannot read {source}: {e}"))?
    };
    let ours = serde_json::from_str::<serde_json::Value>(&text)
        .map_err(|e| format!("{source} is not JSON: {e}"))?
        .get("providers")
        .is_some_and(serde_json::Value::is_array);
    let text = if ours {
        text
    } else {
        polyplex_catalog::models_dev::convert(&text).map_err(|e| format!("{source}: {e}"))?
    };
    let catalog = Catalog::load(text.clone()).map_err(|e| format!("{source}: {e}"))?;
    let providers = catalog.providers.len();
    let models = catalog.model_count();
    let dest = path(config);
    let tmp = dest.with_extension("json.tmp");
    std::fs::write(&tmp, text.as_bytes())
        .and_then(|()| std::fs::rename(&tmp, &dest))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            format!("cannot write {}: {e}", dest.display())
        })?;
    println!(
        "catalog: wrote {} ({providers} providers, {models} models, from {source}); `polyplex serve`, `models` and `check` use it from their next start (delete it to go back to the built-in catalog)",
        dest.display()
    );
    Ok(())
}

async fn fetch(url: &str) -> Result<String, String> {
    let client = crate::client::HttpClient::new(Duration::from_secs(10), 1)?;
    let uri: http::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    let get = async {
        let resp = client
            .send(
                http::Method::GET,
                uri,
                http::HeaderMap::new(),
                bytes::Bytes::new(),
            )
            .await
            .map_err(|f| format!("cannot fetch {url}: {}", f.detail()))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(format!("cannot fetch {url}: HTTP {status}"));
        }
        let body = crate::client::read_body(resp.into_body())
            .await
            .map_err(|f| format!("cannot fetch {url}: {}", f.detail()))?;
        if body.len() > MAX_BYTES {
            return Err(format!("{url}: more than {MAX_BYTES} bytes"));
        }
        String::from_utf8(body.to_vec()).map_err(|_| format!("{url}: not UTF-8"))
    };
    tokio::time::timeout(FETCH_TIMEOUT, get)
        .await
        .map_err(|_| format!("cannot fetch {url}: no answer within {FETCH_TIMEOUT:?}"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_saved_catalog_sits_beside_the_config() {
        if std::env::var_os("POLYPLEX_CATALOG").is_some() {
            return;
        }
        assert_eq!(path(None), PathBuf::from("./polyplex-catalog.json"));
        assert_eq!(
            path(Some(Path::new("polyplex.toml"))),
            PathBuf::from("./polyplex-catalog.json")
        );
        assert_eq!(
            path(Some(Path::new("/etc/polyplex/polyplex.toml"))),
            PathBuf::from("/etc/polyplex/polyplex-catalog.json")
        );
    }
}
