//! The first byte a client sends on a connection says what it wants.

/// Echo every byte back until the client closes (the `rr` client).
pub const ECHO: u8 = b'E';

/// Answer [`REPLY`] and close (the `crr` client): this byte is the whole request.
pub const CONNECT_RR: u8 = b'C';

/// The one-byte response of a [`CONNECT_RR`] connection.
pub const REPLY: u8 = b'R';
