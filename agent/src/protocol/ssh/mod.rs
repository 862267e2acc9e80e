//! What the agent decodes inside SSH channels (the SSH transport itself is russh's).
pub mod sftp;
