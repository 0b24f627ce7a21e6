//! The quick-start demo, headless: `bash scripts/demo.sh` (`task demo`) with stdin not a
//! terminal, as CI or a fresh clone runs it. It starts a local cluster of its own (3 nodes, in
//! its own temp dir, on a free apiserver port) beside the other scenarios' cluster, and must exit
//! 0 by itself after showing what README.md says it shows: pie's CronJobs per node, on-time
//! outcomes for the healthy StorageClass, `ProvisioningFailed` for the broken one and
//! `FailedMount` for the broken node, the PieProbes' printer columns, a run on the CronJob's own
//! schedule, `PieProvisionProbeFailing` and `PieMountProbeFailingOnNode` firing in vmalert for
//! exactly those and no storage alert for the healthy StorageClass and nodes, and a PNG. Then
//! nothing it started may still run, and its temp dir must be gone.
//!
//! `PIE_E2E_DEMO_OUTPUT=FILE` checks the output saved in FILE instead of running the demo (to
//! try the checks against an edited output).

use std::io::Read as _;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use e2e::scenario::note;
use e2e::{clear_cargo_test_env, find_binary, repo_root, target_dir};
use pie_api::names;

/// The demo takes about 13 minutes once built; more with the other scenarios beside it.
const TIMEOUT: Duration = Duration::from_secs(30 * 60);

pub fn run() -> Result<(), String> {
    if let Some(saved) = std::env::var_os("PIE_E2E_DEMO_OUTPUT") {
        let output = std::fs::read_to_string(&saved)
            .map_err(|e| format!("read {}: {e}", Path::new(&saved).display()))?;
        return verdict(check_output(&output, None));
    }
    if find_binary("go").is_none() {
        note(
            "demo",
            "skipping: Go is not installed, and task demo builds the local cluster with it",
        );
        return Ok(());
    }
    let dir = tempfile::Builder::new()
        .prefix("pie-e2e-demo-")
        .tempdir()
        .map_err(|e| format!("temp dir: {e}"))?;
    let png = dir.path().join("demo.png");
    let log_path = dir.path().join("demo.out");
    let log = std::fs::File::create(&log_path).map_err(|e| format!("demo.out: {e}"))?;
    let mut command = Command::new("bash");
    command
        .arg("scripts/demo.sh")
        .current_dir(repo_root())
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .env("CARGO_TARGET_DIR", target_dir())
        .env("PIE_DEMO_PNG", &png)
        // Its own process group: on a timeout the demo and everything it started are stopped.
        .process_group(0);
    clear_cargo_test_env(&mut command);
    let started = Instant::now();
    note("demo", "running bash scripts/demo.sh < /dev/null");
    let mut child = command
        .spawn()
        .map_err(|e| format!("run scripts/demo.sh: {e}"))?;
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            break status;
        }
        if started.elapsed() > TIMEOUT {
            // SIGTERM runs the demo's traps; whatever is left after a minute gets SIGKILL.
            let group = format!("-{}", child.id());
            let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
            std::thread::sleep(Duration::from_secs(60));
            let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
            let _ = child.wait();
            return Err(format!(
                "the demo did not finish within {TIMEOUT:?}; its output:\n{}",
                read(&log_path)
            ));
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    let output = read(&log_path);
    note(
        "demo",
        &format!(
            "the demo exited ({status}) after {:.0} s",
            started.elapsed().as_secs_f64()
        ),
    );
    if !status.success() {
        return Err(format!(
            "the demo exited with {status}; its output:\n{output}"
        ));
    }
    let mut problems = check_output(&output, Some(&png));
    problems.extend(check_stopped(&output));
    verdict(problems).map_err(|e| format!("{e}\n--- the demo's output:\n{output}"))
}

fn read(path: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.read_to_string(&mut text);
    }
    text
}

fn verdict(problems: Vec<String>) -> Result<(), String> {
    if problems.is_empty() {
        note("demo", "its output shows everything README.md promises");
        Ok(())
    } else {
        Err(format!(
            "the demo's output lacks what it must show:\n- {}",
            problems.join("\n- ")
        ))
    }
}

