//! What pie-controller serves over HTTP: the results API ([`results`]) with its authentication
//! ([`auth`]), `/healthz` + `/readyz` (`health`), and the one way they all bind (`listen`).

pub mod auth;
pub(crate) mod health;
pub(crate) mod listen;
pub mod results;
