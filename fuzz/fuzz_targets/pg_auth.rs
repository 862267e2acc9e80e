//! The authentication exchange as the proxy runs it when it holds the credential
//! (`proxy::postgres::authenticate`): the server's start-up answers are decoded by a
//! `BackendDecoder`, and each Authentication request is answered with the functions of
//! `protocol::postgres::auth`: SCRAM-SHA-256 (`ScramClient::server_first`,
//! `server_final`), MD5 (`md5_response`), cleartext (`password_message`). The frames
//! the agent sends must decode as the client messages they stand for.
//!
//! The SCRAM client uses the nonce of the golden libpq capture, so the captured server
//! messages (the seed) pass the nonce check, and the password of that capture.
//! Server-first messages asking for more than `MAX_FUZZ_ITERATIONS` PBKDF2 rounds (but
//! within the agent's limit) are skipped: each costs milliseconds of CPU and tells the
//! fuzzer nothing new; counts above the limit are still refused by the agent's code.
#![no_main]

use std::sync::OnceLock;

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use nhi_agent::credential::Secret;
use nhi_agent::protocol::postgres::auth::{self, ScramClient};
use nhi_agent::protocol::postgres::{
    AuthRequest, BackendDecoder, BackendMessage, FrontendDecoder, FrontendMessage,
};
use nhi_agent_fuzz::{append, reads, split_control};

const MAX_FUZZ_ITERATIONS: u64 = 64;
const USER: &str = "scram_user";
const PASSWORD: &[u8] = b"scram-secret";

/// libpq's client nonce in the golden capture (its SASLInitialResponse).
fn golden_nonce() -> &'static str {
    static NONCE: OnceLock<String> = OnceLock::new();
    NONCE.get_or_init(|| {
        let capture: &[u8] =
            include_bytes!("../../agent/src/protocol/postgres/testdata/scram-login.frontend.bin");
        let mut decoder = FrontendDecoder::new();
        let mut buf = BytesMut::from(capture);
        while let Some(decoded) = decoder
            .decode(&mut buf)
            .expect("the golden capture decodes")
        {
            if let FrontendMessage::AuthResponse(response) = decoded.message {
                let initial = response.sasl_initial().expect("SASLInitialResponse");
                let first = initial.data.expect("client-first");
                let text = std::str::from_utf8(&first).expect("UTF-8");
                return text
                    .strip_prefix("n,,n=,r=")
                    .expect("libpq's client-first")
                    .to_owned();
            }
        }
        panic!("no SASLInitialResponse in the golden capture")
    })
}

/// The iteration count a server-first message asks for, if it has a readable one.
fn iterations(data: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(data).ok()?;
    text.rsplit(',').next()?.strip_prefix("i=")?.parse().ok()
}

/// Decodes one frame the agent would send to the server.
fn client_frame(frame: &[u8]) -> FrontendMessage {
    let mut decoder = FrontendDecoder::new();
    decoder.startup_done();
    let mut buf = BytesMut::from(frame);
    let decoded = decoder
        .decode(&mut buf)
        .expect("the agent's frame decodes")
        .expect("the agent's frame is whole");
    assert!(buf.is_empty(), "one frame");
    decoded.message
}

fuzz_target!(|data: &[u8]| {
    let Some((control, data)) = split_control(data) else {
        return;
    };
    let password = Secret::new(PASSWORD.to_vec());
    let mut decoder = BackendDecoder::new();
    let mut scram: Option<ScramClient> = None;
    let mut buf = BytesMut::new();
    for read in reads(control, data) {
        append(&mut buf, read);
        loop {
            let message = match decoder.decode(&mut buf) {
                Ok(Some(decoded)) => decoded.message,
                Ok(None) => break,
                Err(_) => return,
            };
            let BackendMessage::Authentication(request) = message else {
                continue;
            };
            match request {
                AuthRequest::Ok => return,
                AuthRequest::CleartextPassword => {
                    let frame = auth::password_message(&password);
                    let FrontendMessage::AuthResponse(r) = client_frame(&frame) else {
                        panic!("PasswordMessage is a 'p'");
                    };
                    assert_eq!(&r.password().expect("a password")[..], PASSWORD);
                }
                AuthRequest::Md5Password { salt } => {
                    let response = auth::md5_response(USER, &password, salt);
                    let frame = auth::password_message(&response);
                    let FrontendMessage::AuthResponse(r) = client_frame(&frame) else {
                        panic!("PasswordMessage is a 'p'");
                    };
                    assert_eq!(r.password().expect("a password").len(), 35);
                }
                AuthRequest::Sasl { mechanisms } => {
                    // Pass-through with client TLS: the agent re-offers the mechanisms
                    // without channel binding.
                    let names: Vec<&str> = mechanisms
                        .iter()
                        .map(|m| m.as_str())
                        .filter(|m| !m.ends_with("-PLUS"))
                        .collect();
                    let offer = auth::authentication_sasl(&names);
                    let mut offer_buf = BytesMut::from(&offer[..]);
                    match BackendDecoder::new().decode(&mut offer_buf) {
                        Ok(Some(d)) => match d.message {
                            BackendMessage::Authentication(AuthRequest::Sasl { mechanisms }) => {
                                let again: Vec<&str> =
                                    mechanisms.iter().map(|m| m.as_str()).collect();
                                // An empty name ends the list on the wire.
                                let expected: Vec<&str> = names
                                    .iter()
                                    .copied()
                                    .take_while(|n| !n.is_empty())
                                    .collect();
                                assert_eq!(again, expected);
                            }
                            other => panic!("AuthenticationSASL decoded as {other:?}"),
                        },
                        other => panic!("AuthenticationSASL does not decode: {other:?}"),
                    }
                    if !mechanisms
                        .iter()
                        .any(|m| m.as_str() == ScramClient::MECHANISM)
                    {
                        return;
                    }
                    let client = ScramClient::with_nonce(&password, golden_nonce());
                    let first = client.client_first();
                    let frame = auth::sasl_initial_response(ScramClient::MECHANISM, &first);
                    let FrontendMessage::AuthResponse(r) = client_frame(&frame) else {
                        panic!("SASLInitialResponse is a 'p'");
                    };
                    let initial = r.sasl_initial().expect("SASLInitialResponse");
                    assert_eq!(initial.mechanism.as_str(), ScramClient::MECHANISM);
                    assert_eq!(initial.data.as_deref(), Some(&first[..]));
                    scram = Some(client);
                }
                AuthRequest::SaslContinue { data } => {
                    let Some(client) = scram.as_mut() else {
                        return;
                    };
                    if iterations(&data).is_some_and(|n| {
                        n > MAX_FUZZ_ITERATIONS && n <= u64::from(auth::MAX_SCRAM_ITERATIONS)
                    }) {
                        return;
                    }
                    match client.server_first(&data) {
                        Ok(client_final) => {
                            let frame = auth::sasl_response(&client_final);
                            let FrontendMessage::AuthResponse(r) = client_frame(&frame) else {
                                panic!("SASLResponse is a 'p'");
                            };
                            assert_eq!(&r.body()[..], &client_final[..]);
                        }
                        Err(e) => {
                            let _ = e.to_string();
                            return;
                        }
                    }
                }
                AuthRequest::SaslFinal { data } => {
                    let Some(client) = scram.as_ref() else {
                        return;
                    };
                    if let Err(e) = client.server_final(&data) {
                        let _ = e.to_string();
                        return;
                    }
                }
                AuthRequest::Other { .. } => return,
            }
        }
    }
});
