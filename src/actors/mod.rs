//! Actors: the registry that admits and supervises every live session, and one
//! `SessionActor` per live session that owns its CLI process.

pub mod event;
pub mod hub;
mod persist;
pub mod registry;
pub mod session;
pub mod threads;

pub use event::{SessionEvent, TurnOutcome};
pub use hub::EventHub;
pub use registry::{GetStats, Launch, Lookup, Registry, RegistryStats, Retire, Shutdown};
pub use session::{Interrupt, SessionActor, StartTurn, StopReason, TurnRefused, TurnStarted};
