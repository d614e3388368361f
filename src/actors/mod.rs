//! Actors: the registry that admits and supervises every live session, and one
//! `SessionActor` per live session that owns its CLI process.

pub mod cluster;
pub mod event;
mod handle;
pub mod hub;
mod persist;
pub mod registry;
pub mod session;
pub mod threads;
pub mod turns;

// What the layers above see: handles with async methods and plain data, never a message.
// (The messages stay reachable at `registry::`/`session::` for start-up and tests.)
pub use event::{SessionEvent, TurnOutcome};
pub use handle::{PermissionAnswer, RegistryHandle, SessionHandle, WeakSessionHandle};
pub use hub::EventHub;
pub use registry::admission::Urgency;
pub use registry::{Registry, RegistryStats};
pub use session::{
    Admit, CLIENT_BUFFER, PendingPermission, QueuedMessage, RewindCommit, StopReason, SubmitMode, Submitted,
    TurnBudget, TurnRefused, TurnStarted, not_queued,
};
