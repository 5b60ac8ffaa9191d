//! `--only hops`: where a request's time goes at 1000 req/s, hop by hop, from the kernel
//! scheduler's own trace.
//!
//! Why: at this rate p99 is mostly not CPU spent in the waypoint, and a CPU profile cannot say
//! what else it is. A request is a chain of wakeups across processes (the client wakes weftd,
//! weftd the waypoint, the waypoint the backend, and back), so `perf record` of the
//! `sched_waking` / `sched_switch` tracepoints during a fixed-rate run gives, for every
//! request, each hop's *delay* (woken until running: an idle vCPU to wake, a busy one to wait
//! for) and *work* (running until it wakes the next process, with the kernel's TCP send and
//! the receiver's softirq inside). Run for both waypoints, the report puts the waypoint's own
//! share of a request beside what every path shares. Written to `target/bench/l7-hops.txt`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;

use anyhow::{Context, bail};

use super::figures::latency_run;
use super::{L7, Route};

const RATE: u32 = 1000;
/// Longer than any response takes, short of a broken run: a client thread's next wakeup later
/// than this after it sent is not its response.
const RESPONSE_WITHIN: f64 = 0.05;

/// One `sched_waking`: `waker` (a thread id) wakes `wakee` at `t` (seconds).
#[derive(Clone, Copy)]
struct Waking {
    t: f64,
    waker: u32,
    wakee: u32,
}

/// What the trace holds, indexed for the chain walk.
#[derive(Default)]
struct Trace {
    /// Thread id to process id, from every line's `pid/tid`.
    tgid: HashMap<u32, u32>,
    /// Wakings by the waker's process, in time order.
    by_process: HashMap<u32, Vec<Waking>>,
    /// Times each thread was switched in, in time order.
    switched_in: HashMap<u32, Vec<f64>>,
    /// Wakings of each thread, in time order.
    woken: HashMap<u32, Vec<Waking>>,
}

/// The process roles along a waypoint path.
struct Roles {
    weftd: u32,
    waypoint: u32,
    backend: u32,
}

/// One hop of a request: the process it ran in, how long it waited to run once woken, and how
/// long it ran until it woke the next.
#[derive(Clone, Copy)]
struct Hop {
    role: &'static str,
    delay_us: f64,
    work_us: f64,
}

pub fn hops(b: &L7) -> anyhow::Result<()> {
    crate::tools::ensure(&[("perf", "linux-perf")])?;
    let out_dir = crate::workspace_root().join("target/bench");
    std::fs::create_dir_all(&out_dir)?;
    let mut report = format!(
        "Hops of a request at {RATE} req/s (`cargo xtask bench l7 --only hops`): per hop, the \
         delay from being woken to running and the work until it wakes the next process, in \
         us. Rows: the mean over the fastest half of the requests and over the slowest 2%.\n"
    );
    for route in [Route::Weft, Route::Envoy] {
        let roles = Roles {
            weftd: b.weftd.first().context("weftd on node1")?.0.id(),
            waypoint: b.proxy_pid(route).context("a waypoint path")?,
            backend: b.servers.get(1).context("the plain server")?.0.id(),
        };
        let data = out_dir.join(format!("l7-hops-{}.data", route.key()));
        let mut perf = std::process::Command::new("perf")
            .args(["record", "-a", "-e", "sched:sched_waking", "-e"])
            .args(["sched:sched_switch", "-m", "64M", "-o"])
            .arg(&data)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        // perf opens its ring buffers before it records; give it the time to.
        std::thread::sleep(std::time::Duration::from_secs(1));
        let measured = latency_run(b, route, RATE);
        // SAFETY: kill(2) on the child's own pid; SIGINT makes perf write its file.
        unsafe { libc::kill(perf.id() as i32, libc::SIGINT) };
        perf.wait()?;
        let measured = measured?;
        let script = std::process::Command::new("perf")
            .args(["script", "-F", "pid,tid,time,event,trace", "-i"])
            .arg(&data)
            .output()?;
        if !script.status.success() {
            bail!("perf script: {}", String::from_utf8_lossy(&script.stderr));
        }
        let trace = parse(&String::from_utf8_lossy(&script.stdout));
        let chains = walk(&trace, &roles);
        if chains.is_empty() {
            bail!(
                "no request could be followed through the trace of {}",
                route.name()
            );
        }
        let section = summarise(route, &measured, chains);
        eprint!("{section}");
        report.push_str(&section);
        let _ = std::fs::remove_file(&data);
    }
    let file = out_dir.join("l7-hops.txt");
    std::fs::write(&file, report)?;
    eprintln!("hops in {}", file.display());
    Ok(())
}

