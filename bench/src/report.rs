//! Figures, their targets, the Markdown table and the JSON report.

use serde::{Deserialize, Serialize};

/// Whether a larger number is better (throughput) or worse (latency, memory, time).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Better {
    Higher,
    Lower,
}

/// How the ratio to the floor reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RatioKind {
    /// How many times the floor's cost ours is (per call, per byte, per second spent):
    /// `floor/ours` for throughput, `ours/floor` otherwise. Lower is better.
    Cost,
    /// Ours as a share of the floor's throughput. Higher is better.
    Share,
}

/// What a target constrains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Subject {
    Ratio,
    Ours,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    AtMost,
    AtLeast,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Check {
    pub subject: Subject,
    pub op: Op,
    pub value: f64,
    /// As printed in the target column, e.g. `≤ 2× floor`.
    pub label: String,
}

/// Met, missed by at most 25 %, or missed by more (which fails `--quick`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Met,
    Near,
    Missed,
}

/// One line of the table: our figure, the floor measured in the same run, the target.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Figure {
    pub figure: String,
    pub unit: String,
    pub better: Better,
    pub ours: f64,
    pub floor: Option<f64>,
    /// What the floor is, in a few words.
    pub floor_name: Option<String>,
    pub ratio_kind: RatioKind,
    pub ratio: Option<f64>,
    pub checks: Vec<Check>,
    pub verdict: Option<Verdict>,
    pub notes: Vec<String>,
}

impl Figure {
    pub fn new(
        figure: impl Into<String>,
        unit: impl Into<String>,
        better: Better,
        ours: f64,
    ) -> Self {
        Self {
            figure: figure.into(),
            unit: unit.into(),
            better,
            ours,
            floor: None,
            floor_name: None,
            ratio_kind: RatioKind::Cost,
            ratio: None,
            checks: Vec::new(),
            verdict: None,
            notes: Vec::new(),
        }
    }

    pub fn floor(mut self, value: f64, name: impl Into<String>) -> Self {
        self.floor = Some(value);
        self.floor_name = Some(name.into());
        self
    }

    pub fn share(mut self) -> Self {
        self.ratio_kind = RatioKind::Share;
        self
    }

    /// A target on the ratio (`≤ 2× floor`, `≥ 50 % of floor`).
    pub fn ratio_target(mut self, op: Op, value: f64, label: impl Into<String>) -> Self {
        self.checks.push(Check {
            subject: Subject::Ratio,
            op,
            value,
            label: label.into(),
        });
        self
    }

    /// A target on our own figure (`≥ 20,000/s`, `< 2 s`).
    pub fn target(mut self, op: Op, value: f64, label: impl Into<String>) -> Self {
        self.checks.push(Check {
            subject: Subject::Ours,
            op,
            value,
            label: label.into(),
        });
        self
    }

    pub fn note(mut self, note: impl Into<String>) -> Self {
        self.notes.push(note.into());
        self
    }

    /// Fills in the ratio and the verdict.
    pub fn finish(mut self) -> Self {
        self.ratio = self.floor.and_then(|floor| {
            let r = match (self.ratio_kind, self.better) {
                (RatioKind::Share, _) => self.ours / floor,
                (RatioKind::Cost, Better::Higher) => floor / self.ours,
                (RatioKind::Cost, Better::Lower) => self.ours / floor,
            };
            r.is_finite().then_some(r)
        });
        if !self.checks.is_empty() {
            let mut verdict = Verdict::Met;
            for check in &self.checks {
                let actual = match check.subject {
                    Subject::Ratio => self.ratio,
                    Subject::Ours => Some(self.ours),
                };
                let v = match actual {
                    None => Verdict::Missed,
                    Some(a) => judge(check.op, a, check.value),
                };
                verdict = verdict.max_by_severity(v);
            }
            self.verdict = Some(verdict);
        }
        self
    }
}

impl Verdict {
    fn rank(self) -> u8 {
        match self {
            Verdict::Met => 0,
            Verdict::Near => 1,
            Verdict::Missed => 2,
        }
    }

    fn max_by_severity(self, other: Verdict) -> Verdict {
        if other.rank() > self.rank() {
            other
        } else {
            self
        }
    }
}

