//! A window as bytes, for a fleet's replicas to publish theirs and the leader to merge them:
//! protobuf through prost's derive (no .proto file, no protoc), HDR histograms in their V2
//! serialization. Decoding never trusts the bytes: histogram bounds must be the window's own
//! (so no allocation is sized by the input), unit ids at most [`MAX_UNITS`], cells at most
//! [`CELLS`]; anything else is an error, never a panic.

use super::{histogram, Goal, UnitCount, Window, CELLS, MAX_MICROS, MAX_UNITS};
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use hdrhistogram::Histogram;
use prost::Message;

/// Why bytes are not a window.
#[derive(Debug, thiserror::Error)]
#[error("not a published window: {0}")]
pub struct WireError(String);

#[derive(Clone, PartialEq, prost::Message)]
struct WireWindow {
    #[prost(uint64, tag = "1")]
    requests: u64,
    #[prost(uint64, tag = "2")]
    errors: u64,
    #[prost(bytes = "vec", tag = "3")]
    latency: Vec<u8>,
    #[prost(bytes = "vec", tag = "4")]
    error_latency: Vec<u8>,
    #[prost(uint32, tag = "5")]
    unit_level: u32,
    #[prost(fixed64, repeated, tag = "6")]
    unit_keys: Vec<u64>,
    #[prost(uint64, tag = "7")]
    unkeyed: u64,
    #[prost(message, optional, tag = "8")]
    conversion: Option<WireGoal>,
    #[prost(message, optional, tag = "9")]
    reward: Option<WireGoal>,
    #[prost(message, optional, tag = "10")]
    accuracy: Option<WireGoal>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct WireGoal {
    #[prost(uint64, tag = "1")]
    n: u64,
    #[prost(double, tag = "2")]
    sum: f64,
    #[prost(double, tag = "3")]
    mean: f64,
    #[prost(double, tag = "4")]
    m2: f64,
    /// Only cells with samples: their index, count and sum.
    #[prost(uint32, repeated, tag = "5")]
    cell_index: Vec<u32>,
    #[prost(uint64, repeated, tag = "6")]
    cell_n: Vec<u64>,
    #[prost(double, repeated, tag = "7")]
    cell_sum: Vec<f64>,
}

fn histogram_bytes(h: &Histogram<u64>) -> Vec<u8> {
    let mut out = Vec::new();
    // Writing to a Vec fails only on a histogram that cannot be encoded; ours always can.
    if V2Serializer::new().serialize(h, &mut out).is_err() {
        out.clear();
    }
    out
}

fn histogram_from(bytes: &[u8], what: &str) -> Result<Histogram<u64>, WireError> {
    if bytes.is_empty() {
        return Ok(histogram());
    }
    // V2 header: cookie, payload length, normalizing offset, significant digits (u32 each),
    // lowest and highest value (u64 each), all big-endian. Checked before the deserializer
    // sizes a histogram from them.
    let word =
        |at: usize, len: usize| bytes.get(at..at + len).map(|b| b.iter().fold(0u64, |a, x| a << 8 | u64::from(*x)));
    let (digits, low, high) = (word(12, 4), word(16, 8), word(24, 8));
    if (digits, low, high) != (Some(3), Some(1), Some(MAX_MICROS)) {
        return Err(WireError(format!("{what}: histogram bounds are not 1 µs..10 min at 3 digits")));
    }
    Deserializer::new().deserialize(&mut &bytes[..]).map_err(|e| WireError(format!("{what}: {e:?}")))
}

fn goal_to(g: &Goal) -> Option<WireGoal> {
    if g.n == 0 {
        return None;
    }
    let mut w = WireGoal { n: g.n, sum: g.sum, mean: g.mean, m2: g.m2, ..WireGoal::default() };
    for (i, (n, sum)) in g.cells.iter().enumerate().filter(|(_, c)| c.0 > 0) {
        w.cell_index.push(i as u32);
        w.cell_n.push(*n);
        w.cell_sum.push(*sum);
    }
    Some(w)
}

fn goal_from(w: Option<WireGoal>, what: &str) -> Result<Goal, WireError> {
    let Some(w) = w else { return Ok(Goal::default()) };
    let cells = w.cell_index.len();
    if cells != w.cell_n.len() || cells != w.cell_sum.len() || cells > CELLS {
        return Err(WireError(format!("{what}: {cells} cells do not line up (at most {CELLS})")));
    }
    if ![w.sum, w.mean, w.m2].iter().all(|v| v.is_finite()) {
        return Err(WireError(format!("{what}: moments are not finite")));
    }
    let mut g = Goal { n: w.n, sum: w.sum, mean: w.mean, m2: w.m2, cells: vec![(0, 0.0); CELLS] };
    for ((i, n), sum) in w.cell_index.iter().zip(&w.cell_n).zip(&w.cell_sum) {
        let cell = g.cells.get_mut(*i as usize).ok_or_else(|| WireError(format!("{what}: cell {i} out of range")))?;
        *cell = (*n, *sum);
    }
    Ok(g)
}

impl Window {
    /// The window as bytes (see [`Window::from_bytes`]).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut unit_keys: Vec<u64> = self.units.keys.iter().copied().collect();
        unit_keys.sort_unstable();
        WireWindow {
            requests: self.requests,
            errors: self.errors,
            latency: histogram_bytes(&self.latency),
            error_latency: histogram_bytes(&self.error_latency),
            unit_level: self.units.level,
            unit_keys,
            unkeyed: self.units.unkeyed,
            conversion: goal_to(&self.conversion),
            reward: goal_to(&self.reward),
            accuracy: goal_to(&self.accuracy),
        }
        .encode_to_vec()
    }

