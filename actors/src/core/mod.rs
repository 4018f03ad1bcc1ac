//! Deterministic cores: plain synchronous state machines with an injected `now`.
//!
//! No I/O, no tokio, no wall clock, no hash-order iteration. The actors feed them inputs and
//! carry out what they return; the proptests drive them directly.

pub mod call;
pub mod callbacks;
pub mod campaign;
pub mod features;
pub mod pool;
pub mod slots;
