//! Proptest state-machine tests: random command sequences run against the core and a simple reference model,
//! with every invariant checked after every step and the log replayed at the end of each case.
//!
//! Each property draws its operations with a different mix so that one stresses network channels and modes,
//! one sessions, nicks and idle expiry, and one spaces with derived membership. `PROPTEST_CASES` raises the
//! number of cases for a longer local run.

mod model;
mod ops;
mod run;

use proptest::prelude::*;

use ops::{Mix, Op, op};

/// Sequences are long enough to build channels with modes, bans and invites and then tear them down.
const MAX_OPS: usize = 100;

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(768);
    ProptestConfig {
        cases,
        // A failure prints its shrunk sequence; files of seeds next to the sources would only go stale.
        failure_persistence: None,
        // Unoptimized ChaCha spent more time drawing operations than the core and the model spent running
        // them; XorShift's weaker randomness is plenty for picking commands.
        rng_algorithm: proptest::test_runner::RngAlgorithm::XorShift,
        ..ProptestConfig::default()
    }
}

fn ops(mix: Mix) -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(op(mix), 1..=MAX_OPS)
}

const CHANNELS_MIX: Mix = Mix {
    session: 1,
    channel: 5,
    mode: 5,
    message: 2,
    space: 1,
    time: 1,
};

const SESSIONS_MIX: Mix = Mix {
    session: 5,
    channel: 2,
    mode: 1,
    message: 2,
    space: 1,
    time: 4,
};

const SPACES_MIX: Mix = Mix {
    session: 2,
    channel: 1,
    mode: 1,
    message: 2,
    space: 5,
    time: 1,
};

proptest! {
    #![proptest_config(config())]

    /// JOIN, PART, KICK, INVITE, TOPIC and MODE against the model: membership, `+imnstklbov`, invites, bans,
    /// who may speak, and who hears each channel event.
    #[test]
    fn network_channels_follow_the_model(ops in ops(CHANNELS_MIX)) {
        run::run(&[], &ops)?;
    }

    /// Registration, login, logout, quit, nick changes and idle expiry against the model: nick ownership,
    /// guests released with their nicks, presence, and who hears quits and nick changes.
    #[test]
    fn sessions_and_nicks_follow_the_model(ops in ops(SESSIONS_MIX)) {
        run::run(&[], &ops)?;
    }

    /// Spaces with roles and overwrites on their `general` channel against the model: derived membership
    /// and who hears space and channel events.
    #[test]
    fn spaces_follow_the_model(ops in ops(SPACES_MIX)) {
        run::run(&ops::space_prelude(), &ops)?;
    }
}
