//! End-to-end runs of `vfnvme-perf` on the simulated subsystem. Short runs, no timing
//! assertions.

use std::process::{Command, Output};

fn perf(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vfnvme-perf"))
        .args(args)
        .output()
        .expect("runs vfnvme-perf")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn randread_prints_a_total_row() {
    let o = perf(&["-t", "1", "-q", "8", "-L"]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("Device Information"), "{out}");
    assert!(out.contains("NSID 1 from core  0"), "{out}");
    let total = out
        .lines()
        .find(|l| l.starts_with("Total"))
        .expect("Total row");
    let iops: f64 = total.split_whitespace().nth(2).unwrap().parse().unwrap();
    assert!(iops > 0.0, "{total}");
    assert!(out.contains("99.00000%"), "{out}");
}

#[test]
fn number_of_ios_bounds_the_run() {
    let o = perf(&["-d", "2000", "-q", "4", "--json", "-w", "randrw", "-LL"]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "stdout:\n{out}\nstderr:\n{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("stdout is JSON");
    let total = v["total"]["ios"].as_u64().unwrap();
    // At most the queue depth more than asked for completes while draining.
    assert!((2000..=2004).contains(&total), "{total}");
    assert!(v["total"]["reads"].as_u64().unwrap() > 0);
    assert!(v["total"]["writes"].as_u64().unwrap() > 0);
    assert_eq!(v["config"]["workload"], "randrw");
    assert!(v["percentiles_us"]["p99"].as_f64().unwrap() > 0.0);
    assert!(v["histogram_us"].as_array().is_some_and(|a| !a.is_empty()));
    assert_eq!(v["errors"].as_array().unwrap().len(), 0);
}

#[test]
fn number_of_ios_counts_from_the_end_of_warm_up() {
    // What warm-up leaves in flight completes while measuring and counts against -d.
    let o = perf(&["-d", "1000", "-q", "32", "-a", "0.2", "--json"]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "stdout:\n{out}\nstderr:\n{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("stdout is JSON");
    let total = v["total"]["ios"].as_u64().unwrap();
    assert_eq!(
        total, 1000,
        "the I/Os in flight at the end of warm-up came on top"
    );
}

#[test]
fn queue_depth_one_runs_on_a_bare_queue_pair_and_on_a_channel() {
    // One command ready at a time is sent one by one, not as a run: every path of the worker
    // must still send it (-t bounds a run that sends nothing, which -d alone would not end).
    for extra in [
        &[][..],
        &["--multipath", "-r", "sim:ctrls=1"],
        &["--multipath"],
    ] {
        let mut args = vec!["-d", "500", "-t", "30", "-q", "1", "--json", "-w", "randrw"];
        args.extend_from_slice(extra);
        let o = perf(&args);
        let (out, err) = text(&o);
        assert_eq!(
            o.status.code(),
            Some(0),
            "{args:?}\nstdout:\n{out}\nstderr:\n{err}"
        );
        let v: serde_json::Value = serde_json::from_str(&out).expect("stdout is JSON");
        assert_eq!(v["total"]["ios"].as_u64(), Some(500), "{args:?}: {out}");
        assert_eq!(v["errors"].as_array().unwrap().len(), 0, "{args:?}: {out}");
    }
}

#[test]
fn json_report_parses() {
    let o = perf(&["-t", "1", "--json", "-w", "read", "-o", "8k"]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "stdout:\n{out}\nstderr:\n{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("stdout is JSON");
    assert_eq!(v["config"]["io_size"], 8192);
    assert_eq!(v["rows"].as_array().unwrap().len(), 1);
    assert!(v["total"]["iops"].as_f64().unwrap() > 0.0);
    assert_eq!(v["exit_code"], 0);
}

#[test]
fn verify_finds_no_mismatch() {
    let o = perf(&["-w", "verify", "-t", "1", "-q", "16"]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("Verify:"), "{out}");
    assert!(out.contains(", 0 mismatches"), "{out}");
}

#[test]
fn verify_reports_an_injected_mismatch() {
    let o = perf(&["-w", "verify", "-d", "3000", "--inject-mismatch", "1"]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("1 mismatch (1 stale generation)"), "{out}");
    assert!(out.contains("MISMATCH"), "{out}");
    assert!(err.contains("verify mismatches"), "{err}");
}

#[test]
fn multipath_runs_over_both_controllers() {
    let o = perf(&[
        "--multipath",
        "--policy",
        "least-queue-depth",
        "-d",
        "5000",
        "--json",
    ]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "stdout:\n{out}\nstderr:\n{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("stdout is JSON");
    let dev = v["rows"][0]["device"].as_str().unwrap();
    assert!(dev.starts_with("mpath ") && dev.contains('+'), "{dev}");
    assert_eq!(v["config"]["policy"], "least-queue-depth");
}

#[test]
fn multipath_verify_with_two_queue_pairs() {
    let o = perf(&[
        "--multipath",
        "-w",
        "verify",
        "-P",
        "2",
        "-q",
        "8",
        "-d",
        "4000",
    ]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains(", 0 mismatches"), "{out}");
}

#[test]
fn verify_with_two_bare_queue_pairs() {
    // Two queue pairs take the one-by-one submission path; one queue pair runs (the tests above).
    let o = perf(&["-w", "verify", "-P", "2", "-q", "8", "-d", "4000"]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains(", 0 mismatches"), "{out}");
}

#[test]
fn bad_arguments_exit_2_with_a_message() {
    for (args, want) in [
        (&["-q", "0"][..], "queue depth"),
        (&["-o", "4q"][..], "suffix"),
        (&["-w", "randomread"][..], "randread"),
        (&["-c", "0xzz"][..], "core mask"),
        (&["--cores", "4095"][..], "core 4095"),
        (&["-M", "150", "-w", "rw"][..], "0 to 100"),
        (&["-q", "300"][..], "--io-queue-size"),
        (&["-w", "verify", "-r", "sim:null"][..], "null"),
        (&["-r", "nvme0"][..], "invalid target"),
        (&["--control-core", "4095"][..], "--control-core 4095"),
    ] {
        let o = perf(args);
        let (_, err) = text(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
}

#[test]
fn pcie_target_fails_cleanly() {
    let o = perf(&["-r", "trtype:PCIe traddr:0000:01:00.0", "-t", "1"]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("0000:01:00.0"), "{err}");
}

#[test]
fn help_has_examples() {
    let o = perf(&["--help"]);
    let (out, _) = text(&o);
    assert_eq!(o.status.code(), Some(0));
    for s in ["EXAMPLES", "trtype:PCIe", "--multipath", "sim:ctrls=2"] {
        assert!(out.contains(s), "missing {s}");
    }
}

#[test]
fn ctrl_c_stops_the_run_and_prints_the_results_so_far() {
    use std::io::{BufRead, Read};
    // Arrange: a run that would take a minute.
    let mut child = Command::new(env!("CARGO_BIN_EXE_vfnvme-perf"))
        .args(["-t", "60"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the first progress line: the run is under way, so the handler is installed.
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut first = String::new();
    err.read_line(&mut first).unwrap();
    // Act: SIGINT.
    let killed = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let mut rest = String::new();
    err.read_to_string(&mut rest).unwrap();
    let o = child.wait_with_output().unwrap();
    // Assert: it stopped long before 60 s, drained, and printed the table.
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{first}{rest}");
    assert!(out.contains("Total"), "{out}");
    assert!(rest.contains("interrupted"), "{first}{rest}");
}

#[test]
fn runs_without_shadow_doorbells() {
    let o = perf(&["-d", "20000", "--no-shadow-doorbells", "-w", "verify"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.contains("Total"), "{out}");
}

#[test]
fn control_plane_on_a_chosen_core() {
    // The control plane runs pinned to core 0 (the only core this test can count on), beside
    // the I/O on core 0, for a multipath verify run.
    let o = perf(&[
        "-d",
        "20000",
        "--multipath",
        "-w",
        "verify",
        "--control-core",
        "0",
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.contains(", 0 mismatches"), "{out}");
}

#[test]
fn a_namespace_too_small_for_verify_is_a_usage_error() {
    // Found only once the namespace is open, but still a bad argument: exit 2, with a way out.
    let o = perf(&["-w", "verify", "-o", "8m", "-d", "10"]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        err.contains("too small for verify") && err.contains("lower -q or -o"),
        "{err}"
    );
}
