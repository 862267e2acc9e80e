//! HTTP, sans IO: what the proxy needs to judge a request before hyper forwards it.
pub mod body;
pub mod framing;
pub mod path;
