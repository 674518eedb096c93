//! Replays every input kept under `fuzz/seeds/<target>/` and `fuzz/regressions/<target>/`
//! (crashers the fuzz targets found, kept once fixed) through the checks the fuzz targets run.

use std::path::Path;

fn replay(target: &str, check: fn(&[u8])) {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut count = 0;
    for dir in [fuzz.join("seeds").join(target), fuzz.join("regressions").join(target)] {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            let outcome = std::panic::catch_unwind(|| check(&data));
            assert!(outcome.is_ok(), "{} fails again", path.display());
            count += 1;
        }
    }
    assert!(count > 1, "no inputs kept for {target}");
}

#[test]
fn oip_decoder_inputs() {
    replay("oip", modelgate::fuzzing::oip);
}

#[test]
fn routes_loader_inputs() {
    replay("routes", modelgate::fuzzing::routes);
}

#[test]
fn request_id_and_feedback_inputs() {
    replay("request_id", modelgate::fuzzing::request_id);
}
