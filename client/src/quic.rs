//! Batches over `pulseboard-ingest/1`: one QUIC connection per node, welcomed streams kept
//! for reuse, one batch in flight per stream (concurrent sends use several streams).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use protocol::codec;
use protocol::ingest::{
    encode_frame, frame_len, ClientFrame, ErrorCode, ServerFrame, ALPN, HELLO_MAX, LEN_BYTES,
    VERSION,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::{ClientError, DataPoint, Failure, SendFuture, Sender};

/// A welcomed stream.
struct Session {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    next_seq: u64,
    max_frame: usize,
}

pub struct QuicSender {
    client_config: quinn::ClientConfig,
    endpoint: tokio::sync::OnceCell<quinn::Endpoint>,
    connections: tokio::sync::Mutex<HashMap<String, quinn::Connection>>,
    idle: Mutex<HashMap<String, Vec<Session>>>,
    api_key: String,
    name: String,
    timeout: Duration,
}

fn retry(message: impl Into<String>, switch: bool) -> Failure {
    Failure::Retry {
        message: message.into(),
        after: None,
        switch,
    }
}

impl QuicSender {
    pub fn new(
        certificate_pem: &str,
        api_key: &str,
        name: &str,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        use rustls::pki_types::pem::PemObject;
        let config = |e: String| ClientError::Config(e);
        let pinned = CertificateDer::pem_slice_iter(certificate_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| config(format!("certificate PEM: {e}")))?;
        if pinned.is_empty() {
            return Err(config("certificate PEM: no CERTIFICATE block".into()));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| config(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Pinned { pinned, provider }))
            .with_no_client_auth();
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
            .map_err(|e| config(e.to_string()))?;
        let mut client_config = quinn::ClientConfig::new(Arc::new(crypto));
        let mut transport = quinn::TransportConfig::default();
        transport
            .keep_alive_interval(Some(Duration::from_secs(2)))
            .max_idle_timeout(Some(
                Duration::from_secs(10)
                    .try_into()
                    .map_err(|e: quinn::VarIntBoundsExceeded| config(e.to_string()))?,
            ));
        client_config.transport_config(Arc::new(transport));
        Ok(Self {
            client_config,
            endpoint: tokio::sync::OnceCell::new(),
            connections: Default::default(),
            idle: Default::default(),
            api_key: api_key.to_owned(),
            name: name.to_owned(),
            timeout,
        })
    }

    async fn connection(&self, node: &str) -> Result<quinn::Connection, Failure> {
        let mut conns = self.connections.lock().await;
        if let Some(c) = conns.get(node) {
            if c.close_reason().is_none() {
                return Ok(c.clone());
            }
            conns.remove(node);
            self.idle_sessions().remove(node);
        }
        let endpoint = self
            .endpoint
            .get_or_try_init(|| async {
                quinn::Endpoint::client((std::net::Ipv6Addr::UNSPECIFIED, 0).into()).or_else(|_| {
                    quinn::Endpoint::client((std::net::Ipv4Addr::UNSPECIFIED, 0).into())
                })
            })
            .await
            .map_err(|e| Failure::Fatal {
                code: ErrorCode::Internal,
                message: format!("cannot open a UDP socket: {e}"),
            })?;
        let addr = tokio::net::lookup_host(node)
            .await
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| retry(format!("cannot resolve {node}"), true))?;
        let conn = endpoint
            .connect_with(self.client_config.clone(), addr, "pulseboard-node")
            .map_err(|e| retry(e.to_string(), true))?
            .await
            .map_err(|e| retry(format!("connecting: {e}"), true))?;
        conns.insert(node.to_owned(), conn.clone());
        Ok(conn)
    }

    pub async fn connect(&self, node: &str) -> Result<quinn::Connection, ClientError> {
        self.connection(node).await.map_err(|f| match f {
            Failure::Fatal { message, .. } | Failure::Retry { message, .. } => {
                ClientError::Config(format!("{node}: {message}"))
            }
        })
    }

    fn idle_sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Session>>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A welcomed stream: an idle one, or a new one.
    async fn session(&self, node: &str) -> Result<Session, Failure> {
        if let Some(s) = self.idle_sessions().get_mut(node).and_then(Vec::pop) {
            return Ok(s);
        }
        let conn = self.connection(node).await?;
        let (mut send, mut recv) = conn
            .open_bi()
            .await
            .map_err(|e| retry(format!("opening a stream: {e}"), true))?;
        let hello = encode_frame(&ClientFrame::Hello {
            version: VERSION,
            api_key: self.api_key.clone(),
            client: self.name.clone(),
        })
        .map_err(|e| retry(e.to_string(), false))?;
        send.write_all(&hello)
            .await
            .map_err(|e| retry(format!("sending hello: {e}"), true))?;
        match read_frame(&mut recv, HELLO_MAX).await? {
            ServerFrame::Welcome {
                max_frame_bytes, ..
            } => Ok(Session {
                send,
                recv,
                next_seq: 0,
                max_frame: max_frame_bytes as usize,
            }),
            ServerFrame::Error { code, message, .. } => Err(Failure::Fatal { code, message }),
            other => Err(retry(format!("expected a welcome, got {other:?}"), false)),
        }
    }

    async fn attempt(
        &self,
        node: &str,
        batch_id: &str,
        points: &[DataPoint],
    ) -> Result<u32, Failure> {
        let mut s = self.session(node).await?;
        let seq = s.next_seq;
        s.next_seq += 1;
        let frame = encode_frame(&ClientFrame::Batch {
            seq,
            batch_id: Some(batch_id.to_owned()),
            points: points.to_vec(),
        })
        .map_err(|e| retry(e.to_string(), false))?;
        if frame.len() - LEN_BYTES > s.max_frame {
            return Err(Failure::Fatal {
                code: ErrorCode::TooLarge,
                message: format!(
                    "the batch encodes to {} bytes; the node takes {} per frame",
                    frame.len() - LEN_BYTES,
                    s.max_frame
                ),
            });
        }
        s.send
            .write_all(&frame)
            .await
            .map_err(|e| retry(format!("sending: {e}"), true))?;
        let answer = loop {
            match read_frame(&mut s.recv, s.max_frame).await? {
                ServerFrame::Ack { seq: got, accepted } if got == seq => break Ok(accepted),
                ServerFrame::Error {
                    seq: got,
                    code,
                    message,
                    retry_after_ms,
                } if got == Some(seq) || got.is_none() => {
                    let failure = if code.retryable() {
                        Failure::Retry {
                            message: format!("{code:?}: {message}"),
                            after: retry_after_ms.map(Duration::from_millis),
                            switch: false,
                        }
                    } else {
                        Failure::Fatal { code, message }
                    };
                    break Err(failure);
                }
                _ => continue,
            }
        };
        // The stream is in step again (every batch sent on it answered): keep it.
        self.idle_sessions()
            .entry(node.to_owned())
            .or_default()
            .push(s);
        answer
    }
}