fn parse(text: &str) -> Trace {
    let mut t = Trace::default();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let (Some(ids), Some(time), Some(event)) = (words.next(), words.next(), words.next())
        else {
            continue;
        };
        let Some((pid, tid)) = ids.split_once('/') else {
            continue;
        };
        let (Ok(pid), Ok(tid)) = (pid.parse::<u32>(), tid.parse::<u32>()) else {
            continue;
        };
        let Ok(time) = time.trim_end_matches(':').parse::<f64>() else {
            continue;
        };
        t.tgid.insert(tid, pid);
        let field = |name: &str| -> Option<u32> {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .and_then(|v| v.parse().ok())
        };
        match event {
            "sched:sched_waking:" => {
                if let Some(wakee) = field("pid=") {
                    let w = Waking {
                        t: time,
                        waker: tid,
                        wakee,
                    };
                    t.by_process.entry(pid).or_default().push(w);
                    t.woken.entry(wakee).or_default().push(w);
                }
            }
            "sched:sched_switch:" => {
                if let Some(next) = field("next_pid=") {
                    t.switched_in.entry(next).or_default().push(time);
                }
            }
            _ => {}
        }
    }
    t
}

/// Follows each request from the client's timer wakeup to its wakeup by weftd with the
/// response: client -> weftd -> waypoint -> backend -> waypoint -> weftd -> client. The
/// response is the client thread's next wakeup after it sent (it blocks reading it); a
/// request whose chain breaks (a process that was already running needs no wakeup, or that
/// wakeup is not weftd's) is left out rather than joined to a later request's hops.
fn walk(t: &Trace, roles: &Roles) -> Vec<(f64, Vec<Hop>)> {
    let process = |tid: u32| t.tgid.get(&tid).copied().unwrap_or(0);
    let ours: HashSet<u32> = [roles.weftd, roles.waypoint, roles.backend].into();
    // The client: the process outside the path that weftd wakes most (weftd also wakes the
    // odd kernel thread); its threads are the ones weftd wakes.
    let mut woken_by_weftd: HashMap<u32, usize> = HashMap::new();
    for w in t.by_process.get(&roles.weftd).into_iter().flatten() {
        let p = process(w.wakee);
        if p != 0 && !ours.contains(&p) {
            *woken_by_weftd.entry(p).or_default() += 1;
        }
    }
    let mut chains = Vec::new();
    let Some(client_process) = woken_by_weftd
        .into_iter()
        .max_by_key(|&(_, n)| n)
        .map(|(p, _)| p)
    else {
        return chains;
    };
    let clients: HashSet<u32> = t
        .by_process
        .get(&roles.weftd)
        .into_iter()
        .flatten()
        .map(|w| w.wakee)
        .filter(|&tid| process(tid) == client_process)
        .collect();
    let switch_in = |tid: u32, after: f64| -> Option<f64> {
        let v = t.switched_in.get(&tid)?;
        v.get(v.partition_point(|&s| s < after)).copied()
    };
    // The first waking by process `from` at or after `after` and before `end` of a thread of
    // process `to`.
    let next = |from: u32, after: f64, end: f64, to: u32| -> Option<Waking> {
        let v = t.by_process.get(&from)?;
        v[v.partition_point(|w| w.t < after)..]
            .iter()
            .take_while(|w| w.t <= end)
            .find(|w| process(w.wakee) == to)
            .copied()
    };
    let starts = t
        .by_process
        .values()
        .flatten()
        .filter(|w| clients.contains(&w.wakee) && process(w.waker) != roles.weftd);
    'request: for start in starts {
        let Some(sent) = switch_in(start.wakee, start.t) else {
            continue;
        };
        // The response: the client thread's first wakeup after it ran; weftd's, or no chain.
        let Some(response) = t.woken.get(&start.wakee).and_then(|v| {
            v.get(v.partition_point(|w| w.t <= sent))
                .copied()
                .filter(|w| process(w.waker) == roles.weftd && w.t < sent + RESPONSE_WITHIN)
        }) else {
            continue;
        };
        let mut hops = vec![Hop {
            role: "client",
            delay_us: (sent - start.t) * 1e6,
            work_us: 0.0,
        }];
        let (mut at, mut running) = (client_process, sent);
        let path = [
            ("weftd", roles.weftd),
            ("waypoint", roles.waypoint),
            ("backend", roles.backend),
            ("waypoint", roles.waypoint),
        ];
        for (role, to) in path {
            let Some(w) = next(at, running, response.t, to) else {
                continue 'request;
            };
            let Some(ran) = switch_in(w.wakee, w.t).filter(|&r| r <= response.t) else {
                continue 'request;
            };
            if let Some(last) = hops.last_mut() {
                last.work_us = (w.t - running) * 1e6;
            }
            hops.push(Hop {
                role,
                delay_us: (ran - w.t) * 1e6,
                work_us: 0.0,
            });
            at = to;
            running = ran;
        }
        // The last two hops: into weftd with the response, and weftd waking the client.
        let Some(back) = next(roles.waypoint, running, response.t, roles.weftd) else {
            continue;
        };
        let Some(weftd_ran) = switch_in(back.wakee, back.t).filter(|&r| r <= response.t) else {
            continue;
        };
        let Some(client_ran) = switch_in(start.wakee, response.t) else {
            continue;
        };
        if let Some(last) = hops.last_mut() {
            last.work_us = (back.t - running) * 1e6;
        }
        hops.push(Hop {
            role: "weftd",
            delay_us: (weftd_ran - back.t) * 1e6,
            work_us: (response.t - weftd_ran) * 1e6,
        });
        hops.push(Hop {
            role: "client",
            delay_us: (client_ran - response.t) * 1e6,
            work_us: 0.0,
        });
        chains.push(((client_ran - start.t) * 1e6, hops));
    }
    chains
}

