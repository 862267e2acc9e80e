//! What the SSH proxy decodes from what a bot or a host sends, on arbitrary bytes: the
//! SFTP framing and decoders (`protocol::ssh::sftp::next_packet`, `parse_request`,
//! `parse_response`, as `proxy::ssh::sftp` calls them read by read), the known_hosts
//! check (`proxy::ssh::known_hosts::check_known_hosts`, with the file's text from the
//! input) and the exec command rules (`Policy::decide_ssh`, `commands` globs and
//! `regex`, with the command line from the input).
//!
//! Control byte: bits 0-5 the size of the reads (0: whole), bits 6-7 the mode: 0 the
//! client's SFTP stream, 1 the host's, 2 a known_hosts file, 3 a command line.
//!
//! Properties: nothing panics or hangs; the packets taken off a stream are exactly its
//! first bytes, however the reads are cut; a STATUS the agent makes for a request's id
//! decodes back to that id and code; a known_hosts file made of the input plus a line
//! for the presented key accepts it unless the input revokes or negates it; a command's
//! verdict does not depend on anything but the command.
#![no_main]

use std::sync::OnceLock;

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use nhi_agent::config;
use nhi_agent::policy::ssh::{SshKind, SshRequest};
use nhi_agent::policy::Policy;
use nhi_agent::protocol::ssh::sftp;
use nhi_agent::proxy::ssh::known_hosts::{self, Presented};
use russh::keys::ssh_key::private::{Ed25519Keypair, KeypairData};
use russh::keys::PrivateKey;

fn policy() -> &'static Policy {
    static POLICY: OnceLock<Policy> = OnceLock::new();
    POLICY.get_or_init(|| {
        let text = r#"
[agent]
mode = "enforce"
journal = "/tmp/fuzz.db"

[[target]]
name = "host"
address = "127.0.0.1:22"
protocol = "ssh"
key_file = "/k"
host_key = "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU"

[[policy]]
name = "p"
default = "allow"

[[policy.rule]]
name = "no-destruction"
verdict = "deny"
commands = ["rm -rf *", "systemctl stop *", "dd * of=/dev/*"]

[[policy.rule]]
name = "restarts"
verdict = "approve"
regex = '^(sudo\s+)?systemctl\s+restart\s'
"#;
        config::parse(text, "fuzz.toml")
            .expect("the fuzz policy parses")
            .policies
            .policies
            .remove(0)
    })
}

fn key() -> &'static PrivateKey {
    static KEY: OnceLock<PrivateKey> = OnceLock::new();
    KEY.get_or_init(|| {
        PrivateKey::new(KeypairData::Ed25519(Ed25519Keypair::from_seed(&[9; 32])), "")
            .expect("a key")
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    let size = usize::from(control & 0x3f);
    let size = if size == 0 { rest.len().max(1) } else { size };
    match control >> 6 {
        mode @ (0 | 1) => {
            let mut buf = BytesMut::new();
            let mut taken = Vec::new();
            for read in rest.chunks(size) {
                buf.extend_from_slice(read);
                loop {
                    match sftp::next_packet(&mut buf) {
                        Ok(Some(packet)) => {
                            taken.extend_from_slice(&packet);
                            if mode == 0 {
                                if let Ok(request) = sftp::parse_request(&packet) {
                                    if let Some(id) = request.id() {
                                        let status =
                                            sftp::status_packet(id, sftp::FX_PERMISSION_DENIED, "no");
                                        match sftp::parse_response(&status) {
                                            Ok(sftp::Response::Status { id: got, code, .. }) => {
                                                assert_eq!((got, code), (id, sftp::FX_PERMISSION_DENIED));
                                            }
                                            other => panic!("the agent's STATUS reads as {other:?}"),
                                        }
                                    }
                                }
                            } else {
                                let _ = sftp::parse_response(&packet);
                            }
                        }
                        Ok(None) => break,
                        Err(_) => return,
                    }
                }
            }
            assert_eq!(taken.as_slice(), &rest[..taken.len()], "packets are the stream's first bytes");
        }
        2 => {
            let Ok(text) = std::str::from_utf8(rest) else {
                return;
            };
            let names = ["[127.0.0.1]:2222".to_owned(), "db.internal".to_owned()];
            let presented = Presented::Key(key().public_key());
            let _ = known_hosts::check_known_hosts(text, "fuzz", &names, &presented, 0);
            // With a line for the key, it is accepted unless the input revokes or
            // negates (or names with a marker line) what would match.
            let line = format!("\n[127.0.0.1]:2222 {}\n", key().public_key().to_openssh().expect("key"));
            let accepted = known_hosts::check_known_hosts(&format!("{text}{line}"), "fuzz", &names, &presented, 0);
            if !text.contains('@') && !text.contains('!') {
                assert!(accepted.is_ok(), "{accepted:?} for {text:?}");
            }
        }
        _ => {
            let Ok(command) = std::str::from_utf8(rest) else {
                return;
            };
            let request = SshRequest {
                kind: SshKind::Exec,
                command: Some(command),
            };
            let first = policy().decide_ssh(&request);
            assert_eq!(first, policy().decide_ssh(&request));
        }
    }
});
