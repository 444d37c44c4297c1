//! `vfnvme-identify`: decoded Identify Controller and Identify Namespace data, per subsystem.
//! See `vfnvme-identify --help`.
#![forbid(unsafe_code)]

use clap::Parser;
use vfnvme_tools::identify::{self, Args};

fn main() {
    let args = Args::parse();
    std::process::exit(identify::run(&args));
}
