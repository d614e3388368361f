//! Actors: the registry that admits and supervises every live session.

pub mod registry;

pub use registry::{Admit, GetStats, Registry, RegistryStats, Release};
