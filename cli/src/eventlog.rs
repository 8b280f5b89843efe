//! `cloister eventlog`: parse a TDX event log (the CCEL log area, as in
//! `/sys/firmware/acpi/tables/data/CCEL`), explain each event and replay it to RTMR values.
//! With `--quote`, compare the replay with the RTMRs the quote shows. Reads files only;
//! the parsing is in `cloister-measurements`.

use std::path::PathBuf;

use anyhow::{Context, bail};
use cloister_measurements::Quote;
use cloister_measurements::eventlog::{CcelTable, EventLog};

/// Explain and replay a TDX event log.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The event log (the CCEL log area).
    file: PathBuf,
    /// The CCEL ACPI table, to check and show where the log lives.
    #[arg(long)]
    table: Option<PathBuf>,
    /// A quote from the same TD: exit non-zero unless the replay equals its RTMRs.
    #[arg(long)]
    quote: Option<PathBuf>,
    /// Print JSON (every event with its data) instead of text.
    #[arg(long)]
    json: bool,
}

fn read(path: &PathBuf) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if let Some(table) = &args.table {
        let t = CcelTable::parse(&read(table)?).context("bad CCEL table")?;
        println!(
            "CCEL: type {} subtype {}, log at {:#x}, {} bytes",
            t.cc_type, t.cc_subtype, t.log_area_start, t.log_area_min_len
        );
    }
    let log = EventLog::parse(&read(&args.file)?).context("bad event log")?;
    let rtmrs = log.replay();
    if args.json {
        let out = serde_json::json!({
            "events": log.events,
            "rtmr0": hex::encode(rtmrs[0]),
            "rtmr1": hex::encode(rtmrs[1]),
            "rtmr2": hex::encode(rtmrs[2]),
            "rtmr3": hex::encode(rtmrs[3]),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        for e in &log.events {
            let reg = match e.rtmr() {
                Some(i) => format!("RTMR{i}"),
                None if e.mr_index == 0 => "MRTD".to_owned(),
                None => "-".to_owned(),
            };
            let digest = e.sha384.map(hex::encode).unwrap_or_default();
            println!(
                "{:>4} {:<5} {:<32} {}",
                e.index, reg, e.event_type_name, e.description
            );
            if !digest.is_empty() {
                println!("           sha384 {digest}");
            }
        }
        for (i, r) in rtmrs.iter().enumerate() {
            println!("rtmr{i} {}", hex::encode(r));
        }
    }
    if let Some(path) = &args.quote {
        let quote = Quote::parse(&read(path)?).context("bad quote")?;
        let mut differ = Vec::new();
        for (i, (log_value, quote_value)) in rtmrs.iter().zip(&quote.report.rtmrs).enumerate() {
            if log_value != quote_value {
                differ.push(format!(
                    "rtmr{i}: the log replays to {}, the quote has {}",
                    hex::encode(log_value),
                    hex::encode(quote_value)
                ));
            }
        }
        if !differ.is_empty() {
            bail!("the log does not match the quote:\n{}", differ.join("\n"));
        }
        eprintln!("the log replays to the quote's RTMR0..RTMR3");
    }
    Ok(())
}
