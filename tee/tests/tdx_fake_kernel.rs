//! The TDX backend against a folder laid out like the kernel's: a configfs-tsm report entry
//! whose `inblob` and `outblob` are FIFOs served by a thread that plays the kernel (it reads
//! the report data, bumps `generation`, then answers a "quote"), and the CCEL table and log
//! of a real TD (measurements' public test data).

use std::io::{Read, Write};
use std::path::PathBuf;

use cloister_measurements::eventlog::EventLog;
use cloister_measurements::quote::Quote;
use cloister_tee::tdx::{TdxPaths, TdxTee};
use cloister_tee::{Tee, TeeError, TeeKind};

const CCEL_TABLE: &[u8] =
    include_bytes!("../../measurements/tests/data/go-tdx-guest/ccel/ccel_table.dat");
const CCEL_DATA: &[u8] =
    include_bytes!("../../measurements/tests/data/go-tdx-guest/ccel/ccel_data.dat");
const CCEL_QUOTE: &[u8] =
    include_bytes!("../../measurements/tests/data/go-tdx-guest/ccel/cos-113-tdx-quote.dat");

struct FakeTd {
    _dir: tempfile::TempDir,
    paths: TdxPaths,
}

impl FakeTd {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let paths = TdxPaths {
            device: root.join("dev/tdx_guest"),
            tsm_report: root.join("sys/kernel/config/tsm/report"),
            report_entry: "cloister-test".into(),
            ccel_table: root.join("sys/firmware/acpi/tables/CCEL"),
            ccel_data: root.join("sys/firmware/acpi/tables/data/CCEL"),
        };
        std::fs::create_dir_all(paths.device.parent().unwrap()).unwrap();
        std::fs::write(&paths.device, b"").unwrap();
        std::fs::create_dir_all(&paths.tsm_report).unwrap();
        std::fs::create_dir_all(paths.ccel_data.parent().unwrap()).unwrap();
        std::fs::write(&paths.ccel_table, CCEL_TABLE).unwrap();
        std::fs::write(&paths.ccel_data, CCEL_DATA).unwrap();
        FakeTd { _dir: dir, paths }
    }

    fn entry(&self) -> PathBuf {
        self.paths.tsm_report.join(&self.paths.report_entry)
    }

    /// Lays out the report entry as configfs-tsm does on mkdir, with FIFOs for the blobs.
    fn make_entry(&self, provider: &str) {
        let entry = self.entry();
        std::fs::create_dir_all(&entry).unwrap();
        std::fs::write(entry.join("provider"), format!("{provider}\n")).unwrap();
        std::fs::write(entry.join("generation"), "41\n").unwrap();
        for fifo in ["inblob", "outblob"] {
            let status = std::process::Command::new("mkfifo")
                .arg(entry.join(fifo))
                .status()
                .unwrap();
            assert!(status.success());
        }
    }

    /// Plays the kernel for one request: reads the report data from `inblob`, sets
    /// `generation` to `generation_after`, and answers "QUOTE" + report data on `outblob`.
    fn serve_one(&self, generation_after: u64) -> std::thread::JoinHandle<Vec<u8>> {
        let entry = self.entry();
        std::thread::spawn(move || {
            let mut inblob = Vec::new();
            std::fs::File::open(entry.join("inblob"))
                .unwrap()
                .read_to_end(&mut inblob)
                .unwrap();
            std::fs::write(entry.join("generation"), format!("{generation_after}\n")).unwrap();
            let mut out = std::fs::OpenOptions::new()
                .write(true)
                .open(entry.join("outblob"))
                .unwrap();
            out.write_all(b"QUOTE").unwrap();
            out.write_all(&inblob).unwrap();
            inblob
        })
    }
}

fn rd(seed: u8) -> [u8; 64] {
    std::array::from_fn(|i| seed ^ i as u8)
}

#[test]
fn outside_a_td_the_error_says_so() {
    let fake = FakeTd::new();
    std::fs::remove_file(&fake.paths.device).unwrap();
    let err = TdxTee::open_at(fake.paths.clone()).unwrap_err();
    assert!(matches!(err, TeeError::NotAvailable(_)));
    assert!(
        err.to_string()
            .contains("tdx_guest: this is not a TDX guest"),
        "{err}"
    );
}

