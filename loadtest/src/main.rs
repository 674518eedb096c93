//! Load generator for modelgate. The harness itself arrives with issue 6; this crate keeps the
//! workspace layout of DESIGN.md in place.

fn main() {
    eprintln!("loadtest: not built yet (see issue 6); use `make test` and `make run` meanwhile");
    std::process::exit(2);
}
