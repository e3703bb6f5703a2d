//! placeholder
pub struct SocketCarrier;
