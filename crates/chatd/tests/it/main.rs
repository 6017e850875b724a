//! Integration tests of the chatd binary: a real process on 127.0.0.1:0, real HTTP clients, real SQLite
//! files.

/// This target runs every suite against one chatd process (the `cluster` target runs some of them again
/// against a two-node cluster).
pub(crate) const CLUSTER: bool = false;

mod assets;
mod cli;
mod cluster;
mod cluster_failures;
mod crash;
mod discord;
mod federation;
mod files;
mod gateway;
mod harness;
mod hostile;
mod irc;
mod irc_clients;
mod limits;
mod longpoll;
mod rest;
mod serenity;
mod signup;
mod two_nodes;
mod web;
mod web_signup;