fn summarise(
    route: Route,
    measured: &serde_json::Value,
    mut chains: Vec<(f64, Vec<Hop>)>,
) -> String {
    chains.sort_by(|a, b| a.0.total_cmp(&b.0));
    let n = chains.len();
    let at = |q: f64| chains[((n - 1) as f64 * q) as usize].0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n{}: {n} requests followed; measured by the client p50 {:.0} / p99 {:.0} us; \
         timer-to-response in the trace p50 {:.0} / p90 {:.0} / p99 {:.0} us",
        route.name(),
        measured["p50_us"].as_f64().unwrap_or(f64::NAN),
        measured["p99_us"].as_f64().unwrap_or(f64::NAN),
        at(0.5),
        at(0.9),
        at(0.99)
    );
    // The waypoint's share of each request: both of its hops, waiting and working.
    let mut share: Vec<f64> = chains
        .iter()
        .map(|(_, h)| {
            h.iter()
                .filter(|h| h.role == "waypoint")
                .map(|h| h.delay_us + h.work_us)
                .sum()
        })
        .collect();
    share.sort_by(f64::total_cmp);
    let q = |v: &[f64], f: f64| v[((v.len() - 1) as f64 * f) as usize];
    let _ = writeln!(
        s,
        "  the waypoint's share of a request (its two hops, delay + work): p50 {:.0} / p99 {:.0} us",
        q(&share, 0.5),
        q(&share, 0.99)
    );
    let groups = [
        ("fastest half", &chains[..n / 2]),
        ("slowest 2%", &chains[n - (n / 50).max(1)..]),
    ];
    for (label, group) in groups {
        let mut sums: BTreeMap<usize, (&str, f64, f64)> = BTreeMap::new();
        for (_, hops) in group {
            for (i, h) in hops.iter().enumerate() {
                let e = sums.entry(i).or_insert((h.role, 0.0, 0.0));
                e.1 += h.delay_us;
                e.2 += h.work_us;
            }
        }
        let k = group.len().max(1) as f64;
        let total: f64 = group.iter().map(|c| c.0).sum::<f64>() / k;
        let _ = writeln!(s, "  {label} (mean {total:.0} us):");
        for (role, delay, work) in sums.values() {
            let _ = writeln!(
                s,
                "    {role:<9} delay {:>6.1}  work {:>6.1}",
                delay / k,
                work / k
            );
        }
    }
    s
}
