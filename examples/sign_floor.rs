//! The token endpoint's one unavoidable cost beyond an HTTP answer (issue 17): the ES256
//! signature of an access token, as `SigningKey::sign` makes it (ring's P-256 with a
//! fresh nonce from the system's generator), over a signing input of a token's size.
//! Only the signature: no claims serialized, no base64. Prints the microseconds of one
//! thread's core a signature; `bench/floors.sh` runs it on the server's core and puts it
//! beside the JWKS answer's, which bounds the token endpoint's ratio to JWKS at
//! JWKS / (JWKS + signature), were nothing else done for a token.
//!
//!   cargo run --release --example sign_floor -- [signatures, default 20000]

#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::time::Instant;

use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

mod common;
use common::thread_cpu_ns;

fn main() {
    let n: u32 = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("a number of signatures"))
        .unwrap_or(20_000);
    let rng = SystemRandom::new();
    let alg = &ECDSA_P256_SHA256_FIXED_SIGNING;
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
    let key = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap();
    // The README's example token is 620 bytes before its signature.
    let input = vec![b'e'; 620];
    for _ in 0..n / 10 {
        key.sign(&rng, &input).unwrap(); // warm up
    }
    let cpu = thread_cpu_ns();
    let started = Instant::now();
    for _ in 0..n {
        std::hint::black_box(key.sign(&rng, &input).unwrap());
    }
    let wall = started.elapsed();
    let core_us = (thread_cpu_ns() - cpu) as f64 / 1000.0 / f64::from(n);
    println!(
        "es256 signature: {core_us:.2} us of the core each ({n} in {:.2} s, {:.0}/s)",
        wall.as_secs_f64(),
        f64::from(n) / wall.as_secs_f64()
    );
}
