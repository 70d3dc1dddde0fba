//! `hodei`: the command-line client of a Hodei server, and `hodei demo`.
//! The commands and what they do are in [`hodei_examples::app`].

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    hodei_examples::app::run(hodei_examples::app::Args::parse())
}
