//! HTTP, sans IO: what the proxy needs to judge a request before hyper forwards it, the
//! bodies it masks, and the frames of a connection upgraded to WebSocket.
pub mod body;
pub mod framing;
pub mod path;
pub mod websocket;
