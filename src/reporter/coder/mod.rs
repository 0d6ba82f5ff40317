//! The coder reporter: coderd's Agent API as DRPC over yamux over a websocket
//! (docs/coder-transport.md), one file per layer.

pub mod drpc;
