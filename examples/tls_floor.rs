//! The reference for new-handshake requests (issue 17): the same TLS configuration
//! `tessera serve` uses (its certificate, client-certificate verifier with CRLs and its
//! memory of verified chains, no session resumption), answering each connection's one
//! HTTP request with a fixed 200 and closing it, from blocking threads sharing the
//! core(s) it is pinned to. What it serves per second on one core is what mutual TLS
//! alone allows; `bench/floors.sh` compares the token endpoint with it.
//!
//!   cd INSTALLATION && cargo run --release --example tls_floor -- 127.0.0.1:18444

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;

fn main() {
    let listen = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:18444".into());
    let loaded = tessera::config::load(None).expect("run it in an installation's directory");
    let settings = tessera::serve::server_settings(&loaded, tessera_http::Services::all());
    let (config, _) = tessera_http::tls::server_config(&settings.tls).unwrap();
    let config = Arc::new(config);
    let listener = TcpListener::bind(&listen).unwrap();
    eprintln!("tls_floor listening on {listen}");
    // Blocking handlers, more than the load's connections, all on the cores the process
    // is given (one, under taskset): a handler waiting for its client's next flight
    // leaves the core to another, as the server's event loop does.
    let handlers: Vec<_> = (0..64)
        .map(|_| {
            let listener = listener.try_clone().unwrap();
            let config = config.clone();
            std::thread::spawn(move || serve(&listener, &config))
        })
        .collect();
    for handler in handlers {
        handler.join().unwrap();
    }
}

/// Answers connections one after another: the handshake, one request, a fixed answer.
fn serve(listener: &TcpListener, config: &Arc<rustls::ServerConfig>) {
    let response = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok";
    for stream in listener.incoming() {
        let Ok(mut socket) = stream else { continue };
        let _ = socket.set_nodelay(true);
        let mut connection = rustls::ServerConnection::new(config.clone()).unwrap();
        let mut tls = rustls::Stream::new(&mut connection, &mut socket);
        // Read up to the end of the request's head (the handshake happens on the way).
        let mut head = Vec::with_capacity(1024);
        let mut buffer = [0u8; 4096];
        let complete = loop {
            match tls.read(&mut buffer) {
                Ok(0) | Err(_) => break false,
                Ok(n) => {
                    head.extend_from_slice(&buffer[..n]);
                    if head.windows(4).any(|w| w == b"\r\n\r\n") {
                        break true;
                    }
                }
            }
        };
        if complete && tls.conn.peer_certificates().is_some() {
            let _ = tls.write_all(response);
            tls.conn.send_close_notify();
            let _ = tls.flush();
        }
    }
}