#[test]
fn a_quote_goes_through_configfs_tsm() {
    let fake = FakeTd::new();
    fake.make_entry("tdx_guest");
    let tee = TdxTee::open_at(fake.paths.clone()).unwrap();
    assert_eq!(tee.kind(), TeeKind::Tdx);
    let kernel = fake.serve_one(42);
    let quote = tee.quote(&rd(1)).unwrap();
    let seen = kernel.join().unwrap();
    assert_eq!(
        seen,
        rd(1),
        "the kernel got exactly the 64 bytes of report data"
    );
    assert_eq!(&quote[..5], b"QUOTE");
    assert_eq!(&quote[5..], &rd(1));
    // A second request through the same entry.
    let kernel = fake.serve_one(43);
    let quote = tee.quote(&rd(2)).unwrap();
    kernel.join().unwrap();
    assert_eq!(&quote[5..], &rd(2));
}

#[test]
fn another_writer_between_our_write_and_read_is_detected() {
    let fake = FakeTd::new();
    fake.make_entry("tdx_guest");
    let tee = TdxTee::open_at(fake.paths.clone()).unwrap();
    // Generation 41 -> 43: someone else wrote inblob too.
    let kernel = fake.serve_one(43);
    let err = tee.quote(&rd(3)).unwrap_err();
    kernel.join().unwrap();
    assert!(matches!(err, TeeError::Protocol(_)), "{err}");
    assert!(err.to_string().contains("from 41 to 43"), "{err}");
}

#[test]
fn another_provider_is_not_tdx() {
    let fake = FakeTd::new();
    fake.make_entry("sev_guest");
    let tee = TdxTee::open_at(fake.paths.clone()).unwrap();
    let err = tee.quote(&rd(4)).unwrap_err();
    assert!(matches!(err, TeeError::NotAvailable(_)), "{err}");
    assert!(err.to_string().contains("sev_guest"), "{err}");
}

#[test]
fn without_configfs_tsm_the_error_says_what_is_missing() {
    let fake = FakeTd::new();
    std::fs::remove_dir(&fake.paths.tsm_report).unwrap();
    let tee = TdxTee::open_at(fake.paths.clone()).unwrap();
    let err = tee.quote(&rd(5)).unwrap_err();
    assert!(matches!(err, TeeError::NotAvailable(_)), "{err}");
    assert!(err.to_string().contains("configfs-tsm"), "{err}");
}

#[test]
fn our_report_entry_is_created_and_removed_with_the_tee() {
    let fake = FakeTd::new();
    let tee = TdxTee::open_at(fake.paths.clone()).unwrap();
    // A plain folder gets no attributes: the request fails, but the entry was made.
    assert!(tee.quote(&rd(6)).is_err());
    assert!(fake.entry().is_dir());
    drop(tee);
    assert!(!fake.entry().exists());
}

#[test]
fn the_event_log_comes_from_the_ccel_table_and_replays_to_the_quote() {
    let fake = FakeTd::new();
    let tee = TdxTee::open_at(fake.paths.clone()).unwrap();
    let log = tee.event_log().unwrap();
    assert_eq!(log, CCEL_DATA);
    let replayed = EventLog::parse(&log).unwrap().replay();
    assert_eq!(replayed, Quote::parse(CCEL_QUOTE).unwrap().report.rtmrs);
}

#[test]
fn a_broken_or_missing_ccel_table_is_an_error() {
    let fake = FakeTd::new();
    let tee = TdxTee::open_at(fake.paths.clone()).unwrap();
    let mut table = CCEL_TABLE.to_vec();
    table[40] ^= 1; // breaks the checksum
    std::fs::write(&fake.paths.ccel_table, &table).unwrap();
    let err = tee.event_log().unwrap_err();
    assert!(err.to_string().contains("checksum"), "{err}");
    std::fs::remove_file(&fake.paths.ccel_table).unwrap();
    let err = tee.event_log().unwrap_err();
    assert!(matches!(err, TeeError::NotAvailable(_)), "{err}");
    assert!(err.to_string().contains("CCEL"), "{err}");
}

#[test]
fn the_td_report_ioctl_on_something_else_is_an_error_not_a_crash() {
    let fake = FakeTd::new();
    let tee = TdxTee::open_at(fake.paths.clone()).unwrap();
    // The fake device is a plain file: the kernel answers ENOTTY.
    let err = tee.td_report(&rd(7)).unwrap_err();
    assert!(matches!(err, TeeError::Io { .. }), "{err}");
}

#[test]
fn collateral_is_what_the_owner_gave() {
    let fake = FakeTd::new();
    let tee = TdxTee::open_at(fake.paths.clone()).unwrap();
    assert_eq!(tee.collateral().unwrap(), None);
    let tee = tee.with_collateral(b"{}".to_vec());
    assert_eq!(tee.collateral().unwrap(), Some(b"{}".to_vec()));
}
