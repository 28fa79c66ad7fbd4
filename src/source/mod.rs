//! Sources: where records come from, cut into per-partition micro-batches.
//!
//! A source owns its poll loop and is the only component that watches the shutdown
//! token; everything downstream ends when the source's channel closes (DESIGN.md).

mod batcher;
pub mod bounded;
pub(crate) mod fetch_queue;
pub mod files;
pub mod gaps;
pub mod kafka;
mod native;
mod reader;
pub(crate) mod settings;

use crate::batch::Flush;
use crate::batch::RawBatch;

/// What a source sends downstream, in order.
#[derive(Debug)]
pub enum SourceMessage {
    Batch(RawBatch),
    /// Make everything sent so far for these partitions durable (rebalance, shutdown).
    Flush(Flush),
}
