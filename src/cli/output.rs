//! How client commands print results for people (and `--json` for programs).

use crate::wire::{KeyInfo, StatusResult};
use std::fmt::Write;

/// The `keys` listing: a table, or a JSON array.
pub fn keys(keys: &[KeyInfo], json: bool) -> String {
    if json {
        return serde_json::to_string_pretty(keys).expect("key descriptions serialize");
    }
    if keys.is_empty() {
        return "no signing keys on the token".to_owned();
    }
    let rows: Vec<[&str; 5]> = keys
        .iter()
        .map(|k| {
            [
                k.label.as_str(),
                k.id.as_str(),
                k.alg.as_deref().unwrap_or("-"),
                k.kid.as_deref().unwrap_or("-"),
                k.fingerprint.as_deref().unwrap_or("-"),
            ]
        })
        .collect();
    table(["LABEL", "ID", "ALG", "KID", "FINGERPRINT"], &rows)
}

fn table<const N: usize>(head: [&str; N], rows: &[[&str; N]]) -> String {
    let mut widths = head.map(str::len);
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&head).chain(rows) {
        let mut line = String::new();
        for (cell, width) in row.iter().zip(widths) {
            let _ = write!(line, "{cell:width$}  ");
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out.pop();
    out
}

/// The `status` report.
pub fn status(s: &StatusResult, json: bool) -> String {
    if json {
        return serde_json::to_string_pretty(s).expect("a status serializes");
    }
    let pin = match (s.token.pin.locked, s.token.pin.final_try, s.token.pin.count_low) {
        (true, _, _) => "locked",
        (_, true, _) => "final try",
        (_, _, true) => "count low",
        _ => "ok",
    };
    let keys = if s.keys.is_empty() {
        "none".to_owned()
    } else {
        let names: Vec<String> = s
            .keys
            .iter()
            .map(|k| format!("{} ({})", k.label, k.alg.as_deref().unwrap_or("unsupported")))
            .collect();
        names.join(", ")
    };
    let c = &s.counters;
    [
        format!("agent     pid {}, version {}, up {}s", s.pid, s.version, s.uptime_s),
        format!(
            "token     {:?} ({} {}, serial {}): {}",
            s.token.label, s.token.manufacturer, s.token.model, s.token.serial, s.token.state
        ),
        format!("module    {}", s.token.module),
        format!("PIN       {pin}"),
        format!("sessions  {}", s.pool.sessions),
        format!("keys      {keys}"),
        format!(
            "counters  {} signatures, {} cache hits, {} refused, {} token errors",
            c.signatures, c.cache_hits, c.refusals, c.token_errors
        ),
        format!("cache     {} tokens", s.cache.size),
        format!("audit     {}", s.audit_log.as_deref().unwrap_or("off")),
    ]
    .into_iter()
    .chain(s.per_key.iter().map(|(key, k)| {
        format!("  {key}: {} signatures, {} cache hits, {} refused", k.signatures, k.cache_hits, k.refusals)
    }))
    .collect::<Vec<_>>()
    .join("\n")
}