/// The lines of the section whose header (`==> ...`) starts with `header`, up to the next one.
fn section<'a>(output: &'a str, header: &str) -> Vec<&'a str> {
    output
        .lines()
        .skip_while(|l| !l.starts_with(&format!("==> {header}")))
        .skip(1)
        .take_while(|l| !l.starts_with("==> "))
        .collect()
}

/// One row of `demo.py outcomes`: (on time, late, the reasons text).
fn outcome(
    lines: &[&str],
    probe: &str,
    sc: &str,
    kind: &str,
    node: &str,
) -> Option<(u32, u32, String)> {
    lines.iter().find_map(|l| {
        let words: Vec<&str> = l.split_whitespace().collect();
        if words.len() < 9 || words[..4] != [probe, sc, kind, node] {
            return None;
        }
        // "<n> on time, <m> late (<reason> <k>, ...)"
        let on_time = words[4].parse().ok()?;
        let late = words[7].parse().ok()?;
        Some((on_time, late, words[9..].join(" ")))
    })
}

/// Whether `late` late provision probes with `reasons` ("(FailedMount 1, ProvisioningFailed
/// 5)") are what the demo's provisioning fault gives: 3 or more ProvisioningFailed, and any
/// others FailedMount (a Pod placed on the node whose mounts are broken), fewer than half.
fn provision_reasons_ok(late: u32, reasons: &str) -> bool {
    let mut by_reason = std::collections::BTreeMap::new();
    for part in reasons
        .trim_start_matches('(')
        .trim_end_matches(')')
        .split(", ")
    {
        let Some((reason, n)) = part.rsplit_once(' ') else {
            return false;
        };
        let Ok(n) = n.parse::<u32>() else {
            return false;
        };
        by_reason.insert(reason, n);
    }
    let failed = by_reason.remove("ProvisioningFailed").unwrap_or(0);
    let mount = by_reason.remove("FailedMount").unwrap_or(0);
    by_reason.is_empty() && failed >= 3 && failed + mount == late && mount * 2 < late
}