    /// A window from [`Window::to_bytes`]; every bound checked.
    pub fn from_bytes(bytes: &[u8]) -> Result<Window, WireError> {
        let w = WireWindow::decode(bytes).map_err(|e| WireError(e.to_string()))?;
        if w.unit_keys.len() > MAX_UNITS || w.unit_level > 64 || w.errors > w.requests {
            return Err(WireError(format!(
                "{} unit ids at level {} ({} errors of {} requests)",
                w.unit_keys.len(),
                w.unit_level,
                w.errors,
                w.requests
            )));
        }
        Ok(Window {
            requests: w.requests,
            errors: w.errors,
            latency: histogram_from(&w.latency, "latency")?,
            error_latency: histogram_from(&w.error_latency, "error_latency")?,
            units: UnitCount { keys: w.unit_keys.into_iter().collect(), level: w.unit_level, unkeyed: w.unkeyed },
            conversion: goal_from(w.conversion, "conversion")?,
            reward: goal_from(w.reward, "reward")?,
            accuracy: goal_from(w.accuracy, "accuracy")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::Unit;
    use super::*;
    use std::time::Duration;

    fn sample(seed: u64) -> Window {
        let mut w = Window::default();
        for i in 0..5000u64 {
            let unit = Unit::Key(xxhash_rust::xxh3::xxh3_64(&(i % 700 + seed).to_le_bytes()));
            w.record(Duration::from_micros(100 + (i * 7919 + seed) % 90_000), i % 17 == 0, unit);
            w.conversion.add(unit, (i % 3 == 0) as u8 as f64);
            w.reward.add(unit, (i % 11) as f64 / 3.0);
        }
        w.accuracy.add_proportion(Unit::Request(9), 10, 7);
        w
    }

    #[test]
    fn a_window_survives_the_wire_and_merges_exactly() {
        let (a, b) = (sample(1), sample(2));
        let (a2, b2) = (Window::from_bytes(&a.to_bytes()).unwrap(), Window::from_bytes(&b.to_bytes()).unwrap());
        assert_eq!(a2.snapshot(), a.snapshot());
        assert_eq!(
            (a2.latency.clone(), a2.units.clone(), a2.conversion.clone()),
            (a.latency.clone(), a.units.clone(), a.conversion.clone())
        );
        let (mut direct, mut wired) = (a.clone(), a2);
        direct.merge(&b);
        wired.merge(&b2);
        assert_eq!(wired.snapshot(), direct.snapshot());
        assert_eq!(wired.latency, direct.latency, "HDR histograms add exactly");
        assert_eq!(Window::from_bytes(&Window::default().to_bytes()).unwrap().snapshot(), Window::default().snapshot());
    }

    #[test]
    fn bad_bytes_are_an_error_never_a_panic() {
        let good = sample(3).to_bytes();
        for cut in [1, 7, 40, good.len() / 2, good.len() - 1] {
            let _ = Window::from_bytes(&good[..cut]);
        }
        let mut flipped = good.clone();
        for i in (0..flipped.len()).step_by(97) {
            flipped[i] ^= 0x5a;
            let _ = Window::from_bytes(&flipped);
        }
        // A histogram claiming enormous bounds is refused before anything is sized by it.
        let mut huge = histogram_bytes(&Histogram::<u64>::new_with_bounds(1, u64::MAX / 4, 5).unwrap());
        huge.truncate(40);
        let w = WireWindow { latency: huge, ..WireWindow::default() }.encode_to_vec();
        assert!(Window::from_bytes(&w).unwrap_err().to_string().contains("bounds"));
        let w = WireWindow { unit_keys: vec![1; MAX_UNITS + 1], ..WireWindow::default() }.encode_to_vec();
        assert!(Window::from_bytes(&w).is_err());
    }
}
