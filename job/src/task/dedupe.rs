//! Exactly-once output without broker transactions: every record carries its
//! identity (`weir.id`), and a task that restores a checkpoint first reads
//! what its exactly-once outputs hold after that checkpoint's positions. The
//! replay then skips each identity found there, once.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use tracing::info;
use weir_operators::ids::ROW_ID_LEN;
use weir_state::CheckpointMeta;

use super::SourceTask;
use super::checkpoint::Positions;
use crate::kafka::{end_offsets, read_output_ids};

/// The flow number in the identity of a dead letter for a record that could
/// not be decoded, or'ed with the source table's index (flows number from 0).
pub(super) const DECODE_FLOW: u16 = 0x8000;
pub(super) const RECORD_ID_LEN: usize = 2 + ROW_ID_LEN;

/// An output record's identity: the flow that made it, then its row identity.
pub(super) fn record_id(flow: u16, row_id: &[u8]) -> [u8; RECORD_ID_LEN] {
    let mut id = [0u8; RECORD_ID_LEN];
    id[..2].copy_from_slice(&flow.to_be_bytes());
    id[2..].copy_from_slice(row_id);
    id
}

/// Output identities a crashed run produced after the checkpoint being
/// replayed from; the replay skips them once each.
pub(super) struct Dedupe {
    ids: HashSet<Box<[u8]>>,
}

impl Dedupe {
    /// Whether `id` was already written (and forgets it: each is skipped once).
    pub fn seen(dedupe: &mut Option<Dedupe>, id: &[u8]) -> bool {
        let Some(d) = dedupe else { return false };
        let hit = d.ids.remove(id);
        if d.ids.is_empty() {
            *dedupe = None;
        }
        hit
    }
}

/// Whether an identity found in the output is one the replay must skip: a
/// record's guarantee is its flow's, so only exactly-once flows (and dead
/// letters of undecodable input, which belong to no flow) skip what a
/// crashed run wrote.
fn skipped_on_replay(id: &[u8], exactly_once_flows: &HashSet<u16>) -> bool {
    id.len() == RECORD_ID_LEN && {
        let flow = u16::from_be_bytes([id[0], id[1]]);
        flow & DECODE_FLOW != 0 || exactly_once_flows.contains(&flow)
    }
}

/// The part of the output a replay may repeat: the checkpoint's positions in
/// the topics whose records are deduplicated.
fn scan_from(positions: &Positions, topics: &[&String]) -> Positions {
    positions
        .iter()
        .filter(|(t, _)| topics.contains(t))
        .map(|(t, p)| (t.clone(), p.clone()))
        .collect()
}

impl SourceTask {
    /// With an exactly-once flow: reads the identities a crashed run wrote
    /// after the restored checkpoint (to skip them), and returns the output
    /// positions a checkpoint records, each partition never written yet at
    /// its current end.
    pub(super) fn prepare_dedupe(
        &mut self,
        restored: Option<&CheckpointMeta>,
    ) -> anyhow::Result<Positions> {
        let mut positions = restored
            .map(|m| m.sink_positions.clone())
            .unwrap_or_default();
        if !self.flows.iter().any(|f| f.exactly_once) {
            return Ok(positions);
        }
        if restored.is_some() {
            let eo_flows: HashSet<u16> = self
                .flows
                .iter()
                .filter(|f| f.exactly_once)
                .map(|f| f.flow.index as u16)
                .collect();
            let mut eo_topics: Vec<&String> = self
                .flows
                .iter()
                .filter(|f| f.exactly_once)
                .map(|f| &f.sink_topic)
                .collect();
            eo_topics.extend(self.table.dead_letter_topic.as_ref());
            let started = Instant::now();
            let (mut ids, records) = read_output_ids(
                self.sink.cluster(),
                &scan_from(&positions, &eo_topics),
                Duration::from_secs(120),
            )?;
            ids.retain(|id| skipped_on_replay(id, &eo_flows));
            info!(
                "source {}: {records} output records follow the checkpoint ({} ids to skip; read in {} ms)",
                self.table.name,
                ids.len(),
                started.elapsed().as_millis()
            );
            if !ids.is_empty() {
                self.dedupe = Some(Dedupe { ids });
            }
        }
        // Partitions with no recorded position yet: their current end.
        for topic in self.output_topics() {
            let ends = end_offsets(self.sink.cluster(), &topic, Duration::from_secs(10))?;
            let known = positions.entry(topic).or_default();
            for (p, end) in ends {
                known.entry(p).or_insert(end);
            }
        }
        Ok(positions)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn positions(entries: &[(&str, &[(i32, i64)])]) -> Positions {
        entries
            .iter()
            .map(|(t, p)| (t.to_string(), p.iter().copied().collect::<BTreeMap<_, _>>()))
            .collect()
    }

    #[test]
    fn each_identity_is_skipped_once() {
        let id = record_id(1, &[7; ROW_ID_LEN]);
        let mut d = Some(Dedupe {
            ids: HashSet::from([
                Box::from(&id[..]),
                Box::from(&record_id(2, &[7; ROW_ID_LEN])[..]),
            ]),
        });
        assert!(Dedupe::seen(&mut d, &id));
        assert!(!Dedupe::seen(&mut d, &id));
        assert!(Dedupe::seen(&mut d, &record_id(2, &[7; ROW_ID_LEN])));
        // Nothing left to skip: the set is gone.
        assert!(d.is_none());
        assert!(!Dedupe::seen(&mut d, &id));
    }

    #[test]
    fn only_exactly_once_flows_and_undecodable_input_are_skipped() {
        let eo = HashSet::from([1u16]);
        let row = [0u8; ROW_ID_LEN];
        assert!(skipped_on_replay(&record_id(1, &row), &eo));
        assert!(!skipped_on_replay(&record_id(0, &row), &eo));
        assert!(skipped_on_replay(&record_id(DECODE_FLOW | 3, &row), &eo));
        // Not one of weir's identities.
        assert!(!skipped_on_replay(&record_id(1, &row)[1..], &eo));
    }

    #[test]
    fn only_deduplicated_topics_are_scanned() {
        let known = positions(&[("a", &[(0, 4)]), ("b", &[(0, 9)]), ("dlq", &[(1, 2)])]);
        let (a, dlq) = ("a".to_string(), "dlq".to_string());
        assert_eq!(
            scan_from(&known, &[&a, &dlq]),
            positions(&[("a", &[(0, 4)]), ("dlq", &[(1, 2)])])
        );
    }
}
