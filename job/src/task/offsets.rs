//! Which input offsets the group may have committed: a row is held until
//! the watermark passes the last moment a stateful stage needs it, so a
//! restart without state (or a stateless consumer of the group's offsets)
//! replays what open windows and frames still hold.

use datafusion::arrow::array::AsArray;
use datafusion::arrow::datatypes::TimestampMillisecondType;
use weir_operators::RecordMeta;
use weir_operators::decode::Decoded;
use weir_operators::window::Assigner;
use weir_sql::{Stage, WindowKind};
use weir_state::HeldOffsets;

use super::FlowRuntime;

/// What a stateful stage needs a row for, in event time.
pub(super) enum Hold {
    /// Until the last window the row is in closes (fires, plus allowed lateness).
    Window(Assigner, i64),
    /// Until no later row's frame reaches it (ROWS frames: until it is emitted).
    Over { horizon_ms: i64 },
}

impl Hold {
    /// The watermark after which a row at `ts` is no longer needed.
    fn until(&self, ts: i64) -> i64 {
        match self {
            // A row whose windows cannot be represented is set aside by the
            // operator (dead-lettered), so nothing needs it held.
            Hold::Window(w, lateness) => w
                .last_end(ts)
                .map_or(i64::MIN, |end| (end - 1).saturating_add(*lateness)),
            Hold::Over { horizon_ms } => ts.saturating_add(*horizon_ms),
        }
    }
}

/// The holds of every stateful stage of `flows`.
pub(super) fn holds(flows: &[FlowRuntime]) -> Vec<Hold> {
    flows
        .iter()
        .flat_map(|f| f.flow.stages.iter())
        .filter_map(|s| match s {
            Stage::WindowAggregate(w) => Some(match w.kind {
                // A session's rows are needed until it closes, which later
                // rows can postpone; a row is held for its own gap only.
                WindowKind::Session { gap_ms } => Hold::Over {
                    horizon_ms: gap_ms - 1 + w.allowed_lateness_ms,
                },
                kind => Hold::Window(Assigner::new(kind, w.offset_ms), w.allowed_lateness_ms),
            }),
            Stage::Over(o) => Some(Hold::Over {
                horizon_ms: o.range_horizon_ms().unwrap_or(0),
            }),
            _ => None,
        })
        .collect()
}

/// The watermark until which a row at `ts` must stay uncommitted, if it
/// must at all (`None`: every stage is already past it).
fn held_until(holds: &[Hold], ts: i64, fired_through: i64) -> Option<i64> {
    let until = holds.iter().map(|h| h.until(ts)).max().unwrap_or(i64::MIN);
    (until > fired_through).then_some(until)
}

/// Holds each decoded row's offset until the watermark passes the last moment
/// a stateful stage needs it.
pub(super) fn hold_rows(
    decoded: &Decoded,
    time_column: usize,
    metas: &[RecordMeta],
    holds: &[Hold],
    fired_through: i64,
    held: &mut HeldOffsets,
) {
    let times = decoded
        .batch
        .column(time_column)
        .as_primitive::<TimestampMillisecondType>();
    for (r, &input) in decoded.rows.iter().enumerate() {
        if let Some(until) = held_until(holds, times.value(r), fired_through) {
            let m = &metas[input];
            held.hold(m.partition, m.offset, until);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_is_held_until_its_last_window_closes() {
        let hop = Hold::Window(
            Assigner::new(
                WindowKind::Hop {
                    slide_ms: 60_000,
                    size_ms: 600_000,
                },
                0,
            ),
            0,
        );
        // In windows up to [60 s, 660 s): needed until the watermark passes 660 s - 1 ms.
        assert_eq!(held_until(&[hop], 65_000, i64::MIN), Some(659_999));
        let over = Hold::Over {
            horizon_ms: 3_600_000,
        };
        assert_eq!(held_until(&[over], 1_000, i64::MIN), Some(3_601_000));
    }

    #[test]
    fn the_longest_hold_wins_and_a_passed_one_holds_nothing() {
        let holds = [
            Hold::Over { horizon_ms: 10 },
            Hold::Over { horizon_ms: 1_000 },
        ];
        assert_eq!(held_until(&holds, 0, i64::MIN), Some(1_000));
        assert_eq!(held_until(&holds, 0, 1_000), None);
        assert_eq!(held_until(&[], 0, i64::MIN), None);
        // Near the end of time nothing overflows.
        assert_eq!(held_until(&holds, i64::MAX - 5, 0), Some(i64::MAX));
    }
}
