//! TLS for the sink (a certificate generated at start) and for `send --starttls`.
//! The ring provider is named explicitly: if two providers were compiled in, rustls'
//! `builder()` would panic.

use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::ServerConfig;
use std::sync::Arc;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A server config with a fresh self-signed certificate for `names`.
pub fn sink_server_config(names: &[String]) -> Result<Arc<ServerConfig>, String> {
    let ck = rcgen::generate_simple_self_signed(names.to_vec())
        .map_err(|e| format!("certificate: {e}"))?;
    let cert = ck.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .map_err(|e| format!("tls config: {e}"))?;
    Ok(Arc::new(config))
}

/// A load generator measures throughput, not trust: it accepts any server certificate,
/// as the relay's opportunistic STARTTLS does.
pub fn client_config() -> Result<Arc<rustls::ClientConfig>, String> {
    ringpost::tls::opportunistic_client()
}
