//! What a run produces: one JSON document per scenario, and its markdown
//! summary (the table that goes into docs/performance.md).

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The result of one scenario run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub scenario: String,
    /// The command line (without the program name).
    pub command: String,
    pub base_url: String,
    pub started_at: String,
    pub finished_at: String,
    pub env: Env,
    /// The scenario's parameters as given.
    pub params: Value,
    /// Headline figures, in order.
    pub figures: Vec<Figure>,
    /// The targets this scenario measures.
    pub targets: Vec<TargetCheck>,
    /// Everything else the scenario measured (latency summaries, tallies, sweep points).
    pub details: Value,
    pub notes: Vec<String>,
}

/// Machine state around a run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Env {
    pub cpus: usize,
    pub cpu_model: String,
    /// `/proc/loadavg` (1, 5, 15 min) before and after the run.
    pub loadavg_before: [f64; 3],
    pub loadavg_after: [f64; 3],
    pub server_pid: Option<u32>,
    /// Server RSS in KiB when the run started and ended (with --server-pid).
    pub server_rss_kib_before: Option<u64>,
    pub server_rss_kib_after: Option<u64>,
    /// The server's soft limit of open files (with --server-pid).
    pub server_nofile_limit: Option<u64>,
    pub loadgen_nofile_limit: Option<u64>,
    /// CPU time (user + system) the server and the load generator used during
    /// the run, setup included, in seconds.
    pub server_cpu_secs: Option<f64>,
    pub loadgen_cpu_secs: Option<f64>,
}

/// One headline number.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Figure {
    pub name: String,
    pub value: f64,
    pub unit: String,
}

/// A target of the issue and whether this run met it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TargetCheck {
    pub name: String,
    pub target: String,
    pub measured: String,
    pub met: bool,
}

pub fn figure(name: &str, value: f64, unit: &str) -> Figure {
    Figure {
        name: name.to_owned(),
        value,
        unit: unit.to_owned(),
    }
}

pub fn target(name: &str, target: &str, measured: String, met: bool) -> TargetCheck {
    TargetCheck {
        name: name.to_owned(),
        target: target.to_owned(),
        measured,
        met,
    }
}

/// A number for a table: integers without decimals, others with up to 2
/// (small values with 3).
pub fn format_number(value: f64) -> String {
    if !value.is_finite() {
        return value.to_string();
    }
    if value.fract() == 0.0 && value.abs() < 1e15 {
        return group_thousands(&format!("{value:.0}"));
    }
    let text = if value.abs() < 10.0 {
        format!("{value:.3}")
    } else if value.abs() < 1000.0 {
        format!("{value:.2}")
    } else {
        format!("{value:.0}")
    };
    let (int, frac) = text.split_once('.').unwrap_or((&text, ""));
    let int = group_thousands(int);
    if frac.is_empty() {
        int
    } else {
        format!("{int}.{frac}")
    }
}

fn group_thousands(int: &str) -> String {
    let (sign, digits) = match int.strip_prefix('-') {
        Some(rest) => ("-", rest),
        None => ("", int),
    };
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    format!("{sign}{out}")
}

fn loadavg(load: &[f64; 3]) -> String {
    format!("{:.2} {:.2} {:.2}", load[0], load[1], load[2])
}

/// The markdown summary of one report.
pub fn markdown(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "### `{}`\n", report.scenario);
    let _ = writeln!(out, "`parley-loadgen {}`\n", report.command);
    let _ = writeln!(
        out,
        "Run {} → {}; load average before {} / after {} ({} CPUs).\n",
        report.started_at,
        report.finished_at,
        loadavg(&report.env.loadavg_before),
        loadavg(&report.env.loadavg_after),
        report.env.cpus
    );
    if let (Some(server), Some(loadgen)) = (report.env.server_cpu_secs, report.env.loadgen_cpu_secs)
    {
        let _ = writeln!(
            out,
            "CPU time during the run (setup included): server {server:.1} s, load generator {loadgen:.1} s.\n"
        );
    }
    let _ = writeln!(out, "| Figure | Value |\n|---|---:|");
    for f in &report.figures {
        let unit = if f.unit.is_empty() {
            String::new()
        } else {
            format!(" {}", f.unit)
        };
        let _ = writeln!(out, "| {} | {}{} |", f.name, format_number(f.value), unit);
    }
    if !report.targets.is_empty() {
        let _ = writeln!(
            out,
            "\n| Target | Goal | Measured | Met |\n|---|---|---|---|"
        );
        for t in &report.targets {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} |",
                t.name,
                t.target,
                t.measured,
                if t.met { "yes" } else { "**no**" }
            );
        }
    }
    if let Some(points) = report.details.get("points").and_then(Value::as_array) {
        let _ = writeln!(
            out,
            "\n| Offered msg/s | Delivered msg/s | p50 ms | p99 ms | p99.9 ms | errors | lost | duplicates |\n|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for p in points {
            let num = |v: &Value| format_number(v.as_f64().unwrap_or(f64::NAN));
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                num(&p["offered_per_sec"]),
                num(&p["delivered_per_sec"]),
                num(&p["latency"]["p50_ms"]),
                num(&p["latency"]["p99_ms"]),
                num(&p["latency"]["p999_ms"]),
                num(&p["errors"]),
                num(&p["tally"]["lost"]),
                num(&p["tally"]["duplicates"]),
            );
        }
    }
    for note in &report.notes {
        let _ = writeln!(out, "\n> {note}");
    }
    out
}

