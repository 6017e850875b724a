//! The chatd binary: command line, configuration and wiring of the server.
//!
//! The server itself is not built yet; for now the binary only says so.

fn main() {
    eprintln!(
        "chatd {}: the server is not built yet; see README.md",
        env!("CARGO_PKG_VERSION")
    );
    std::process::exit(1);
}