/// Met; or missed by at most 25 % of the target; or missed by more.
fn judge(op: Op, actual: f64, target: f64) -> Verdict {
    let (met, near) = match op {
        Op::AtMost => (actual <= target, actual <= target * 1.25),
        Op::AtLeast => (actual >= target, actual >= target * 0.75),
    };
    if met {
        Verdict::Met
    } else if near {
        Verdict::Near
    } else {
        Verdict::Missed
    }
}

/// A number with its unit, rounded for reading.
pub fn show(value: f64, unit: &str) -> String {
    let n = if value.abs() >= 100.0 || value.fract() == 0.0 {
        group_thousands(value.round() as i64)
    } else if value.abs() >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    };
    if unit.is_empty() {
        n
    } else {
        format!("{n} {unit}")
    }
}

fn group_thousands(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

fn show_ratio(f: &Figure) -> String {
    match (f.ratio, f.ratio_kind) {
        (None, _) => "—".into(),
        (Some(r), RatioKind::Cost) => format!("{r:.2}×"),
        (Some(r), RatioKind::Share) => format!("{:.0} %", r * 100.0),
    }
}

fn show_verdict(v: Option<Verdict>) -> &'static str {
    match v {
        None => "",
        Some(Verdict::Met) => "yes",
        Some(Verdict::Near) => "no (within 25 %)",
        Some(Verdict::Missed) => "**NO**",
    }
}

/// The Markdown table, then the floors and notes below it.
pub fn markdown(figures: &[Figure], missing: &[String]) -> String {
    let mut out = String::new();
    out.push_str("| figure | ours | floor | ratio | target | ok |\n");
    out.push_str("| --- | ---: | ---: | ---: | --- | --- |\n");
    for f in figures {
        let floor = f.floor.map_or("—".to_owned(), |v| show(v, &f.unit));
        let target = f
            .checks
            .iter()
            .map(|c| c.label.as_str())
            .collect::<Vec<_>>()
            .join("; ");
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            f.figure,
            show(f.ours, &f.unit),
            floor,
            show_ratio(f),
            if target.is_empty() { "—" } else { &target },
            show_verdict(f.verdict),
        ));
    }
    out.push('\n');
    out.push_str(
        "Ratio: `N×` is our cost in units of the floor's (time or memory per operation; \
         lower is better); `N %` is our throughput as a share of the floor's.\n\n",
    );
    let mut n = 0;
    for f in figures {
        if f.floor_name.is_none() && f.notes.is_empty() {
            continue;
        }
        n += 1;
        out.push_str(&format!("{n}. **{}**", f.figure));
        if let Some(name) = &f.floor_name {
            out.push_str(&format!(" — floor: {name}."));
        }
        for note in &f.notes {
            out.push_str(&format!(" {note}"));
            if !note.ends_with('.') {
                out.push('.');
            }
        }
        out.push('\n');
    }
    for m in missing {
        out.push_str(&format!("\nnot measured yet: {m}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_and_verdicts() {
        let f = Figure::new("calls", "calls/s", Better::Higher, 100.0)
            .floor(300.0, "raw")
            .ratio_target(Op::AtMost, 2.0, "≤ 2× floor")
            .finish();
        assert_eq!(f.ratio, Some(3.0));
        assert_eq!(f.verdict, Some(Verdict::Missed));

        let f = Figure::new("writes", "turns/s", Better::Higher, 45.0)
            .floor(100.0, "sled")
            .share()
            .ratio_target(Op::AtLeast, 0.5, "≥ 50 %")
            .finish();
        assert_eq!(f.verdict, Some(Verdict::Near));

        let f = Figure::new("mem", "KiB", Better::Lower, 30.0)
            .target(Op::AtMost, 40.0, "≤ 40 KiB")
            .finish();
        assert_eq!(f.verdict, Some(Verdict::Met));
        assert_eq!(f.ratio, None);
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(show(1234567.8, "calls/s"), "1,234,568 calls/s");
        assert_eq!(show(12.345, "µs"), "12.3 µs");
        assert_eq!(show(1.2345, ""), "1.23");
        assert_eq!(show(0.0, "calls"), "0 calls");
    }
}
