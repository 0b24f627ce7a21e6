//! What pie-controller serves over HTTP: the results API ([`results`]) with its authentication
//! ([`auth`]), `/healthz` + `/readyz` ([`health`]), and the one way they all bind ([`listen`]).

pub mod auth;
pub mod health;
pub mod listen;
pub mod results;