async fn read_frame(recv: &mut quinn::RecvStream, max: usize) -> Result<ServerFrame, Failure> {
    let mut prefix = [0u8; LEN_BYTES];
    recv.read_exact(&mut prefix)
        .await
        .map_err(|e| retry(format!("reading: {e}"), true))?;
    let len = frame_len(prefix, max.max(HELLO_MAX)).map_err(|e| retry(e, false))?;
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body)
        .await
        .map_err(|e| retry(format!("reading: {e}"), true))?;
    codec::decode(&body).map_err(|e| retry(format!("a frame from the node: {e}"), false))
}

impl Sender for QuicSender {
    fn send<'a>(
        &'a self,
        node: &'a str,
        batch_id: &'a str,
        points: &'a [DataPoint],
    ) -> SendFuture<'a> {
        Box::pin(async move {
            match tokio::time::timeout(self.timeout, self.attempt(node, batch_id, points)).await {
                Ok(r) => r,
                // The stream is dropped with its unanswered batch; the retry uses another.
                Err(_) => Err(retry(format!("no answer within {:?}", self.timeout), true)),
            }
        })
    }
}

/// Trusts exactly the pinned certificates (and checks the handshake signature, so the peer
/// holds the pinned certificate's key).
#[derive(Debug)]
struct Pinned {
    pinned: Vec<CertificateDer<'static>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self
            .pinned
            .iter()
            .any(|p| p.as_ref() == end_entity.as_ref())
        {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "the node's certificate is not the pinned one".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not used".into()))
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
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