/// Reads `/proc/loadavg`.
pub fn read_loadavg() -> [f64; 3] {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut values = text
        .split_whitespace()
        .take(3)
        .map(|v| v.parse().unwrap_or(f64::NAN));
    [
        values.next().unwrap_or(f64::NAN),
        values.next().unwrap_or(f64::NAN),
        values.next().unwrap_or(f64::NAN),
    ]
}

/// Resident set size of `pid` in KiB (`VmRSS` of `/proc/<pid>/status`).
pub fn read_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_status_kib(&status, "VmRSS:")
}

fn parse_status_kib(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// CPU time (user + system) of `pid` ("self" for this process) and of its
/// children that have exited (the capacity scenario's workers), in seconds,
/// from `/proc/<pid>/stat` (assuming the usual 100 clock ticks per second).
pub fn read_cpu_secs(pid: &str) -> Option<f64> {
    parse_cpu_secs(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

fn parse_cpu_secs(stat: &str) -> Option<f64> {
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime, stime, cutime and cstime are fields 14 to 17; `rest` starts at field 3.
    let ticks = fields
        .get(11..15)?
        .iter()
        .map(|f| f.parse::<u64>().ok())
        .sum::<Option<u64>>()?;
    Some(ticks as f64 / 100.0)
}

/// Soft limit of open files of `pid` ("self" for this process).
pub fn read_nofile_limit(pid: &str) -> Option<u64> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    parse_nofile(&limits)
}

fn parse_nofile(limits: &str) -> Option<u64> {
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_default()
}

pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_readable() {
        assert_eq!(format_number(4000.0), "4,000");
        assert_eq!(format_number(123_456_789.0), "123,456,789");
        assert_eq!(format_number(-1234.0), "-1,234");
        assert_eq!(format_number(0.0), "0");
        assert_eq!(format_number(1.23456), "1.235");
        assert_eq!(format_number(29.987), "29.99");
        assert_eq!(format_number(4123.7), "4,124");
    }

    #[test]
    fn proc_files_are_parsed() {
        let status = "Name:\tparley\nVmPeak:\t  1000 kB\nVmRSS:\t   52340 kB\n";
        assert_eq!(parse_status_kib(status, "VmRSS:"), Some(52_340));
        assert_eq!(parse_status_kib("", "VmRSS:"), None);
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max cpu time              unlimited            unlimited            seconds   \n\
                      Max open files            20000                20000                files     \n";
        assert_eq!(parse_nofile(limits), Some(20_000));
        assert!(read_rss_kib(std::process::id()).is_some_and(|kib| kib > 0));
        let stat = "1234 (par ley) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0";
        assert_eq!(parse_cpu_secs(stat), Some(3.0));
        // Children that have exited count too.
        let stat = "1234 (par ley) S 1 2 3 4 5 6 7 8 9 10 250 50 70 30 20 0";
        assert_eq!(parse_cpu_secs(stat), Some(4.0));
        assert_eq!(parse_cpu_secs("1 (x) S 1"), None);
        assert!(read_cpu_secs("self").is_some());
    }

    #[test]
    fn markdown_lists_figures_targets_and_points() {
        let report = Report {
            scenario: "messaging".into(),
            command: "messaging --rate 100".into(),
            base_url: "http://127.0.0.1:1".into(),
            started_at: "a".into(),
            finished_at: "b".into(),
            env: Env::default(),
            params: Value::Null,
            figures: vec![figure("delivered", 4000.0, "msg/s")],
            targets: vec![target("throughput", "≥ 4,000 msg/s", "4,000".into(), true)],
            details: serde_json::json!({"points": [{"offered_per_sec": 100.0, "delivered_per_sec": 99.5,
                "latency": {"p50_ms": 1.5, "p99_ms": 3.0, "p999_ms": 4.0}, "errors": 0,
                "tally": {"lost": 0, "duplicates": 0}}]}),
            notes: vec!["a note".into()],
        };
        let md = markdown(&report);
        assert!(md.contains("| delivered | 4,000 msg/s |"), "{md}");
        assert!(
            md.contains("| throughput | ≥ 4,000 msg/s | 4,000 | yes |"),
            "{md}"
        );
        assert!(
            md.contains("| 100 | 99.50 | 1.500 | 3 | 4 | 0 | 0 | 0 |"),
            "{md}"
        );
        assert!(md.contains("> a note"), "{md}");
    }
}
