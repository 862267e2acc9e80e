//! HTTP, sans IO: what the proxy needs to judge a request before hyper forwards it, and
//! the frames of a connection upgraded to WebSocket.
pub mod framing;
pub mod path;
pub mod websocket;
