//! Guest stdout and stderr: split into lines and sent to `tracing`, tagged with the grain.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use prometheus_client::metrics::counter::Counter;

use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

use crate::grain_id::GrainId;

/// A line longer than this is cut (and a partial line this long is logged as is).
pub const MAX_LINE: usize = 4096;
/// Lines a grain may log in a burst, and per second after it.
const LOG_BURST: f64 = 200.0;
const LOG_PER_SECOND: f64 = 100.0;

/// A token bucket of guest log lines, per activation. Dropped lines are counted and
/// reported in one summary line once lines flow again.
#[derive(Clone)]
pub struct LogBudget(Arc<Mutex<Bucket>>);

struct Bucket {
    tokens: f64,
    refilled: Instant,
    dropped: u64,
    metric: Counter,
}

impl LogBudget {
    pub fn new(metric: Counter) -> Self {
        Self(Arc::new(Mutex::new(Bucket {
            tokens: LOG_BURST,
            refilled: Instant::now(),
            dropped: 0,
            metric,
        })))
    }

    /// Whether a line may be logged now; `Some(n)` also reports `n` lines dropped since
    /// the last one that passed.
    pub fn take(&self) -> Option<u64> {
        // No code panics while holding this lock.
        let mut b = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let refill = now.duration_since(b.refilled).as_secs_f64() * LOG_PER_SECOND;
        b.tokens = (b.tokens + refill).min(LOG_BURST);
        b.refilled = now;
        if b.tokens < 1.0 {
            b.dropped += 1;
            b.metric.inc();
            return None;
        }
        b.tokens -= 1.0;
        Some(std::mem::take(&mut b.dropped))
    }
}

/// Logs one guest line through `budget`: sanitized, cut at `MAX_LINE`, rate-limited.
pub fn emit(budget: &LogBudget, grain: &GrainId, line: &str, log: impl FnOnce(&str)) {
    let Some(dropped) = budget.take() else {
        return;
    };
    if dropped > 0 {
        tracing::warn!(target: "grain", %grain, dropped, "guest log lines dropped (rate limit)");
    }
    let mut end = line.len().min(MAX_LINE);
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    log(&sanitize(&line[..end]));
}

#[derive(Clone)]
pub struct GuestOutput {
    grain: GrainId,
    stream: &'static str,
    budget: LogBudget,
}

impl GuestOutput {
    pub fn new(grain: GrainId, stream: &'static str, budget: LogBudget) -> Self {
        Self {
            grain,
            stream,
            budget,
        }
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(LineWriter {
            out: self.clone(),
            buf: Vec::new(),
        })
    }
}

struct LineWriter {
    out: GuestOutput,
    buf: Vec<u8>,
}

impl LineWriter {
    fn emit(&self, line: &[u8]) {
        let text = String::from_utf8_lossy(line);
        let (grain, stream) = (&self.out.grain, self.out.stream);
        emit(&self.out.budget, grain, &text, |text| {
            tracing::info!(target: "grain", %grain, stream, "{text}");
        });
    }

    fn take_lines(&mut self) {
        while let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=pos).collect();
            self.emit(&line[..line.len() - 1]);
        }
        if self.buf.len() > MAX_LINE {
            let line = std::mem::take(&mut self.buf);
            self.emit(&line);
        }
    }
}

impl AsyncWrite for LineWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.buf.extend_from_slice(data);
        self.take_lines();
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.buf.is_empty() {
            let line = std::mem::take(&mut self.buf);
            self.emit(&line);
        }
        Poll::Ready(Ok(()))
    }
}

/// Guest text reaches operators' terminals: control characters (escape sequences, carriage
/// returns that overwrite earlier output) are shown escaped instead of interpreted.
pub fn sanitize(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            if c.is_control() && c != '\t' {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::sanitize;

    #[test]
    fn floods_are_cut_to_the_budget() {
        let metric = super::Counter::default();
        let budget = super::LogBudget::new(metric.clone());
        let passed = (0..1000).filter(|_| budget.take().is_some()).count();
        assert!((200..=210).contains(&passed), "{passed}");
        assert!(metric.get() >= 790);
    }

    #[test]
    fn escapes_terminal_sequences() {
        assert_eq!(sanitize("a\u{1b}[31mred\r"), "a\\u{1b}[31mred\\r");
        assert_eq!(sanitize("plain\ttext ü"), "plain\ttext ü");
    }
}
