//! `make decisions`: simulates thousands of rollouts through the real analysis code and prints
//! the false-decision and power table (markdown). Flags: `--runs N` (default 2000), `--seed S`,
//! `--threads T` (default 2).

use modelgate::rollout::analysis::simulate::table::{report, standard_rows};

fn main() {
    let (mut runs, mut seed, mut threads) = (2000usize, 20_261_127u64, 2usize);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().and_then(|v| v.parse::<u64>().ok());
        match (flag.as_str(), value) {
            ("--runs", Some(v)) => runs = v as usize,
            ("--seed", Some(v)) => seed = v,
            ("--threads", Some(v)) => threads = v.max(1) as usize,
            _ => {
                eprintln!("usage: decisions [--runs N] [--seed S] [--threads T]");
                std::process::exit(2);
            }
        }
    }
    print!("{}", report(&standard_rows(), runs, seed, threads));
}
