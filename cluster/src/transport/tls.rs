//! TLS for the node's endpoint: the node's certificate (kept in its data directory, so
//! clients can pin it; peers do not need to), and a node-to-node client that accepts any
//! certificate (peers authenticate with the cluster secret, bound to the session).

use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use super::{TransportError, MAX_STREAMS};

/// The name clients ask for; certificates carry it.
pub const SERVER_NAME: &str = "pulseboard-node";

fn setup(e: impl std::fmt::Display) -> TransportError {
    TransportError::Setup(e.to_string())
}

/// The largest UDP payload MTU discovery probes for: a 9000-byte jumbo frame less the IPv6
/// and UDP headers. Node-to-node traffic is mostly append-entries of many points, so on
/// paths that carry jumbo frames (and loopback) it then takes a sixth of the datagrams, each
/// one encrypted, sent and acknowledged; where the path allows only 1500, probes fail and
/// the connection stays where it was.
const JUMBO_UDP_PAYLOAD: u16 = 8952;

fn transport(idle: Duration) -> Result<Arc<quinn::TransportConfig>, TransportError> {
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(JUMBO_UDP_PAYLOAD);
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(MAX_STREAMS.into())
        .max_concurrent_uni_streams(0u32.into())
        .keep_alive_interval(Some(idle / 4))
        .max_idle_timeout(Some(idle.try_into().map_err(setup)?))
        .initial_mtu(1400)
        .mtu_discovery_config(Some(mtu));
    Ok(Arc::new(t))
}

/// A certificate chain and its key, as PEM.
#[derive(Clone, Debug)]
pub struct CertificatePem {
    pub cert: String,
    pub key: String,
}

/// A new self-signed certificate for [`SERVER_NAME`] (and `localhost`).
pub fn generate_certificate() -> Result<CertificatePem, TransportError> {
    let certified =
        rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_string(), "localhost".into()])
            .map_err(setup)?;
    Ok(CertificatePem {
        cert: certified.cert.pem(),
        key: certified.signing_key.serialize_pem(),
    })
}

/// `pem`'s chain and key, or what is wrong with them.
pub fn parse_certificate(
    pem: &CertificatePem,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
    use rustls::pki_types::pem::PemObject;
    let chain = CertificateDer::pem_slice_iter(pem.cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("certificate: {e}"))?;
    if chain.is_empty() {
        return Err("certificate: no CERTIFICATE block".into());
    }
    let key = PrivateKeyDer::from_pem_slice(pem.key.as_bytes()).map_err(|e| format!("key: {e}"))?;
    Ok((chain, key))
}

/// The server and client configurations: the server presents `certificate` (a new
/// self-signed one if `None`) and speaks the cluster's ALPN and `client_alpns`.
pub fn configs(
    idle: Duration,
    certificate: Option<&CertificatePem>,
    client_alpns: &[Vec<u8>],
) -> Result<(quinn::ServerConfig, quinn::ClientConfig), TransportError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let generated;
    let pem = match certificate {
        Some(pem) => pem,
        None => {
            generated = generate_certificate()?;
            &generated
        }
    };
    let (chain, key) = parse_certificate(pem).map_err(setup)?;

    let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(setup)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(setup)?;
    server.alpn_protocols = std::iter::once(protocol::cluster::ALPN.to_vec())
        .chain(client_alpns.iter().cloned())
        .collect();
    let server_crypto = quinn::crypto::rustls::QuicServerConfig::try_from(server).map_err(setup)?;
    let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
    server_config.transport_config(transport(idle)?);

    let mut client = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(setup)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SecretAuthenticated(provider)))
        .with_no_client_auth();
    client.alpn_protocols = vec![protocol::cluster::ALPN.to_vec()];
    let client_crypto = quinn::crypto::rustls::QuicClientConfig::try_from(client).map_err(setup)?;
    let mut client_config = quinn::ClientConfig::new(Arc::new(client_crypto));
    client_config.transport_config(transport(idle)?);
    Ok((server_config, client_config))
}

/// Accepts any certificate but still checks the handshake signature, so the session key
/// belongs to whoever holds the certificate's key; who that is, the secret handshake proves.
#[derive(Debug)]
struct SecretAuthenticated(Arc<CryptoProvider>);

impl ServerCertVerifier for SecretAuthenticated {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General(
            "TLS 1.2 is not used between nodes".into(),
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
