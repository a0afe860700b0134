//! One module per row of the table. Each `run` measures ours and its floor in the same
//! process and returns the figures; helper phases that need a process of their own
//! (a clean RSS reading, a restart) are further `--row` names.

mod activation;
mod call;
mod capacity;
mod drain;
mod durable;
mod http;
mod memory;
mod reminders;
mod restart;
mod timers;

use serde::Serialize;

use crate::common::Opts;
use crate::report::Figure;

/// What a row hands back to the orchestrator.
#[derive(Debug, Default, Serialize)]
pub struct RowOut {
    pub figures: Vec<Figure>,
    /// Figures of this row that were not measured, and why.
    pub missing: Vec<String>,
}

impl RowOut {
    pub fn new(figures: Vec<Figure>) -> Self {
        Self {
            figures: figures.into_iter().map(Figure::finish).collect(),
            missing: Vec::new(),
        }
    }

    /// Records a figure that could not be measured at the scale it asks for.
    pub fn missing(mut self, what: Option<String>) -> Self {
        self.missing.extend(what);
        self
    }
}

pub async fn run(row: &str, opts: &Opts) -> anyhow::Result<serde_json::Value> {
    let out = match row {
        "call" => call::run(opts).await?,
        "activation" => activation::run(opts).await?,
        "durable" => durable::run(opts).await?,
        "http" => http::run(opts).await?,
        "timers" => timers::run(opts).await?,
        "memory" => memory::run(opts).await?,
        "memory-raw" => return memory::raw_phase(opts).await,
        "limit" => return crate::common::limit_phase(opts).await,
        "capacity" => capacity::run(opts).await?,
        "drain" => drain::run(opts).await?,
        "reminders" => reminders::run(opts).await?,
        "restart" => restart::run(opts).await?,
        "reminders-populate" => return reminders::populate(opts).await,
        "reminders-restart" => return reminders::restart(opts).await,
        other => anyhow::bail!("unknown row {other:?}"),
    };
    Ok(serde_json::to_value(out)?)
}
