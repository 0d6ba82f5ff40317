//! Generated protobuf messages and the tonic Agent client and server.

#![allow(missing_docs, clippy::all, clippy::pedantic)]

/// Packages nested as protobuf names them, so generated cross-package paths resolve.
pub mod coder {
    pub mod agent {
        pub mod v2 {
            tonic::include_proto!("coder.agent.v2");
        }
    }
    pub mod boundarylogproxy {
        pub mod codec {
            pub mod v1 {
                tonic::include_proto!("coder.boundarylogproxy.codec.v1");
            }
        }
    }
}

/// `coder.agent.v2`: the Agent API subset (logs, request, service).
pub use coder::agent::v2 as agent;
/// `coder.boundarylogproxy.codec.v1`: the TagV2 envelope.
pub use coder::boundarylogproxy::codec::v1 as envelope;