/// What the demo's output must show; each problem in one line.
fn check_output(output: &str, png: Option<&Path>) -> Vec<String> {
    let mut problems = Vec::new();
    let mut need = |ok: bool, what: String| {
        if !ok {
            problems.push(what);
        }
    };
    let (healthy, failing) = ("healthy", "failing");
    let (healthy_sc, failing_sc) = ("pie-local", "demo-failing");
    let healthy_nodes = ["pie-node-1", "pie-node-2"];
    let broken = "pie-node-3";

    // pie's objects: a mount CronJob per node of each PieProbe, a provision CronJob each.
    let created = section(output, "what pie created").join("\n");
    let mut cron_jobs: Vec<String> = healthy_nodes
        .iter()
        .map(|n| names::mount_cronjob(healthy, n, healthy_sc))
        .chain(
            healthy_nodes
                .iter()
                .chain([&broken])
                .map(|n| names::mount_cronjob(failing, n, failing_sc)),
        )
        .collect();
    cron_jobs.push(names::provision_cronjob(healthy, healthy_sc));
    cron_jobs.push(names::provision_cronjob(failing, failing_sc));
    for name in &cron_jobs {
        need(
            created.contains(name.as_str()),
            format!("the CronJob {name} in `kubectl get cronjobs`"),
        );
    }
    for node in healthy_nodes {
        let pvc = names::pvc(healthy, node, healthy_sc);
        need(
            created.contains(pvc.as_str()),
            format!("the PVC {pvc} in `kubectl get pvc`"),
        );
    }
    need(
        output.contains("$ kubectl create job ") && output.contains(" --from=cronjob/"),
        "probes run at once with kubectl create job --from=cronjob/...".into(),
    );
    need(
        section(output, "running every probe once now")
            .iter()
            .any(|l| l.contains(" Completed ") || l.contains(" Running ")),
        "probe Pods running or completed in `kubectl get pods`".into(),
    );
    // The faults' Events.
    need(
        output.lines().any(|l| {
            l.contains("ProvisioningFailed")
                && l.contains(
                    "fault injected by faults.pie.test/provision on StorageClass demo-failing",
                )
        }),
        "a ProvisioningFailed Event of demo-failing".into(),
    );
    need(
        output.lines().any(|l| {
            l.contains("FailedMount")
                && l.contains("fault injected by faults.pie.test/mount on Node pie-node-3")
        }),
        "a FailedMount Event on pie-node-3".into(),
    );

    // The PieProbes' printer columns (the last outcomes) and status.
    let probes = section(output, "the PieProbes now");
    let row = |name: &str| {
        probes
            .iter()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|w| w.first() == Some(&name))
            .unwrap_or_default()
    };
    need(
        row(healthy).get(1..6) == Some(&[healthy_sc, "2", "True", "OnTime", "OnTime"][..]),
        format!(
            "`kubectl get pieprobes`: healthy pie-local 2 True OnTime OnTime, not {:?}",
            row(healthy)
        ),
    );
    need(
        row(failing).get(1..5) == Some(&[failing_sc, "3", "True", "NotStarted"][..]),
        format!(
            "`kubectl get pieprobes`: failing demo-failing 3 True NotStarted, not {:?}",
            row(failing)
        ),
    );
    // A provision Pod the scheduler puts on pie-node-3 after its PVC was provisioned (a
    // scheduled run just before the provisioning fault) fails to mount there: FailedMount.
    need(
        ["ProvisioningFailed", "FailedMount"].iter().any(|reason| {
            output.contains(&format!(
                "failing: last provision NotStarted: did not start within 30.0s ({reason})"
            ))
        }),
        "the PieProbe failing's status: the last provision probe NotStarted (ProvisioningFailed, \
         or FailedMount for one placed on pie-node-3)"
            .into(),
    );

    // The outcomes pie pushed to VictoriaMetrics, at the end.
    let outcomes = section(output, "outcomes per PieProbe");
    for node in healthy_nodes {
        for (probe, sc) in [(healthy, healthy_sc), (failing, failing_sc)] {
            let got = outcome(&outcomes, probe, sc, "mount", node);
            need(
                got.as_ref()
                    .is_some_and(|(on_time, late, _)| *on_time >= 1 && *late == 0),
                format!("{probe}'s mount probes on {node} all on time, not {got:?}"),
            );
        }
    }
    let got = outcome(&outcomes, healthy, healthy_sc, "mount", "pie-node-1");
    need(
        got.as_ref().is_some_and(|(on_time, _, _)| *on_time >= 3),
        format!("healthy's scheduled mount probes counted (3+ on pie-node-1), not {got:?}"),
    );
    let got = outcome(&outcomes, healthy, healthy_sc, "provision", "-");
    need(
        got.as_ref()
            .is_some_and(|(on_time, late, _)| *on_time >= 2 && *late == 0),
        format!("healthy's provision probes all on time, not {got:?}"),
    );
    // The broken ones: late, with the reason their fault gives. A provision Pod may also have
    // landed on pie-node-3 once its volume existed (a scheduled run just before the
    // provisioning fault) and failed to mount there.
    let got = outcome(&outcomes, failing, failing_sc, "mount", broken);
    need(
        got.as_ref().is_some_and(|(_, late, reasons)| {
            *late >= 3 && *reasons == format!("(FailedMount {late})")
        }),
        format!("failing's mount probes on {broken}: 3+ late, all with FailedMount, not {got:?}"),
    );
    let got = outcome(&outcomes, failing, failing_sc, "provision", "-");
    need(
        got.as_ref()
            .is_some_and(|(_, late, reasons)| provision_reasons_ok(*late, reasons)),
        format!(
            "failing's provision probes: 3+ late with ProvisioningFailed, the others (at most \
             one in three) FailedMount, not {got:?}"
        ),
    );
    need(
        outcomes
            .iter()
            .all(|l| !l.contains(&format!(" {broken} ")) || l.contains(failing)),
        "no PieProbe but failing probes pie-node-3".into(),
    );
    need(
        output.lines().any(|l| {
            l.strip_prefix("  scheduled runs: ")
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse::<u32>().ok())
                .is_some_and(|n| n >= 1)
        }),
        "a run of healthy's CronJobs on their own schedule".into(),
    );

    // The alerts: the two for the broken StorageClass and node fire, nothing for the healthy.
    let alerts = section(output, "storage alerts in vmalert");
    let firing = |name: &str, labels: &str| {
        alerts
            .iter()
            .any(|l| l.starts_with(&format!("  FIRING {name} ")) && l.contains(labels))
    };
    need(
        firing(
            "PieProvisionProbeFailing",
            "pie_probe_name=failing storage_class=demo-failing",
        ),
        "FIRING PieProvisionProbeFailing for demo-failing".into(),
    );
    need(
        firing(
            "PieMountProbeFailingOnNode",
            "storage_class=demo-failing node=pie-node-3",
        ),
        "FIRING PieMountProbeFailingOnNode for pie-node-3".into(),
    );
    for l in alerts
        .iter()
        .filter(|l| l.starts_with("  FIRING") || l.starts_with("  PENDING"))
    {
        need(
            !l.contains("storage_class=pie-local")
                && healthy_nodes
                    .iter()
                    .all(|n| !l.contains(&format!("node={n} "))),
            format!(
                "no alert for the healthy StorageClass or nodes, but: {}",
                l.trim()
            ),
        );
    }
    for quiet in [
        "StorageClass pie-local",
        "node pie-node-1",
        "node pie-node-2",
    ] {
        need(
            alerts
                .iter()
                .any(|l| l.starts_with(&format!("  quiet: {quiet}: no storage alert"))),
            format!("the line saying {quiet} is quiet"),
        );
    }
    need(
        output.contains("16 shipped rules loaded, 16 evaluated without error"),
        "the shipped rules loaded and evaluated without error".into(),
    );
    need(
        output
            .lines()
            .any(|l| l.contains("KUBECONFIG=") && l.ends_with("kubectl get pieprobes -A")),
        "the KUBECONFIG=... kubectl get pieprobes -A line".into(),
    );

    // The picture.
    if let Some(png) = png {
        let bytes = std::fs::read(png).unwrap_or_default();
        need(
            bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 20_000,
            format!(
                "a PNG of the run at {} ({} bytes)",
                png.display(),
                bytes.len()
            ),
        );
        need(
            output.contains(&format!("  {}", png.display())),
            "the PNG's path printed".into(),
        );
    }
    problems
}

/// After the demo: its temp dir is gone and no process it started still runs.
fn check_stopped(output: &str) -> Vec<String> {
    let mut problems = Vec::new();
    if !output.contains("demo: stopped everything it started") {
        problems.push("the demo's last line: stopped everything it started".into());
    }
    let Some(tmp) = output.lines().find_map(|l| {
        let rest = l.trim().strip_prefix("logs:")?.trim();
        rest.split("/*.log").next().map(str::to_owned)
    }) else {
        problems.push("the `logs:` line naming the demo's temp dir".into());
        return problems;
    };
    if Path::new(&tmp).exists() {
        problems.push(format!("the demo's temp dir {tmp} is still there"));
    }
    // Every process the demo started has the temp dir in its command line or environment
    // (the cluster's components, probe Pods, VictoriaMetrics, vmalert, pie-controller).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = processes_mentioning(&tmp);
        if left.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            problems.push(format!("still running after the demo: {left:?}"));
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    problems
}

fn processes_mentioning(text: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter_map(|e| {
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            cmdline
                .contains(text)
                .then(|| format!("{} {}", e.file_name().to_string_lossy(), cmdline.trim()))
        })
        .collect()
}
