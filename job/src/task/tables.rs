//! Tables a source's flows join (compacted topics): each lookup join keeps
//! its table in a RocksDB store outside the checkpoints (the topic is the
//! table's source of truth, read again at every start), filled before any
//! stream row is joined, then polled before every batch.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use weir_operators::TableChanges;
use weir_state::TaskStore;

use super::SourceTask;
use crate::table::TableFeed;

/// The task's joined tables, each with the watermark last handed to the joins.
#[derive(Default)]
pub(super) struct Tables {
    feeds: Vec<(TableFeed, i64)>,
    /// Holds the joins' tables; kept open while the task runs.
    _store: Option<TaskStore>,
}

impl SourceTask {
    /// Opens the joins' table store and reads every joined table to its end.
    pub(super) fn open_tables(&mut self) -> anyhow::Result<Tables> {
        let mut lookups = Vec::new();
        for (fi, f) in self.flows.iter().enumerate() {
            for (op, _) in f.chain.lookups() {
                lookups.push((fi, op, format!("flow{fi}.op{op}.table")));
            }
        }
        let store = if lookups.is_empty() {
            None
        } else {
            let dir = self.state.dir.join("tables");
            TaskStore::wipe(&dir)?;
            let names: Vec<String> = lookups.iter().map(|l| l.2.clone()).collect();
            let store = TaskStore::open(&dir, 0, &names, self.state.cache_bytes)?;
            for (fi, op, name) in &lookups {
                self.flows[*fi]
                    .chain
                    .attach_table_store(*op, store.operator(name)?)?;
            }
            Some(store)
        };
        let mut feeds = Vec::new();
        for t in self.settings.lookup_tables.clone() {
            let mut feed = TableFeed::open(&t, Duration::from_secs(30))?;
            let flows = &mut self.flows;
            feed.read_to_end(Duration::from_secs(600), &mut |changes| {
                for f in flows.iter_mut() {
                    f.chain.apply_table(&t.name, &changes)?;
                }
                Ok(())
            })?;
            self.count_bad(&mut feed);
            let wm = feed.watermark(Instant::now());
            for f in &mut self.flows {
                f.chain.set_table_watermark(&t.name, wm);
            }
            feeds.push((feed, wm));
        }
        Ok(Tables {
            feeds,
            _store: store,
        })
    }

    /// Takes in new table rows, and how far each table is complete. Returns
    /// whether a table's watermark advanced: rows a temporal join held for
    /// it may then be due.
    pub(super) fn poll_tables(&mut self, tables: &mut Tables) -> anyhow::Result<bool> {
        let mut advanced = false;
        for (feed, last) in &mut tables.feeds {
            if let Some(changes) = feed.poll()? {
                self.apply_table(feed, &changes)?;
            }
            let wm = feed.watermark(Instant::now());
            if wm != *last {
                for f in &mut self.flows {
                    f.chain.set_table_watermark(&feed.table.name, wm);
                }
                advanced |= wm > *last;
                *last = wm;
            }
        }
        Ok(advanced)
    }

    /// Hands a joined table's new rows to every flow, and counts its bad records.
    fn apply_table(&mut self, feed: &mut TableFeed, changes: &TableChanges) -> anyhow::Result<()> {
        for f in &mut self.flows {
            f.chain.apply_table(&feed.table.name, changes)?;
        }
        self.count_bad(feed);
        Ok(())
    }

    fn count_bad(&self, feed: &mut TableFeed) {
        self.counters
            .dead_lettered
            .fetch_add(std::mem::take(&mut feed.bad), Ordering::Relaxed);
    }
}
