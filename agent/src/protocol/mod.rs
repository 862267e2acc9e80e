//! Wire protocols, decoded without I/O. Each submodule is a sans-IO codec: the
//! proxy owns the sockets and the buffers, feeds the bytes it read into a decoder, gets
//! back whole messages (each with its exact original bytes, so that unchanged frames are
//! forwarded as they came) or "need more bytes", and uses the encoders only for the
//! messages it synthesizes or rewrites. Nothing here does I/O, policy or journaling.
pub mod aws;
pub mod http;
pub mod kubernetes;
pub mod mysql;
pub mod postgres;
pub mod redis;
pub mod ssh;
