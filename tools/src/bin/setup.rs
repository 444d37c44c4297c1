//! `vfnvme-setup`: prepare a machine for vfnvme. See `vfnvme-setup --help`.
#![forbid(unsafe_code)]

use clap::Parser;
use vfnvme_tools::setup::{self, Args};

fn main() {
    let args = Args::parse();
    std::process::exit(setup::run(&args));
}
