//! CPU stalls: stretches of time in which a CPU of this (virtual) machine ran nothing at all,
//! because the hypervisor did not run it. Every request in flight during one waits for it,
//! whichever proxy carries it, so a few dozen in a run at a low request rate are enough to set
//! its p99 (docs/architecture.md, "CPU stalls").
//!
//! One probe thread per CPU, pinned to it, at real-time priority (`SCHED_FIFO`, so that no
//! process of the guest can hold it off), sleeps to a fixed 1 ms schedule. Woken more than
//! `THRESHOLD` after its due time, it records the stretch from the due time to the wakeup:
//! the CPU did not run the guest for at least that long (or kept interrupts off that long,
//! which the guest's kernel does not do for half a millisecond). A stall shorter than the
//! threshold goes unseen, so what is left after taking stalls out still errs long.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const PERIOD: Duration = Duration::from_millis(1);
/// Wakeup latency of an idle vCPU is tens of microseconds here; this is ten times that.
const THRESHOLD: Duration = Duration::from_micros(500);

/// A stretch in which a CPU ran nothing: from when its probe was due to when it ran.
#[derive(Debug, Clone, Copy)]
pub struct Stall {
    pub from: Instant,
    pub to: Instant,
}

pub struct Probe {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<anyhow::Result<Vec<Stall>>>>,
}

impl Probe {
    /// Starts one probe per CPU the process may run on.
    pub fn start() -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = allowed_cpus()
            .into_iter()
            .map(|cpu| {
                let stop = stop.clone();
                std::thread::spawn(move || probe(cpu, &stop))
            })
            .collect();
        Probe { stop, threads }
    }

    /// Stops the probes; the stalls they saw. An error when a probe could not
    /// run as it must (pinned, real-time): then it would see the guest's own scheduling too.
    pub fn stop(self) -> anyhow::Result<Vec<Stall>> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for t in self.threads {
            let seen = t
                .join()
                .map_err(|_| anyhow::anyhow!("a stall probe panicked"))??;
            all.extend(seen);
        }
        Ok(all)
    }
}

fn allowed_cpus() -> Vec<usize> {
    // SAFETY: `set` is a valid out-parameter of the size passed.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return vec![0];
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

fn probe(cpu: usize, stop: &AtomicBool) -> anyhow::Result<Vec<Stall>> {
    pin(cpu, 1).map_err(|e| {
        anyhow::anyhow!("the stall probe on CPU {cpu} must be pinned and SCHED_FIFO (root): {e}")
    })?;
    let mut seen = Vec::new();
    let mut due = Instant::now() + PERIOD;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let woke = Instant::now();
        if woke.saturating_duration_since(due) > THRESHOLD {
            seen.push(Stall {
                from: due,
                to: woke,
            });
        }
        due = woke + PERIOD;
    }
    Ok(seen)
}

/// Pins the calling thread to `cpu` at real-time `priority` (`SCHED_FIFO`).
fn pin(cpu: usize, priority: i32) -> std::io::Result<()> {
    // SAFETY: plain syscalls on this thread (pid 0 = the caller) with valid arguments.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let param = libc::sched_param {
            sched_priority: priority,
        };
        if libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Whether a request in flight from `start` to `end` was (partly) inside one of `stalls`.
pub fn overlaps(stalls: &[Stall], start: Instant, end: Instant) -> bool {
    stalls.iter().any(|p| p.from < end && p.to > start)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A thread of higher real-time priority holding one CPU is, to the probe on that CPU,
    /// the same as the hypervisor not running it.
    #[test]
    fn a_cpu_held_for_milliseconds_is_seen_as_a_stall() {
        if !crate::tools::is_root() {
            eprintln!("skipped: the probe needs SCHED_FIFO (root)");
            return;
        }
        let cpu = allowed_cpus()[0];
        let probe = Probe::start();
        std::thread::sleep(Duration::from_millis(20));
        let held = Duration::from_millis(3);
        std::thread::spawn(move || {
            pin(cpu, 2).unwrap();
            let start = Instant::now();
            while start.elapsed() < held {
                std::hint::spin_loop();
            }
        })
        .join()
        .unwrap();
        std::thread::sleep(Duration::from_millis(10));
        let stalls = probe.stop().unwrap();
        assert!(
            stalls
                .iter()
                .any(|p| p.to - p.from >= held - PERIOD - THRESHOLD),
            "no stall of about {held:?} among {stalls:?}"
        );
    }

    #[test]
    fn a_request_overlaps_only_stalls_during_it() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let stalls = [
            Stall {
                from: ms(10),
                to: ms(12),
            },
            Stall {
                from: ms(20),
                to: ms(21),
            },
        ];
        assert!(!overlaps(&stalls, ms(0), ms(9)));
        assert!(overlaps(&stalls, ms(9), ms(11)));
        assert!(overlaps(&stalls, ms(11), ms(15)));
        assert!(overlaps(&stalls, ms(5), ms(30)));
        assert!(!overlaps(&stalls, ms(12), ms(20)));
        assert!(overlaps(&stalls, ms(20), ms(20) + Duration::from_micros(1)));
        assert!(!overlaps(&stalls, ms(22), ms(40)));
        assert!(!overlaps(&[], ms(0), ms(40)));
    }
}
