//! Integration tests of the chatd binary: a real process on 127.0.0.1:0, real HTTP clients, real SQLite
//! files.

mod assets;
mod cli;
mod cluster;
mod cluster_failures;
mod crash;
mod discord;
mod files;
mod gateway;
mod harness;
mod hostile;
mod limits;
mod longpoll;
mod rest;
mod serenity;
mod signup;
mod web;
mod web_signup;
